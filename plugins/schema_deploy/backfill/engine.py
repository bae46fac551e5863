"""Run one backfill: keyset batches, each its own short transaction, paced by a WAL budget, gated on
the database's health between batches, checkpointed with every batch.

One batch is one statement, in a short transaction of its own (`SET LOCAL lock_timeout`) with the
checkpoint's row::

    WITH batch AS MATERIALIZED (SELECT key FROM t WHERE (where) AND key > last ORDER BY key LIMIT n FOR UPDATE),
         done AS (UPDATE t SET ... FROM batch WHERE t.key = batch.key RETURNING t.key, (where) AS still)
    INSERT INTO a temporary table: count(*), the batch's last key, count(*) FILTER (WHERE still), a key still selected

run under `EXPLAIN (ANALYZE, WAL)`: PostgreSQL then counts the WAL that statement wrote (row locks, new
row versions, index entries, triggers' writes, full-page images) and nothing else the cluster wrote
meanwhile, so the budget is the backfill's own. A row the `set` leaves still selected by `where` (the new
values evaluated in RETURNING) would be selected again for ever: that batch is rolled back and the run
stops, naming the key. Rows locked by the application make the batch wait at most `lock_timeout`, then it
is retried with half the rows; the application is never held longer than that.

Batch size: the smaller of the rows that fit the target batch duration and the rows whose WAL fits a tenth
of a second of the budget, as measured on the previous batches (rows, seconds, WAL). Before
each batch, `Pacer` waits until the WAL of the batches that ended in the last second plus the batch's
expected WAL fits 85 % of the budget: the WAL rate stays under the budget over any 1 s window. When a
checkpoint begins (its counter moves), the next batch is sized as if each row needed whole pages written
(the heap's and each index's), until it has measured what they cost.

When the walk reaches the last key, the rows `where` still selects are counted: 0 is done; others (rows
with smaller keys the application wrote meanwhile, not filled by the expand migration's trigger) get
another pass from the first key, at most MAX_PASSES in all.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from schema_deploy.backfill import checkpoint
from schema_deploy.backfill.contract import count_left
from schema_deploy.backfill.errors import (BackfillBusy, BackfillLocked, BackfillNotConverging, BackfillRefused,
                                           BackfillStopped)
from schema_deploy.backfill.spec import MB, BackfillSpec
from schema_deploy.errors import SchemaDeployError
from schema_deploy.pg import db

APPLICATION = "schema-deploy-backfill"
MAX_PASSES = 3
BATCH_WAL_S = 0.1  # one batch writes at most this many seconds of the WAL budget
HEADROOM = 0.85  # the share of the budget the pacer plans to: a mis-estimated batch has room
ESTIMATE_OVER = 20  # batches whose largest WAL per row sizes the next
LOCK_ATTEMPTS = 10
LOG_EVERY_S = 10.0


@dataclass
class Progress:
    """Where a running backfill stands, after each batch (what the log, the page and Slack show)."""

    backfill: str
    rows_done: int
    rows_estimated: int | None
    rows_per_s: float
    batch_rows: int
    wal_bytes: int
    paused_because: str | None = None
    gate: str | None = None  # the health gate's last decision, in words (None: not gated)

    @property
    def fraction(self) -> float | None:
        if not self.rows_estimated:
            return None
        return min(1.0, self.rows_done / self.rows_estimated)

    @property
    def eta_s(self) -> float | None:
        if not self.rows_estimated or self.rows_per_s <= 0:
            return None
        return max(0.0, self.rows_estimated - self.rows_done) / self.rows_per_s

    def describe(self) -> str:
        pct = f" ({self.fraction * 100:.0f} %)" if self.fraction is not None else ""
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None else ""
        paused = f"; paused: {self.paused_because}" if self.paused_because else ""
        gate = f"; health gate {self.gate}" if self.gate else ""
        return (f"backfill {self.backfill}: {self.rows_done} of ~{self.rows_estimated} rows{pct}, "
                f"{self.rows_per_s:.0f} rows/s{eta}, batch {self.batch_rows} rows, "
                f"WAL {self.wal_bytes / MB:.1f} MB{paused}{gate}")


@dataclass
class BackfillResult:
    """What one run of a backfill did. `state`: done, paused or cancelled (errors raise)."""

    id: str
    table: str
    state: str
    rows_done: int  # in all runs
    rows_this_run: int = 0
    batches_this_run: int = 0
    wal_bytes_this_run: int = 0
    seconds: float = 0.0
    resumed_after_key: str | None = None
    passes: int = 1
    lock_retries: int = 0
    pauses: list[dict[str, Any]] = field(default_factory=list)  # the health gate's, this run
    requested_by: str | None = None
    already_done: bool = False  # done by an earlier run, with no row left: this run did nothing

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        resumed = f", resumed after key {self.resumed_after_key}" if self.resumed_after_key else ""
        paused = f", paused {len(self.pauses)} time(s) for the database's health" if self.pauses else ""
        by = f" (by {self.requested_by})" if self.requested_by and self.state != "done" else ""
        return (f"backfill {self.id}: {self.state}{by}: {self.rows_this_run} rows this run in {self.batches_this_run} "
                f"batches, {self.seconds:.1f} s, WAL {self.wal_bytes_this_run / MB:.1f} MB ({self.rows_done} rows "
                f"done in all){resumed}{paused}")


@dataclass
class Target:
    """The table as the database has it: the key's type, checked; how many indexes it has."""

    key_type: str
    indexes: int = 0

    @property
    def worst_per_row(self) -> int:
        """WAL of one row's update just after a checkpoint, at worst: a full page of the heap and of each index."""
        return 8192 * (1 + self.indexes)


