"""The audit trail on real PostgreSQL: append, the hash chain, append-only enforcement, export, the CLI.

The migrator (the stack's non-superuser role, owner of `fresh_db`) writes; tampering
is done as the cluster's superuser (`STAGING_ADMIN_URL`), the only role the trigger
cannot stop once it disables it.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from engine_support import run_cli

from schema_deploy.audit import chain
from schema_deploy.audit.errors import AuditPayloadInvalid, AuditProtectionMissing, AuditWriteRefused
from schema_deploy.pg.db import connect

REFUSED = "schema_deploy.audit_events is append-only: {} refused"


@pytest.fixture
def admin_url(fresh_db: str, stack_env: dict[str, str]) -> str:
    """The superuser, connected to the test's database."""
    return make_conninfo(stack_env["STAGING_ADMIN_URL"], dbname=fresh_db.rsplit("/", 1)[1])


@pytest.fixture
def migrator(fresh_db: str) -> Iterator[psycopg.Connection]:
    with connect(fresh_db) as conn:
        yield conn


def append_runs(conn: psycopg.Connection, n: int, kind: str = "deploy") -> list[chain.AuditRow]:
    return [chain.append(conn, kind, f"run-{i}", "staging",
                         {"step": i, "sql": [f"CREATE INDEX CONCURRENTLY i{i} ON t (a)"], "approver": "ana"})
            for i in range(1, n + 1)]


