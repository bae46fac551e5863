"""Verify a backup and restore it, streaming from S3 (no local file).

* `verify_backup`: streams the object once, checks size and sha256 against the
  manifest and reads its table of contents with `pg_restore --list` fed from
  stdin; with `restore_check`, the same stream also feeds `pg_restore` into a
  scratch database (created and dropped on the server of `admin_url`), whose
  exact row counts must equal the manifest's. The result is written back into
  the manifest (`verification`), pass or fail.
* `restore`: streams into `pg_restore --single-transaction --exit-on-error`. The
  last chunk is held back until the sha256 of the whole object is known: on a
  mismatch pg_restore is stopped before it has the end of the archive, so its
  transaction rolls back and the target is unchanged.

Parallel restore (`jobs > 1`) is refused: `pg_restore --jobs` needs a seekable
file, and these functions stream. To restore in parallel, download the object
(`aws s3 cp`) and run `pg_restore --jobs N` on the file.
"""
from __future__ import annotations

import hashlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import sql

from schema_deploy.backups.errors import (BackupIncomplete, BackupNotFound, BackupVerificationFailed, RestoreFailed,
                                          RestoreFromOtherSource, RestoreRefused, S3TransferFailed)
from schema_deploy.backups.store import (_KEY_RE, manifest_key, not_found, parse_dump_uri, read_manifest, s3_error,
                                         segment, sse_of, write_manifest)
from schema_deploy.errors import UsageError
from schema_deploy.pg import db
from schema_deploy.pg.errors import DatabaseError
from schema_deploy.pg.tools import Child, Target, compare_counts, drop_database, find_binary, target_of

Log = Callable[[str], None]
CHUNK = 1 << 20
APPLICATION = "schema-deploy-restore"


@dataclass
class Verification:
    """What `verify_backup` found; `record` is what went into the manifest."""

    uri: str
    ok: bool
    method: str
    problems: list[str]
    record: dict[str, Any] = field(repr=False)
    row_counts: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, **self.record}


@dataclass
class RestoreResult:
    uri: str
    database: str
    size: int
    seconds: float
    row_counts: dict[str, int]
    other_source: dict[str, Any] | None = None  # BackupSource.as_dict() when asked for explicitly

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "database": self.database, "size": self.size, "seconds": round(self.seconds, 3),
                "row_counts": self.row_counts, "other_source": self.other_source}


# --- where a backup was taken, and where it goes ---------------------------------------------

# The environment of a target nobody named (the CLI's `restore` without --environment): the name
# `backup` files its backups under by default, so a backup and a restore that both leave it out match.
DEFAULT_ENVIRONMENT = "default"


@dataclass(frozen=True)
class BackupSource:
    """The environment and database a backup was taken of — as its manifest records them, else as
    its key (`<environment>/<database>/<timestamp>_<run>.dump`) says — beside the target's."""

    uri: str
    environment: str | None  # None: neither the manifest nor the key says
    database: str | None
    host: str | None
    recorded_by: str  # "manifest", "key" (an old manifest: both from the key), "manifest and key", "nothing"
    target_environment: str
    target_database: str

    @property
    def known(self) -> bool:
        return bool(self.environment and self.database)

    @property
    def other(self) -> bool:
        """Another environment or database than the target's (or one nobody recorded)."""
        if not self.known:
            return True
        if self.recorded_by != "manifest":  # key segments are sanitized names (store.segment)
            return (segment(self.environment or ""), segment(self.database or "")) != (
                segment(self.target_environment), segment(self.target_database))
        return (self.environment, self.database) != (self.target_environment, self.target_database)

    def described(self) -> str:
        """The source in words, saying where it was read."""
        if not self.known:
            return ("an environment and database nobody recorded (its manifest does not name both, and its key is not "
                    "<prefix>/<environment>/<database>/<timestamp>_<run id>.dump)")
        where = {"manifest": "as its manifest records", "key": "as its key says; its manifest does not record it",
                 }.get(self.recorded_by, "as its manifest and key say")
        return f"{self.environment} database {self.database!r} ({where})"

    def fact(self, done: bool = True) -> str:
        """One line for Slack and the record: "data from production (app_prod) restored into staging (app_stg)"."""
        source = f"{self.environment} ({self.database})" if self.known else "an unrecorded environment and database"
        return (f"data from {source} {'restored' if done else 'to be restored'} into {self.target_environment} "
                f"({self.target_database})")

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "from": {"environment": self.environment, "database": self.database,
                                          "host": self.host, "recorded_by": self.recorded_by},
                "to": {"environment": self.target_environment, "database": self.target_database},
                "fact": self.fact()}


