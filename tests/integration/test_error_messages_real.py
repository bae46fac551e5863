"""Messages pinned on the real condition (issue 26, point 3): the audit trail's refusals that no other
test raised, each on a fresh database of the local stack."""
from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from schema_deploy.audit import chain
from schema_deploy.audit.errors import AuditError, AuditSetupFailed
from schema_deploy.pg.db import connect


@pytest.fixture
def admin_url(fresh_db: str, stack_env: dict[str, str]) -> str:
    """The superuser, connected to the test's database."""
    return make_conninfo(stack_env["STAGING_ADMIN_URL"], dbname=fresh_db.rsplit("/", 1)[1])


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"database {parts.path.lstrip('/')!r} on {parts.hostname}:{parts.port}"


def test_a_role_without_create_on_the_database_is_told_how_to_get_the_audit_trail_created(
        fresh_db: str, admin_url: str) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'REVOKE CREATE ON DATABASE "{name}" FROM migrator')
    with connect(fresh_db) as conn, pytest.raises(AuditSetupFailed) as info:
        chain.ensure_table(conn)
    assert str(info.value) == (
        f"cannot create the audit trail (schema schema_deploy, table audit_events) in {where(fresh_db)} as role "
        f"'migrator': permission denied for database {name}. Grant the role CREATE on the database, or have an "
        "admin create it once with schema_deploy.audit.chain.ensure_table(conn, writer_role=<the migrator role>).")
    assert info.value.exit_code == 2
    with psycopg.connect(admin_url) as admin:
        assert admin.execute("SELECT to_regclass('schema_deploy.audit_events')").fetchone()[0] is None


def test_appending_inside_a_repeatable_read_transaction_is_refused_before_it_can_fork_the_chain(
        fresh_db: str) -> None:
    with connect(fresh_db) as conn:
        chain.append(conn, "deploy", "r1", "staging", {"step": 1})
        with pytest.raises(AuditError) as info, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            chain.append(conn, "deploy", "r2", "staging", {"step": 2})
        assert str(info.value) == (
            f"cannot append to the audit trail in {where(fresh_db)} inside a repeatable read transaction: its "
            "snapshot may miss a row another writer just appended and fork the chain. Append on an autocommit "
            "connection or in a READ COMMITTED transaction.")
        assert type(info.value) is AuditError and info.value.exit_code == 1
        assert [row.run_id for row in chain.read_rows(conn)] == ["r1"]
