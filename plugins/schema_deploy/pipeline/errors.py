"""Errors of pipeline/: the deploy and rollback pipelines, and the workers that run them."""
from __future__ import annotations

from schema_deploy.errors import PAGE, SchemaDeployError, UsageError


class DeployVerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, target: str, failures: list[str], backup_uri: str | None = None) -> None:
        self.target, self.failures, self.backup_uri = target, failures, backup_uri
        way_back = (f"roll back from the run's backup if needed: {backup_uri} (rollback_schema, method backup, "
                    "that backup URI)" if backup_uri else "roll back from the backup if needed")
        super().__init__(f"verification of {target} failed: " + "; ".join(failures[:10])
                         + f". The change is applied; investigate, then {way_back}.")


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

    def __init__(self, target: str, problems: list[str], safety_uri: str | None = None) -> None:
        self.target, self.problems, self.safety_uri = target, problems, safety_uri
        way_back = (f"the safety backup taken before the rollback, {safety_uri}, holds the state before it "
                    "(rollback_schema with it as the Backup URI puts that back)" if safety_uri else
                    "the safety backup taken before the rollback holds the state before it")
        super().__init__(f"verification of the {target} rollback failed: " + "; ".join(problems[:10])
                         + f". Investigate; {way_back}.")


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