def source_of(uri: str, manifest: dict[str, Any], target_environment: str | None,
              target_database: str) -> BackupSource:
    """Where backup `uri` was taken (its manifest first, its key for what the manifest lacks) and
    the target it would go into; a target without an environment is `DEFAULT_ENVIRONMENT`."""
    env, database = manifest.get("environment") or None, manifest.get("database") or None
    recorded_by = "manifest" if env and database else "nothing"
    if not (env and database):
        key = uri[5:].partition("/")[2] if uri.startswith("s3://") else ""
        match = _KEY_RE.match("/".join(key.split("/")[-3:]))
        if match:
            recorded_by = "manifest and key" if env or database else "key"
            env, database = env or match["env"], database or match["db"]
    return BackupSource(uri, env, database, manifest.get("host"), recorded_by,
                        target_environment or DEFAULT_ENVIRONMENT, target_database)


def check_source(uri: str, manifest: dict[str, Any], target_environment: str | None, target_database: str, *,
                 allow_other_source: bool = False, log: Log | None = None) -> BackupSource:
    """Refuse (`RestoreFromOtherSource`) a backup of another environment or database than the target,
    or of one nobody recorded, unless `allow_other_source`; then it is said in the log. Changes nothing."""
    source = source_of(uri, manifest, target_environment, target_database)
    if source.other and not allow_other_source:
        raise RestoreFromOtherSource(uri, source.described(), source.target_environment, target_database)
    if source.other and log is not None:
        log(f"restoring {uri}, taken of {source.described()}, into {source.target_environment} database "
            f"{target_database!r}: asked for explicitly (allow_other_source), recorded and announced")
    return source


