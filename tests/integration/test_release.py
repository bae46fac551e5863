"""Releases on the local stack's S3: created once under their sha256, applied exactly as frozen even after
the folder changed, and refused (nothing changed) when missing or altered."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.state.ledger import read_rows

REPO = Path(__file__).resolve().parents[2]
BASELINE = "20250915090000_baseline"
EPIC5 = "20251017120000_epic5_schema_completion"
SHIPPED = sorted(p.name for p in (REPO / "sql" / "migrations").iterdir() if p.is_dir())


@pytest.fixture
def store(stack_env: dict[str, str], s3) -> str:
    return f"s3://{stack_env['BACKUP_BUCKET']}/release-tests-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the shipped bundle that the test may edit."""
    copy = tmp_path / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", copy)
    return copy


def ledger(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {r.migration_name: r.checksum for r in read_rows(conn) if r.applied}


def create(cli, folder: Path, store: str, *extra: str) -> tuple[str, str]:
    done = cli("release", "create", "--migrations", str(folder), "--to", store, *extra)
    assert done.returncode == 0, done.stderr
    uri, sha_line = done.stdout.strip().splitlines()
    return uri, sha_line.removeprefix("sha256 ")


@pytest.mark.slow
def test_a_release_is_stored_once_under_the_sha256_of_its_bytes(cli, folder: Path, store: str, s3) -> None:
    uri, digest = create(cli, folder, store)

    assert uri == f"{store}/releases/{digest}.json"
    bucket, key = parse_s3_uri(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    document = json.loads(body)
    epic5 = next(m for m in document["migrations"] if m["name"] == EPIC5)
    assert epic5["sql"].encode() == (folder / EPIC5 / "migration.sql").read_bytes()
    assert epic5["down_sql"].encode() == (folder / EPIC5 / "down.sql").read_bytes()
    assert epic5["checksum"] == hashlib.sha256((folder / EPIC5 / "migration.sql").read_bytes()).hexdigest()
    first = s3.head_object(Bucket=bucket, Key=key)["LastModified"]

    assert create(cli, folder, store) == (uri, digest)  # same content, same name: not written again
    assert s3.head_object(Bucket=bucket, Key=key)["LastModified"] == first
    shown = cli("release", "show", uri)
    assert shown.returncode == 0 and f"sha256   {digest}" in shown.stdout and EPIC5 in shown.stdout


@pytest.mark.slow
def test_apply_from_a_release_applies_exactly_the_release_after_the_folder_was_edited(
        cli, folder: Path, store: str, fresh_db: str) -> None:
    uri, _ = create(cli, folder, store)
    frozen = {name: hashlib.sha256((folder / name / "migration.sql").read_bytes()).hexdigest()
              for name in SHIPPED}
    epic5 = folder / EPIC5 / "migration.sql"
    epic5.write_text(epic5.read_text() + "\nCREATE TABLE not_approved (id int);\n")
    (folder / "20261201000000_later").mkdir()
    (folder / "20261201000000_later" / "migration.sql").write_text("CREATE TABLE later (id int);\n")

    done = cli("apply", "--release", uri, "--db", fresh_db)

    assert done.returncode == 0, done.stderr
    assert ledger(fresh_db) == frozen
    with psycopg.connect(fresh_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "not_approved" not in tables and "later" not in tables and "behavioral_events" in tables
    status = cli("status", "--migrations", str(folder), "--db", fresh_db)  # the folder, as edited, is not the release
    assert status.returncode == 1 and "edited-after-apply" in status.stdout and "20261201000000_later" in status.stdout
    assert cli("status", "--release", uri, "--db", fresh_db).returncode == 0


@pytest.mark.slow
def test_a_tampered_release_is_refused_and_nothing_is_changed(cli, folder: Path, store: str, fresh_db: str,
                                                              s3) -> None:
    uri, digest = create(cli, folder, store)
    bucket, key = parse_s3_uri(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    forged = body.replace(b"CREATE INDEX", b"DROP TABLE x; CREATE INDEX", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=forged)

    done = cli("apply", "--release", uri, "--db", fresh_db)

    assert done.returncode == 1
    assert (f"error: release {uri} was changed after it was written: its bytes hash to sha256 "
            f"{hashlib.sha256(forged).hexdigest()}, not to its name. Nothing was changed.") in done.stderr
    assert "Traceback" not in done.stderr
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('public._prisma_migrations')").fetchone()[0] is None
    again = cli("release", "create", "--migrations", str(folder), "--to", store)  # never overwritten either
    assert again.returncode == 1
    assert (f"error: release {uri}: an object is already stored under this release's name, but it was changed "
            "after it was written") in again.stderr and "then delete that object" in again.stderr
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == forged


@pytest.mark.slow
def test_a_deleted_release_is_refused_naming_what_to_do(cli, folder: Path, store: str, fresh_db: str, s3) -> None:
    uri, _ = create(cli, folder, store)
    bucket, key = parse_s3_uri(uri)
    s3.delete_object(Bucket=bucket, Key=key)

    done = cli("apply", "--release", uri, "--db", fresh_db)

    assert done.returncode == 1
    assert (f"error: release {uri} does not exist (deleted, or a wrong bucket/prefix). Nothing was changed. "
            "Trigger a new run (its preflight freezes a new release), or pass the URI `release create` printed."
            ) in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("apply", "--release", "s3://bucket/x/backup.dump"),
     "error: 's3://bucket/x/backup.dump' does not name a release: expected s3://BUCKET/PREFIX/releases/<sha256>.json"),
    (("apply", "--release", "s3://b/p/releases/" + "0" * 64 + ".json", "--migrations", "sql/migrations"),
     "error: --release and --migrations both name the migrations; pass one of them"),
    (("release", "create", "--migrations", "sql/migrations"),
     "error: release create needs --to s3://BUCKET/PREFIX (and no URI)"),
    (("release", "show"), "error: release show takes the release's URI only: release show s3://BUCKET/PREFIX/"),
    (("apply", "--target", "production"),
     "error: --target names a plan frozen in a release; pass --release URI with it."),
])
def test_bad_release_arguments_are_refused_with_the_fix(cli, fresh_db: str, args: tuple[str, ...],
                                                        message: str) -> None:
    done = cli(*args, "--db", fresh_db)
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.slow
def test_a_plan_frozen_for_a_target_is_the_only_plan_apply_runs_there(cli, folder: Path, store: str,
                                                                      fresh_db: str) -> None:
    cli("apply", "--migrations", str(folder), "--db", fresh_db, "--to", BASELINE)
    uri, _ = create(cli, folder, store, "--plan-for", f"production={fresh_db}")
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the table an online rewrite depends on goes away
        conn.execute("DROP TABLE behavioral_events CASCADE")

    done = cli("apply", "--release", uri, "--target", "production", "--db", fresh_db)

    assert done.returncode == 1
    assert (f"error: release {uri}: the plan of {EPIC5} on production differs from the one frozen in the release"
            in done.stderr)
    assert list(ledger(fresh_db)) == [BASELINE]


@pytest.mark.slow
def test_a_release_whose_paths_leave_the_bundle_is_refused(s3, store: str, fresh_db: str, cli) -> None:
    from schema_deploy.ops.release import Release, ReleaseFile

    sql = "CREATE TABLE x (id int);\n"
    forged = Release(bundle="main", source={"folder": "/tmp"}, layout="prisma", files=(ReleaseFile(
        name="20250101000000_x", path="../../../../tmp/owned/migration.sql", sql=sql,
        checksum=hashlib.sha256(sql.encode()).hexdigest()),))
    uri = f"{store}/releases/{forged.digest}.json"
    bucket, key = parse_s3_uri(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=forged.document())  # hashes to its name: only its content is bad

    done = cli("apply", "--release", uri, "--db", fresh_db)

    assert done.returncode == 1
    assert (f"error: release {uri}: migration '20250101000000_x' has path '../../../../tmp/owned/migration.sql', "
            "which is not <timestamp>_<name>/migration.sql or <timestamp>_<name>.sql. Nothing was changed."
            ) in done.stderr


def test_an_unreachable_store_is_an_error_naming_the_call_not_a_traceback(cli, folder: Path) -> None:
    done = cli("release", "create", "--migrations", str(folder), "--to", "s3://no-such-bucket-here/x")

    assert done.returncode == 1 and "Traceback" not in done.stderr
    # HEAD on a missing bucket is a 404 to real S3 (then PutObject fails) and NoSuchBucket to ours.
    assert re.search(r"error: release: (HeadObject|PutObject) on s3://no-such-bucket-here/x/releases/[0-9a-f]{64}"
                     r"\.json failed with \w+", done.stderr), done.stderr
    assert "Nothing was changed. Check that the S3 endpoint is reachable" in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--staging", "mysql://x@y/z", "--production", "postgresql://a@b/c"),
     # the example's password is masked like any other: messages never print one
     "error: --staging 'mysql://x@y/z' is not a PostgreSQL URL; expected postgresql://user:****@host:port/dbname."),
    (("--staging", "postgresql://a:secret@b/c", "--production", "postgresql://a:secret@b/c"),
     "error: --staging and --production are the same database: the staging rehearsal would change production "
     "before its approval. Give two databases."),
    (("--staging", "postgresql://a@b/s", "--production", "postgresql://a@b/p", "--migrations", "sql/migrations",
      "--bundle", "main"),
     "error: --migrations, --bundle and --release each name the migrations; pass one of them."),
])
def test_bad_deploy_arguments_are_refused_before_anything_runs(cli, args: tuple[str, ...], message: str) -> None:
    done = cli("deploy", *args, "--to", "s3://bucket/prefix")
    assert done.returncode == 2 and message in done.stderr and "secret" not in done.stderr


