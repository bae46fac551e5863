"""Errors of audit/: the audit trail."""
from __future__ import annotations

from schema_deploy.errors import PAGE, SchemaDeployError


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
            "once with schema_deploy.audit.chain.ensure_table(conn, writer_role=<the migrator role>).")


class AuditWriteRefused(AuditError):
    """The audit trail exists, but the role may not append to it (an admin created it without granting it)."""

    exit_code = 2

    def __init__(self, where: str, role: str, pg_message: str) -> None:
        self.where, self.role, self.pg_message = where, role, pg_message
        super().__init__(
            f"role {role!r} may not append to the audit trail in {where}: {pg_message.strip()}. The trail exists; "
            f"grant the role what a writer needs (schema_deploy.audit.chain.ensure_table(conn, writer_role={role!r}) "
            f"run as its owner does the same): GRANT USAGE ON SCHEMA schema_deploy TO {role}; "
            f"GRANT SELECT, INSERT ON schema_deploy.audit_events TO {role}; "
            f"GRANT USAGE ON SEQUENCE schema_deploy.audit_events_id_seq TO {role};")


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
