"""The health gate against a real primary with a real streaming replica (tests/replica_pair.py: a
pair of the module's own). Lag is made on purpose: replay paused on the replica, WAL written on the
primary.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from schema_deploy.engine.apply import apply
from schema_deploy.health import signals
from schema_deploy.health.errors import HealthGateRefused, HealthGateTimedOut, HealthGateWaiting
from schema_deploy.health.gate import HealthGate
from schema_deploy.config.health import MB, HealthSettings
from schema_deploy.state import ledger as ledger_mod
from tests.integration.engine_support import FAST, ledger, plain_bundle, scalar
from tests.replica_pair import Pair, replica_pair

pytestmark = pytest.mark.slow

TABLE = "CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL);\n" \
        "INSERT INTO events SELECT g, 'k' || (g % 50) FROM generate_series(1, 20000) g;\n"
INDEX = "CREATE INDEX CONCURRENTLY events_kind_idx ON events (kind);\n"
# Lag over 1 MB after one fill; checked every 0.1 s.
QUICK = HealthSettings(max_replica_lag_bytes=1 * MB, poll_s=0.1, max_wait_s=60)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with replica_pair("gate") as made:
        yield made


@pytest.fixture
def target(pair: Pair) -> Iterator[str]:
    """A fresh database on the primary holding `events` (20,000 rows); replay running again after."""
    name = f"t_health_{secrets.token_hex(4)}"
    url = pair.database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLE)
    pair.caught_up()
    yield url
    pair.replay(paused=False)
    pair.drop(name)


def index_exists(url: str) -> bool:
    return bool(scalar(url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'events_kind_idx'"))


def wait_until(what: str, check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_a_healthy_replica_lets_the_step_run_and_the_step_records_its_wal_and_the_lag_it_caused(
        pair: Pair, target: str, tmp_path) -> None:
    lines: list[str] = []
    gate = HealthGate(target, QUICK, log=lines.append)
    result = apply(target, plain_bundle(tmp_path / "m", {"20260101000000_index": INDEX}), FAST, health=gate, log=lines.append)
    gate.close()
    step = result.applied[0].steps[0]
    assert index_exists(target) and step.health is not None
    assert step.health.waited_s == 0 and step.health.checks == 1 and step.health.wait_reason == ""
    assert step.health.wal_bytes > 100_000, "a 20,000-row index build writes its pages to the WAL"
    assert step.health.replica_lag_peak_bytes is not None
    assert re.search(r"20260101000000_index: step 1/1: CREATE INDEX CONCURRENTLY .* \| wrote \d+\.\d MB of WAL, peak replica lag "
                     r"\d+\.\d MB$", "\n".join(lines), re.M), lines
    assert result.applied[0].as_dict()["steps"][0]["health"]["wal_bytes"] == step.health.wal_bytes


def test_paused_replay_holds_the_online_step_naming_the_replica_and_resuming_replay_lets_it_go_on(
        pair: Pair, target: str, tmp_path) -> None:
    bundle = plain_bundle(tmp_path / "m", {"20260101000000_index": INDEX})
    pair.replay(paused=True)
    pair.fill()
    assert pair.lag() > 1 * MB
    lines: list[str] = []
    outcome: dict = {}

    def run() -> None:
        gate = HealthGate(target, QUICK, log=lines.append)
        try:
            outcome["result"] = apply(target, bundle, FAST, health=gate, log=lines.append)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc
        finally:
            gate.close()

    worker = threading.Thread(target=run)
    worker.start()
    wait_until("the gate says it waits", lambda: any(line.startswith("health gate:") for line in lines))
    waiting = next(line for line in lines if line.startswith("health gate:"))
    assert re.fullmatch(r"health gate: 20260101000000_index: step 1/1 \(index build\): waiting \(replica health_replica "
                        r"\(local socket, streaming\) replay lag \d+\.\d MB \(over 1\.0 MB(; replay_lag [\d.]+ s)?\)\); "
                        r"checking every 0\.1 s, for at most 60 s", waiting), waiting
    time.sleep(0.5)
    assert worker.is_alive() and not index_exists(target), "the step must not start while the replica lags"
    resumed = time.monotonic()
    pair.replay(paused=False)
    worker.join(60)
    assert "error" not in outcome, outcome.get("error")
    step = outcome["result"].applied[0].steps[0]
    assert index_exists(target) and step.health.waited_s > 0.5
    assert step.health.wait_reason.startswith("replica health_replica (local socket, streaming) replay lag ")
    assert time.monotonic() - resumed < 10
    assert any(re.fullmatch(r"health gate: 20260101000000_index: step 1/1 \(index build\): healthy after [\d.]+ s; going on", line)
               for line in lines), lines


def test_the_maximum_wait_fails_the_step_before_it_starts_and_a_retry_resumes_there(
        pair: Pair, target: str, tmp_path) -> None:
    bundle = plain_bundle(tmp_path / "m", {"20260101000000_two_steps": "ALTER TABLE events ADD COLUMN note text;\n" + INDEX})
    pair.replay(paused=True)
    pair.fill()
    short = HealthSettings(max_replica_lag_bytes=1 * MB, poll_s=0.1, max_wait_s=1)
    with pytest.raises(HealthGateTimedOut) as raised:
        apply(target, bundle, FAST, health=HealthGate(target, short))
    message = str(raised.value)
    assert re.fullmatch(
        r"20260101000000_two_steps: step 2/2 \(index build\): did not start: the database stayed unhealthy for 1 s, longer than "
        r"health\.max_wait allows: replica health_replica \(local socket, streaming\) replay lag \d+\.\d MB \(over "
        r"1\.0 MB(; replay_lag [\d.]+ s)?\)\. Steps 1\.\.1 of 20260101000000_two_steps are applied and stay; The step and what "
        r"follows it are still to do: run the deployment again once that is resolved \(it resumes at this step\), "
        r"or raise health\.max_wait / the threshold in deploy\.yaml\.", message), message
    row = ledger(target, "20260101000000_two_steps")
    assert len(row) == 1 and row[0]["finished_at"] is None and row[0]["applied_steps_count"] == 1
    assert row[0]["logs"].startswith(ledger_mod.RETRYABLE_MARK) and not index_exists(target)

    pair.replay(paused=False)
    lines: list[str] = []
    result = apply(target, bundle, FAST, health=HealthGate(target, short), log=lines.append)
    assert result.applied[0].resumed_from == 1 and index_exists(target)
    row = ledger(target, "20260101000000_two_steps")
    assert len(row) == 1 and row[0]["finished_at"] is not None and row[0]["applied_steps_count"] == 2
    assert "20260101000000_two_steps: resuming at step 2 of 2 (an earlier run stopped there)" in lines


def test_a_deferring_caller_is_told_to_come_back_and_the_migration_is_left_resumable(
        pair: Pair, target: str, tmp_path) -> None:
    """Airflow's way: no sleeping in the worker; the wait is raised, the task defers and runs again."""
    bundle = plain_bundle(tmp_path / "m", {"20260101000000_index": INDEX})
    pair.replay(paused=True)
    pair.fill()

    def defer(waiting: HealthGateWaiting) -> None:
        raise waiting

    gate = HealthGate(target, HealthSettings(max_replica_lag_bytes=1 * MB, poll_s=5), defer=defer, waited_before_s=12)
    with pytest.raises(HealthGateWaiting) as raised:
        apply(target, bundle, FAST, health=gate)
    assert raised.value.retry_in_s == 5 and raised.value.waited_s >= 12
    assert re.fullmatch(r"20260101000000_index: step 1/1 \(index build\): waiting for the database's health \(replica "
                        r"health_replica \(local socket, streaming\) replay lag \d+\.\d MB \(over 1\.0 MB; replay_lag "
                        r"[\d.]+ s\)\); checking again in 5 s \(waited 12 s so far\)", str(raised.value)), str(raised.value)
    assert raised.value.reason.startswith("replica health_replica (local socket, streaming) replay lag ")
    assert ledger(target, "20260101000000_index")[0]["logs"].startswith(ledger_mod.RETRYABLE_MARK)
    assert not index_exists(target)


