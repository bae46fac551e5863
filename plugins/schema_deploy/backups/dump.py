"""Back a database up to S3: `pg_dump -Fc` streamed into a multipart upload, with a manifest.

* **Streamed, bounded memory.** pg_dump's stdout is read in part-sized buffers
  (16 MiB by default) that go straight to `UploadPart`; at most `max_in_flight`
  parts are uploading while the next one fills, whatever the database's size.
  No temporary file. The sha256 is computed in the same pass. We drive
  `CreateMultipartUpload`/`UploadPart`/`CompleteMultipartUpload` ourselves
  rather than `upload_fileobj`, which turns an unbuffered pipe into one in-memory
  PutObject and stores a 0-byte object when pg_dump fails; here the upload is
  completed only after pg_dump exited 0 having written something, and aborted
  otherwise.
* **Consistent counts.** A REPEATABLE READ transaction exports its snapshot and
  pg_dump runs with `--snapshot`, while that transaction stays open; the exact
  `count(*)` of every table is taken in the same snapshot, so the manifest's row
  counts are what the dump holds. The counts start once pg_dump has written its
  first byte: pg_dump has then taken its ACCESS SHARE locks on every table (the
  custom format writes nothing before its metadata, and locks, are complete), so
  our session takes its own with NOWAIT and can neither deadlock with pg_dump
  behind a queued ALTER nor count a table rewritten after the snapshot.
* **Manifest last.** `<key without .dump>.manifest.json` (same SSE) is written only
  after the dump is stored and its encryption read back; a dump without one is
  an incomplete backup.
* **Failure leaves nothing.** The multipart upload is created with the first
  part, and any failure aborts it (retried for `abort_timeout_s` while the
  endpoint is away). If it still cannot be aborted, the next backup of the same
  database aborts it before starting: at once when it is a retry of the same run
  (backups of one database are serialised by an advisory lock on it), otherwise
  once nothing has been written to it for `stale_upload_after_s`.
"""
from __future__ import annotations

import fcntl
import hashlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import IO, Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from schema_deploy.backups.errors import BackupFailed, BucketCheckFailed, PgDumpFailed, S3TransferFailed
from schema_deploy.backups.store import (DUMP_SUFFIX, Sse, check_bucket, check_object_sse, database_prefix,
                                         dump_key, key_segment, manifest_key, not_found, parse_s3_uri, s3_error,
                                         segment, write_manifest)
from schema_deploy.errors import UsageError
from schema_deploy.pg import db
from schema_deploy.pg.tools import (Child, Target, count_rows, find_binary, lock_tables_nowait, qualified,
                                    target_of, tool_version, user_tables)
from schema_deploy.retrying import Policy, run
from schema_deploy.state import ledger

Log = Callable[[str], None]
MIB = 1 << 20
DEFAULT_PART_SIZE = 16 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
APPLICATION = "schema-deploy-backup"
# Backups of one database are serialised with this two-key advisory lock (Prisma's key with
# sub-key 1), which cannot collide with the one-key lock migrators take.
BACKUP_LOCK = (72707369, 1)
F_SETPIPE_SZ = 1031


def _endpoint_away(exc: BaseException) -> bool:
    """An S3 error worth another abort: any but NoSuchUpload (the upload is gone: nothing to abort)."""
    return isinstance(exc, (ClientError, BotoCoreError)) and s3_error(exc)[0] != "NoSuchUpload"


# Aborting a multipart upload: 0.25 s, 0.5 s, 1 s, 2 s, then 4 s between tries, for as long as the
# caller's abort_timeout_s allows (its budget_s: no wait that would end past it), on any S3 error
# but NoSuchUpload; any other error is raised.
ABORT_RETRY = Policy(attempts=None, first_wait_s=0.25, factor=2.0, cap_s=4.0, transient=_endpoint_away,
                     budget_s=30.0)