def check_target(conn: psycopg.Connection, spec: BackfillSpec) -> Target:
    """The table, its key (NOT NULL, alone in a valid unique index: a keyset walk needs it) and the `set`
    columns exist; BackfillRefused naming what is missing otherwise."""
    oid = db.relation_oid(conn, spec.table)
    if oid is None:
        raise BackfillRefused(spec.id, f"table {spec.table} does not exist",
                              "Apply the migration that creates it first, or fix `table` in backfill.yaml.")
    columns = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,)).fetchall())
    missing = [c for c in [spec.key, *(c for c, _ in spec.set)] if c not in columns]
    if missing:
        raise BackfillRefused(spec.id, f"table {spec.table} has no column {', '.join(missing)}",
                              "Apply the migration that adds it first (the expand migration), or fix backfill.yaml.")
    unique = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1 "
        "AND i.indpred IS NULL AND a.attname = %s AND a.attnotnull)", (oid, spec.key)).fetchone()[0]
    if not unique:
        raise BackfillRefused(spec.id, f"key {spec.key} of {spec.table} is not a NOT NULL column with a unique "
                              "index of its own, so batches cannot walk it in order",
                              "Use the table's primary key (or another unique NOT NULL column) as `key`.")
    indexes = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s", (oid,)).fetchone()[0]
    return Target(key_type=columns[spec.key], indexes=int(indexes))


def checkpoints(conn: psycopg.Connection) -> int:
    """How many checkpoints the cluster has begun (PostgreSQL 17 moved the counters to pg_stat_checkpointer)."""
    if conn.info.server_version >= 170000:
        return int(conn.execute("SELECT num_timed + num_requested FROM pg_stat_checkpointer").fetchone()[0])
    return int(conn.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()[0])


RESULTS = "pg_temp.schema_deploy_backfill_batch"  # a batch's figures (a temporary table writes no WAL)


@dataclass(frozen=True)
class Queries:
    """One batch as one statement run under EXPLAIN ANALYZE, which reports the WAL that statement wrote
    (row locks, new row versions, index entries, triggers' writes, full-page images) and nothing else the
    cluster wrote meanwhile; the statement leaves its figures in a temporary table, read after it."""

    first: sql.Composed
    after: sql.Composed