def put_release(s3, store: str, document: bytes) -> str:
    """A document stored under the name its own bytes hash to: proven intact, whatever it says."""
    uri = f"{store}/releases/{hashlib.sha256(document).hexdigest()}.json"
    bucket, key = parse_s3_uri(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=document)
    return uri


@pytest.mark.slow
def test_a_document_that_is_not_a_release_is_refused_even_when_it_hashes_to_its_name(
        cli, s3, store: str, fresh_db: str) -> None:
    uri = put_release(s3, store, b'["not", "a", "release"]')
    done = cli("apply", "--release", uri, "--db", fresh_db)
    assert done.returncode == 1
    assert (f"error: release {uri}: cannot be read as a release (") in done.stderr
    assert "Create the release again with this version (`release create`)." in done.stderr


def test_a_release_with_a_verification_query_outside_its_folder_is_refused(cli, s3, store: str, folder: Path,
                                                                          fresh_db: str) -> None:
    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.ops.release import freeze

    forged = freeze(load_bundle(folder), "main", verify={"../../etc/cron.d/x.sql": "SELECT 1"})
    uri = put_release(s3, store, forged.document())
    done = cli("apply", "--release", uri, "--db", fresh_db)
    assert done.returncode == 1
    assert (f"error: release {uri}: verification query path '../../etc/cron.d/x.sql' is not <name>.sql or "
            "explain/<name>.sql. Nothing was changed.") in done.stderr