def test_a_migration_resumed_after_a_deferral_reports_the_lock_retries_of_its_steps_before_it(
        pair: Pair, target: str, tmp_path) -> None:
    """Step 1 waits for a lock (retried), step 2's gate defers: the run that resumes at step 2 reports
    step 1's retries too, from the ledger row, which is the deployment's account of the migration."""
    bundle = plain_bundle(tmp_path / "m", {"20260101000000_two_steps": "ALTER TABLE events ADD COLUMN note text;\n" + INDEX})
    pair.replay(paused=True)
    pair.fill()
    holder = psycopg.connect(target, application_name="lock-holder")
    holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(0.5, holder.rollback)
    release.start()

    def defer(waiting: HealthGateWaiting) -> None:
        raise waiting

    lines: list[str] = []
    try:
        with pytest.raises(HealthGateWaiting):
            apply(target, bundle, FAST, health=HealthGate(target, QUICK, defer=defer), log=lines.append)
    finally:
        release.join()
        holder.close()
    first = next(line for line in lines if line.startswith("20260101000000_two_steps: step 1/2: ALTER TABLE"))
    retried = int(re.search(r"\| (\d+) lock retr(y|ies)$", first).group(1))
    assert retried >= 1, first
    (row,) = ledger(target, "20260101000000_two_steps")
    assert row["applied_steps_count"] == 1 and row["logs"].startswith(
        f"{ledger_mod.RETRYABLE_MARK} plan=") and f" retries={retried}\n" in row["logs"], row["logs"]

    pair.replay(paused=False)
    result = apply(target, bundle, FAST, health=HealthGate(target, QUICK))
    (migration,) = result.applied
    assert migration.resumed_from == 1 and [s.number for s in migration.steps] == [2] and index_exists(target)
    assert migration.lock_retries == retried + migration.steps[0].attempts - 1
    assert migration.as_dict()["lock_retries"] == migration.lock_retries