def batch_queries(spec: BackfillSpec, target: Target) -> Queries:
    table, key = db.ident(spec.table), sql.Identifier(spec.key)

    def raw(expression: str) -> sql.SQL:
        return sql.SQL(expression.replace("%", "%%"))  # the query has parameters: a literal % stays one

    where = raw(spec.where)
    sets = sql.SQL(", ").join(sql.SQL("{} = ({})").format(sql.Identifier(c), raw(e)) for c, e in spec.set)
    text = ("EXPLAIN (ANALYZE, WAL, TIMING OFF, SUMMARY OFF, FORMAT JSON) "
            "WITH batch AS MATERIALIZED (SELECT {key} AS schema_deploy_key FROM {table} WHERE ({where}){after} "
            "ORDER BY {key} LIMIT %(rows)s FOR UPDATE), "
            "done AS (UPDATE {table} SET {sets} FROM batch WHERE {table}.{key} = batch.schema_deploy_key "
            "RETURNING {table}.{key} AS schema_deploy_key, ({where}) AS schema_deploy_still) "
            "INSERT INTO {results} SELECT count(*), "
            "(SELECT schema_deploy_key::text FROM batch ORDER BY schema_deploy_key DESC LIMIT 1), "
            "count(*) FILTER (WHERE schema_deploy_still), "
            "(array_agg(schema_deploy_key::text) FILTER (WHERE schema_deploy_still))[1] FROM done")
    after = sql.SQL(" AND {} > CAST(%(last)s AS {})").format(key, sql.SQL(target.key_type))
    parts = {"key": key, "table": table, "where": where, "sets": sets, "results": sql.SQL(RESULTS)}
    return Queries(first=sql.SQL(text).format(after=sql.SQL(""), **parts),
                   after=sql.SQL(text).format(after=after, **parts))


def prepare_session(conn: psycopg.Connection) -> None:
    conn.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {RESULTS.split('.')[1]} "
                 "(done bigint, last_key text, still bigint, still_key text) ON COMMIT DELETE ROWS")


def run_batch(conn: psycopg.Connection, q: Queries, rows: int, last: str | None) -> tuple[int, str | None, int, str | None, int]:
    """In the caller's transaction: (rows updated, the batch's last key, rows it left matching `where`, one of
    their keys, the WAL bytes the statement wrote)."""
    (plan,) = conn.execute(q.first if last is None else q.after, {"rows": rows, "last": last}).fetchone()[0]
    done, batch_last, still, still_key = conn.execute(f"SELECT * FROM {RESULTS}").fetchone()
    return int(done), batch_last, int(still), still_key, int(plan["Plan"].get("WAL Bytes", 0))


