"""`HealthGate`: wait until production is healthy before an online step, and measure what the step did.

One gate per deployment to one database. It reads its signals on a connection of its own (autocommit,
application name `schema-deploy-health`), never on the migration's session.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg

from schema_deploy.health import signals
from schema_deploy.health.errors import HealthGateRefused, HealthGateTimedOut, HealthGateWaiting
from schema_deploy.config.health import HealthSettings, mb
from schema_deploy.health.signals import Reading
from schema_deploy.pg import db

APPLICATION = "schema-deploy-health"
LAG_SAMPLE_S = 0.5  # how often the replica lag is sampled while a step runs


@dataclass(frozen=True)
class Decision:
    """Every signal read at one moment; `go` when none is over its threshold."""

    readings: tuple[Reading, ...]

    @property
    def go(self) -> bool:
        return not any(r.over for r in self.readings)

    @property
    def blocking(self) -> list[Reading]:
        return [r for r in self.readings if r.over]

    def reason(self) -> str:
        """The signals over their thresholds, in words ('' when healthy)."""
        return "; ".join(r.text for r in self.blocking)

    def summary(self) -> str:
        """The decision and its replication and WAL readings, in words: what a progress line shows."""
        shown = [r.text for r in self.readings if r.signal in ("replicas", "replica lag", "WAL rate")]
        return f"{'go' if self.go else 'wait'}: {'; '.join(shown)}"


@dataclass
class StepHealth:
    """What the gate saw around one step: its wait before it, the WAL it wrote, the replica lag it caused."""

    waited_s: float = 0.0
    wait_reason: str = ""  # the first decision that held it back
    checks: int = 0
    wal_bytes: int = 0
    replica_lag_peak_bytes: int | None = None  # None: no replica attached
    replica_lag_after_bytes: int | None = None

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def describe(self) -> str:
        lag = ("no replica" if self.replica_lag_peak_bytes is None
               else f"peak replica lag {mb(self.replica_lag_peak_bytes)}")
        waited = f"waited {self.waited_s:.1f} s for health ({self.wait_reason}); " if self.waited_s else ""
        return f"{waited}wrote {mb(self.wal_bytes)} of WAL, {lag}"


@dataclass
class HealthGate:
    """The gate for one database (`url`), with deploy.yaml's thresholds.

    `wait` sleeps between checks; with `defer` set, it calls `defer(exc)` with a `HealthGateWaiting`
    instead (Airflow raises TaskDeferred from it: no worker slot held while waiting)."""

    url: str
    settings: HealthSettings = field(default_factory=HealthSettings)
    log: Callable[[str], None] = lambda _m: None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    waited_before_s: float = 0.0  # waited by earlier attempts of this task (a deferred task's progress)
    wait_reason_before: str = ""  # and why, as the first of them was told
    wait_what_before: str = ""  # and for what: a wait for anything else starts its own count ("": the next)
    defer: Callable[[HealthGateWaiting], None] | None = None
    # Told once when a step first has to wait (what, why): the deployment's one Slack message about it.
    announce: Callable[[str, str], None] | None = None
    _conn: object = None
    _last_wal: tuple[int, float] | None = None

    # --- the session --------------------------------------------------------------------

    def _session(self):
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, application_name=APPLICATION)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def require_privileges(self) -> None:
        """Refuse (nothing changed) when the role cannot read what the gate judges."""
        conn = self._session()
        if not db.sees_all_sessions(conn):
            user, database = conn.execute("SELECT current_user, current_database()").fetchone()
            raise HealthGateRefused(database, user)

    # --- reading ------------------------------------------------------------------------

    def _wal_rate(self, conn) -> float:
        """Bytes of WAL per second since the last reading (a first one reads twice, a second apart)."""
        if self._last_wal is None:
            self._last_wal = (signals.wal_position(conn), self.clock())
            self.sleep(1.0)
        earlier, since = self._last_wal
        if self.clock() - since < 0.2:  # too close to the last reading for a rate
            self.sleep(0.2 - (self.clock() - since))
        now, position = self.clock(), signals.wal_position(conn)
        self._last_wal = (position, now)
        return max(0.0, (position - earlier) / max(now - since, 1e-3))

    def check(self, tables: list[str], ours: int | None = None) -> Decision:
        """Every signal now. `tables`: those the next step touches; `ours`: the migration session's pid."""
        s, conn = self.settings, self._session()
        readings = [*signals.replicas(conn, s), signals.wal_rate(self._wal_rate(conn), s),
                    *signals.autovacuum(conn, tables), signals.lock_waiters(conn, ours, s),
                    signals.long_transaction(conn, [ours] if ours else [], s)]
        return Decision(tuple(readings))

    def replica_lag(self) -> int | None:
        """The largest replay lag in bytes over the replicas (None: no replica attached)."""
        readings = [r for r in signals.replicas(self._session(), self.settings) if r.signal == "replica lag"]
        return max((int(r.value) for r in readings if r.value is not None), default=None) if readings else None

    # --- waiting ------------------------------------------------------------------------

    def wait(self, what: str, tables: list[str], ours: int | None = None) -> StepHealth:
        """Return once every signal is under its threshold (at once when healthy); raise
        `HealthGateTimedOut` when that takes longer than `max_wait` (earlier attempts' waits included)."""
        s, health = self.settings, StepHealth()
        if self.wait_what_before and self.wait_what_before != what:  # earlier attempts waited for another step
            self.waited_before_s, self.wait_reason_before, self.wait_what_before = 0.0, "", ""
        started = None  # waiting starts when the first check says wait (the first reading itself takes ~1 s)
        while True:
            decision = self.check(tables, ours)
            health.checks += 1
            started = self.clock() if started is None else started
            waited = self.clock() - started if health.checks > 1 else 0.0
            if decision.go:
                # Earlier attempts' wait (and its reason) belong to the step they held back: this first one.
                health.waited_s = waited + self.waited_before_s
                health.wait_reason = health.wait_reason or self.wait_reason_before
                if health.waited_s:
                    self.log(f"health gate: {what}: healthy after {health.waited_s:.1f} s; going on")
                self.waited_before_s, self.wait_reason_before, self.wait_what_before = 0.0, "", ""
                return health
            reason = decision.reason()
            health.wait_reason = health.wait_reason or reason
            total = waited + self.waited_before_s
            if total >= s.max_wait_s:
                raise HealthGateTimedOut(what, total, reason)
            if health.checks == 1 or self.defer is not None:
                self.log(f"health gate: {what}: waiting ({reason}); checking every {s.poll_s:g} s, for at most "
                         f"{s.max_wait_s:.0f} s")
            if health.checks == 1 and not self.waited_before_s and self.announce is not None:
                self.announce(what, reason)
            if self.defer is not None:
                self.defer(HealthGateWaiting(what, reason, s.poll_s, total))
            self.sleep(min(s.poll_s, s.max_wait_s - total))

    @contextmanager
    def measure(self, health: StepHealth) -> Iterator[StepHealth]:
        """Around one step: the cluster's WAL written meanwhile (LSN difference) and the peak replica lag,
        sampled every LAG_SAMPLE_S on a connection of its own."""
        before = signals.wal_position(self._session())
        peak: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            try:
                with db.connect(self.url, application_name=APPLICATION) as conn:
                    while True:
                        lags = [r.value for r in signals.replicas(conn, self.settings)
                                if r.signal == "replica lag" and r.value is not None]
                        if lags:
                            peak.append(int(max(lags)))
                        if stop.wait(LAG_SAMPLE_S):
                            return
            except Exception:  # noqa: BLE001 - a lost sample must not fail the step it measures
                return

        sampler = threading.Thread(target=sample, name="health-lag-sampler", daemon=True)
        sampler.start()
        try:
            yield health
        finally:
            stop.set()
            sampler.join(10)
            try:
                health.wal_bytes = max(0, signals.wal_position(self._session()) - before)
                health.replica_lag_after_bytes = after = self.replica_lag()
            except psycopg.Error:  # the step's own outcome (or error) matters more than its figures
                after = None
            seen = peak + ([after] if after is not None else [])
            health.replica_lag_peak_bytes = max(seen) if seen else None