def test_a_role_without_pg_read_all_stats_is_refused_naming_the_grant_with_nothing_changed(
        pair: Pair, target: str, tmp_path) -> None:
    role = f"nostats_{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    with psycopg.connect(pair.admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT ALL ON DATABASE {target.rsplit('/', 1)[1]} TO {role}")
    url = re.sub(r"//migrator:[^@]*@", f"//{role}:{password}@", target)
    with pytest.raises(HealthGateRefused) as raised:
        apply(url, plain_bundle(tmp_path / "m", {"20260101000000_index": INDEX}), FAST, health=HealthGate(url, QUICK))
    database = target.rsplit("/", 1)[1]
    assert str(raised.value) == (
        f"health gate on {database}: the role {role} cannot read replication and session statistics "
        "(pg_stat_replication's positions, other roles' sessions in pg_stat_activity), so replica lag, long "
        "transactions and autovacuum cannot be judged. Grant it, as a superuser: GRANT pg_read_all_stats TO "
        f"{role}; (or turn the gate off for this environment with deploy.yaml's health: {{enabled: false}}). "
        "Nothing was changed.")
    assert password not in str(raised.value)
    assert scalar(target, "SELECT to_regclass('_prisma_migrations') IS NULL")


def test_a_long_transaction_holding_back_xmin_is_named(pair: Pair, target: str) -> None:
    with psycopg.connect(target, application_name="nightly-report") as holder:
        holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # a report's consistent snapshot
        holder.execute("SELECT count(*) FROM events")  # the snapshot stays: backend_xmin set, transaction open
        time.sleep(1.2)
        gate = HealthGate(target, HealthSettings(max_transaction_age_s=1))
        decision = gate.check(["events"])
        gate.close()
        pid = holder.info.backend_pid
    [reading] = [r for r in decision.readings if r.signal == "long transaction"]
    assert reading.over and not decision.go
    assert re.fullmatch(rf"transaction of pid {pid} \('nightly-report', user migrator, idle in transaction\) open "
                        r"\d+ s holds back the xmin horizon \(over 1 s\); its query: SELECT count\(\*\) FROM events",
                        reading.text), reading.text


def test_sessions_waiting_on_our_locks_hold_the_step_but_another_deployment_on_the_advisory_lock_does_not(
        pair: Pair, target: str) -> None:
    with psycopg.connect(target) as ours, psycopg.connect(target, application_name="checkout") as app, \
            psycopg.connect(target, autocommit=True, application_name="deployer-2") as other:
        ours.execute("SELECT pg_advisory_lock(4242)")
        ours.execute("LOCK TABLE events IN SHARE MODE")
        blocked = threading.Thread(target=lambda: app.execute("INSERT INTO events VALUES (0, 'x')"))
        blocked.start()
        waiter = threading.Thread(target=lambda: other.execute("SELECT pg_advisory_lock(4242)"))
        waiter.start()
        gate = HealthGate(target, HealthSettings(max_transaction_age_s=3600))
        wait_until("both wait", lambda: scalar(target, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                                       "IN ('Lock') AND datname = current_database()") == 2)
        decision = gate.check(["events"], ours.info.backend_pid)
        gate.close()
        ours.rollback()
        ours.execute("SELECT pg_advisory_unlock_all()")
        ours.commit()
        blocked.join(10)
        waiter.join(10)
        app.rollback()
        app_pid = app.info.backend_pid
    [reading] = [r for r in decision.readings if r.signal == "lock waiters"]
    assert reading.over and reading.value == 1
    assert reading.text == f"1 session(s) waiting on our locks: pid {app_pid} ('checkout', user migrator) (over 0)"