def load_backup(s3: Any, uri: str) -> tuple[str, str, dict[str, Any]]:
    """(bucket, key, manifest) of a complete backup; BackupNotFound / BackupIncomplete otherwise."""
    bucket, key = parse_dump_uri(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
        manifest = read_manifest(s3, bucket, key)
    except ClientError as exc:
        code, detail = s3_error(exc)
        if not_found(exc):
            raise BackupNotFound(uri, "the object does not exist") from None
        raise BackupNotFound(uri, f"S3 answered {code}: {detail}") from None
    except BotoCoreError as exc:
        code, detail = s3_error(exc)
        raise BackupNotFound(uri, f"S3 could not be reached ({code}: {detail})") from None
    if manifest is None:
        raise BackupIncomplete(uri, manifest_key(key))
    return bucket, key, manifest


def _chunks(s3: Any, bucket: str, key: str, context: str) -> Iterator[bytes]:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        yield from body.iter_chunks(CHUNK)
    except (ClientError, BotoCoreError) as exc:
        code, detail = s3_error(exc)
        raise S3TransferFailed("GetObject", bucket, key, code, detail, "Nothing was changed.",
                               context=context) from None


def parse_toc(listing: str) -> dict[str, Any]:
    """Entry counts by type and the tables with data, from `pg_restore --list` output."""
    kinds: dict[str, int] = {}
    table_data: list[str] = []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        _, _, rest = line.partition("; ")
        words = rest.split(" ")
        if len(words) < 3:
            continue
        desc = " ".join(words[2:])
        for kind in ("TABLE DATA", "SEQUENCE SET", "FK CONSTRAINT", "CONSTRAINT", "INDEX", "TABLE", "SEQUENCE",
                     "SCHEMA", "EXTENSION", "TYPE", "FUNCTION", "VIEW", "DEFAULT", "COMMENT", "ACL"):
            if desc.startswith(kind + " "):
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == "TABLE DATA":
                    schema, _, tail = desc[len(kind) + 1:].partition(" ")
                    table_data.append(f"{schema}.{tail.rsplit(' ', 1)[0]}")
                break
        else:
            kinds["other"] = kinds.get("other", 0) + 1
    return {"entries": sum(kinds.values()), "by_type": kinds, "table_data": sorted(table_data)}


def verify_backup(s3: Any, uri: str, restore_check: bool = False, admin_url: str | None = None, *,
                  log: Log | None = None, pg_bindir: str | None = None) -> Verification:
    """Check a backup against its manifest; with `restore_check`, restore it into a scratch database
    on `admin_url`'s server and compare exact row counts. Records the result in the manifest and
    raises `BackupVerificationFailed` when anything is off."""
    log = log or (lambda _m: None)
    if restore_check and not admin_url:
        raise UsageError("a restore check needs a database URL (--db) on a server where the role may "
                         "CREATE DATABASE: the scratch database is created there and dropped afterwards.")
    bucket, key, manifest = load_backup(s3, uri)
    pg_restore = find_binary("pg_restore", pg_bindir)
    started = time.monotonic()
    problems: list[str] = []
    details: dict[str, Any] = {}
    lister = Child([pg_restore, "--list"], None, stdin=subprocess.PIPE, stdout=subprocess.PIPE, collect_stdout=True)
    scratch: Target | None = None
    loader: Child | None = None
    try:
        if restore_check:
            scratch = _create_scratch(target_of(admin_url or ""))
            loader = Child([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                            "--no-password", f"--dbname={scratch.conninfo}"], scratch.env(APPLICATION),
                           stdin=subprocess.PIPE)
            log(f"verify: restoring {uri} into scratch database {scratch.dbname}")
        size, sha256 = _stream_into(s3, bucket, key, "verify", lister, loader)
        lister.wait()
        details.update(size=size, sha256=sha256)
        problems += _archive_problems(manifest, size, sha256, lister, details)
        counts = None
        if loader is not None and scratch is not None:
            counts = _check_restore(loader, scratch, manifest, problems)
            details["restored_row_counts"] = counts
    finally:
        for child in (lister, loader):
            if child is not None:
                child.kill()
        if scratch is not None:
            drop_database(target_of(admin_url or ""), scratch.dbname, APPLICATION)
    method = "sha256+toc+restore" if restore_check else "sha256+toc"
    details["seconds"] = round(time.monotonic() - started, 3)
    record = {"verified_at": datetime.now(timezone.utc).isoformat(), "method": method, "ok": not problems,
              "details": {**details, "problems": problems}}
    manifest["verification"] = record
    write_manifest(s3, bucket, key, manifest, sse_of(manifest))
    if problems:
        raise BackupVerificationFailed(uri, problems)
    log(f"verify: {uri} ok ({method}: {size:,} bytes, sha256 matches"
        + (f", {len(counts or {})} tables' row counts match after a restore)" if restore_check else ")"))
    return Verification(uri, True, method, problems, record, counts)


def _stream_into(s3: Any, bucket: str, key: str, context: str, *children: Child | None) -> tuple[int, str]:
    """Stream the object into every child's stdin (until it stops reading); (size, sha256)."""
    sha, size = hashlib.sha256(), 0
    for chunk in _chunks(s3, bucket, key, context):
        sha.update(chunk)
        size += len(chunk)
        for child in children:
            if child is not None and not child.feed(chunk):
                child.close_stdin()
    return size, sha.hexdigest()


def _archive_problems(manifest: dict[str, Any], size: int, sha256: str, lister: Child,
                      details: dict[str, Any]) -> list[str]:
    """Size, sha256 and table of contents against the manifest."""
    problems = []
    if size != manifest["size"]:
        problems.append(f"size mismatch: the object has {size} bytes, the manifest says {manifest['size']}")
    if sha256 != manifest["sha256"]:
        problems.append(f"sha256 mismatch: the object's sha256 is {sha256}, the manifest says "
                        f"{manifest['sha256']}: the object changed or was corrupted after the backup")
    if lister.proc.returncode != 0:
        problems.append(f"pg_restore --list could not read the archive (exit code {lister.proc.returncode}): "
                        f"{lister.stderr_tail() or 'no message'}")
        return problems
    toc = parse_toc(lister.output())
    details["toc"] = {"entries": toc["entries"], "by_type": toc["by_type"]}
    missing = sorted(set(manifest["row_counts"]) - set(toc["table_data"]))
    if missing:
        problems.append(f"the archive has no data for tables in the manifest: {', '.join(missing)}")
    return problems


def _check_restore(loader: Child, scratch: Target, manifest: dict[str, Any],
                   problems: list[str]) -> dict[str, int] | None:
    code = loader.wait()
    if code != 0:
        problems.append(f"pg_restore into the scratch database failed (exit code {code}): "
                        f"{scratch.redact(loader.stderr_tail()) or 'no message'}")
        return None
    with db.connect(scratch.url, application_name=APPLICATION) as conn:
        counts, diffs = compare_counts(conn, manifest["row_counts"])
    if diffs:
        problems.append("row counts differ from the manifest after a restore: " + "; ".join(diffs))
    return counts


def _create_scratch(admin: Target) -> Target:
    name = f"schema_deploy_verify_{uuid.uuid4().hex[:12]}"
    with db.connect(admin.url, application_name=APPLICATION) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(db.ident(name, split=False)))
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot create the scratch database for the restore check on {admin.display}: "
                                f"{str(exc).strip()}. Use --db with a role that has CREATEDB on that server.") from None
    return target_of(_with_dbname(admin.url, name))