@dataclass
class BackupResult:
    """Where a backup went and what it holds; `manifest` is what was written beside it."""

    uri: str
    bucket: str
    key: str
    manifest_key: str
    size: int
    sha256: str
    parts: int
    seconds: float
    row_counts: dict[str, int]
    manifest: dict[str, Any] = field(repr=False)
    pg_dump_argv: list[str] = field(default_factory=list, repr=False)
    peak_buffers: int = 0  # part buffers alive at once, at most max_in_flight + 1

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "bucket": self.bucket, "key": self.key, "manifest_key": self.manifest_key,
                "size": self.size, "sha256": self.sha256, "parts": self.parts, "seconds": round(self.seconds, 3),
                "sse": self.manifest["sse"], "row_counts": self.row_counts,
                "total_rows": sum(self.row_counts.values())}


class _S3CallFailed(Exception):
    def __init__(self, operation: str, exc: BaseException) -> None:
        super().__init__(operation)
        self.operation = operation
        self.code, self.detail = s3_error(exc)


class MultipartStream:
    """One multipart upload fed from a byte stream: reads part-sized buffers and uploads each
    on a small thread pool, so reading the next part overlaps the uploads. At most
    `max_in_flight` + 1 buffers exist at any time."""

    def __init__(self, s3: Any, bucket: str, key: str, sse: Sse, part_size: int = DEFAULT_PART_SIZE,
                 max_in_flight: int = 2) -> None:
        self.s3, self.bucket, self.key, self.sse = s3, bucket, key, sse
        self.part_size, self.max_in_flight = part_size, max_in_flight
        self.upload_id: str | None = None
        self.sha256 = hashlib.sha256()
        self.bytes_read = self.bytes_uploaded = 0
        self.etags: dict[int, str] = {}
        self.max_buffers = 0
        self._buffers = 0
        self._lock = threading.Lock()

    @property
    def parts(self) -> int:
        return len(self.etags)

    def start(self) -> None:
        try:
            self.upload_id = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType="application/octet-stream",
                **self.sse.put_args())["UploadId"]
        except (ClientError, BotoCoreError) as exc:
            raise _S3CallFailed("CreateMultipartUpload", exc) from None

    def pump(self, source: IO[bytes], on_data: Callable[[], None] | None = None) -> None:
        """Read `source` to its end, uploading part by part; raises `_S3CallFailed` on the first
        S3 error (the caller aborts)."""
        number = 0
        with ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="s3-part") as pool:
            pending: set[Future[None]] = set()
            try:
                while True:
                    buf = self._read_part(source, on_data)
                    if buf is None:
                        break
                    while len(pending) >= self.max_in_flight:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            fut.result()
                    if self.upload_id is None:  # created with the first part: a dump that fails first leaves nothing
                        self.start()
                    number += 1
                    if number > MAX_PARTS:
                        raise BackupFailed(f"the dump outgrew {MAX_PARTS} parts of {self.part_size} bytes: "
                                           "raise the part size.")
                    pending.add(pool.submit(self._upload_part, number, buf))
                    del buf
                for fut in pending:
                    fut.result()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise

    def _read_part(self, source: IO[bytes], on_data: Callable[[], None] | None) -> bytearray | None:
        buf = bytearray(self.part_size)
        with self._lock:
            self._buffers += 1
            self.max_buffers = max(self.max_buffers, self._buffers)
        filled = 0
        with memoryview(buf) as view:
            while filled < self.part_size:
                n = source.readinto(view[filled:])  # type: ignore[attr-defined]
                if not n:
                    break
                if filled == 0 and self.bytes_read == 0 and on_data:
                    on_data()
                filled += n
                self.bytes_read += n
        if filled == 0:
            self._release()
            return None
        del buf[filled:]
        self.sha256.update(buf)
        return buf

    def _release(self) -> None:
        with self._lock:
            self._buffers -= 1

    def _upload_part(self, number: int, buf: bytearray) -> None:
        try:
            resp = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                       PartNumber=number, Body=buf)
        except (ClientError, BotoCoreError) as exc:
            raise _S3CallFailed(f"UploadPart (part {number})", exc) from None
        finally:
            self._release()
        with self._lock:
            self.etags[number] = resp["ETag"]
            self.bytes_uploaded += len(buf)

    def complete(self) -> str:
        parts = [{"PartNumber": n, "ETag": self.etags[n]} for n in sorted(self.etags)]
        try:
            resp = self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                     MultipartUpload={"Parts": parts})
        except (ClientError, BotoCoreError) as exc:
            raise _S3CallFailed("CompleteMultipartUpload", exc) from None
        return str(resp.get("ETag", ""))

    def abort(self, timeout_s: float) -> str:
        """Abort, retrying while the endpoint is away (`ABORT_RETRY` for `timeout_s` seconds);
        returns what happened, for the error message."""
        if self.upload_id is None:
            return "No upload had started; nothing was stored."
        try:
            run(lambda: self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id),
                replace(ABORT_RETRY, budget_s=timeout_s))
            return f"The multipart upload {self.upload_id} was aborted: nothing was stored."
        except (ClientError, BotoCoreError) as exc:
            code, detail = s3_error(exc)
            if code == "NoSuchUpload":
                return f"The multipart upload {self.upload_id} is gone: nothing was stored."
            return (f"The multipart upload {self.upload_id} could not be aborted ({code}: {detail}); "
                    "the next backup of this database aborts it before it starts (or run: aws s3api "
                    f"abort-multipart-upload --bucket {self.bucket} --key {self.key} "
                    f"--upload-id {self.upload_id}).")