@pytest.mark.slow
def test_a_migration_pending_now_that_the_release_did_not_plan_there_is_refused(
        cli, folder: Path, store: str, fresh_db: str) -> None:
    cli("apply", "--migrations", str(folder), "--db", fresh_db)  # everything applied when the plan was frozen
    uri, _ = create(cli, folder, store, "--plan-for", f"production={fresh_db}")
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the ledger moves back: Epic 5 is pending again
        conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE migration_name = %s", (EPIC5,))

    done = cli("apply", "--release", uri, "--target", "production", "--db", fresh_db)

    assert done.returncode == 1
    assert (f"error: release {uri}: {EPIC5} is pending on production now, but the release planned only nothing "
            "there. Nothing was changed. The target's ledger changed since preflight") in done.stderr


def test_files_that_are_not_utf8_travel_byte_for_byte_and_keep_their_refusal(s3, store: str, folder: Path) -> None:
    """An applied migration saved as Latin-1 long ago, and a Latin-1 down.sql: the release carries their
    bytes (base64), never a decoded approximation, and a run from it refuses them as the folder would."""
    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.engine.down import down_migration
    from schema_deploy.ops import release as releases

    old = "-- première table\nCREATE TABLE t (id int);\n".encode("latin-1")
    (folder / BASELINE / "migration.sql").write_bytes(old)
    down = "-- défaire\nDROP TABLE t;\n".encode("latin-1")
    (folder / EPIC5 / "down.sql").write_bytes(down)

    stored = releases.store(s3, releases.freeze(load_bundle(folder), "main"), store)
    document = json.loads(s3.get_object(Bucket=parse_s3_uri(stored.uri)[0],
                                        Key=parse_s3_uri(stored.uri)[1])["Body"].read())
    by_name = {m["name"]: m for m in document["migrations"]}
    assert by_name[BASELINE]["encoding"] == "base64" and by_name[EPIC5]["down_encoding"] == "base64"
    assert "encoding" not in by_name[EPIC5] and "down_encoding" not in by_name[BASELINE]  # only when set
    assert by_name[EPIC5]["down_checksum"] == hashlib.sha256(down).hexdigest()

    bundle = releases.load(s3, stored.uri).to_bundle()
    baseline, epic5 = bundle.by_name()[BASELINE], bundle.by_name()[EPIC5]
    assert baseline.raw == old and epic5.down_raw == down
    assert baseline.problem.code == "not-utf8"
    assert re.match(r".*/20250915090000_baseline/migration\.sql:1:9: byte 0xe8 \(file offset 8\) is not UTF-8",
                    baseline.problem.message)
    assert re.match(r".*/down\.sql:1:5: byte 0xe9 \(file offset 4\) is not UTF-8",
                    down_migration(epic5).problem.message)
