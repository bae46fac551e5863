"""The package's exceptions: one root, one small class per condition.

Every class builds its message from its fields, and every message says what
failed, where, and how to fix it. `exit_code` is the CLI's: 2 for bad input or
configuration, 1 for a failed check or deployment.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # db imports this module; its sessions render themselves
    from schema_deploy.db import Session

# The password runs to the URL's last '@': an unencoded '@' in it must not leave its tail visible.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>\S+)(?P<at>@)", re.I)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)


# Where a person with Airflow sees what a CLI command would print (schema_deploy_airflow/ui.py): messages
# name it first, and the command after it for runs without Airflow.
PAGE = "the Schema deployments page (Browse → Schema deployments)"


def scrub(text: str) -> str:
    """Mask passwords in URLs (`user:pw@host`) and `password=...` pairs."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}****{m['at']}", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['head']}****", text)


def wrapped(text: str, width: int = 100, indent: str = "    ", first_offset: int = 0) -> str:
    """`text` for a person's screen: each of its lines wrapped at `width` columns, the continuation
    lines indented under it; words longer than a line (a URI, a path) are kept whole. `first_offset`:
    columns already taken on the first line by what is printed before it (a log's prefix)."""
    import textwrap

    out = []
    for i, line in enumerate(text.splitlines() or [""]):
        lead = line[:len(line) - len(line.lstrip())]
        taken = " " * first_offset if i == 0 else ""
        out.append(textwrap.fill(line.strip(), width, initial_indent=taken + lead, subsequent_indent=lead + indent,
                                 break_long_words=False, break_on_hyphens=False)[len(taken):]
                   if line.strip() else "")
    return "\n".join(out).strip("\n")


def is_transient(exc: BaseException) -> bool:
    """Worth an automatic retry: a lock not granted, a busy advisory lock, a lost connection, S3 or
    pg_dump trouble. Bad input, failed checks, failed gates and bad releases would fail the same way."""
    return not isinstance(exc, SchemaDeployError) or isinstance(
        exc, (LockRetriesExhausted, AdvisoryLockTimeout, DatabaseError, BackupFailed))


class SchemaDeployError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(scrub(message))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(SchemaDeployError):
    """Bad command-line input or configuration."""


class ConfigError(SchemaDeployError):
    """A configuration file (deploy.yaml) that cannot be used as written."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path}: {problem}. {fix}")


# --- bundle -----------------------------------------------------------------

class BundleError(SchemaDeployError):
    """A migrations folder that cannot be read as a bundle."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}. {fix}")


# --- migration files --------------------------------------------------------

class MigrationFileError(SchemaDeployError):
    """A migration file that cannot be deployed as written: what, where (file:line:column) and the fix.

    `code` names the condition; lint reports it as a finding under that id. Whether it stops a run
    depends on the migration: pending and in the run, it refuses the run; applied long ago or after
    `--to`, it is a warning (a history that deployed once must never block on an upgrade).
    """

    code = "migration-file"

    def __init__(self, path: Path | str, line: int | None, column: int | None, problem: str, fix: str,
                 *, code: str | None = None) -> None:
        self.path, self.line, self.column, self.problem, self.fix = Path(path), line, column, problem, fix
        if code is not None:
            self.code = code
        where = f"{path}:{line}:{column}" if line is not None and column is not None else \
            f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. {fix.rstrip('.')}.")

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)


class SqlSyntaxError(MigrationFileError):
    """PostgreSQL's parser rejected a migration file."""

    code = "syntax-error"

    def __init__(self, path: Path | str, line: int, column: int, source_line: str, pg_message: str) -> None:
        self.path, self.line, self.column, self.pg_message = Path(path), line, column, pg_message
        self.problem, self.fix = f"syntax error: {pg_message}", "Fix the SQL at that position"
        pointer = " " * (column - 1) + "^"
        SchemaDeployError.__init__(
            self,
            f"{path}:{line}:{column}: syntax error: {pg_message}\n"
            f"    {source_line}\n    {pointer}\n"
            "Fix the SQL at that position; the file was not applied anywhere."
        )


class TransactionControlError(MigrationFileError):
    """Transaction control in a migration file that has no safe meaning there."""

    code = "transaction-control"

    def __init__(self, path: Path | str, line: int, statement: str, problem: str, fix: str) -> None:
        self.statement = statement
        super().__init__(path, line, None, f"`{statement}` {problem}", fix)