class _Progress(threading.Thread):
    """Logs bytes so far and throughput every `interval_s`, whether or not data flows."""

    def __init__(self, stream: MultipartStream, interval_s: float, log: Log) -> None:
        super().__init__(daemon=True, name="backup-progress")
        self.stream, self.interval_s, self.log = stream, interval_s, log
        self.started = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            s, elapsed = self.stream, time.monotonic() - self.started
            self.log(f"backup: {s.bytes_read / MIB:.1f} MiB dumped, {s.bytes_uploaded / MIB:.1f} MiB uploaded "
                     f"in {s.parts} parts, {s.bytes_read / MIB / max(elapsed, 1e-6):.1f} MiB/s")


class _SnapshotCounter(threading.Thread):
    """Counts every table in the exported snapshot once pg_dump holds its locks."""

    def __init__(self, conn: psycopg.Connection, tables: list[tuple[str, str]], database: str) -> None:
        super().__init__(daemon=True, name="backup-row-counts")
        self.conn, self.tables, self.database = conn, tables, database
        self.go, self.cancelled = threading.Event(), False
        self.counts: dict[str, int] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        self.go.wait()
        if self.cancelled:
            return
        try:
            lock_tables_nowait(self.conn, self.tables)
            self.counts = count_rows(self.conn, [qualified(s, t) for s, t in self.tables])
        except psycopg.errors.LockNotAvailable:
            self.error = BackupFailed(
                f"backup of database {self.database!r} stopped: a session asked for an exclusive lock on a "
                "table after pg_dump locked it, so the row counts could not be taken in pg_dump's snapshot "
                "without waiting behind it. Run the backup again when no DDL is running.")
        except Exception as exc:  # surfaced by result(); a silent thread death would lose the counts
            if not self.cancelled:
                self.error = BackupFailed(f"backup of database {self.database!r}: counting rows in the "
                                          f"snapshot failed: {str(exc).strip()}")

    def cancel(self) -> None:
        self.cancelled = True
        self.go.set()
        if self.ident is None:
            return
        if self.is_alive():
            try:
                self.conn.cancel_safe()
            except psycopg.Error:
                pass
        self.join(timeout=30)

    def result(self) -> dict[str, int]:
        self.go.set()
        self.join()
        if self.error:
            raise self.error
        return self.counts


def pg_dump_command(pg_dump: str, target: Target, snapshot: str, lock_wait_timeout_s: float | None) -> list[str]:
    """pg_dump's argv: connection without password (PGPASSWORD goes in the environment)."""
    argv = [pg_dump, "--format=custom", "--no-password", f"--snapshot={snapshot}", f"--dbname={target.conninfo}"]
    if lock_wait_timeout_s is not None:
        argv.append(f"--lock-wait-timeout={int(lock_wait_timeout_s * 1000)}")
    return argv


