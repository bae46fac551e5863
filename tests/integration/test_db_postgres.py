"""db.py against the local stack's PostgreSQL: connection errors, identifiers, relation lookups, sessions and blockers."""
from __future__ import annotations

import re
import threading
import time
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from schema_deploy.pg import db
from schema_deploy.pg.errors import DatabaseError


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"))


# --- connecting --------------------------------------------------------------------------

def test_a_wrong_password_is_named_in_one_message_that_never_shows_it(fresh_db: str) -> None:
    url = with_password(fresh_db, "Wr0ng Pa$$ word")
    with pytest.raises(DatabaseError) as info:
        db.connect(url)
    message = str(info.value)
    host = f"{urlsplit(fresh_db).hostname}:{urlsplit(fresh_db).port}"
    assert re.match(rf"cannot connect to postgresql://migrator:\*\*\*\*@{re.escape(host)}/t_\w+: .*password "
                    r"authentication failed for user \"migrator\"(?s:.*)\. Check the URL, that the server is "
                    r"running, and the role's password\.$", message), message
    assert "Wr0ng" not in message and "Pa$$" not in message and "Wr0ng%20Pa" not in message
    assert info.value.exit_code == 2


def test_nothing_listening_is_reported_without_the_password_within_the_connect_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=r"^cannot connect to postgresql://migrator:\*\*\*\*@127\.0\.0\.1:1/x: "
                                            r"(?s:.*)Connection refused") as info:
        db.connect("postgresql://migrator:N0body-Listens@127.0.0.1:1/x")
    assert "N0body-Listens" not in str(info.value) and time.monotonic() - started < db.CONNECT_TIMEOUT_S


def test_a_session_carries_its_application_name_timeouts_and_settings(fresh_db: str) -> None:
    with db.connect(fresh_db, application_name="db-test",
                    settings={"default_transaction_read_only": "on", "statement_timeout": "1234",
                              "search_path": "\"a b\", public"}) as conn:
        assert conn.autocommit
        got = conn.execute("SELECT current_setting('application_name'), "
                           "current_setting('client_connection_check_interval'), "
                           "current_setting('default_transaction_read_only'), "
                           "current_setting('statement_timeout'), current_setting('search_path')").fetchone()
        assert got == ("db-test", "1s", "on", "1234ms", "\"a b\", public")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE t (a int)")
    with db.connect(fresh_db) as conn:
        assert conn.execute("SHOW application_name").fetchone()[0] == db.APPLICATION_NAME


# --- identifiers and relation lookups -------------------------------------------------------

ODD = [("public", 'we"ird'), ("public", "dotted.name"), ('sch"ema.x', "t"), ("public", "MixedCase")]


def make_odd_tables(conn: psycopg.Connection) -> None:
    for schema, table in ODD:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(db.ident(schema, split=False)))
        conn.execute(sql.SQL("CREATE TABLE {} (a int)").format(db.ident(schema, table)))


def test_identifiers_with_quotes_dots_and_case_name_exactly_their_table(fresh_db: str) -> None:
    with db.connect(fresh_db) as conn:
        make_odd_tables(conn)
        listed = conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                              "c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', "
                              "'information_schema') ORDER BY 1, 2").fetchall()
        assert sorted(listed) == sorted(ODD)
        for schema, table in ODD:
            assert db.relation_exists(conn, schema, table), (schema, table)
            assert db.relation_oid(conn, schema, table) == conn.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()[0]


def test_relation_lookups_split_a_qualified_name_and_use_the_search_path_for_a_bare_one(fresh_db: str) -> None:
    with db.connect(fresh_db) as conn:
        make_odd_tables(conn)
        assert db.relation_exists(conn, 'public.we"ird')
        assert db.relation_exists(conn, 'we"ird')  # on the search path
        assert db.relation_exists(conn, "MixedCase") and not db.relation_exists(conn, "mixedcase")
        assert db.relation_exists(conn, "dotted.name", split=False)
        assert not db.relation_exists(conn, "dotted.name")  # schema "dotted", table "name"
        assert not db.relation_exists(conn, "nosuchschema.t")
        assert db.relation_oid(conn, "missing") is None
        names = ['we"ird', "public.MixedCase", "missing", "public.missing", "public.we\"ird"]
        assert db.existing_relations(conn, names) == {'we"ird', "public.MixedCase", 'public.we"ird'}
        assert db.existing_relations(conn, []) == set()


# --- sessions and blockers ----------------------------------------------------------------------