class UnaccountedBytes(MigrationFileError):
    """Characters in a migration file that are neither SQL, a comment nor whitespace (a NUL byte)."""

    code = "unaccounted-bytes"


class NotUtf8(MigrationFileError):
    """A migration file whose bytes are not UTF-8."""

    code = "not-utf8"


class ClientOnlyStatement(MigrationFileError):
    """A statement that needs a client on the other end (COPY … FROM STDIN, a psql meta-command)."""

    code = "client-only-statement"


class SymlinkOutsideBundle(MigrationFileError):
    """A migration folder or file that is a symbolic link resolving outside the bundle's folder."""

    code = "symlink-outside-bundle"

    def __init__(self, path: Path | str, target: Path | str, bundle: str | None) -> None:
        self.target = Path(target)
        allow = (f"bundles: {{{bundle}: {{path: …, allow_symlinks: true}}}}" if bundle
                 else "allow_symlinks: true on the bundle in deploy.yaml")
        super().__init__(path, None, None, f"is a symbolic link to {target}, outside the bundle's folder",
                         "Copy the migration into the bundle; or, if the link is deliberate (a shared folder "
                         f"of migrations), allow it with {allow}, which the release records")


class PendingMigrationInvalid(SchemaDeployError):
    """A pending migration of the run cannot be deployed as written; nothing was changed."""

    def __init__(self, migration: str, error: MigrationFileError, before: str | None) -> None:
        self.migration, self.error = migration, error
        rest = f"\nTo deploy the migrations before it now, run with --to {before}." if before else ""
        super().__init__(f"refusing to deploy: migration {migration} cannot be applied as written; nothing was "
                         f"changed:\n{error.message}{rest}")


# --- database ---------------------------------------------------------------

class DatabaseError(SchemaDeployError):
    """A database could not be reached or answered with an unexpected error."""


class AdvisoryLockTimeout(SchemaDeployError):
    """Another migrator holds Prisma's advisory lock past our deadline."""

    exit_code = 1

    def __init__(self, waited_s: float, holders: list[Session]) -> None:
        self.waited_s, self.holders = waited_s, holders
        if holders:
            who = "; ".join(h.as_session() for h in holders)
        else:
            who = "a session that released it just now"
        super().__init__(
            f"another migrator holds the migration lock (pg_advisory_lock 72707369, shared with "
            f"`prisma migrate deploy`); waited {waited_s:.1f} s. Held by: {who}. Wait for it to finish, "
            "or if it is stuck, end it with SELECT pg_terminate_backend(<pid>)."
        )


class LockRetriesExhausted(SchemaDeployError):
    """A statement kept timing out on a table lock (SQLSTATE 55P03)."""

    exit_code = 1

    def __init__(self, migration: str, where: str, statement: str, attempts: int,
                 blockers: list[Session]) -> None:
        self.migration, self.where, self.attempts, self.blockers = migration, where, attempts, blockers
        lines = [
            f"{migration} ({where}): gave up after {attempts} attempts: the statement could not get its "
            f"lock within lock_timeout each time (SQLSTATE 55P03).",
            f"    statement: {shorten(statement, 200)}",
        ]
        if blockers:
            lines.append("    blocked by:")
            lines.extend(f"      {b.as_blocker()}" for b in blockers)
        else:
            lines.append("    the blocking sessions had finished by the time they were looked up.")
        lines.append("Retry when the blocking work is done (the migration resumes where it stopped), "
                     "or raise the retry budget (--lock-retries).")
        super().__init__("\n".join(lines))


class MigrationFailed(SchemaDeployError):
    """A statement of a migration failed; the ledger records it the way Prisma would."""

    exit_code = 1

    def __init__(self, migration: str, where: str, sqlstate: str | None, pg_message: str, ledger_note: str) -> None:
        self.migration, self.where, self.sqlstate, self.pg_message = migration, where, sqlstate, pg_message
        super().__init__(
            f"migration {migration} failed at {where}: SQLSTATE {sqlstate or '?'}: {pg_message.strip()}\n"
            f"{ledger_note}"
        )