def backup(s3: Any, url: str, to: str, *, environment: str = "default", run_id: str | None = None,
           sse: str = "AES256", kms_key_id: str | None = None, part_size: int = DEFAULT_PART_SIZE,
           max_in_flight: int = 2, progress_interval_s: float = 5.0, abort_timeout_s: float = 30.0,
           lock_wait_timeout_s: float | None = None, stale_upload_after_s: float = 900.0,
           ledger_schema: str = "public",
           pg_bindir: str | None = None, log: Log | None = None) -> BackupResult:
    """Stream `pg_dump -Fc` of `url` to `to` (s3://BUCKET/PREFIX) and write its manifest.

    Raises `BucketCheckFailed` before anything runs when the bucket is missing,
    unreachable or not private; `PgDumpFailed` or `S3TransferFailed` (upload
    aborted, nothing stored) when the dump or the upload fails.
    """
    log = log or (lambda _m: None)
    sse_cfg = Sse(sse, kms_key_id)
    if part_size < MIN_PART_SIZE:
        raise UsageError(f"part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes (5 MiB).")
    if max_in_flight < 1:
        raise UsageError("max_in_flight must be at least 1.")
    bucket, prefix = parse_s3_uri(to)
    target = target_of(url)
    database_prefix(prefix, environment, target.dbname)  # refuses names that would make another key, first
    if run_id is not None:
        key_segment(run_id, "run id")
    pg_dump = find_binary("pg_dump", pg_bindir)
    pg_dump_version = tool_version(pg_dump)
    bucket_facts = check_bucket(s3, bucket, log)
    run_id = run_id or uuid.uuid4().hex[:12]

    with db.connect(target.url, application_name=APPLICATION) as conn:
        _take_backup_lock(conn, target)
        _abort_leftover_uploads(s3, bucket, database_prefix(prefix, environment, target.dbname), run_id,
                                stale_upload_after_s, log)
        started = _free_slot(s3, bucket, lambda ts: dump_key(prefix, environment, target.dbname, ts, run_id))
        key = dump_key(prefix, environment, target.dbname, started, run_id)
        uri = f"s3://{bucket}/{key}"
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        tables = user_tables(conn)
        ledger_state = _ledger_state(conn, ledger_schema)
        log(f"backup: {target.display} -> {uri} (snapshot {snapshot}, {len(tables)} tables)")
        stream = MultipartStream(s3, bucket, key, sse_cfg, part_size, max_in_flight)
        argv = pg_dump_command(pg_dump, target, snapshot, lock_wait_timeout_s)
        t0 = time.monotonic()
        counts, etag = _dump_to_s3(stream, argv, target, _SnapshotCounter(conn, tables, target.dbname), uri,
                                   abort_timeout_s, progress_interval_s, log)
        conn.execute("COMMIT")
    seconds = time.monotonic() - t0
    finished = datetime.now(timezone.utc)

    sse_seen = _check_stored(s3, bucket, key, sse_cfg, stream.bytes_read)
    manifest = {
        "format": "schema-deploy-backup/1", "bucket": bucket, "key": key, "uri": uri,
        "manifest_key": manifest_key(key), "size": stream.bytes_read, "sha256": stream.sha256.hexdigest(),
        "etag": etag, "parts": stream.parts, "part_size": part_size,
        "sse": {"mode": sse_seen["mode"], "kms_key_id": sse_seen["kms_key_id"] or sse_cfg.kms_key_id},
        "bucket_checks": bucket_facts, "pg_dump_version": pg_dump_version, "server_version": server_version,
        "database": target.dbname, "host": target.host, "environment": environment, "run_id": run_id,
        "snapshot": snapshot, "started_at": started.isoformat(), "finished_at": finished.isoformat(),
        "duration_s": round((finished - started).total_seconds(), 3), "row_counts": counts,
        "total_rows": sum(counts.values()), "ledger": ledger_state, "verification": None,
    }
    _store_manifest(s3, bucket, key, manifest, sse_cfg)
    log(f"backup: stored {uri}: {stream.bytes_read / MIB:.1f} MiB in {stream.parts} part(s), {seconds:.1f} s "
        f"({stream.bytes_read / MIB / max(seconds, 1e-6):.1f} MiB/s), sha256 {manifest['sha256']}, "
        f"{len(counts)} tables, {manifest['total_rows']:,} rows")
    return BackupResult(uri, bucket, key, manifest_key(key), stream.bytes_read, manifest["sha256"], stream.parts,
                        seconds, counts, manifest, argv, stream.max_buffers)


