"""Prisma Migrate's ledger (`_prisma_migrations`) and its advisory lock.

The table, its columns and what each row state means are Prisma's, so that
`prisma migrate status`/`deploy` and this tool read the same history:

* applied:     `finished_at` set and `rolled_back_at` NULL;
* failed:      `finished_at` and `rolled_back_at` both NULL (Prisma's P3009);
* rolled back: `rolled_back_at` set — history only, ignored by both tools.

One migrator at a time: the session advisory lock with Prisma's key 72707369.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import psycopg
from psycopg import sql

from schema_deploy.pg import db
from schema_deploy.state.errors import AdvisoryLockTimeout, LedgerRowMissing

PRISMA_LOCK_KEY = 72707369
TABLE = "_prisma_migrations"

# Prisma's DDL (prisma-engines, sql-schema-connector flavour/postgres.rs).
LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)
"""

# The first line of `logs` for a failure that a plain re-run may resume
# (lock contention, not a fault in the SQL).
RETRYABLE_MARK = "[schema-deploy: retryable]"
# `logs` of a stepped migration while it runs: names the plan (a digest of its
# steps), so that a resume after a crash can insist on the very same steps.
IN_PROGRESS_MARK = "[schema-deploy: in progress]"


def progress_logs(mark: str, digest: str, lock_retries: int, extra: str = "") -> str:
    """`logs` of one of our interrupted or running stepped migrations: the mark, its plan's digest and the
    lock retries its applied steps needed (`retries=`, so a resume reports the migration's total), then
    `extra` (`steps=N` on the first line; a failure's account on the lines after it)."""
    return f"{mark} plan={digest} retries={lock_retries}{extra}"


class Resumable(NamedTuple):
    """Where an interrupted stepped migration of ours stands: its row, the steps applied, the plan it ran
    (None: not recorded) and the lock retries those steps needed."""

    row_id: str
    steps: int
    digest: str | None
    lock_retries: int = 0


@dataclass(frozen=True)
class LedgerRow:
    """One row of `_prisma_migrations`."""

    id: str
    checksum: str
    finished_at: datetime | None
    migration_name: str
    logs: str | None
    rolled_back_at: datetime | None
    started_at: datetime
    applied_steps_count: int

    @property
    def applied(self) -> bool:
        return self.finished_at is not None and self.rolled_back_at is None

    @property
    def failed(self) -> bool:
        return self.finished_at is None and self.rolled_back_at is None

    @property
    def resumable(self) -> bool:
        """A failed row this tool may continue: interrupted by a crash, or out of lock retries."""
        # Only rows of our own stepped runs: they record their plan, so the steps already done
        # are known. A bare failed row (say, of a killed `prisma migrate deploy`, whose statements
        # before the kill persist) is Prisma's P3009 case and needs `resolve`.
        return self.failed and bool(self.logs) and self.logs.startswith((RETRYABLE_MARK, IN_PROGRESS_MARK))

    def _progress(self, key: str) -> str | None:
        """A `key=` word of the first line of our marked `logs` (progress_logs)."""
        if self.logs and self.logs.startswith((RETRYABLE_MARK, IN_PROGRESS_MARK)):
            for word in self.logs.split("\n", 1)[0].split():
                if word.startswith(f"{key}="):
                    return word[len(key) + 1:]
        return None

    @property
    def plan_digest(self) -> str | None:
        """The digest of the plan an interrupted run of ours was executing, if it recorded one."""
        return self._progress("plan")

    @property
    def resumable_at(self) -> Resumable:
        """Where a resume of this (resumable) row starts, and the lock retries of the steps before it
        (0 when not recorded: a row of a version that did not count them)."""
        retries = self._progress("retries")
        return Resumable(self.id, self.applied_steps_count, self.plan_digest,
                         int(retries) if retries and retries.isdigit() else 0)


def table_ident(schema: str = "public") -> sql.Identifier:
    return db.ident(schema, TABLE)


def ledger_exists(conn: psycopg.Connection, schema: str = "public") -> bool:
    return db.relation_exists(conn, schema, TABLE)


def ensure_ledger(conn: psycopg.Connection, schema: str = "public") -> None:
    """Create `_prisma_migrations` with Prisma's DDL when it is missing."""
    if not ledger_exists(conn, schema):
        conn.execute(sql.SQL(LEDGER_DDL).format(table=table_ident(schema)))


def read_rows(conn: psycopg.Connection, schema: str = "public") -> list[LedgerRow]:
    """Every ledger row, oldest first; [] when the table does not exist."""
    if not ledger_exists(conn, schema):
        return []
    query = sql.SQL(
        "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, "
        "applied_steps_count FROM {} ORDER BY started_at, migration_name"
    ).format(table_ident(schema))
    return [LedgerRow(*r) for r in conn.execute(query).fetchall()]