@dataclass
class Runner:
    """One run of `spec` on `url`. `gate`: production's HealthGate (None: not gated); `on_progress`: told
    after every batch (the caller decides what to say where); `release`: the release's digest, kept on
    the checkpoint."""

    url: str
    spec: BackfillSpec
    release: str | None = None
    gate: Any = None
    log: Callable[[str], None] = lambda _m: None
    on_progress: Callable[[Progress], None] | None = None
    on_pause: Callable[[str, bool], None] | None = None  # (the gate's reason, whether it is the first pause)
    # Told once it has work to do, before the first batch: where it starts (rows done by earlier runs,
    # estimate), and whether an earlier run began it (a resume: after a crash, a deferral or a pause).
    on_start: Callable[[Progress, bool], None] | None = None
    _checked: float | None = field(default=None, init=False, repr=False)  # when the gate was last asked
    _decided: str | None = field(default=None, init=False, repr=False)  # what it said then, in words
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def run(self) -> BackfillResult:
        spec = self.spec
        with db.connect(self.url, application_name=APPLICATION) as conn:
            target = check_target(conn, spec)
            key = checkpoint.lock_key(spec.id)
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
                raise BackfillBusy(spec.id, db.describe_sessions(checkpoint.runners(conn, spec.id)) or "a session "
                                   "that ended meanwhile")
            try:
                return self._run(conn, target)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _run(self, conn: psycopg.Connection, target: Target) -> BackfillResult:
        spec, started = self.spec, self.clock()
        (existing,) = checkpoint.read(conn, spec.id) or [None]
        if existing is not None and existing.digest == spec.digest and existing.state in ("paused", "cancelled"):
            by = f" by {existing.requested_by}" if existing.requested_by else ""
            raise BackfillRefused(spec.id, f"it is {existing.state}{by} at {existing.rows_done} rows",
                                  f"Resume it first: python -m schema_deploy backfill resume --name {spec.id}.",
                                  state=existing.state)
        estimated = count_left(conn, spec)
        if existing is not None and existing.digest == spec.digest and existing.state == "done" and not estimated:
            self.log(f"backfill {spec.id}: already done ({existing.rows_done} rows); nothing to do")
            return BackfillResult(spec.id, spec.table, "done", existing.rows_done, already_done=True)
        point = checkpoint.start(conn, spec.id, spec.digest, self.release, spec.table, estimated)
        result = BackfillResult(spec.id, spec.table, "running", point.rows_done, resumed_after_key=point.last_key)
        if self.on_start is not None:
            self.on_start(Progress(spec.id, point.rows_done, estimated + point.rows_done, 0.0, spec.first_rows, 0),
                          existing is not None and existing.digest == spec.digest and existing.state != "done")
        self.log(f"{spec.describe()}: {estimated} rows to do"
                 + (f"; resuming after key {point.last_key} ({point.rows_done} rows done)" if point.last_key else ""))
        try:
            self._batches(conn, target, point.last_key, estimated + point.rows_done, result)
        except BaseException as exc:
            if not conn.closed:
                failed = isinstance(exc, (SchemaDeployError, psycopg.Error)) and not is_waiting(exc)
                # A wait, a deferral or an interruption leaves it running: the next run goes on from here.
                checkpoint.finish(conn, spec.id, "failed" if failed else "running",
                                  str(exc)[:2000] if failed or is_waiting(exc) else f"stopped by {type(exc).__name__}")
            raise
        finally:
            result.seconds = self.clock() - started
        self.log(result.describe())
        return result

    def _batches(self, conn: psycopg.Connection, target: Target, last: str | None, estimated: int,
                 result: BackfillResult) -> None:
        spec, rows, run_began = self.spec, self.spec.first_rows, self.clock()
        pace = Pacer(spec.wal_budget_bytes_per_s, self.clock, self.sleep)
        seen = checkpoints(conn)
        queries = batch_queries(spec, target)
        prepare_session(conn)
        logged, locked, pid = self.clock(), 0, conn.info.backend_pid
        milestones = {0.25, 0.5, 0.75}
        while True:
            self._healthy(conn, pid, result)
            if (now := checkpoints(conn)) != seen:
                seen = now
                pace.checkpoint_started(target.worst_per_row)
                rows = int(max(spec.min_rows, min(rows, spec.wal_budget_bytes_per_s * BATCH_WAL_S / pace.per_row())))
            pace.wait_for_room(rows)
            began = self.clock()
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{spec.lock_timeout_ms}ms")))
                    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
                        sql.Literal(f"{max(60_000, int(spec.target_s * 20_000))}ms")))
                    done, batch_last, still, still_key, wal = run_batch(conn, queries, rows, last)
                    if still:
                        raise BackfillNotConverging(
                            spec.id, f"after its `set`, {still} row(s) of this batch still match `where` ({spec.where}),"
                            f" e.g. {spec.key} = {still_key}: they would be selected again for ever", result.rows_done)
                    requested = by = None
                    if done:
                        requested, by = checkpoint.batch_done(conn, spec.id, batch_last, done, wal)
            except psycopg.errors.LockNotAvailable:
                locked += 1
                result.lock_retries += 1
                if locked >= LOCK_ATTEMPTS:
                    raise BackfillLocked(spec.id, last or "(first)", locked, spec.lock_timeout_ms,
                                         result.rows_done) from None
                rows = max(spec.min_rows, rows // 2)
                self.log(f"backfill {spec.id}: rows after key {last or '(first)'} are locked by another session "
                         f"(lock_timeout {spec.lock_timeout_ms} ms); retrying with {rows} rows")
                self.sleep(min(0.1 * 2 ** locked, 5.0))
                continue
            locked = 0
            took = self.clock() - began
            if not done:
                left = count_left(conn, spec)
                if left == 0:
                    checkpoint.finish(conn, spec.id, "done")
                    result.state = "done"
                    return
                if result.passes >= MAX_PASSES:
                    raise BackfillNotConverging(
                        spec.id, f"{left} row(s) still match `where` after {result.passes} passes over every key: rows "
                        "keep appearing that need it (the application writes them meanwhile)", result.rows_done)
                result.passes += 1
                self.log(f"backfill {spec.id}: {left} row(s) written meanwhile still match `where`; pass "
                         f"{result.passes} from the first key")
                checkpoint.restart_pass(conn, spec.id)
                last = None
                continue
            last = batch_last
            result.rows_done += done
            result.rows_this_run += done
            result.batches_this_run += 1
            result.wal_bytes_this_run += wal
            pace.wrote(done, wal)
            rows = next_rows(spec, rows, done, took, pace.per_row())
            rate = result.rows_this_run / max(self.clock() - run_began, 1e-3)
            progress = Progress(spec.id, result.rows_done, estimated, rate, rows, result.wal_bytes_this_run,
                                gate=self._decided)
            if self.on_progress is not None:
                self.on_progress(progress)
            passed = {m for m in milestones if (progress.fraction or 0) >= m}
            if passed or self.clock() - logged >= LOG_EVERY_S:
                milestones -= passed
                logged = self.clock()
                self.log(progress.describe())
            if requested:
                state = "paused" if requested == "pause" else "cancelled"
                checkpoint.finish(conn, spec.id, state, f"{state} by {by or 'an operator'} after key {last}")
                result.state, result.requested_by = state, by
                return

    def _healthy(self, conn: psycopg.Connection, pid: int, result: BackfillResult) -> None:
        """Between batches, at most once per poll interval (a check reads several views and the WAL rate
        over at least 0.2 s, longer than a batch): wait (or defer) while the gate says so, recording the pause.
        A pause that an earlier run deferred in (Airflow) is closed by the run that finds the gate open."""
        if self.gate is None:
            return
        first = self._checked is None
        if not first and self.clock() - self._checked < self.gate.settings.poll_s:
            return
        decision = self.gate.check([self.spec.table], pid)
        self._checked, self._decided = self.clock(), decision.summary()
        if first:
            self.log(f"backfill {self.spec.id}: health gate before the first batch: {self._decided}")
        if decision.go:
            if first and (open_pause := self._pauses(conn)[1]) is not None:
                self._end_pause(conn, open_pause, result, waited_s=None)
            return
        reason = decision.reason()
        self.log(f"backfill {self.spec.id}: paused for the database's health: {reason}")
        earlier, open_pause = self._pauses(conn)
        if open_pause is None:  # a deferred task comes back here while its pause goes on: recorded once
            open_pause = {"reason": reason, "since": datetime.now(timezone.utc).isoformat()}
            checkpoint.add_pause(conn, self.spec.id, open_pause)
            if self.on_pause is not None:
                self.on_pause(reason, not earlier)
        health = self.gate.wait(f"backfill {self.spec.id}", [self.spec.table], pid)
        self._end_pause(conn, open_pause, result, waited_s=health.waited_s)

    def _pauses(self, conn: psycopg.Connection) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The health pauses on the checkpoint, and the last one when it has not ended."""
        pauses = [p for p in checkpoint.read(conn, self.spec.id)[0].pauses if "since" in p]
        return pauses, (pauses[-1] if pauses and "seconds" not in pauses[-1] else None)

    def _end_pause(self, conn: psycopg.Connection, pause: dict[str, Any], result: BackfillResult,
                   waited_s: float | None) -> None:
        seconds = round((datetime.now(timezone.utc) - datetime.fromisoformat(pause["since"])).total_seconds(), 1)
        ended = {"seconds": seconds, "waited_s": round(waited_s if waited_s is not None else seconds, 1)}
        checkpoint.end_pause(conn, self.spec.id, ended)
        result.pauses.append({"reason": pause["reason"], "since": pause["since"], **ended})
        self.log(f"backfill {self.spec.id}: healthy again after {seconds} s; going on")


def run_to_done(runner: Runner) -> BackfillResult:
    """`runner` until its backfill is done, as a deployment needs it before the contract migration: one an
    operator paused or cancelled (before this run, or during it) stops the deployment there (BackfillStopped,
    naming who)."""
    try:
        result = runner.run()
    except BackfillRefused as exc:
        if exc.state not in ("paused", "cancelled"):
            raise
        with db.connect(runner.url) as conn:
            (point,) = checkpoint.read(conn, runner.spec.id)
        raise BackfillStopped(runner.spec.id, point.state, point.requested_by, point.rows_done) from None
    if result.state != "done":
        raise BackfillStopped(runner.spec.id, result.state, result.requested_by, result.rows_done)
    return result


def is_waiting(exc: BaseException) -> bool:
    from schema_deploy.health.errors import HealthGateWaiting

    return isinstance(exc, HealthGateWaiting)


def next_rows(spec: BackfillSpec, asked: int, done: int, took_s: float, per_row_wal: float) -> int:
    """The next batch's rows: what fits the target duration, and what keeps one batch's WAL within BATCH_WAL_S
    of the budget (`per_row_wal`: the pacer's cautious estimate); at most twice this batch, within
    [min_rows, max_rows]."""
    if done <= 0:
        return asked
    fits_time = spec.target_s / max(took_s / done, 1e-6)
    fits_wal = spec.wal_budget_bytes_per_s * BATCH_WAL_S / per_row_wal if per_row_wal > 0 else float("inf")
    return int(max(spec.min_rows, min(spec.max_rows, fits_time, fits_wal, 2 * max(asked, done))))


@dataclass
class Pacer:
    """Keeps the backfill's WAL within its budget over any 1 s: before a batch, it waits until the WAL of the
    batches that ended in the last second plus this batch's expected WAL fits HEADROOM of the budget.

    A batch's WAL per row jumps after a checkpoint starts (the first change to each page writes the whole
    page): the estimate is the largest per-row WAL of the last ESTIMATE_OVER batches, so after one such
    batch the next ones are sized for it. Small batches (BATCH_WAL_S of the budget each) keep one
    mis-estimated batch from overshooting by much, and keep each commit's WAL flush short for the
    application's commits queued behind it."""

    budget: int
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    recent: list[tuple[float, int]] = field(default_factory=list)  # (end, WAL bytes) of the last second's batches
    rates: list[float] = field(default_factory=list)  # WAL per row of the last ESTIMATE_OVER batches
    assumed: bool = False  # `rates` is a checkpoint's worst case, until a batch measures it

    def per_row(self) -> float:
        return max(self.rates, default=0.0)

    def checkpoint_started(self, worst_per_row: float) -> None:
        """A checkpoint began: the next batch's rows may each need whole pages written (the heap's and each
        index's), so it is sized for that until it has measured what they really cost."""
        self.rates, self.assumed = [max(worst_per_row, self.per_row())], True

    def wrote(self, rows: int, wal: int) -> None:
        self.recent.append((self.clock(), wal))
        if rows:
            self.rates = [*([] if self.assumed else self.rates), wal / rows][-ESTIMATE_OVER:]
            self.assumed = False

    def wait_for_room(self, rows: int) -> None:
        expected, room = rows * self.per_row(), HEADROOM * self.budget
        while True:
            now = self.clock()
            self.recent = [(end, wal) for end, wal in self.recent if end > now - 1.0]
            if not self.recent or sum(w for _, w in self.recent) + expected <= room:
                return
            self.sleep(max(0.01, self.recent[0][0] + 1.0 - now))
