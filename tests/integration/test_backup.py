"""Backups end to end: pg_dump streamed to S3, verified, restored, pruned — on the real stack.

Real PostgreSQL (the stack's staging cluster), the stack's S3 endpoint, and for the tests
that stop the endpoint mid-upload, our own devstack/s3server.py on a free port with a
temporary root.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.config import Config
from generate_data import generate

from schema_deploy.backups.dump import backup
from schema_deploy.backups.errors import (BackupFailed, BackupIncomplete, BackupVerificationFailed,
                                          BucketCheckFailed, PgDumpFailed, RestoreFailed, RestoreRefused,
                                          S3TransferFailed)
from schema_deploy.backups.restore import restore, verify_backup
from schema_deploy.backups.store import list_backups, prune, read_manifest
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.cli.main import main
from schema_deploy.engine.apply import apply
from schema_deploy.errors import UsageError
from schema_deploy.pg.errors import DatabaseError
from schema_deploy.pg.fingerprint import diff_fingerprints, schema_fingerprint
from tests.conftest import REPO, drop_database, with_database

MIB = 1 << 20
PART = 5 * MIB
SERVER_SCRIPT = REPO / "devstack" / "s3server.py"
OWN_KEY, OWN_SECRET, OWN_BUCKET = "backup-test-key", "backup-test-secret-0123456789", "own-backups"


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_bindir(stack_env: dict[str, str]) -> str:
    return stack_env["PG_BINDIR"]


@pytest.fixture(scope="module")
def s3(stack_env: dict[str, str]):
    return client(stack_env["S3_ENDPOINT_URL"], stack_env["AWS_ACCESS_KEY_ID"], stack_env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def bucket(stack_env: dict[str, str]) -> str:
    return stack_env["BACKUP_BUCKET"]


@pytest.fixture
def to(s3, bucket: str) -> Iterator[str]:
    """A fresh prefix in the stack's bucket, emptied afterwards."""
    prefix = f"backup-tests/{uuid.uuid4().hex[:10]}"
    yield f"s3://{bucket}/{prefix}"
    empty_prefix(s3, bucket, prefix)


def create_db(base: str, name: str | None = None, template: str | None = None) -> str:
    name = name or f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return with_database(base, name)


def drop_db(base: str, url: str) -> None:
    drop_database(base, url.rsplit("/", 1)[1])


@pytest.fixture
def new_db(stack_env: dict[str, str]) -> Iterator[Callable[..., str]]:
    """Factory of databases on the staging cluster (empty, or copies of a template), dropped afterwards."""
    base, made = stack_env["STAGING_DATABASE_URL"], []

    def make(name: str | None = None, template: str | None = None) -> str:
        made.append(create_db(base, name, template))
        return made[-1]
    yield make
    for url in made:
        drop_db(base, url)


def seed_baseline(url: str, scale: str = "small") -> None:
    apply(url, load_bundle(REPO / "sql" / "migrations"), to="20250915090000_baseline")
    generate(url, seed=42, scale=scale)


@pytest.fixture(scope="module")
def small_template(stack_env: dict[str, str]) -> Iterator[str]:
    """The baseline schema with the generator's small data, seeded once and copied per test."""
    base = stack_env["STAGING_DATABASE_URL"]
    url = create_db(base)
    seed_baseline(url)
    yield url.rsplit("/", 1)[1]
    drop_db(base, url)


@pytest.fixture
def small_db(new_db, small_template: str) -> str:
    return new_db(template=small_template)