@pytest.mark.slow
def test_the_blocker_of_a_real_held_lock_is_named_with_its_application_state_age_and_query(fresh_db: str) -> None:
    with db.connect(fresh_db) as setup:
        setup.execute('CREATE TABLE "lock me" (a int)')
    holder = psycopg.connect(fresh_db, application_name="lock-holder")
    waiter = db.connect(fresh_db, application_name="waiter")
    holder_pid = holder.info.backend_pid
    try:
        holder.execute('LOCK TABLE "lock me" IN ACCESS EXCLUSIVE MODE')
        holder.execute("SELECT 'holder-marker'")
        waiting = threading.Thread(target=lambda: _wait_for_lock(waiter), daemon=True)
        waiting.start()
        with db.connect(fresh_db) as watcher:
            found: list[db.Session] = []
            deadline = time.monotonic() + 5
            while not found and time.monotonic() < deadline:
                found = db.blockers(watcher, waiter.info.backend_pid)
                time.sleep(0.05)
        waiting.join(timeout=10)
    finally:
        holder.close()
        waiter.close()
    (blocker,) = found
    assert blocker.pid == holder_pid and blocker.application == "lock-holder"
    assert re.fullmatch(rf"pid {blocker.pid} application 'lock-holder' state idle in transaction transaction age "
                        r"\d+:\d\d:\d\d(\.\d+)? query: SELECT 'holder-marker'", blocker.as_blocker()), blocker.as_blocker()
    assert db.describe_blockers(found) == blocker.as_blocker()


def _wait_for_lock(conn: psycopg.Connection) -> None:
    conn.execute("SET lock_timeout = '2s'")
    try:
        conn.execute('SELECT count(*) FROM "lock me"')
    except psycopg.errors.LockNotAvailable:
        pass


def test_holders_of_an_advisory_lock_and_other_sessions_are_listed_but_never_this_one(
        fresh_db: str, stack_env: dict[str, str]) -> None:
    # The same key held in another database of the cluster blocks nobody here: not a holder.
    with psycopg.connect(stack_env["STAGING_DATABASE_URL"], autocommit=True) as elsewhere, \
            psycopg.connect(fresh_db, autocommit=True, application_name="other-migrator") as other, \
            db.connect(fresh_db) as conn:
        elsewhere.execute("SELECT pg_advisory_lock(%s)", (72707369,))
        other.execute("SELECT pg_advisory_lock(%s)", (72707369,))
        conn.execute("SELECT pg_advisory_lock(%s)", (1,))  # ours: never listed
        (holder,) = db.advisory_lock_holders(conn, 0, 72707369, 1)
        assert holder.pid == other.info.backend_pid
        user = urlsplit(fresh_db).username
        assert holder.as_session() == (f"pid {holder.pid} (application 'other-migrator', client 127.0.0.1, "
                                       f"user {user}, state idle)")
        assert db.advisory_lock_holders(conn, 0, 1, 1) == []
        assert [s.pid for s in db.other_sessions(conn)] == [other.info.backend_pid]


def test_an_autovacuum_worker_is_not_a_session_but_another_roles_hidden_one_is(fresh_db: str) -> None:
    """What a role without pg_read_all_stats sees of other processes on its database: every column
    NULL but pid, datname and usesysid, and usesysid NULL too for a server process (an autovacuum
    worker, which cannot be summoned on demand). A view of that shape, first on the search path,
    stands in for pg_stat_activity; the server runs the real query against it."""
    with db.connect(fresh_db) as conn:
        role = conn.execute("SELECT oid FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        conn.execute("CREATE SCHEMA shadow")
        conn.execute(
            "CREATE VIEW shadow.pg_stat_activity AS SELECT pid, datname, usesysid, usename, application_name, "
            "client_addr, client_port, state, xact_start, query, backend_type FROM pg_catalog.pg_stat_activity "
            "UNION ALL SELECT 990001, current_database(), NULL::oid, NULL::name, NULL, NULL::inet, NULL::int, "
            "NULL, NULL::timestamptz, NULL, NULL "  # an autovacuum worker, as this role sees it
            "UNION ALL SELECT 990002, current_database(), %s::oid, 'someone'::name, NULL, NULL::inet, NULL::int, "
            "NULL, NULL::timestamptz, NULL, NULL" % int(role))  # another role's client, its details hidden
        conn.execute("SET search_path = shadow, pg_catalog")
        found = db.other_sessions(conn)
    assert [s.as_session() for s in found] == [
        "pid 990002 (application '(none)', client (hidden), user someone, state ?)"]