def test_only_a_wraparound_autovacuum_on_the_steps_table_holds_it_back(pair: Pair, target: str) -> None:
    """Autovacuum cannot be summoned on demand: views shaped like the two statistics views, first on
    the search path, stand in for them; the query and its reading are the gate's own."""
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shadow")
        conn.execute("CREATE VIEW shadow.pg_stat_progress_vacuum AS SELECT * FROM (VALUES "
                     "(901, 'events'::regclass::oid), (902, 'events'::regclass::oid)) v(pid, relid)")
        conn.execute("CREATE VIEW shadow.pg_stat_activity AS SELECT * FROM (VALUES "
                     "(901, 'autovacuum worker', 'autovacuum: VACUUM public.events (to prevent wraparound)', "
                     "now() - interval '40 s'), "
                     "(902, 'autovacuum worker', 'autovacuum: VACUUM ANALYZE public.events', now())) "
                     "v(pid, backend_type, query, xact_start)")
        conn.execute("SET search_path = shadow, pg_catalog, public")
        readings = signals.autovacuum(conn, ["events", "no_such_table"])
    assert [(r.over, r.text) for r in sorted(readings, key=lambda r: r.text)] == [
        (True, "a wraparound-prevention autovacuum (pid 901) on events, running 40 s: it does not give way to "
               "our lock, so the step waits for it"),
        (False, "an autovacuum (pid 902) on events, running 0 s: it gives way to our lock, so the step goes ahead"),
    ]


def test_the_wal_rate_is_measured_between_readings_and_judged_against_its_budget(pair: Pair, target: str) -> None:
    gate = HealthGate(target, HealthSettings(max_wal_bytes_per_s=1 * MB, max_transaction_age_s=3600))
    gate.check(["events"])
    pair.fill(mb=4)
    decision = gate.check(["events"])
    gate.close()
    [reading] = [r for r in decision.readings if r.signal == "WAL rate"]
    assert reading.over and reading.value > 1 * MB
    assert re.fullmatch(r"WAL written at \d+\.\d MB/s \(over 1\.0 MB/s\)", reading.text), reading.text


def test_no_replica_attached_is_said_and_is_no_reason_to_wait(fresh_db: str) -> None:
    # The local stack's staging has no replica.
    gate = HealthGate(fresh_db, HealthSettings())
    decision = gate.check([])
    gate.close()
    assert decision.go
    assert decision.readings[0].text == "no replica attached (pg_stat_replication is empty)"


def test_deploy_yaml_health_settings_and_their_errors(tmp_path) -> None:
    from schema_deploy.config.errors import ConfigError
    from schema_deploy.config.settings import load

    path = tmp_path / "deploy.yaml"
    path.write_text("health: {max_replica_lag_mb: 16, max_wal_mb_per_s: 8, max_transaction_age: 5m, poll: 1s, "
                    "max_wait: 2m}\n")
    health = load(path).health
    assert (health.max_replica_lag_bytes, health.max_wal_bytes_per_s, health.max_transaction_age_s, health.poll_s,
            health.max_wait_s) == (16 * MB, 8 * MB, 300, 1, 120)
    assert health.describe() == (
        "health gate before each online step: replica replay lag under 16.0 MB, WAL under 8.0 MB/s, no transaction "
        "open longer than 300 s, at most 0 session(s) waiting on our locks, no wraparound autovacuum on the step's "
        "tables; checked every 1 s, for at most 120 s")
    for text, message in [
        ("health: {poll: 0s}", f"{path}: health.poll: '0s' is no time at all. Give a duration above zero, e.g. 2s."),
        ("health: {max_wait: soon}", f"{path}: health.max_wait: duration 'soon': write it as numbers with units "
                                     "(w, d, h, m, s), such as '2h', '90m', '1h30m', '45s', '7d' or '2w'. "
                                     "e.g. 10m, 2h or 1d."),
        ("health: {max_lag: 3}", f"{path}: health.max_lag: unknown key. Did you mean max_wait (in health)? Keys "
                                 "there: enabled, max_lock_waiters, max_replica_lag_mb, max_transaction_age, max_wait, "
                                 "max_wal_mb_per_s, poll."),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(ConfigError) as raised:
            load(path)
        assert str(raised.value) == message
    path.write_text("health: {enabled: false}\n")
    assert load(path).health.describe() == "health gate: off (deploy.yaml health: {enabled: false})"