def insert_started(conn: psycopg.Connection, name: str, checksum: str, schema: str = "public",
                   logs: str | None = None) -> str:
    """Insert the row Prisma writes before a migration runs; returns its id."""
    row_id = str(uuid.uuid4())
    conn.execute(
        sql.SQL("INSERT INTO {} (id, checksum, migration_name, logs, started_at, applied_steps_count) "
                "VALUES (%s, %s, %s, %s, now(), 0)").format(table_ident(schema)),
        (row_id, checksum, name, logs),
    )
    return row_id


def set_steps(conn: psycopg.Connection, row_id: str, steps: int, schema: str = "public") -> None:
    conn.execute(sql.SQL("UPDATE {} SET applied_steps_count = %s WHERE id = %s").format(table_ident(schema)),
                 (steps, row_id))


def mark_finished(conn: psycopg.Connection, row_id: str, steps: int, schema: str = "public") -> None:
    """Finish our row; LedgerRowMissing when it is not there any more (never "applied" without a row)."""
    # clock_timestamp(), not now(): in a one-transaction migration now() is still the
    # start time, and finished_at - started_at is how long the migration took.
    cur = conn.execute(
        sql.SQL("UPDATE {} SET finished_at = clock_timestamp(), applied_steps_count = %s, logs = NULL "
                "WHERE id = %s AND finished_at IS NULL").format(table_ident(schema)),
        (steps, row_id),
    )
    if cur.rowcount != 1:
        raise LedgerRowMissing(row_id, schema)


def mark_failed(conn: psycopg.Connection, row_id: str, logs: str, schema: str = "public") -> None:
    """Prisma's failed state: `logs` set, `finished_at` and `rolled_back_at` NULL."""
    conn.execute(sql.SQL("UPDATE {} SET logs = %s WHERE id = %s").format(table_ident(schema)), (logs, row_id))


def insert_rolled_back(conn: psycopg.Connection, name: str, checksum: str, logs: str,
                       schema: str = "public") -> None:
    """Record a failure whose transaction rolled back: history only, nothing to resolve."""
    conn.execute(
        sql.SQL("INSERT INTO {} (id, checksum, migration_name, logs, rolled_back_at, started_at, "
                "applied_steps_count) VALUES (%s, %s, %s, %s, now(), now(), 0)").format(table_ident(schema)),
        (str(uuid.uuid4()), checksum, name, logs),
    )


def mark_rolled_back(conn: psycopg.Connection, name: str, schema: str = "public") -> int:
    """`resolve --rolled-back`: set `rolled_back_at` on the failed rows of `name`."""
    cur = conn.execute(
        sql.SQL("UPDATE {} SET rolled_back_at = now() WHERE migration_name = %s "
                "AND finished_at IS NULL AND rolled_back_at IS NULL").format(table_ident(schema)),
        (name,),
    )
    return cur.rowcount


def insert_applied(conn: psycopg.Connection, name: str, checksum: str, schema: str = "public") -> None:
    """`resolve --applied`: a row that says applied now, with empty logs (Prisma's baselining)."""
    conn.execute(
        sql.SQL("INSERT INTO {} (id, checksum, migration_name, logs, started_at, finished_at, "
                "applied_steps_count) VALUES (%s, %s, %s, '', now(), now(), 0)").format(table_ident(schema)),
        (str(uuid.uuid4()), checksum, name),
    )


# --- the advisory lock -------------------------------------------------------

def acquire_lock(conn: psycopg.Connection, timeout_s: float, poll_s: float = 0.25) -> None:
    """Take the session advisory lock, waiting at most `timeout_s`.

    Polls `pg_try_advisory_lock` rather than blocking in `pg_advisory_lock`, so
    the deadline holds whatever the session's lock_timeout is.
    """
    start = time.monotonic()
    while True:
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (PRISMA_LOCK_KEY,)).fetchone()[0]:
            return
        waited = time.monotonic() - start
        if waited >= timeout_s:
            # A bigint key is classid 0, objid the key, objsubid 1 in pg_locks.
            raise AdvisoryLockTimeout(waited, db.advisory_lock_holders(conn, 0, PRISMA_LOCK_KEY, 1))
        time.sleep(min(poll_s, max(timeout_s - waited, 0.01)))


def release_lock(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (PRISMA_LOCK_KEY,))


@contextmanager
def migration_lock(conn: psycopg.Connection, timeout_s: float,
                   log: Callable[[str], None] = lambda _: None) -> Iterator[None]:
    """Hold the advisory lock for the block (apply, rollback, resolve)."""
    log(f"waiting for the migration lock (pg_advisory_lock {PRISMA_LOCK_KEY})")
    acquire_lock(conn, timeout_s)
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:  # a lost session's lock went with it
            release_lock(conn)
