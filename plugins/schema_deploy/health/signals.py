"""The gate's signals, each one query on the primary, each judged against its threshold as a `Reading`."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg

from schema_deploy.config.health import HealthSettings, mb
from schema_deploy.redact import scrub_sql


@dataclass(frozen=True)
class Reading:
    """One signal's value against its threshold; `text` says it in words (what, where, value, limit)."""

    signal: str  # replica lag | WAL rate | autovacuum | lock waiters | long transaction | replicas
    value: float | None
    threshold: float | None
    over: bool
    text: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def replicas(conn: psycopg.Connection, s: HealthSettings) -> list[Reading]:
    """Each replica's replay lag in bytes (gated) with its replay_lag in seconds (shown)."""
    rows = conn.execute(
        "SELECT application_name, coalesce(host(client_addr), 'local socket'), state, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, extract(epoch FROM replay_lag)::float8 "
        "FROM pg_stat_replication ORDER BY application_name, pid").fetchall()
    if not rows:
        return [Reading("replicas", 0, None, False, "no replica attached (pg_stat_replication is empty)")]
    out = []
    for name, client, state, lag, seconds in rows:
        who = f"replica {name or '?'} ({client}, {state})"
        if lag is None:
            out.append(Reading("replica lag", None, s.max_replica_lag_bytes, True,
                               f"{who} reports no replay position yet"))
            continue
        shown = f"; replay_lag {seconds:.1f} s" if seconds is not None else ""
        over = lag > s.max_replica_lag_bytes
        out.append(Reading("replica lag", lag, s.max_replica_lag_bytes, over,
                           f"{who} replay lag {mb(lag)} ({'over' if over else 'under'} "
                           f"{mb(s.max_replica_lag_bytes)}{shown})"))
    return out


def wal_position(conn: psycopg.Connection) -> int:
    """The primary's current WAL position as bytes since 0/0."""
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()[0])


def wal_rate(bytes_per_s: float, s: HealthSettings) -> Reading:
    over = bytes_per_s > s.max_wal_bytes_per_s
    return Reading("WAL rate", bytes_per_s, s.max_wal_bytes_per_s, over,
                   f"WAL written at {mb(bytes_per_s)}/s ({'over' if over else 'under'} {mb(s.max_wal_bytes_per_s)}/s)")


def autovacuum(conn: psycopg.Connection, tables: list[str]) -> list[Reading]:
    """Autovacuum workers on the step's tables: a wraparound-prevention one holds the step back."""
    if not tables:
        return []
    rows = conn.execute(
        "SELECT a.pid, p.relid::regclass::text, coalesce(a.query, ''), "
        "extract(epoch FROM now() - a.xact_start)::float8 "
        "FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid) "
        "WHERE a.backend_type = 'autovacuum worker' "
        "AND p.relid IN (SELECT to_regclass(t) FROM unnest(%s::text[]) t)", (tables,)).fetchall()
    out = []
    for pid, table, query, age in rows:
        wraparound = "to prevent wraparound" in query
        kind = "a wraparound-prevention autovacuum" if wraparound else "an autovacuum"
        then = ("it does not give way to our lock, so the step waits for it" if wraparound
                else "it gives way to our lock, so the step goes ahead")
        out.append(Reading("autovacuum", age, None, wraparound,
                           f"{kind} (pid {pid}) on {table}, running {age or 0:.0f} s: {then}"))
    return out


def lock_waiters(conn: psycopg.Connection, ours: int | None, s: HealthSettings) -> Reading:
    """Sessions waiting on a (non-advisory) lock that our session `ours` holds."""
    if ours is None:
        return Reading("lock waiters", 0, s.max_lock_waiters, False, "no session of ours holds locks")
    rows = conn.execute(
        "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, '?') FROM pg_stat_activity a "
        "WHERE %s = ANY (pg_blocking_pids(a.pid)) AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
        "AND NOT l.granted AND l.locktype = 'advisory')", (ours,)).fetchall()
    over = len(rows) > s.max_lock_waiters
    who = ", ".join(f"pid {pid} ({app!r}, user {user})" for pid, app, user in rows[:5])
    return Reading("lock waiters", len(rows), s.max_lock_waiters, over,
                   f"{len(rows)} session(s) waiting on our locks{': ' + who if who else ''} "
                   f"({'over' if over else 'within'} {s.max_lock_waiters})")


def long_transaction(conn: psycopg.Connection, ours: list[int], s: HealthSettings) -> Reading:
    """The oldest client transaction holding back the xmin horizon (ours left out): one with a snapshot
    (backend_xmin: a repeatable-read report, a running query) or a transaction id (it wrote)."""
    row = conn.execute(
        "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, '?'), coalesce(a.state, '?'), "
        "extract(epoch FROM now() - a.xact_start)::float8, left(coalesce(a.query, ''), 120) "
        "FROM pg_stat_activity a WHERE coalesce(a.backend_xid, a.backend_xmin) IS NOT NULL "
        "AND a.xact_start IS NOT NULL "
        "AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND NOT (a.pid = ANY (%s)) "
        "ORDER BY a.xact_start LIMIT 1", (ours,)).fetchone()
    if row is None:
        return Reading("long transaction", 0, s.max_transaction_age_s, False, "no transaction holds back xmin")
    pid, app, user, state, age, query = row
    over = age > s.max_transaction_age_s
    return Reading("long transaction", age, s.max_transaction_age_s, over,
                   f"transaction of pid {pid} ({app!r}, user {user}, {state}) open {age:.0f} s holds back the "
                   f"xmin horizon ({'over' if over else 'under'} {s.max_transaction_age_s:.0f} s); "
                   f"its query: {scrub_sql(' '.join(query.split()))}")