def as_superuser(admin_url: str, *statements: str) -> None:
    """Run statements as the superuser with the append-only trigger switched off, as a tamperer would."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE schema_deploy.audit_events DISABLE TRIGGER audit_events_append_only")
        for statement in statements:
            conn.execute(statement)
        conn.execute("ALTER TABLE schema_deploy.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")


def where(url: str) -> str:
    return f"database {url.rsplit('/', 1)[1]!r} on 127.0.0.1:55432"


# --- appending and verifying -----------------------------------------------------------

def test_appended_rows_form_a_chain_that_verifies(migrator: psycopg.Connection, fresh_db: str, cli) -> None:
    rows = append_runs(migrator, 3)
    assert [r.id for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == chain.GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.row_hash for r in rows[:-1]]
    assert chain.read_rows(migrator) == rows

    report = chain.verify_chain(migrator)
    assert report.ok and (report.count, report.head) == (3, rows[-1].row_hash)

    result = cli("audit", "verify", "--db", fresh_db)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"audit chain ok in {where(fresh_db)}: 3 rows (ids 1–3, last recorded "
                             f"{chain.iso_utc(rows[-1].recorded_at)}), head {rows[-1].row_hash}. Rows removed "
                             "from the end cannot show in the chain: compare the head with the newest audit "
                             "document in S3.\n")


def test_setup_is_idempotent_and_the_trigger_fires_always(migrator: psycopg.Connection) -> None:
    chain.ensure_table(migrator)
    chain.ensure_table(migrator)
    append_runs(migrator, 1)
    chain.ensure_table(migrator)
    assert migrator.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_events_append_only'"
                            ).fetchall() == [("A",)]
    assert migrator.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'schema_deploy'"
                            ).fetchall() == [("migrator",)]


def test_payloads_are_hashed_as_jsonb_stores_them(migrator: psycopg.Connection) -> None:
    # jsonb rewrites 1e+20 as 100000000000000000000 and reorders keys; the hash must still hold.
    row = chain.append(migrator, "deploy", "r1", "staging",
                       {"z": 1e20, "a": 0.1, "ß": "größe ✓", "at": datetime(2026, 1, 1, tzinfo=timezone.utc),
                        "dsn": "postgresql://migrator:s3cret@db:5432/app"})
    assert row.payload == {"z": 100000000000000000000, "a": 0.1, "ß": "größe ✓", "at": "2026-01-01T00:00:00+00:00",
                           "dsn": "postgresql://migrator:****@db:5432/app"}
    assert chain.verify_chain(migrator).ok
    stored = migrator.execute("SELECT payload::text FROM schema_deploy.audit_events").fetchone()[0]
    assert "s3cret" not in stored


def test_a_payload_jsonb_refuses_is_reported_and_nothing_is_written(migrator: psycopg.Connection) -> None:
    append_runs(migrator, 1)
    with pytest.raises(AuditPayloadInvalid, match=r"audit record 'deploy' of run 'r2' cannot be stored: PostgreSQL "
                                                  r"refused it as jsonb: unsupported Unicode escape sequence "
                                                  r"\(\\u0000 cannot be converted to text\.\)\. Pass a JSON object"):
        chain.append(migrator, "deploy", "r2", "staging", {"log": "nul \x00 byte"})
    assert len(chain.read_rows(migrator)) == 1 and chain.verify_chain(migrator).ok


def test_two_concurrent_appenders_keep_one_unbroken_chain(fresh_db: str) -> None:
    per_writer, errors = 25, []

    def writer(name: str) -> None:
        try:
            with connect(fresh_db) as conn:
                for i in range(per_writer):
                    chain.append(conn, "deploy", f"{name}-{i}", "staging", {"writer": name, "i": i})
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    # Hold the writers' lock until both wait on it, so that both first appends (and the table's
    # creation) really race; then let them go.
    with connect(fresh_db) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (chain.LOCK_KEY,))
        threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
        for t in threads:
            t.start()
        waiting = 0
        for _ in range(100):
            waiting = gate.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                   "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                                   ).fetchone()[0]
            if waiting == 2:
                break
            time.sleep(0.05)
        assert waiting == 2
        gate.execute("SELECT pg_advisory_unlock(%s)", (chain.LOCK_KEY,))
    for t in threads:
        t.join(60)
    assert errors == []
    with connect(fresh_db) as conn:
        rows = chain.read_rows(conn)
        report = chain.verify_chain(conn)
    assert report.ok and report.count == 2 * per_writer, report.message
    assert [r.id for r in rows] == list(range(1, 2 * per_writer + 1))
    assert len({r.prev_hash for r in rows}) == len(rows)  # no two rows hang off the same predecessor


# --- tampering ---------------------------------------------------------------------------

def test_an_edited_payload_is_reported_at_that_row(migrator: psycopg.Connection, fresh_db: str, admin_url: str,
                                                   cli) -> None:
    rows = append_runs(migrator, 5)
    as_superuser(admin_url, """UPDATE schema_deploy.audit_events
                               SET payload = jsonb_set(payload, '{approver}', '"mallory"') WHERE id = 3""")

    result = cli("audit", "verify", "--db", fresh_db)
    assert result.returncode == 1
    assert result.stdout == (
        f"audit chain broken at row 3 (recorded {chain.iso_utc(rows[2].recorded_at)}, deploy of run 'run-3') in "
        f"{where(fresh_db)}: row_hash does not match its content — the row was edited after it was written. "
        "Rows 1–2 before it hold. Compare row 3 with that run's audit document kept beside its backup in S3 to see "
        "what was changed; only a superuser or the table's owner can disable the trigger audit_events_append_only, "
        "and the server log shows who did.\n")

    data = json.loads(cli("audit", "verify", "--db", fresh_db, "--json").stdout)
    assert data["ok"] is False and data["rows_checked"] == 2
    assert data["broken"]["id"] == 3 and data["broken"]["row_hash"] == rows[2].row_hash
    assert data["broken"]["computed_row_hash"] != rows[2].row_hash


def test_a_row_deleted_in_the_middle_is_reported_at_the_row_after_it(migrator: psycopg.Connection, fresh_db: str,
                                                                     admin_url: str, cli) -> None:
    append_runs(migrator, 5)
    as_superuser(admin_url, "DELETE FROM schema_deploy.audit_events WHERE id = 3")

    result = cli("audit", "verify", "--db", fresh_db)
    assert result.returncode == 1
    assert result.stdout.startswith("audit chain broken at row 4 (recorded ")
    assert ("prev_hash does not match the row_hash of row 2, the row before it — row 3 is missing: deleted after "
            "it was written. Rows 1–2 before it hold.") in result.stdout


def test_even_the_superuser_is_refused_while_the_trigger_is_on(migrator: psycopg.Connection, admin_url: str) -> None:
    append_runs(migrator, 2)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for statement, op in [("UPDATE schema_deploy.audit_events SET kind = 'x'", "UPDATE"),
                              ("DELETE FROM schema_deploy.audit_events", "DELETE"),
                              ("TRUNCATE schema_deploy.audit_events", "TRUNCATE")]:
            with pytest.raises(psycopg.errors.RaiseException, match=REFUSED.format(op)):
                admin.execute(statement)
        # Replication mode skips ordinary triggers; this one is enabled ALWAYS.
        admin.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.RaiseException, match=REFUSED.format("DELETE")):
            admin.execute("DELETE FROM schema_deploy.audit_events")
    assert chain.verify_chain(migrator).count == 2


def test_the_migrator_is_refused_update_delete_and_truncate(migrator: psycopg.Connection) -> None:
    append_runs(migrator, 2)
    for statement in ("UPDATE schema_deploy.audit_events SET payload = '{}' WHERE id = 1",
                      "DELETE FROM schema_deploy.audit_events WHERE id = 2",
                      "TRUNCATE schema_deploy.audit_events"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table audit_events"):
            migrator.execute(statement)
    # The migrator owns the table it created, so it may grant itself the privileges back: the trigger still refuses.
    migrator.execute("GRANT UPDATE, DELETE ON schema_deploy.audit_events TO migrator")
    with pytest.raises(psycopg.errors.RaiseException, match=REFUSED.format("UPDATE")):
        migrator.execute("UPDATE schema_deploy.audit_events SET payload = '{}' WHERE id = 1")
    with pytest.raises(psycopg.errors.RaiseException, match=REFUSED.format("DELETE")):
        migrator.execute("DELETE FROM schema_deploy.audit_events WHERE id = 2")
    assert chain.verify_chain(migrator).ok


def test_a_table_an_admin_created_leaves_the_migrator_only_select_and_insert(fresh_db: str, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        chain.ensure_table(admin, writer_role="migrator")
    with connect(fresh_db) as conn:
        append_runs(conn, 2)
        assert chain.verify_chain(conn).ok
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table audit_events"):
            conn.execute("DELETE FROM schema_deploy.audit_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of table audit_events"):
            conn.execute("ALTER TABLE schema_deploy.audit_events DISABLE TRIGGER audit_events_append_only")


def test_appending_to_a_trail_whose_trigger_was_disabled_is_refused(migrator: psycopg.Connection,
                                                                    admin_url: str, fresh_db: str) -> None:
    append_runs(migrator, 1)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("ALTER TABLE schema_deploy.audit_events DISABLE TRIGGER audit_events_append_only")
    with pytest.raises(AuditProtectionMissing,
                       match=rf"the audit trail in {where(fresh_db)} is not protected: its append-only trigger "
                             r"audit_events_append_only is disabled, so rows could be edited or deleted\. Refusing"):
        chain.append(migrator, "deploy", "r2", "staging", {})
    assert len(chain.read_rows(migrator)) == 1


# --- export ------------------------------------------------------------------------------

def test_export_json_has_the_rows_since_a_date(migrator: psycopg.Connection, fresh_db: str, cli) -> None:
    rows = append_runs(migrator, 5)
    since = rows[2].recorded_at
    assert [r.id for r in chain.read_rows(migrator, since)] == [3, 4, 5]

    result = cli("audit", "export", "--db", fresh_db, "--since", since.isoformat())
    assert (result.returncode, result.stderr) == (0, "")
    exported = json.loads(result.stdout)
    assert exported == [r.as_dict() for r in rows[2:]]
    assert exported[0]["payload"] == {"step": 3, "sql": ["CREATE INDEX CONCURRENTLY i3 ON t (a)"], "approver": "ana"}
    # An export carries what an auditor needs to recompute every hash offline.
    assert all(chain.AuditRow.from_dict(r).computed_hash() == r["row_hash"] for r in exported)


def test_export_csv_has_the_rows_since_a_date(migrator: psycopg.Connection, fresh_db: str, cli) -> None:
    rows = append_runs(migrator, 3)
    since = rows[1].recorded_at.astimezone(timezone(timedelta(hours=2)))  # an offset other than UTC
    result = cli("audit", "export", "--db", fresh_db, "--since", since.isoformat(), "--format", "csv")
    assert result.returncode == 0, result.stderr
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(table[0]) == ["id", "recorded_at", "kind", "run_id", "environment", "payload", "prev_hash",
                              "row_hash"]
    assert [(r["id"], r["run_id"], r["row_hash"]) for r in table] == [(str(r.id), r.run_id, r.row_hash)
                                                                      for r in rows[1:]]
    assert table[0]["recorded_at"] == chain.iso_utc(rows[1].recorded_at)
    assert json.loads(table[0]["payload"]) == rows[1].payload


def test_export_by_date_only_and_with_nothing_since(migrator: psycopg.Connection, fresh_db: str, cli) -> None:
    append_runs(migrator, 2)
    assert len(json.loads(cli("audit", "export", "--db", fresh_db, "--since", "2000-01-01").stdout)) == 2
    assert json.loads(cli("audit", "export", "--db", fresh_db, "--since", "2999-01-01").stdout) == []
    empty = cli("audit", "export", "--db", fresh_db, "--since", "2999-01-01", "--format", "csv")
    assert empty.stdout == "id,recorded_at,kind,run_id,environment,payload,prev_hash,row_hash\n"


def test_the_document_for_s3_holds_the_run_and_its_sha256(migrator: psycopg.Connection) -> None:
    row = append_runs(migrator, 2)[-1]
    data, sha = chain.document([row])
    body = json.loads(data)
    assert body["rows"] == [row.as_dict()] and body["head"] == row.row_hash
    assert (data, sha) == chain.document(chain.read_rows(migrator)[1:])


# --- CLI errors ------------------------------------------------------------------------

def test_a_bad_since_is_a_usage_error(fresh_db: str, cli) -> None:
    result = cli("audit", "export", "--db", fresh_db, "--since", "last tuesday")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("error: --since 'last tuesday' is not an ISO date or time; expected e.g. 2026-11-01, "
                             "2026-11-01T09:30 or 2026-11-01T09:30:00+01:00 (UTC unless an offset is given).\n")


@pytest.mark.parametrize("args, message", [
    (("verify", "--since", "2026-01-01"), "--since and --format belong to `audit export`"),
    (("export", "--json", "--format", "csv"), "--json and --format csv contradict each other"),
], ids=["verify-since", "json-and-csv"])
def test_options_that_do_not_fit_the_action_are_usage_errors(fresh_db: str, cli, args: tuple, message: str) -> None:
    result = cli("audit", *args, "--db", fresh_db)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}")


@pytest.mark.parametrize("action", ["verify", "export"])
def test_a_database_without_an_audit_trail_is_named(fresh_db: str, cli, action: str) -> None:
    result = cli("audit", action, "--db", fresh_db)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"error: no audit trail in {where(fresh_db)}: schema_deploy.audit_events does not "
                             "exist. Check that --db names a deployment target (the table is created by the first "
                             "deploy or rollback that records itself there).\n")


def test_a_role_that_may_not_read_the_trail_is_told_the_grant(fresh_db: str, admin_url: str, cli) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        chain.ensure_table(admin)  # owned by the superuser, nothing granted to the migrator
    result = cli("audit", "verify", "--db", fresh_db)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(f"error: role 'migrator' may not read the audit trail in {where(fresh_db)}: "
                                    "permission denied for schema schema_deploy")
    assert result.stderr.endswith("GRANT USAGE ON SCHEMA schema_deploy TO migrator; "
                                  "GRANT SELECT ON schema_deploy.audit_events TO migrator;\n")


def test_a_role_that_may_not_append_to_a_trail_an_admin_created_is_told_the_grants_not_to_create_it(
        migrator: psycopg.Connection, fresh_db: str, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        chain.ensure_table(admin)  # owned by the superuser, the migrator not made a writer
    with pytest.raises(AuditWriteRefused) as info:
        append_runs(migrator, 1)
    assert str(info.value) == (
        f"role 'migrator' may not append to the audit trail in {where(fresh_db)}: permission denied for schema "
        "schema_deploy. The trail exists; grant the role what a writer needs "
        "(schema_deploy.audit.chain.ensure_table(conn, writer_role='migrator') run as its owner does the same): "
        "GRANT USAGE ON SCHEMA schema_deploy TO migrator; GRANT SELECT, INSERT ON schema_deploy.audit_events TO "
        "migrator; GRANT USAGE ON SEQUENCE schema_deploy.audit_events_id_seq TO migrator;")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        chain.ensure_table(admin, writer_role="migrator")  # the fix the message names
    (row,) = append_runs(migrator, 1)
    assert row.prev_hash == chain.GENESIS


def test_the_real_command_reports_an_unreachable_database_without_password_or_traceback(fresh_db: str) -> None:
    url = fresh_db.replace(":55432/", ":1/")
    result = run_cli("audit", "verify", "--db", url)
    password = urlsplit(fresh_db).password
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: cannot connect to postgresql://migrator:****@127.0.0.1:1/")
    assert "Traceback" not in result.stderr and password not in result.stderr


def test_the_real_command_exits_1_on_a_broken_chain(migrator: psycopg.Connection, fresh_db: str,
                                                    admin_url: str) -> None:
    append_runs(migrator, 3)
    as_superuser(admin_url, "UPDATE schema_deploy.audit_events SET kind = 'rollback' WHERE id = 2")
    result = run_cli("audit", "verify", "--db", fresh_db)
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.startswith("audit chain broken at row 2 (recorded ")
    assert ", rollback of run 'run-2')" in result.stdout