class LedgerRowMissing(SchemaDeployError):
    """The ledger row a migration started with was gone (or finished by someone else) when it ended."""

    exit_code = 1

    def __init__(self, row_id: str, schema: str) -> None:
        self.row_id = row_id
        super().__init__(
            f"the ledger row {row_id} this run inserted into {schema}._prisma_migrations was gone or already "
            "finished when the migration ended: something else wrote the ledger meanwhile (a statement of the "
            "migration, or another tool without the migration lock). The migration is not recorded as applied; "
            f"a migration that ran in one transaction rolled back. Check the ledger before running again: {PAGE} "
            "shows it; or `python -m schema_deploy status`.")


class LedgerBlocked(SchemaDeployError):
    """The ledger has failed rows or drift, so apply refuses to start."""

    exit_code = 1


class ResolveRefused(SchemaDeployError):
    """`resolve` asked for something Prisma refuses too."""

    exit_code = 1


def shorten(text: str, limit: int) -> str:
    """One line, at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class PrecheckFailed(SchemaDeployError):
    """Existing rows would make a migration fail; found before anything changed."""

    exit_code = 1

    def __init__(self, failures: list[tuple[str, list[str], str]]) -> None:
        self.failures = failures
        lines = ["data prechecks failed; nothing was changed:"]
        for headline, samples, fix in failures:
            lines.append(f"- {headline}")
            if samples:
                lines.append(f"    samples: {', '.join(samples)}")
            lines.append(f"    fix: {fix}")
        super().__init__("\n".join(lines))


class PrecheckLocked(SchemaDeployError):
    """A precheck could not read its table: another session held a conflicting lock every time."""

    exit_code = 1

    def __init__(self, where: str, description: str, table: str, attempts: int, holders: list[Session]) -> None:
        self.where, self.table, self.holders = where, table, holders
        who = "; ".join(h.as_blocker() for h in holders) or "sessions that had finished by the time they were looked up"
        super().__init__(
            f"data precheck for {where} ({description}) could not read {table} in {attempts} attempts: another "
            f"session holds a lock on it that blocks reads (lock_timeout each time, SQLSTATE 55P03). Held by: "
            f"{who}. Nothing was changed. Run again when that work is done, raise --lock-retries, or end the "
            "session with SELECT pg_terminate_backend(<pid>).")


class PrecheckCouldNotRun(SchemaDeployError):
    """A precheck's query failed on the existing rows (the statement would most likely fail the same way)."""

    exit_code = 1

    def __init__(self, where: str, description: str, sqlstate: str | None, pg_message: str) -> None:
        self.where, self.sqlstate = where, sqlstate
        super().__init__(
            f"data precheck for {where} ({description}) could not run: SQLSTATE {sqlstate or '?'}: {pg_message}. "
            "Nothing was changed. The statement would most likely fail the same way on these rows: fix the rows "
            "or the statement, or, if you know it will not, waive the checks for this run with "
            "--waive-prechecks REASON.")


class PrecheckTimedOut(SchemaDeployError):
    """A precheck ran past its statement_timeout (a large table)."""

    exit_code = 1

    def __init__(self, where: str, description: str, table: str, rows: int | None, timeout_ms: int) -> None:
        self.where, self.table, self.timeout_ms = where, table, timeout_ms
        size = f"~{rows:,} rows" if rows is not None else "its size unknown (never analyzed)"
        super().__init__(
            f"data precheck for {where} ({description}) did not finish within {timeout_ms} ms on {table} ({size}); "
            "nothing was changed. Give it longer with --precheck-timeout-ms (deploy.yaml: prechecks.timeout_ms), "
            "or run the check yourself off-peak and waive it for this run with --waive-prechecks REASON.")


# --- backups ------------------------------------------------------------------

class BackupFailed(SchemaDeployError):
    """A backup did not complete, so nothing counts as stored."""

    exit_code = 1


class PgDumpFailed(BackupFailed):
    """pg_dump exited non-zero (or wrote nothing); the upload was aborted."""

    def __init__(self, database: str, uri: str, returncode: int, stderr_tail: str, cleanup: str) -> None:
        self.database, self.uri, self.returncode, self.stderr_tail = database, uri, returncode, stderr_tail
        if returncode < 0:
            how = f"was killed by signal {-returncode}"
        elif returncode == 0:
            how = "exited with code 0 but wrote no bytes (an empty dump is never a backup)"
        else:
            how = f"exited with code {returncode}"
        said = "\n".join("    " + line for line in stderr_tail.splitlines()) or "    (nothing on stderr)"
        super().__init__(
            f"backup of database {database!r} to {uri} failed: pg_dump {how}. pg_dump said:\n{said}\n"
            f"{cleanup} Fix the cause above and run the backup again."
        )


class S3TransferFailed(BackupFailed):
    """An S3 call failed while writing or reading a backup."""

    def __init__(self, operation: str, bucket: str, key: str, code: str, detail: str, cleanup: str,
                 context: str = "backup upload") -> None:
        self.operation, self.bucket, self.key, self.code, self.detail = operation, bucket, key, code, detail
        super().__init__(
            f"{context}: {operation} on s3://{bucket}/{key} failed with {code}: {shorten(detail, 300)}.\n"
            f"{cleanup} Check that the S3 endpoint is reachable and that the credentials may read and write "
            f"bucket {bucket!r}, then try again."
        )


class BucketCheckFailed(SchemaDeployError):
    """The backup bucket is missing, unreachable, public or not encrypting."""

    def __init__(self, bucket: str, problem: str, fix: str) -> None:
        self.bucket, self.problem, self.fix = bucket, problem, fix
        super().__init__(f"bucket {bucket!r}: {problem}. {fix}")


class BackupNotFound(SchemaDeployError):
    """No backup object at the given S3 URI."""

    def __init__(self, uri: str, detail: str) -> None:
        self.uri = uri
        super().__init__(f"no backup at {uri}: {detail}. The backups are listed on {PAGE}; or "
                         "`python -m schema_deploy backups list --to s3://BUCKET/PREFIX`.")


class BackupIncomplete(SchemaDeployError):
    """A dump without its manifest: never counts as a good backup."""

    exit_code = 1

    def __init__(self, uri: str, manifest_key: str) -> None:
        self.uri = uri
        super().__init__(
            f"{uri} is an incomplete backup: its manifest {manifest_key} does not exist, so the dump's "
            "size, sha256 and row counts were never recorded (the backup failed before finishing). "
            "It never counts as a good backup: take a new one; `backups prune` removes the remnant."
        )


class VerifyFailed(SchemaDeployError):
    """A backup did not match its manifest or did not restore."""

    exit_code = 1

    def __init__(self, uri: str, problems: list[str], recorded: bool = True) -> None:
        self.uri, self.problems = uri, problems
        lines = [f"verification of {uri} failed:"] + [f"  - {p}" for p in problems]
        if recorded:
            lines.append("The failed verification is recorded in its manifest. Do not rely on this backup: "
                         "take a new one.")
        super().__init__("\n".join(lines))


class RestoreRefused(SchemaDeployError):
    """A restore that would be unsafe without an explicit override."""

    def __init__(self, database: str, reason: str, fix: str, exit_code: int = 1) -> None:
        self.database, self.reason, self.exit_code = database, reason, exit_code
        super().__init__(f"refusing to restore into database {database!r}: {reason}. {fix}")


class RestoreFromOtherSource(RestoreRefused):
    """A backup taken of another environment or database than the target, restored without the
    explicit opt-in: copying one environment's data into another must be a deliberate decision."""

    def __init__(self, uri: str, source: str, target_environment: str, target_database: str) -> None:
        self.uri, self.source = uri, source
        self.target_environment, self.target_database = target_environment, target_database
        super().__init__(
            target_database,
            f"backup {uri} was taken of {source}, but the target is {target_environment} database "
            f"{target_database!r}",
            f"Nothing was changed. Choose a backup of {target_environment} database {target_database!r} (leave "
            "backup_uri empty for the newest verified one of this database), or, to copy that data here on "
            "purpose, ask for it explicitly: 'Restore data from another environment or database' "
            "(allow_other_source) on the form, --allow-other-source on the command line; the choice is then "
            "recorded and announced in Slack.",
            exit_code=2)


class RestoreFailed(SchemaDeployError):
    """pg_restore failed or the restored data does not match the manifest."""

    exit_code = 1

    def __init__(self, database: str, uri: str, problem: str, state: str) -> None:
        self.database, self.uri, self.problem = database, uri, problem
        super().__init__(f"restore of {uri} into database {database!r} failed: {problem}\n{state}")


class LintBlocked(SchemaDeployError):
    """Lint errors that the plan about to run does not fix (preflight stops on them)."""

    exit_code = 1

    def __init__(self, findings: list) -> None:
        self.findings = findings
        lines = [f"- {f.where}: [{f.rule}] {f.message} Fix: {f.help}" for f in findings[:20]]
        more = f"\n…and {len(findings) - 20} more" if len(findings) > 20 else ""
        super().__init__(f"{len(findings)} lint error(s) that the deployment plan does not fix; nothing was "
                         "changed:\n" + "\n".join(lines) + more
                         + "\nFix the SQL, or suppress a finding with a '-- schema-deploy: ignore <rule> <reason>' "
                           "comment right above the statement.")


# --- Prisma schema check ------------------------------------------------------

class PrismaSchemaMismatch(SchemaDeployError):
    """schema.prisma declares something the migrations do not create, or the other way round."""

    exit_code = 1

    def __init__(self, schema: Path | str, migrations: Path | str, differences: list[str]) -> None:
        self.schema, self.migrations, self.differences = Path(schema), Path(migrations), differences
        super().__init__(
            f"{schema} does not match what the migrations in {migrations} create (`prisma migrate diff`); "
            "nothing was changed:\n" + "\n".join(f"- {d}" for d in differences)
            + f"\nAdd a migration that makes them agree (`prisma migrate diff --from-migrations {migrations} "
              f"--to-schema-datamodel {schema} --script` writes its SQL), or correct schema.prisma.")


class PrismaCheckFailed(SchemaDeployError):
    """`prisma migrate diff` ran but could not compare (a migration fails on the shadow database, a bad schema)."""

    exit_code = 1

    def __init__(self, schema: Path | str, migrations: Path | str, code: int, output: str) -> None:
        self.schema, self.migrations, self.code = Path(schema), Path(migrations), code
        tail = "\n".join(line for line in output.strip().splitlines()[-12:])
        super().__init__(
            f"`prisma migrate diff` of {migrations} against {schema} failed (exit {code}):\n{tail}\n"
            "Fix what it names (a migration that fails on an empty database, or a schema `prisma validate` "
            "rejects), or remove prisma.schema from deploy.yaml to skip this check.")

# --- audit trail --------------------------------------------------------------

class AuditError(SchemaDeployError):
    """The audit trail (`schema_deploy.audit_events`) could not be read or written."""

    exit_code = 1


class AuditTableMissing(AuditError):
    """The database has no audit trail to read."""

    exit_code = 2

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"no audit trail in {where}: schema_deploy.audit_events does not exist. Check that --db names a "
            "deployment target (the table is created by the first deploy or rollback that records itself there).")


class AuditProtectionMissing(AuditError):
    """The append-only trigger of the audit table was dropped or disabled."""

    def __init__(self, where: str, state: str) -> None:
        self.where, self.state = where, state
        super().__init__(
            f"the audit trail in {where} is not protected: its append-only trigger audit_events_append_only "
            f"{state}, so rows could be edited or deleted. Refusing to write to it. Ask a database admin to run "
            "`ALTER TABLE schema_deploy.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only` (or to "
            f"recreate it), then check that nothing was changed: {PAGE} verifies each chain; or "
            "`python -m schema_deploy audit verify --db URL`.")


class AuditSetupFailed(AuditError):
    """The role cannot create the audit schema, table or trigger."""

    exit_code = 2

    def __init__(self, where: str, role: str, pg_message: str) -> None:
        self.where, self.role, self.pg_message = where, role, pg_message
        super().__init__(
            f"cannot create the audit trail (schema schema_deploy, table audit_events) in {where} as role "
            f"{role!r}: {pg_message.strip()}. Grant the role CREATE on the database, or have an admin create it "
            "once with schema_deploy.audit.ensure_table(conn, writer_role=<the migrator role>).")


class AuditPayloadInvalid(AuditError):
    """A record that cannot be stored as PostgreSQL jsonb."""

    exit_code = 2

    def __init__(self, kind: str, run_id: str | None, problem: str) -> None:
        self.kind, self.run_id, self.problem = kind, run_id, problem
        super().__init__(
            f"audit record {kind!r} of run {run_id!r} cannot be stored: {problem}. Pass a JSON object whose "
            "values are strings, numbers (finite), booleans, null, lists or objects; strings without NUL "
            "characters.")


class AuditReadRefused(AuditError):
    """The role may not read the audit table."""

    exit_code = 2

    def __init__(self, where: str, role: str, pg_message: str) -> None:
        self.where, self.role, self.pg_message = where, role, pg_message
        super().__init__(
            f"role {role!r} may not read the audit trail in {where}: {pg_message.strip()}. Connect as a role "
            f"that may, or grant it: GRANT USAGE ON SCHEMA schema_deploy TO {role}; "
            f"GRANT SELECT ON schema_deploy.audit_events TO {role};")


# --- releases and bundles ---------------------------------------------------------------

class BundleNotDeclared(UsageError):
    """A trigger-form or command-line bundle that is not one of deploy.yaml's declared bundles."""

    def __init__(self, given: str, declared: list[str], source: str) -> None:
        self.given, self.declared = given, declared
        what = ("is a path" if given.startswith("/") or "/" in given or ".." in given or "\\" in given
                else "is not declared")
        super().__init__(
            f"bundle {given!r} {what}: a deployment takes one of the bundles declared under 'bundles:' in "
            f"{source}, by name: {', '.join(declared)}. Pick one of them, or declare the folder there first.")


class ReleaseError(SchemaDeployError):
    """A release that cannot be used; nothing was changed."""

    exit_code = 1


class ReleaseMissing(ReleaseError):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(
            f"release {uri} does not exist (deleted, or a wrong bucket/prefix). Nothing was changed. Trigger a new "
            "run (its preflight freezes a new release), or pass the URI `release create` printed.")


class ReleaseTampered(ReleaseError):
    def __init__(self, uri: str, actual: str) -> None:
        self.uri, self.actual = uri, actual
        super().__init__(
            f"release {uri} was changed after it was written: its bytes hash to sha256 {actual}, not to its name. "
            "Nothing was changed. Find out who wrote to the releases prefix (S3 access logs); trigger a new run "
            "to freeze a new release.")


class ReleaseInvalid(ReleaseError):
    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"release {where}: {problem}. Nothing was changed. {fix}")


# --- deployment and rollback pipelines --------------------------------------------------

class VerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, target: str, failures: list[str]) -> None:
        self.target, self.failures = target, failures
        super().__init__(f"verification of {target} failed: " + "; ".join(failures[:10])
                         + ". The change is applied; investigate, then roll back from the backup if needed.")


class ApproverRefused(SchemaDeployError):
    exit_code = 1

    def __init__(self, user: str) -> None:
        self.user = user
        super().__init__(f"{user} approved their own deployment, but deploy.yaml sets approval.approver_must_differ: "
                         "a second person must approve. Production was not touched; trigger a new run and ask "
                         "a colleague to approve it.")


class ConfirmationMismatch(UsageError):
    """The production database name typed in the trigger form does not match the target."""

    def __init__(self, given: str, database: str) -> None:
        self.given, self.database = given, database
        shown = repr(given) if given else "empty"
        super().__init__(
            f"confirm_database is {shown}, but the production database is {database!r}: a production rollback "
            f"needs its database name typed exactly in confirm_database. Nothing was changed; trigger again with "
            f"confirm_database = {database}.")


class NoBackupToRestore(SchemaDeployError):
    exit_code = 1

    def __init__(self, environment: str, database: str, where: str, found: int) -> None:
        self.environment, self.database = environment, database
        super().__init__(
            f"no verified backup of {environment} database {database!r} under {where} ({found} backup(s) there, "
            f"none complete and verified). Nothing was changed. Pick one explicitly in backup_uri ({PAGE} lists "
            "them, as does this log; or `python -m schema_deploy backups list`), or roll back with down_migrations.")


class RollbackVerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, target: str, problems: list[str]) -> None:
        self.target, self.problems = target, problems
        super().__init__(f"verification of the {target} rollback failed: " + "; ".join(problems[:10])
                         + ". Investigate; the safety backup taken before the rollback holds the state before it.")


class NothingToDeploy(SchemaDeployError):
    """Every migration of the bundle is applied on every target: the run ends here, successfully."""

    exit_code = 0

    def __init__(self, count: int, bundle: str, targets: list[str]) -> None:
        self.count, self.bundle, self.targets = count, bundle, targets
        super().__init__(f"nothing to deploy: all {count} migrations of {bundle} are applied on "
                         f"{' and '.join(targets)}")


class NothingToRehearse(UsageError):
    """A fleet run whose staging is at the bundle already, with no earlier fleet release of it: there
    is no rehearsal to freeze the members' plan from."""

    def __init__(self, bundle: str, pointer: str) -> None:
        self.bundle, self.pointer = bundle, pointer
        super().__init__(
            f"staging has nothing pending for bundle {bundle}, and no fleet release rehearsed from it was found "
            f"({pointer} is missing), so there is no rehearsed plan for the members. If an earlier run rehearsed "
            "it under another backup prefix, give that run's release (s3://…/releases/<sha256>.json) as the "
            "bundle; otherwise staging was migrated outside deploy_fleet: restore staging to the fleet's schema "
            "and run again.")


# --- the test gate and rollbacks ------------------------------------------------------

class GateFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, failed: list) -> None:  # gate.CommandResult
        self.results = failed
        lines = []
        for r in failed:
            names = r.junit.failed if r.junit else []
            lines.append(f"`{r.command}` exited {r.exit_code}"
                         + (f"; failing tests: {', '.join(names[:20])}" if names else "")
                         + f"\n{r.output_tail[-1500:]}")
        super().__init__("the staging test gate failed, so production was not touched.\n" + "\n".join(lines)
                         + "\nFix the migration or the tests, then run the gate again (in Airflow: clear its task; staging keeps the change).")


class RollbackRefused(SchemaDeployError):
    """A rollback that cannot be done as asked; nothing was changed."""

    exit_code = 1


class NoDownMigration(RollbackRefused):
    """A migration to roll back has no down.sql."""

    def __init__(self, name: str, expected: str) -> None:
        self.name, self.expected = name, expected
        super().__init__(
            f"cannot roll back {name}: it has no down migration; expected {expected}. Write the SQL that "
            "reverses migration.sql there (guard each statement with IF EXISTS so a re-run is harmless), "
            "or roll back from a backup instead. Nothing was changed.")


class NotApplied(RollbackRefused):
    """The migration named by `to` is not applied on the target."""

    def __init__(self, name: str, state: str, applied: list[str]) -> None:
        self.name, self.state = name, state
        newest = ", ".join(applied[-3:]) or "none"
        super().__init__(
            f"cannot roll back {name}: it is not applied to this database (its state is {state}). Only "
            f"applied migrations can be rolled back; the newest applied ones are: {newest}. Nothing was changed.")


class RollbackFailed(SchemaDeployError):
    """A statement of a down migration failed; the ledger still records the migration applied."""

    exit_code = 1

    def __init__(self, migration: str, where: str, sqlstate: str | None, pg_message: str, done: int,
                 total: int) -> None:
        self.migration, self.where, self.sqlstate, self.pg_message = migration, where, sqlstate, pg_message
        kept = (f"Steps 1..{done} of {total} ran and stay committed" if done else "Nothing of it ran")
        super().__init__(
            f"rollback of {migration} failed at {where}: SQLSTATE {sqlstate or '?'}: {pg_message.strip()}\n"
            f"{kept}; _prisma_migrations still records {migration} as applied. Fix the cause (or the "
            f"down.sql), then run the rollback again: statements guarded with IF EXISTS skip what is done.")


# --- workers and queues ------------------------------------------------------------------

class ConnectionNotOnWorker(SchemaDeployError):
    """A task asked for a connection this worker does not hold: it was routed to the wrong queue,
    or the worker of the right queue lacks the connection. Retrying lands it on the same worker."""

    def __init__(self, conn_id: str, *, queue: str, host: str, wanted: str | None = None,
                 setting: str | None = None) -> None:
        self.conn_id, self.queue, self.host, self.wanted = conn_id, queue, host, wanted
        where = f"connection {conn_id} is not defined on this worker ({host}, queue {queue})"
        if wanted and wanted != queue:
            fix = (f"route the task to queue {wanted}" + (f" (deploy.yaml {setting})" if setting else "")
                   + f", whose workers hold {conn_id}")
        else:
            fix = (f"define {conn_id} on the workers of queue {queue} "
                   f"(AIRFLOW_CONN_{conn_id.upper()} or the worker's secrets backend)")
        super().__init__(f"{where}: {fix}")