@pytest.fixture(scope="module")
def noise_db(stack_env: dict[str, str]) -> Iterator[str]:
    """The baseline with small data plus 38,000 rows of random base64 text: a ~31 MiB dump (7 parts of 5 MiB).
    More than 25 MiB: when part 3 is about to be sent, at most parts 3 to 5 are read (two in flight, one
    buffered), so pg_dump is still writing, not done, when a test kills it then."""
    base = stack_env["STAGING_DATABASE_URL"]
    url = create_db(base)
    seed_baseline(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE noise AS
            WITH pool AS (SELECT p, encode(decode(string_agg(md5(random()::text || p || h), ''), 'hex'), 'base64') AS b
                          FROM generate_series(0, 2047) p, generate_series(1, 48) h GROUP BY p)
            SELECT g AS id, pool.b AS payload FROM generate_series(1, 38000) g
            JOIN pool ON pool.p = (g * 2654435761::bigint) % 2048""")
    yield url
    drop_db(base, url)


def client(endpoint: str, key: str, secret: str, attempts: int = 3):
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": attempts},
                      connect_timeout=2, read_timeout=30))


def empty_prefix(s3, bucket: str, prefix: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def uploads_under(s3, bucket: str, prefix: str) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


def fingerprint(url: str) -> dict[str, dict[str, str]]:
    """Tables, columns and types, indexes, constraints, enums, sequences and views."""
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def live_counts(url: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM {".".join(chr(34) + p + chr(34) for p in t.split("."))}')
                .fetchone()[0] for t in tables}


def password_of(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def child_pids(name: str) -> list[int]:
    """Pids of this process's children whose command is `name`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            comm = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and comm == name:
            found.append(int(stat.parent.name))
    return found


# --- our own S3 endpoint, to stop it mid-upload --------------------------------------------

@dataclass
class OwnServer:
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        pid_file = self.root.parent / f"s3-{self.port}.pid"
        pid_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--root", str(self.root), "--host", "127.0.0.1", "--port",
             str(self.port), "--access-key", OWN_KEY, "--secret-key", OWN_SECRET, "--bucket", OWN_BUCKET,
             "--pid-file", str(pid_file), "--log-file", str(self.root.parent / f"s3-{self.port}.log")],
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"s3server exited at start with {self.proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("s3server did not answer within 20 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[OwnServer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = OwnServer(tmp_path / "root", port)
    server.start()
    yield server
    server.stop()


def kill_on_part(s3_client, part: int, action) -> None:
    """Run `action` once, just before the request that uploads part `part` is sent."""
    fired = threading.Event()

    def hook(request, **_kwargs) -> None:
        if f"partNumber={part}&" in request.url + "&" and not fired.is_set():
            fired.set()
            action()
    s3_client.meta.events.register("before-send.s3.UploadPart", hook)


# --- round trip ----------------------------------------------------------------------------

@pytest.mark.slow
def test_backup_verify_and_restore_round_trip_the_schema_and_the_rows(
        s3, to, bucket, small_db, new_db, stack_env, pg_bindir) -> None:
    lines: list[str] = []
    result = backup(s3, small_db, to, environment="staging", run_id="manual__2025-10-17T12:00:00+00:00",
                    pg_bindir=pg_bindir, log=lines.append)
    prefix = to.split("/", 3)[3]
    db = small_db.rsplit("/", 1)[1]
    assert result.key.startswith(f"{prefix}/staging/{db}/")
    assert result.key.endswith("_manual__2025-10-17T12-00-00-00-00.dump")
    head = s3.head_object(Bucket=bucket, Key=result.key)
    assert head["ContentLength"] == result.size and head["ServerSideEncryption"] == "AES256"
    assert head["ETag"].endswith('-1"'), "always a multipart upload, even for one part"
    assert s3.head_object(Bucket=bucket, Key=result.manifest_key)["ServerSideEncryption"] == "AES256"

    manifest = read_manifest(s3, bucket, result.key)
    assert manifest["size"] == result.size and manifest["sha256"] == result.sha256
    assert manifest["sse"] == {"mode": "AES256", "kms_key_id": None}
    assert manifest["database"] == db and manifest["environment"] == "staging"
    assert manifest["run_id"] == "manual__2025-10-17T12:00:00+00:00"
    assert manifest["pg_dump_version"].startswith("pg_dump (PostgreSQL) 15")
    assert manifest["server_version"].startswith("15")
    assert manifest["verification"] is None
    assert manifest["row_counts"]["public.behavioral_events"] == 2000
    assert manifest["row_counts"] == live_counts(small_db, list(manifest["row_counts"]))
    baseline = load_bundle(REPO / "sql" / "migrations").migrations[0]
    assert [(m["name"], m["checksum"], m["state"]) for m in manifest["ledger"]["migrations"]] == \
        [(baseline.name, baseline.checksum, "applied")]
    assert lines[-1].startswith(f"backup: stored {result.uri}: ") and result.sha256 in lines[-1]

    verified: list[str] = []
    check = verify_backup(s3, result.uri, restore_check=True, admin_url=stack_env["STAGING_DATABASE_URL"],
                          pg_bindir=pg_bindir, log=verified.append)
    assert check.ok and check.method == "sha256+toc+restore"
    assert check.row_counts == manifest["row_counts"]
    recorded = read_manifest(s3, bucket, result.key)["verification"]
    assert recorded["ok"] is True and recorded["method"] == "sha256+toc+restore"
    assert recorded["details"]["toc"]["by_type"]["TABLE DATA"] == len(manifest["row_counts"])
    # This check's own scratch database, by the name it logged: other tests verify backups meanwhile.
    scratch = re.search(r"into scratch database (schema_deploy_verify_\w+)", "\n".join(verified))
    assert scratch, verified
    with psycopg.connect(stack_env["STAGING_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (scratch[1],)
                            ).fetchone()[0] == 0, "the scratch database was dropped"

    target = new_db()
    restored = restore(s3, result.uri, target, pg_bindir=pg_bindir, allow_other_source=True)
    assert restored.row_counts == manifest["row_counts"]
    assert live_counts(target, list(manifest["row_counts"])) == manifest["row_counts"]
    assert diff_fingerprints(fingerprint(small_db), fingerprint(target), "source", "restored") == []
    assert fingerprint(target)["indexes"] and fingerprint(target)["constraints"]

    restore(s3, result.uri, target, clean=True, pg_bindir=pg_bindir, allow_other_source=True)
    assert live_counts(target, list(manifest["row_counts"])) == manifest["row_counts"]


def test_restore_without_clean_into_a_database_that_has_the_tables_fails_and_changes_nothing(
        s3, to, small_db, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    with psycopg.connect(small_db, autocommit=True) as conn:
        conn.execute("DELETE FROM recommendations")
    with pytest.raises(RestoreFailed, match=r"(?s)pg_restore exited with code 1:.*already exists.*"
                       r"single transaction, so the target is unchanged"):
        restore(s3, result.uri, small_db, pg_bindir=pg_bindir)
    assert live_counts(small_db, ["public.recommendations"]) == {"public.recommendations": 0}


def test_parallel_restore_is_refused_because_it_needs_a_file(s3, to, pg_bindir) -> None:
    with pytest.raises(UsageError, match=r"parallel restore \(jobs=4\) is not supported: pg_restore --jobs needs "
                                         r"a seekable file"):
        restore(s3, to + "/x.dump", "postgresql://u:p@127.0.0.1:1/db", jobs=4, pg_bindir=pg_bindir)


# --- integrity -----------------------------------------------------------------------------

def test_one_flipped_byte_fails_verification_and_restore_with_the_sha256_mismatch(
        s3, to, bucket, small_db, new_db, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    data = bytearray(s3.get_object(Bucket=bucket, Key=result.key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=result.key, Body=bytes(data), ServerSideEncryption="AES256")

    with pytest.raises(BackupVerificationFailed, match=r"(?s)verification of s3://.+\.dump failed:\n  - sha256 mismatch: the "
                       rf"object's sha256 is [0-9a-f]{{64}}, the manifest says {result.sha256}: the object changed "
                       r"or was corrupted after the backup.*recorded in its manifest"):
        verify_backup(s3, result.uri, pg_bindir=pg_bindir)
    recorded = read_manifest(s3, bucket, result.key)["verification"]
    assert recorded["ok"] is False and "sha256 mismatch" in recorded["details"]["problems"][0]
    assert [e.verified for e in list_backups(s3, to)] == [False]

    target = new_db()
    with pytest.raises(RestoreFailed, match=r"(?s)the object does not match its manifest.*pg_restore was stopped "
                                            r"before the end of the archive.*the target is unchanged"):
        restore(s3, result.uri, target, pg_bindir=pg_bindir, allow_other_source=True)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_dump_without_its_manifest_is_incomplete_everywhere(s3, to, bucket, pg_bindir) -> None:
    prefix = to.split("/", 3)[3]
    key = f"{prefix}/default/appdb/20250101T000000Z_crashed.dump"
    s3.put_object(Bucket=bucket, Key=key, Body=b"PGDMP partial", ServerSideEncryption="AES256")
    with pytest.raises(BackupIncomplete, match=r"is an incomplete backup: its manifest .+_crashed\.manifest\.json "
                                               r"does not exist.*never counts as a good backup"):
        verify_backup(s3, f"s3://{bucket}/{key}", pg_bindir=pg_bindir)
    [entry] = list_backups(s3, to)
    assert (entry.state, entry.complete, entry.verified) == ("incomplete: no manifest", False, False)
    decisions = prune(s3, to, keep=1, dry_run=False)
    assert [(d.delete, d.reason) for d in decisions] == [
        (True, "incomplete: no manifest: never counts as a good backup")]
    assert keys_under(s3, bucket, prefix) == []


# --- failures leave nothing behind ---------------------------------------------------------

@pytest.mark.slow
def test_s3_endpoint_killed_mid_upload_aborts_the_upload_once_it_is_back_and_a_retry_succeeds(
        own_s3: OwnServer, noise_db, pg_bindir) -> None:
    s3 = client(own_s3.endpoint, OWN_KEY, OWN_SECRET, attempts=1)

    def crash_and_come_back() -> None:
        own_s3.kill()
        threading.Timer(0.3, own_s3.start).start()
    kill_on_part(s3, 3, crash_and_come_back)
    with pytest.raises(S3TransferFailed, match=rf"(?s)backup upload: UploadPart \(part \d+\) on s3://{OWN_BUCKET}/"
                       r"nightly/default/t_\w+/\d{8}T\d{6}Z_run1\.dump failed with \w+: .*The multipart upload "
                       r"[0-9a-f]+ was aborted: nothing was stored\."):
        backup(s3, noise_db, f"s3://{OWN_BUCKET}/nightly", run_id="run1", part_size=PART,
               pg_bindir=pg_bindir, abort_timeout_s=30)
    s3 = client(own_s3.endpoint, OWN_KEY, OWN_SECRET, attempts=1)
    assert keys_under(s3, OWN_BUCKET, "nightly/") == []
    assert uploads_under(s3, OWN_BUCKET, "nightly/") == []
    assert child_pids("pg_dump") == []

    retry = backup(s3, noise_db, f"s3://{OWN_BUCKET}/nightly", run_id="run1", part_size=PART, pg_bindir=pg_bindir)
    assert retry.parts == math.ceil(retry.size / PART) >= 4
    assert retry.peak_buffers <= 3, "memory holds at most max_in_flight + 1 parts"
    assert s3.head_object(Bucket=OWN_BUCKET, Key=retry.key)["ETag"].endswith(f'-{retry.parts}"')
    assert verify_backup(s3, retry.uri, pg_bindir=pg_bindir).ok


@pytest.mark.slow
def test_an_upload_left_behind_by_a_long_outage_is_aborted_by_the_next_backup(
        own_s3: OwnServer, noise_db, pg_bindir) -> None:
    s3 = client(own_s3.endpoint, OWN_KEY, OWN_SECRET, attempts=1)
    kill_on_part(s3, 2, own_s3.kill)
    with pytest.raises(S3TransferFailed, match=r"(?s)The multipart upload ([0-9a-f]+) could not be aborted "
                       r"\(\w+: .*\); the next backup of this database aborts it before it starts \(or run: aws "
                       r"s3api abort-multipart-upload --bucket own-backups --key .+\.dump --upload-id \1\)\."):
        backup(s3, noise_db, f"s3://{OWN_BUCKET}/nightly", run_id="nightly-7", part_size=PART, pg_bindir=pg_bindir,
               abort_timeout_s=0.5)
    own_s3.start()
    s3 = client(own_s3.endpoint, OWN_KEY, OWN_SECRET, attempts=1)
    [left] = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=OWN_BUCKET)["Uploads"]]
    assert keys_under(s3, OWN_BUCKET, "nightly/") == []

    lines: list[str] = []
    retry = backup(s3, noise_db, f"s3://{OWN_BUCKET}/nightly", run_id="nightly-7", part_size=PART,
                   pg_bindir=pg_bindir, log=lines.append)
    assert any(line.startswith(f"backup: aborted multipart upload {left} of s3://{OWN_BUCKET}/nightly/")
               and line.endswith("(left by an earlier attempt of this run)") for line in lines), lines
    assert uploads_under(s3, OWN_BUCKET, "nightly/") == []
    assert keys_under(s3, OWN_BUCKET, "nightly/") == [retry.key, retry.manifest_key]


@pytest.mark.slow
def test_a_leftover_upload_of_another_run_is_aborted_only_once_it_is_idle(s3, to, bucket, small_db,
                                                                           pg_bindir) -> None:
    prefix = f"{to.split('/', 3)[3]}/default/{small_db.rsplit('/', 1)[1]}/"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=prefix + "20250101T000000Z_other.dump")["UploadId"]
    lines: list[str] = []
    backup(s3, small_db, to, run_id="mine", pg_bindir=pg_bindir, log=lines.append)
    assert any(line.startswith(f"backup: leaving multipart upload {upload_id} of s3://{bucket}/{prefix}"
                               "20250101T000000Z_other.dump alone: another run wrote to it ")
               and line.endswith(" s ago and may still be running") for line in lines), lines
    assert uploads_under(s3, bucket, prefix) == [prefix + "20250101T000000Z_other.dump"]

    lines.clear()
    backup(s3, small_db, to, run_id="mine", stale_upload_after_s=0, pg_bindir=pg_bindir, log=lines.append)
    assert any(line.startswith(f"backup: aborted multipart upload {upload_id} of ")
               and ", left by an earlier failed backup)" in line for line in lines), lines
    assert uploads_under(s3, bucket, prefix) == []


@pytest.mark.slow
def test_pg_dump_killed_after_several_parts_leaves_no_object_and_no_upload(
        s3, stack_env, to, bucket, noise_db, pg_bindir) -> None:
    own = client(stack_env["S3_ENDPOINT_URL"], stack_env["AWS_ACCESS_KEY_ID"], stack_env["AWS_SECRET_ACCESS_KEY"])
    kill_on_part(own, 3, lambda: [os.kill(pid, signal.SIGKILL) for pid in child_pids("pg_dump")])
    with pytest.raises(PgDumpFailed, match=r"(?s)backup of database 't_\w+' to s3://.+\.dump failed: pg_dump was "
                                           r"killed by signal 9\..*The multipart upload [0-9a-f]+ was aborted: "
                                           r"nothing was stored\. Fix the cause above"):
        backup(own, noise_db, to, part_size=PART, pg_bindir=pg_bindir)
    prefix = to.split("/", 3)[3]
    assert keys_under(s3, bucket, prefix) == [] and uploads_under(s3, bucket, prefix) == []


@pytest.mark.slow
def test_pg_dump_failing_reports_its_exit_code_and_stderr_without_the_password(
        s3, to, bucket, small_db, pg_bindir) -> None:
    with psycopg.connect(small_db) as holder:
        holder.execute("LOCK TABLE behavioral_events IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(PgDumpFailed) as excinfo:
            backup(s3, small_db, to, pg_bindir=pg_bindir, lock_wait_timeout_s=0.5)
    message = str(excinfo.value)
    assert excinfo.value.returncode == 1 and excinfo.value.exit_code == 1
    assert "failed: pg_dump exited with code 1. pg_dump said:\n" in message
    assert ("    pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
            "    pg_dump: detail: Query was: LOCK TABLE public.behavioral_events IN ACCESS SHARE MODE\n") in message
    assert message.endswith("\nNo upload had started; nothing was stored. Fix the cause above and run the backup "
                            "again.")
    assert password_of(small_db) not in message
    prefix = to.split("/", 3)[3]
    assert keys_under(s3, bucket, prefix) == [] and uploads_under(s3, bucket, prefix) == []


def test_pg_dump_gets_its_password_from_the_environment_never_the_command_line(
        s3, to, small_db, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    assert password_of(small_db) not in " ".join(result.pg_dump_argv)
    assert "--no-password" in result.pg_dump_argv
    assert password_of(small_db) not in json.dumps(result.manifest)


def test_a_wrong_password_is_reported_without_the_password_and_nothing_is_stored(
        s3, to, bucket, small_db, pg_bindir) -> None:
    wrong = small_db.replace(password_of(small_db), "Wr0ng-S3cret-pw")
    with pytest.raises(DatabaseError) as excinfo:
        backup(s3, wrong, to, pg_bindir=pg_bindir)
    message = str(excinfo.value)
    assert message.startswith("cannot connect to postgresql://migrator:****@127.0.0.1:")
    assert 'password authentication failed for user "migrator"' in message
    assert "Wr0ng-S3cret-pw" not in message and excinfo.value.exit_code == 2
    prefix = to.split("/", 3)[3]
    assert keys_under(s3, bucket, prefix) == [] and uploads_under(s3, bucket, prefix) == []


def test_a_pg_dump_that_writes_nothing_never_leaves_an_object(s3, to, bucket, small_db, tmp_path) -> None:
    fake = tmp_path / "pg_dump"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "pg_dump (PostgreSQL) 15.0"\nexit 0\n')
    fake.chmod(0o755)
    with pytest.raises(PgDumpFailed, match=r"pg_dump exited with code 0 but wrote no bytes \(an empty dump is never "
                                           r"a backup\)\. pg_dump said:\n    \(nothing on stderr\)\nNo upload "
                                           r"had started; nothing was stored\."):
        backup(s3, small_db, to, pg_bindir=str(tmp_path))
    prefix = to.split("/", 3)[3]
    assert keys_under(s3, bucket, prefix) == [] and uploads_under(s3, bucket, prefix) == []


def test_a_second_backup_of_the_same_database_is_refused_while_one_runs(s3, to, small_db, pg_bindir) -> None:
    with psycopg.connect(small_db, autocommit=True) as holder:
        holder.execute("SET application_name = 'other-backup'")
        holder.execute("SELECT pg_advisory_lock(72707369, 1)")
        with pytest.raises(BackupFailed, match=r"another backup of database 't_\w+' is running \(pid \d+ "
                                               r"\(application 'other-backup'.*\): wait for it to finish\."):
            backup(s3, small_db, to, pg_bindir=pg_bindir)


# --- consistency under writes --------------------------------------------------------------

@pytest.mark.slow
def test_manifest_row_counts_are_the_snapshot_the_dump_holds_while_writes_continue(
        s3, to, noise_db, new_db, pg_bindir) -> None:
    with psycopg.connect(noise_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS write_probe (id bigserial PRIMARY KEY, "
                     "at timestamptz NOT NULL DEFAULT clock_timestamp())")
    stop, written = threading.Event(), [0]

    def writer() -> None:
        with psycopg.connect(noise_db, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO write_probe DEFAULT VALUES")
                written[0] += 1
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 50:
            time.sleep(0.01)
        result = backup(s3, noise_db, to, part_size=PART, pg_bindir=pg_bindir)
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
    manifest = result.manifest
    with psycopg.connect(noise_db) as conn:
        live = conn.execute("SELECT count(*) FROM write_probe").fetchone()[0]
        during = conn.execute("SELECT count(*) FROM write_probe WHERE at BETWEEN %s AND %s",
                              (manifest["started_at"], manifest["finished_at"])).fetchone()[0]
    assert during > 10, "rows were written while the backup ran"
    assert 50 <= manifest["row_counts"]["public.write_probe"] < live

    target = new_db()
    restored = restore(s3, result.uri, target, pg_bindir=pg_bindir, allow_other_source=True)
    assert restored.row_counts == manifest["row_counts"]
    assert live_counts(target, ["public.write_probe"]) == \
        {"public.write_probe": manifest["row_counts"]["public.write_probe"]}


# --- restore refusals ----------------------------------------------------------------------

@pytest.mark.slow
def test_restore_into_a_database_with_another_session_is_refused_naming_it(
        s3, to, small_db, new_db, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    target = new_db()
    with psycopg.connect(target, autocommit=True, application_name="report-job") as other:
        pid = other.info.backend_pid
        with pytest.raises(RestoreRefused, match=rf"refusing to restore into database 't_\w+': 1 other session\(s\) "
                           rf"are connected to it: pid {pid} \(application 'report-job', client 127\.0\.0\.1, user "
                           r"migrator, state idle\)\. They would block the restore.*pass --force"):
            restore(s3, result.uri, target, pg_bindir=pg_bindir, allow_other_source=True)
        assert restore(s3, result.uri, target, force=True, pg_bindir=pg_bindir,
                       allow_other_source=True).row_counts == \
            result.row_counts


@pytest.mark.slow
def test_restore_clean_is_refused_while_a_session_of_another_role_is_connected(
        s3, to, small_db, new_db, pg_bindir, stack_env: dict[str, str]) -> None:
    """PostgreSQL hides another role's session details (backend_type included) from a role without
    pg_read_all_stats: such a session still counts, and the message says which GRANT shows more."""
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    target = new_db()
    role, password = f"report_{uuid.uuid4().hex[:8]}", f"Rp-{uuid.uuid4().hex}"
    with psycopg.connect(stack_env["STAGING_ADMIN_URL"], autocommit=True) as admin:
        admin.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    try:
        other_url = target.replace("migrator:", f"{role}:", 1).split("@", 1)
        other_url = f"postgresql://{role}:{password}@{other_url[1]}"
        with psycopg.connect(other_url, autocommit=True) as other:
            pid = other.info.backend_pid
            with pytest.raises(RestoreRefused, match=rf"refusing to restore into database 't_\w+': 1 other session\(s\) "
                               rf"are connected to it: pid {pid} \(application '\(none\)', client \(hidden\), user "
                               rf"{role}, state \?\) \(role migrator sees other roles' sessions without their details: "
                               r"GRANT pg_read_all_stats TO migrator to see what they run\)\. They would block"):
                restore(s3, result.uri, target, clean=True, pg_bindir=pg_bindir, allow_other_source=True)
    finally:
        with psycopg.connect(stack_env["STAGING_ADMIN_URL"], autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.slow
def test_restore_into_a_production_looking_database_needs_its_name_as_confirmation(
        s3, to, small_db, new_db, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    target = new_db(f"t_prod_{uuid.uuid4().hex[:8]}")
    name = target.rsplit("/", 1)[1]
    with pytest.raises(RestoreRefused, match=rf"refusing to restore into database '{name}': its name contains "
                       rf"\"prod\"\. Restoring replaces data in place\. If this is intended, confirm with the "
                       rf"database's name: --confirm-production {name}") as excinfo:
        restore(s3, result.uri, target, pg_bindir=pg_bindir)
    assert excinfo.value.exit_code == 2
    with pytest.raises(RestoreRefused, match=r"its name contains \"prod\" \(the confirmation given, 'yes', does not "
                                             r"match\)"):
        restore(s3, result.uri, target, confirm_production="yes", pg_bindir=pg_bindir)
    staging_named = new_db()
    with pytest.raises(RestoreRefused, match=r"its environment is marked production"):
        restore(s3, result.uri, staging_named, environment="production", pg_bindir=pg_bindir)
    assert restore(s3, result.uri, target, confirm_production=name, pg_bindir=pg_bindir,
                   allow_other_source=True).row_counts == \
        result.row_counts


# --- retention -----------------------------------------------------------------------------

@pytest.mark.slow
def test_prune_keeps_the_newest_verified_backup(s3, to, bucket, small_db, pg_bindir) -> None:
    made = [backup(s3, small_db, to, run_id=f"b{i}", pg_bindir=pg_bindir) for i in range(3)]
    verify_backup(s3, made[0].uri, pg_bindir=pg_bindir)
    listed = list_backups(s3, to)
    assert [e.uri for e in listed] == [m.uri for m in made]
    assert [(e.state, e.verified) for e in listed] == [("complete", True), ("complete", False), ("complete", False)]
    assert listed[0].as_dict()["size"] == made[0].size

    dry = prune(s3, to, keep=1, dry_run=True)
    assert [(d.entry.uri, d.delete, d.reason) for d in dry] == [
        (made[0].uri, False, "the newest verified backup: never pruned"),
        (made[1].uri, True, "beyond the newest 1"),
        (made[2].uri, False, "one of the newest 1 complete backups")]
    assert len(list_backups(s3, to)) == 3, "a dry run deletes nothing"

    assert [d.delete for d in prune(s3, to, keep=1, older_than=timedelta(days=7), dry_run=False)] == \
        [False, False, False], "nothing is older than a week"
    prune(s3, to, keep=1, dry_run=False)
    prefix = to.split("/", 3)[3]
    assert sorted(keys_under(s3, bucket, prefix)) == sorted(
        [made[0].key, made[0].manifest_key, made[2].key, made[2].manifest_key])
    with pytest.raises(UsageError, match=r"--keep must be at least 1 \(got 0\): prune never deletes every backup"):
        prune(s3, to, keep=0)


# --- bucket checks -------------------------------------------------------------------------

def test_a_missing_bucket_is_named_with_how_to_create_it(s3, small_db, pg_bindir) -> None:
    with pytest.raises(BucketCheckFailed, match=r"bucket 'no-such-backups': does not exist at http://127\.0\.0\.1:"
                                                r"\d+\. Create it \(aws s3 mb s3://no-such-backups"):
        backup(s3, small_db, "s3://no-such-backups/x", pg_bindir=pg_bindir)


def test_wrong_s3_credentials_are_named_as_such(stack_env, bucket, small_db, pg_bindir) -> None:
    bad = client(stack_env["S3_ENDPOINT_URL"], stack_env["AWS_ACCESS_KEY_ID"], "not-the-secret")
    with pytest.raises(BucketCheckFailed, match=rf"bucket '{bucket}': access denied to these credentials at "
                                                r"http://127\.0\.0\.1:\d+ \(403\)\. Check AWS_ACCESS_KEY_ID"):
        backup(bad, small_db, f"s3://{bucket}/x", pg_bindir=pg_bindir)


def test_a_bucket_without_a_full_public_access_block_is_refused(s3, small_db, pg_bindir) -> None:
    name = f"open-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    try:
        s3.delete_public_access_block(Bucket=name)
        with pytest.raises(BucketCheckFailed, match=rf"bucket '{name}': has no public access block.*Block all public "
                                                    rf"access: aws s3api put-public-access-block --bucket {name}"):
            backup(s3, small_db, f"s3://{name}/x", pg_bindir=pg_bindir)
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": False, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
        with pytest.raises(BucketCheckFailed, match=r"public access is not fully blocked \(IgnorePublicAcls off\)"):
            backup(s3, small_db, f"s3://{name}/x", pg_bindir=pg_bindir)
        assert keys_under(s3, name, "") == []
    finally:
        s3.delete_bucket(Bucket=name)


@pytest.mark.slow
@pytest.mark.parametrize("seen, message", [
    (None, r"\.dump was stored without server-side encryption \(HeadObject returned no x-amz-server-side-encryption "
           r"header although AES256 was requested\); the object was deleted\. Turn on default encryption for the "
           r"bucket"),
    ("aws:kms", r"\.dump was stored with server-side encryption aws:kms, not the AES256 requested; the object was "
                r"deleted\. Align the bucket's default encryption with --sse AES256"),
], ids=["missing", "other-mode"])
def test_an_object_stored_without_the_requested_encryption_is_deleted_and_the_bucket_named(
        stack_env, to, bucket, small_db, pg_bindir, seen: str | None, message: str) -> None:
    odd = client(stack_env["S3_ENDPOINT_URL"], stack_env["AWS_ACCESS_KEY_ID"], stack_env["AWS_SECRET_ACCESS_KEY"])

    def rewrite_sse(parsed, **_kwargs) -> None:  # what an endpoint that ignores the SSE header answers
        parsed.pop("ServerSideEncryption", None)
        if seen:
            parsed["ServerSideEncryption"] = seen
    odd.meta.events.register("after-call.s3.HeadObject", rewrite_sse)
    with pytest.raises(BucketCheckFailed, match=rf"bucket '{bucket}': s3://{bucket}/.+{message}"):
        backup(odd, small_db, to, pg_bindir=pg_bindir)
    assert keys_under(odd, bucket, to.split("/", 3)[3]) == []


def test_sse_kms_with_a_key_id_is_requested_checked_and_recorded(s3, to, bucket, small_db, pg_bindir) -> None:
    key_id = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    result = backup(s3, small_db, to, sse="aws:kms", kms_key_id=key_id, pg_bindir=pg_bindir)
    assert result.manifest["sse"] == {"mode": "aws:kms", "kms_key_id": key_id}
    for key in (result.key, result.manifest_key):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_id)
    with pytest.raises(UsageError, match=r"a KMS key id only applies to --sse aws:kms"):
        backup(s3, small_db, to, kms_key_id=key_id, pg_bindir=pg_bindir)


@pytest.mark.slow
@pytest.mark.parametrize("call, error, message", [
    (lambda s3, url, tmp: backup(s3, url, "s3://b/p", part_size=MIB), UsageError,
     r"part size 1048576 is below S3's minimum of 5242880 bytes \(5 MiB\)\."),
    (lambda s3, url, tmp: backup(s3, url, "s3://b/p", sse="ROT13"), UsageError,
     r"unknown server-side encryption 'ROT13': use one of AES256, aws:kms\."),
    (lambda s3, url, tmp: backup(s3, "mysql://x", "s3://b/p"), UsageError,
     r"'mysql://x' is not a PostgreSQL URL \(missing \"=\" after \"mysql://x\" in connection info string\); "
     r"expected a postgresql:// URL with user, password, host, port and database name\."),
    (lambda s3, url, tmp: backup(s3, url, "s3://b/p", pg_bindir=str(tmp)), UsageError,
     r"pg_dump not found in .+ \(PG_BINDIR\): point PG_BINDIR at the bin directory of a PostgreSQL client"),
    (lambda s3, url, tmp: verify_backup(s3, "s3://b/p/x.sql"), UsageError,
     r"'s3://b/p/x\.sql' does not name a backup: expected s3://BUCKET/…/<timestamp>_<run id>\.dump"),
    (lambda s3, url, tmp: verify_backup(s3, "s3://b/x.dump", restore_check=True), UsageError,
     r"a restore check needs a database URL \(--db\) on a server where the role may CREATE DATABASE"),
    (lambda s3, url, tmp: backup(client("http://127.0.0.1:9", "k", "s"), url, "s3://b/p"), BucketCheckFailed,
     r"bucket 'b': cannot reach S3 \(EndpointConnectionError: .*\)\. Check AWS_ENDPOINT_URL"),
], ids=["part-size", "sse", "not-postgres", "no-pg-dump", "not-a-dump", "restore-check-without-db", "no-endpoint"])
def test_bad_input_is_refused_before_anything_runs(s3, stack_env, tmp_path, call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(s3, stack_env["STAGING_DATABASE_URL"], tmp_path)


@pytest.mark.slow
def test_a_manifest_that_does_not_describe_the_dump_fails_the_restore_check_and_the_restore(
        s3, to, bucket, small_db, new_db, stack_env, pg_bindir) -> None:
    result = backup(s3, small_db, to, pg_bindir=pg_bindir)
    manifest = read_manifest(s3, bucket, result.key)
    manifest["row_counts"]["public.recommendations"] += 1
    manifest["row_counts"]["public.ghost"] = 5
    s3.put_object(Bucket=bucket, Key=result.manifest_key, Body=json.dumps(manifest).encode(),
                  ServerSideEncryption="AES256")
    with pytest.raises(BackupVerificationFailed, match=r"(?s)  - the archive has no data for tables in the manifest: public\.ghost\n"
                       r"  - row counts differ from the manifest after a restore: public\.ghost: manifest 5, missing "
                       r"after the restore; public\.recommendations: manifest 301, restored 300\n"):
        verify_backup(s3, result.uri, restore_check=True, admin_url=stack_env["STAGING_DATABASE_URL"],
                      pg_bindir=pg_bindir)
    with pytest.raises(RestoreFailed, match=r"(?s)row counts differ from the manifest: public\.ghost: manifest 5, "
                       r"missing after the restore; public\.recommendations: manifest 301, restored 300\nThe "
                       r"restore committed, but the database does not hold exactly the backup's rows"):
        restore(s3, result.uri, new_db(), pg_bindir=pg_bindir, allow_other_source=True)


# --- progress ------------------------------------------------------------------------------

@pytest.mark.slow
def test_progress_is_logged_while_the_dump_runs_and_summarised_at_the_end(s3, to, noise_db, pg_bindir) -> None:
    lines: list[str] = []
    result = backup(s3, noise_db, to, part_size=PART, progress_interval_s=0.1, pg_bindir=pg_bindir,
                    log=lines.append)
    ticks = [line for line in lines if " MiB dumped, " in line]
    assert ticks, lines
    assert all(line.startswith("backup: ") and line.endswith(" MiB/s") and " uploaded in " in line for line in ticks)
    assert lines[-1].startswith(f"backup: stored {result.uri}: ") and f"in {result.parts} part(s)" in lines[-1]


# --- the CLI -------------------------------------------------------------------------------

@pytest.fixture
def cli_env(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "PG_BINDIR"):
        monkeypatch.setenv(name, stack_env[name])
    monkeypatch.delenv("DATABASE_URL", raising=False)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_backs_up_verifies_lists_and_restores(cli_env, capsys, to, small_db, new_db) -> None:
    code, out, err = run_cli(capsys, "backup", "--db", small_db, "--to", to, "--environment", "staging",
                             "--restore-check")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"backup   {to}/staging/") and lines[0].endswith(".dump")
    assert lines[3].startswith("sha256   ") and lines[5] == "verified sha256+toc+restore ok"
    assert "  public.behavioral_events" in out and "2,000" in out
    assert password_of(small_db) not in out + err and "backup: stored " in err
    uri = lines[0].split()[1]

    code, out, err = run_cli(capsys, "verify-backup", uri, "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["method"] == "sha256+toc"

    code, out, err = run_cli(capsys, "backups", "list", "--to", to, "--json")
    [entry] = json.loads(out)
    assert (entry["uri"], entry["state"], entry["verified"]) == (uri, "complete", True)

    target = new_db()
    code, out, err = run_cli(capsys, "restore", "--from", uri, "--db", target, "--allow-other-source")
    assert code == 0, err
    assert out.startswith(f"restored {uri} into {target.rsplit('/', 1)[1]} in ")

    code, out, err = run_cli(capsys, "backups", "prune", "--to", to, "--keep", "1", "--dry-run", "--json")
    assert code == 0 and [d["action"] for d in json.loads(out)] == ["keep"]


@pytest.mark.slow
def test_cli_errors_go_to_stderr_with_their_exit_codes(cli_env, capsys, to, stack_env) -> None:
    url = stack_env["STAGING_DATABASE_URL"]
    code, out, err = run_cli(capsys, "backup", "--db", url, "--to", "/tmp/backups")
    assert (code, out) == (2, "")
    assert err == "error: '/tmp/backups' is not an S3 URI; expected s3://BUCKET/PREFIX (or s3://BUCKET/…/X.dump).\n"
    code, out, err = run_cli(capsys, "restore", "--from", to + "/x.dump", "--db", with_database(url, "app_prod"))
    assert code == 2 and err.startswith("error: refusing to restore into database 'app_prod': its name contains")
    code, out, err = run_cli(capsys, "verify-backup", to + "/default/db/20250101T000000Z_x.dump")
    assert code == 2 and err.startswith(f"error: no backup at {to}/default/db/20250101T000000Z_x.dump: the object "
                                        "does not exist.")
    code, out, err = run_cli(capsys, "backups", "prune", "--to", to)
    assert code == 2 and err == ("error: backups prune needs --keep N (how many of the newest complete backups "
                                 "to keep).\n")
    code, out, err = run_cli(capsys, "backups", "prune", "--to", to, "--keep", "1", "--older-than", "7 days")
    assert code == 2 and err == ("error: --older-than '7 days': write it as numbers with units (w, d, h, m, s), "
                                 "such as '2h', '90m', '1h30m', '45s', '7d' or '2w'.\n")