def _with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` (URL or key=value form)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


# --- restore -----------------------------------------------------------------------------

def looks_like_production(database: str, environment: str | None) -> str | None:
    """Why a restore into this database needs confirmation, or None."""
    if environment and environment.lower() == "production":
        return "its environment is marked production"
    if "prod" in database.lower():
        return 'its name contains "prod"'
    return None


def restore(s3: Any, uri: str, target_url: str, clean: bool = False, jobs: int = 1, force: bool = False,
            confirm_production: str | None = None, *, environment: str | None = None, log: Log | None = None,
            pg_bindir: str | None = None, allow_other_source: bool = False) -> RestoreResult:
    """Restore backup `uri` into the existing database at `target_url`, streaming from S3.

    `clean` drops the backup's objects first (`--clean --if-exists`). Refuses a
    target with other sessions unless `force`, a production-looking one unless
    `confirm_production` is its name, and a backup taken of another environment
    or database than the target (`environment`, default `DEFAULT_ENVIRONMENT`, and
    its database name) unless `allow_other_source`. `jobs` must be 1: see the
    module docstring for why parallel restore is not streamed.
    """
    log = log or (lambda _m: None)
    if jobs != 1:
        raise UsageError(f"parallel restore (jobs={jobs}) is not supported: pg_restore --jobs needs a seekable "
                         "file and this restore streams from S3 without one. Use jobs=1, or download the dump "
                         "(aws s3 cp) and run pg_restore --jobs on the file.")
    target = target_of(target_url)
    _refuse_production(target, environment, confirm_production)
    bucket, key, manifest = load_backup(s3, uri)
    source = check_source(uri, manifest, environment, target.dbname, allow_other_source=allow_other_source, log=log)
    pg_restore = find_binary("pg_restore", pg_bindir)
    verification = manifest.get("verification") or {}
    if not verification.get("ok"):
        log(f"warning: {uri} has {'failed' if verification else 'never passed'} verification; "
            "run verify-backup first to be sure it is intact")
    _refuse_busy(target, force, log)
    argv = [pg_restore, "--single-transaction", "--exit-on-error", "--no-password", f"--dbname={target.conninfo}"]
    if clean:
        argv[1:1] = ["--clean", "--if-exists"]
    log(f"restore: {uri} -> {target.display}{' (clean)' if clean else ''}")
    started = time.monotonic()
    loader = Child(argv, target.env(APPLICATION), stdin=subprocess.PIPE)
    try:
        size = _feed_verified(s3, bucket, key, manifest, loader, target, uri)
        code = loader.wait()
    finally:
        loader.kill()
    if code != 0:
        said = target.redact(loader.stderr_tail()).splitlines() or ["(nothing on stderr)"]
        raise RestoreFailed(target.dbname, uri, f"pg_restore exited with code {code}:\n    " + "\n    ".join(said),
                            "pg_restore ran in a single transaction, so the target is unchanged. Fix the cause "
                            "above (with --clean if the objects exist already) and restore again.")
    with db.connect(target.url, application_name=APPLICATION) as conn:
        counts, diffs = compare_counts(conn, manifest["row_counts"])
    if diffs:
        raise RestoreFailed(target.dbname, uri, "row counts differ from the manifest: " + "; ".join(diffs),
                            "The restore committed, but the database does not hold exactly the backup's rows: "
                            "either it had tables or rows of its own (restore with --clean into an empty "
                            "database) or the manifest does not describe this dump (run verify-backup "
                            "--restore-check).")
    seconds = time.monotonic() - started
    log(f"restore: {target.dbname} restored from {uri} in {seconds:.1f} s; row counts match the manifest "
        f"({len(counts)} tables, {sum(counts.values()):,} rows)")
    return RestoreResult(uri, target.dbname, size, seconds, counts, source.as_dict() if source.other else None)


def _refuse_production(target: Target, environment: str | None, confirm_production: str | None) -> None:
    reason = looks_like_production(target.dbname, environment)
    if reason and confirm_production != target.dbname:
        given = ("" if confirm_production is None
                 else f" (the confirmation given, {confirm_production!r}, does not match)")
        raise RestoreRefused(target.dbname, reason + given,
                             f"Restoring replaces data in place. If this is intended, confirm with the database's "
                             f"name: --confirm-production {target.dbname} (confirm_production={target.dbname!r}).",
                             exit_code=2)


def _refuse_busy(target: Target, force: bool, log: Log) -> None:
    with db.connect(target.url, application_name=APPLICATION) as conn:
        sessions = db.other_sessions(conn)
        hidden = "" if not any(s.state == "?" for s in sessions) or db.sees_all_sessions(conn) else (
            f" (role {conn.info.user} sees other roles' sessions without their details: GRANT pg_read_all_stats "
            f"TO {conn.info.user} to see what they run)")
    if sessions and not force:
        raise RestoreRefused(target.dbname, f"{len(sessions)} other session(s) are connected to it: "
                             f"{db.describe_sessions(sessions)}{hidden}",
                             "They would block the restore on locks or see a half-restored database. Ask them "
                             "to disconnect (or end them: SELECT pg_terminate_backend(<pid>)), or pass --force "
                             "(force=True) to restore anyway.")
    if sessions:
        log(f"warning: restoring with other sessions connected (force): {db.describe_sessions(sessions)}")


def _feed_verified(s3: Any, bucket: str, key: str, manifest: dict[str, Any], loader: Child, target: Target,
                   uri: str) -> int:
    """Stream the object into pg_restore, holding the last chunk back until the sha256 is known."""
    sha, size, held = hashlib.sha256(), 0, None
    for chunk in _chunks(s3, bucket, key, "restore"):
        if held is not None and not loader.feed(held):
            return size  # pg_restore stopped reading: its exit code says why
        sha.update(chunk)
        size += len(chunk)
        held = chunk
    if size != manifest["size"] or sha.hexdigest() != manifest["sha256"]:
        loader.kill()
        raise RestoreFailed(target.dbname, uri,
                            f"the object does not match its manifest ({size:,} bytes, sha256 {sha.hexdigest()}; "
                            f"manifest: {manifest['size']:,} bytes, sha256 {manifest['sha256']})",
                            "pg_restore was stopped before the end of the archive, so its single transaction "
                            "rolled back: the target is unchanged. Run verify-backup on it and use another backup.")
    if held is not None:
        loader.feed(held)
    return size