def _dump_to_s3(stream: MultipartStream, argv: list[str], target: Target, counter: _SnapshotCounter, uri: str,
                abort_timeout_s: float, progress_interval_s: float, log: Log) -> tuple[dict[str, int], str]:
    """Run pg_dump into the multipart upload and count rows meanwhile; complete the upload only
    when pg_dump exited 0 having written something, abort it on any failure."""
    bucket, key = stream.bucket, stream.key
    dump: Child | None = None
    progress = _Progress(stream, progress_interval_s, log)
    try:
        dump = Child(argv, target.env(APPLICATION), stdout=subprocess.PIPE)
        _widen_pipe(dump.stdout)
        counter.start()
        progress.start()
        stream.pump(dump.stdout, on_data=counter.go.set)
    except _S3CallFailed as exc:
        _stop(dump, counter)
        raise S3TransferFailed(exc.operation, bucket, key, exc.code, target.redact(exc.detail),
                               stream.abort(abort_timeout_s)) from None
    except BaseException:
        _stop(dump, counter)
        stream.abort(abort_timeout_s)
        raise
    finally:
        progress.stop.set()
    code = dump.wait()
    if code != 0 or stream.bytes_read == 0:
        _stop(dump, counter)
        raise PgDumpFailed(target.dbname, uri, code, target.redact(dump.stderr_tail()),
                           stream.abort(abort_timeout_s))
    try:
        counts = counter.result()
    except BackupFailed as exc:
        raise BackupFailed(f"{exc} {stream.abort(abort_timeout_s)}") from None
    try:
        return counts, stream.complete()
    except _S3CallFailed as exc:
        raise S3TransferFailed(exc.operation, bucket, key, exc.code, exc.detail,
                               stream.abort(abort_timeout_s)) from None


def _store_manifest(s3: Any, bucket: str, key: str, manifest: dict[str, Any], sse: Sse) -> None:
    """Write the manifest and read its encryption back; on failure delete the dump too."""
    try:
        write_manifest(s3, bucket, key, manifest, sse)
        check_object_sse(s3, bucket, manifest_key(key), sse)
    except S3TransferFailed as exc:
        _delete_quietly(s3, bucket, [key, manifest_key(key)])
        raise S3TransferFailed(exc.operation, bucket, manifest_key(key), exc.code, exc.detail,
                               "The dump was deleted: without its manifest it would never count as a backup.",
                               context="backup manifest") from None
    except (ClientError, BotoCoreError) as exc:
        _delete_quietly(s3, bucket, [key, manifest_key(key)])
        code, detail = s3_error(exc)
        raise S3TransferFailed("HeadObject", bucket, manifest_key(key), code, detail,
                               "The dump and its manifest were deleted.", context="backup manifest") from None
    except BucketCheckFailed:
        _delete_quietly(s3, bucket, [key, manifest_key(key)])
        raise


# --- helpers --------------------------------------------------------------------------

def _widen_pipe(pipe: IO[bytes]) -> None:
    """A 1 MiB pipe (Linux) means fewer wake-ups per part; harmless where unsupported."""
    try:
        fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, MIB)
    except OSError:
        pass


def _stop(dump: Child | None, counter: _SnapshotCounter) -> None:
    if dump is not None:
        dump.kill()
    counter.cancel()


def _take_backup_lock(conn: psycopg.Connection, target: Target) -> None:
    if conn.execute("SELECT pg_try_advisory_lock(%s, %s)", BACKUP_LOCK).fetchone()[0]:
        return
    holders = db.advisory_lock_holders(conn, *BACKUP_LOCK, 2)  # two int keys: objsubid 2 in pg_locks
    raise BackupFailed(f"another backup of database {target.dbname!r} is running "
                       f"({db.describe_sessions(holders) or 'it just finished'}): wait for it to finish.")


