"""A backfill's checkpoint: one row per backfill in the target's `schema_deploy.backfills`.

Each batch updates its rows and this row in one transaction, so the checkpoint never says a batch was
done that was not, nor misses one that was: a kill loses at most the batch in flight, and the next
run resumes after `last_key` with no row updated twice.

`requested` is how an operator reaches a running backfill: `pause` or `cancel`, read by the runner at
its next batch boundary (where it stops, state `paused` or `cancelled`). `resume` clears it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

SCHEMA = "schema_deploy"
TABLE = f"{SCHEMA}.backfills"
STATES = ("running", "paused", "cancelled", "done", "failed")

DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id            text PRIMARY KEY,
        digest        text NOT NULL,
        release       text,
        target_table  text NOT NULL,
        last_key      text,
        rows_done     bigint NOT NULL DEFAULT 0,
        rows_estimated bigint,
        batches       integer NOT NULL DEFAULT 0,
        batch_rows    integer,
        wal_bytes     bigint NOT NULL DEFAULT 0,
        state         text NOT NULL CHECK (state IN {STATES!r}),
        requested     text CHECK (requested IN ('pause', 'cancel')),
        requested_by  text,
        pauses        jsonb NOT NULL DEFAULT '[]',
        message       text,
        started_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz
    )""",
    f"COMMENT ON TABLE {TABLE} IS 'Checkpoints of schema_deploy backfills: each batch commits with its row here. "
    "See: python -m schema_deploy backfill status'",
]
COLUMNS = ("id", "digest", "release", "target_table", "last_key", "rows_done", "rows_estimated", "batches",
           "batch_rows", "wal_bytes", "state", "requested", "requested_by", "pauses", "message", "started_at", "updated_at",
           "finished_at")


@dataclass
class Checkpoint:
    id: str
    digest: str
    release: str | None
    target_table: str
    last_key: str | None
    rows_done: int
    rows_estimated: int | None
    batches: int
    batch_rows: int | None
    wal_bytes: int
    state: str
    requested: str | None
    requested_by: str | None
    pauses: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for k in ("started_at", "updated_at", "finished_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out

    def progress(self) -> dict[str, Any]:
        """What the page shows of it: rows done of estimated, the rate since it started, ETA, the last
        batch's size, and why it is not moving, when it is not."""
        seconds = ((self.finished_at or self.updated_at) - self.started_at).total_seconds() \
            if self.started_at and self.updated_at else 0.0
        rate = self.rows_done / seconds if seconds > 0 else 0.0
        left = max(0, (self.rows_estimated or 0) - self.rows_done)
        pause = next((p for p in reversed(self.pauses) if "since" in p), None)
        because = (f"{self.requested} requested by {self.requested_by or 'an operator'}" if self.requested
                   else f"{self.state} by {self.requested_by or 'an operator'}" if self.state in ("paused", "cancelled")
                   else f"the database's health: {pause['reason']}" if pause and "seconds" not in pause
                   and self.state == "running" else self.message if self.state == "failed" else None)
        return {"id": self.id, "table": self.target_table, "state": self.state, "rows_done": self.rows_done,
                "rows_estimated": self.rows_estimated,
                "percent": round(100 * self.rows_done / self.rows_estimated, 1) if self.rows_estimated else None,
                "rows_per_s": round(rate), "eta_s": round(left / rate) if rate and self.state == "running" else None,
                "batch_rows": self.batch_rows, "batches": self.batches, "wal_bytes": self.wal_bytes,
                "pauses": len([p for p in self.pauses if "since" in p]), "paused_because": because,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


def lock_key(backfill: str) -> int:
    """pg_try_advisory_lock key of one backfill's runner: 8 bytes of sha256, never Prisma's 72707369."""
    return int.from_bytes(hashlib.sha256(f"{TABLE}:{backfill}".encode()).digest()[:8], "big", signed=True)


def runners(conn: psycopg.Connection, backfill: str) -> list[Any]:
    """The sessions running `backfill` now (holding its runner's advisory lock), as pg.db.Session."""
    from schema_deploy.pg.db import advisory_lock_holders

    key = lock_key(backfill) & 0xFFFFFFFFFFFFFFFF
    return advisory_lock_holders(conn, key >> 32, key & 0xFFFFFFFF, 1)


def ensure(conn: psycopg.Connection) -> None:
    """The table, made if missing (in the caller's transaction when it has one)."""
    if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
        for statement in DDL:
            conn.execute(statement)


def read(conn: psycopg.Connection, backfill: str | None = None) -> list[Checkpoint]:
    """The checkpoints (of `backfill` only, when named); [] when there is no table yet."""
    if conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0] is None:
        return []
    where, params = ("WHERE id = %s", (backfill,)) if backfill else ("", ())
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} {where} ORDER BY started_at, id", params)
    return [Checkpoint(*row) for row in rows.fetchall()]


def start(conn: psycopg.Connection, backfill: str, digest: str, release: str | None, table: str,
          estimated: int) -> Checkpoint:
    """The checkpoint to run from: a new one, or the existing one (set running). One of another digest (an
    edited backfill.yaml) starts over from the first key: the rows its `where` still selects are the
    rows to do, whatever an earlier version did."""
    ensure(conn)
    (existing,) = read(conn, backfill) or [None]
    if existing is None or existing.digest != digest:
        note = ([{"at": "restart", "reason": f"backfill.yaml changed (was {existing.digest[:12]}, now {digest[:12]}): "
                  f"started again from the first key ({existing.rows_done} rows done before)"}]
                if existing else [])
        conn.execute(f"DELETE FROM {TABLE} WHERE id = %s", (backfill,))
        conn.execute(f"INSERT INTO {TABLE} (id, digest, release, target_table, rows_estimated, state, pauses) "
                     "VALUES (%s, %s, %s, %s, %s, 'running', %s)",
                     (backfill, digest, release, table, estimated, json.dumps(note)))
    elif existing.state == "done":  # rows match `where` again (the change was rolled back): from the first key
        note = {"at": "restart", "reason": f"done before ({existing.rows_done} rows), and {estimated} rows match "
                "`where` again: started again from the first key"}
        conn.execute(f"UPDATE {TABLE} SET state = 'running', message = NULL, release = coalesce(%s, release), "
                     "last_key = NULL, rows_done = 0, batches = 0, rows_estimated = %s, pauses = pauses || %s::jsonb, "
                     "updated_at = now(), finished_at = NULL WHERE id = %s",
                     (release, estimated, json.dumps([note]), backfill))
    else:
        conn.execute(f"UPDATE {TABLE} SET state = 'running', message = NULL, release = coalesce(%s, release), "
                     "rows_estimated = rows_done + %s, updated_at = now(), finished_at = NULL WHERE id = %s",
                     (release, estimated, backfill))
    return read(conn, backfill)[0]


def batch_done(conn: psycopg.Connection, backfill: str, last_key: str, rows: int, wal: int) -> tuple[str | None, str | None]:
    """Inside the batch's transaction: record it; the operator's request, if any (pause/cancel, by whom)."""
    return conn.execute(f"UPDATE {TABLE} SET last_key = %s, rows_done = rows_done + %s, batches = batches + 1, "
                        "batch_rows = %s, wal_bytes = wal_bytes + %s, updated_at = now() WHERE id = %s "
                        "RETURNING requested, requested_by", (last_key, rows, rows, wal, backfill)).fetchone()


def finish(conn: psycopg.Connection, backfill: str, state: str, message: str | None = None) -> None:
    conn.execute(f"UPDATE {TABLE} SET state = %s, message = %s, requested = NULL, updated_at = now(), "
                 "finished_at = CASE WHEN %s IN ('done', 'cancelled') THEN now() END WHERE id = %s",
                 (state, message, state, backfill))


def restart_pass(conn: psycopg.Connection, backfill: str) -> None:
    """Another pass from the first key (rows before the last key that still match `where`)."""
    conn.execute(f"UPDATE {TABLE} SET last_key = NULL, updated_at = now() WHERE id = %s", (backfill,))


def add_pause(conn: psycopg.Connection, backfill: str, pause: dict[str, Any]) -> None:
    conn.execute(f"UPDATE {TABLE} SET pauses = pauses || %s::jsonb, updated_at = now() WHERE id = %s",
                 (json.dumps([pause]), backfill))


def end_pause(conn: psycopg.Connection, backfill: str, facts: dict[str, Any]) -> None:
    """The last pause ended: how long it lasted."""
    conn.execute(f"UPDATE {TABLE} SET pauses = jsonb_set(pauses, ARRAY[(jsonb_array_length(pauses) - 1)::text], "
                 "pauses -> -1 || %s::jsonb), updated_at = now() WHERE id = %s AND jsonb_array_length(pauses) > 0",
                 (json.dumps(facts), backfill))


def request(conn: psycopg.Connection, backfill: str, what: str | None, by: str) -> Checkpoint | None:
    """An operator's pause, cancel or resume (what=None). A backfill no session runs now takes it at once
    (state paused, cancelled, or back to running-when-next-run); a running one at its next batch."""
    row = read(conn, backfill)
    if not row:
        return None
    running = bool(runners(conn, backfill))
    if what is None:
        conn.execute(f"UPDATE {TABLE} SET requested = NULL, requested_by = %s, updated_at = now(), "
                     "state = CASE WHEN state IN ('paused', 'cancelled', 'failed') THEN 'running' ELSE state END, "
                     "finished_at = CASE WHEN state = 'done' THEN finished_at END WHERE id = %s", (by, backfill))
    elif running:
        conn.execute(f"UPDATE {TABLE} SET requested = %s, requested_by = %s, updated_at = now() WHERE id = %s",
                     (what, by, backfill))
    else:
        state = "paused" if what == "pause" else "cancelled"
        conn.execute(f"UPDATE {TABLE} SET state = CASE WHEN state = 'done' THEN state ELSE %s END, requested = NULL, "
                     "requested_by = %s, updated_at = now() WHERE id = %s", (state, by, backfill))
    return read(conn, backfill)[0]
