"""A private primary with a streaming replica, for the tests that make replica lag on purpose.

Made with `devstack/stack.py`'s own code (initdb, pg_basebackup -R) on free ports. The local stack's
production replica is not used: pausing its replay would hold back every other test's production
deployment running beside them (the health gate is on in production by default)."""
from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

import stack
from tests.conftest import free_port, with_database, worker_id

REPLICA = "health_replica"


@dataclass
class Pair:
    url: str  # the primary's default database, as the application role (migrator, with pg_read_all_stats)
    admin: str  # the primary, as the superuser
    replica_admin: str

    def replay(self, paused: bool) -> None:
        with psycopg.connect(self.replica_admin, autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")

    def fill(self, mb: float = 3) -> None:
        """Write about `mb` MB of WAL on the primary (a table of its own, so nothing else is touched)."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (id bigserial, pad text)")
            conn.execute("INSERT INTO filler (pad) SELECT repeat('x', 900) FROM generate_series(1, %s)",
                         (int(mb * 1000),))

    def lag(self) -> int:
        with psycopg.connect(self.admin) as conn:
            return int(conn.execute("SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) "
                                    "FROM pg_stat_replication").fetchone()[0])

    def caught_up(self, timeout: float = 30) -> None:
        """Until the replica has replayed everything the primary wrote so far."""
        deadline = time.monotonic() + timeout
        while self.lag() > 0:
            assert time.monotonic() < deadline, f"the replica still lags {self.lag()} bytes after {timeout} s"
            time.sleep(0.05)

    def database(self, name: str) -> str:
        """A new empty database on the primary, owned by migrator: its URL."""
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER migrator')
        return with_database(self.url, name)

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def replica_pair(label: str) -> Iterator[Pair]:
    """A primary and its streaming replica (application_name `health_replica`), both gone afterwards."""
    tag = f"{label}_{worker_id()}".replace("-", "_")
    primary = stack.Cluster(f"pair_{tag}", free_port())
    replica = stack.Cluster(f"pair_{tag}_replica", free_port())
    try:
        password = secrets.token_urlsafe(18)
        stack.start_cluster(primary, password)
        with psycopg.connect(stack.admin_url(primary), autocommit=True) as conn:  # as production's role has it
            conn.execute("GRANT pg_read_all_stats TO migrator")
        stack.start_replica(primary, replica, REPLICA)
        admin = stack.admin_url(primary).replace("/postgres?", f"/{primary.database}?")
        yield Pair(stack.database_url(primary, password), admin, stack.admin_url(replica))
    finally:
        for cluster in (replica, primary):
            stack.stop_cluster(cluster)
            shutil.rmtree(stack.cluster_dirs(cluster)[0].parent, ignore_errors=True)