def _abort_leftover_uploads(s3: Any, bucket: str, prefix: str, run_id: str, stale_after_s: float,
                            log: Log) -> None:
    """Abort multipart uploads that failed backups of this database left behind.

    One is a leftover when an earlier attempt of this same run started it (we hold the
    backup lock, so that attempt is over) or when nothing was written to it for
    `stale_after_s`: a live backup uploads a part every few seconds. A young upload of
    another run may belong to a backup of a same-named database on another server (shards
    share environment and name), so it is left alone.
    """
    kwargs: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    ours = f"_{segment(run_id)}{DUMP_SUFFIX}"
    try:
        while True:
            page = s3.list_multipart_uploads(**kwargs)
            for upload in page.get("Uploads", []):
                key, upload_id = upload["Key"], upload["UploadId"]
                idle = _idle_seconds(s3, bucket, upload)
                if key.endswith(ours):
                    why = "left by an earlier attempt of this run"
                elif idle >= stale_after_s:
                    why = f"idle for {idle:.0f} s, left by an earlier failed backup"
                else:
                    log(f"backup: leaving multipart upload {upload_id} of s3://{bucket}/{key} alone: another "
                        f"run wrote to it {idle:.0f} s ago and may still be running")
                    continue
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                log(f"backup: aborted multipart upload {upload_id} of s3://{bucket}/{key} ({why})")
            if not page.get("IsTruncated"):
                return
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"])
    except (ClientError, BotoCoreError) as exc:
        code, _ = s3_error(exc)
        log(f"warning: could not clean up leftover multipart uploads under s3://{bucket}/{prefix} ({code}); "
            "a lifecycle rule (AbortIncompleteMultipartUpload) should clean them up.")


def _idle_seconds(s3: Any, bucket: str, upload: dict[str, Any]) -> float:
    """Seconds since an upload last received a part (or was created)."""
    last = upload["Initiated"]
    parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
    if parts:
        last = max(last, *(p["LastModified"] for p in parts))
    return (datetime.now(timezone.utc) - last).total_seconds()


def _free_slot(s3: Any, bucket: str, key_for: Callable[[datetime], str]) -> datetime:
    """The start timestamp, moved to the next second if that key exists: a backup never overwrites one."""
    while True:
        started = datetime.now(timezone.utc)
        try:
            s3.head_object(Bucket=bucket, Key=key_for(started))
        except ClientError as exc:
            if not_found(exc):
                return started
            code, detail = s3_error(exc)
            raise S3TransferFailed("HeadObject", bucket, key_for(started), code, detail,
                                   "Nothing was stored.") from None
        time.sleep(1.0 - started.microsecond / 1e6)


def _ledger_state(conn: psycopg.Connection, schema: str) -> dict[str, Any]:
    rows = ledger.read_rows(conn, schema)
    state = {"table": f"{schema}.{ledger.TABLE}", "present": ledger.ledger_exists(conn, schema),
             "migrations": [
                 {"name": r.migration_name, "checksum": r.checksum,
                  "state": "applied" if r.applied else "failed" if r.failed else "rolled back",
                  "started_at": r.started_at.isoformat(),
                  "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                  "applied_steps_count": r.applied_steps_count} for r in rows]}
    state["applied"] = [m["name"] for m in state["migrations"] if m["state"] == "applied"]
    return state


def _check_stored(s3: Any, bucket: str, key: str, sse: Sse, size: int) -> dict[str, Any]:
    try:
        seen = check_object_sse(s3, bucket, key, sse)
    except BucketCheckFailed:
        _delete_quietly(s3, bucket, [key])
        raise
    except (ClientError, BotoCoreError) as exc:
        code, detail = s3_error(exc)
        raise S3TransferFailed("HeadObject", bucket, key, code, detail,
                               "The dump may be stored but has no manifest, so it does not count.") from None
    if seen["size"] != size:
        _delete_quietly(s3, bucket, [key])
        raise S3TransferFailed("HeadObject", bucket, key, "SizeMismatch",
                               f"the stored object has {seen['size']} bytes, pg_dump wrote {size}",
                               "The object was deleted.")
    return seen


def _delete_quietly(s3: Any, bucket: str, keys: list[str]) -> None:
    for key in keys:
        try:
            s3.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass
