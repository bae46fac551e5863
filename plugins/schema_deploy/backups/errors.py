"""Errors of backups/: backups, their verification and restores."""
from __future__ import annotations

from schema_deploy.errors import PAGE, SchemaDeployError, shorten


class BackupFailed(SchemaDeployError):
    """A backup did not complete, so nothing counts as stored."""

    transient = True

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


class BackupVerificationFailed(SchemaDeployError):
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
