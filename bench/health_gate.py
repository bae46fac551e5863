"""The health gate on Epic 5: production with its streaming replica, an application writing, and replay
paused for 20 s in the middle. Run (a) without the gate, then (b) with it.

    make stack-up && .venv/bin/python bench/health_gate.py [--rate 200] [--pause 20] [--lag-mb 16]

On the local stack's production cluster, with its streaming replica (started here as `make replica-up`
would), it builds once (and
reuses afterwards) a database at the baseline filled by the generator's `bench` preset (>= 2,000,000
behavioral_events). Each variant clones it (`CREATE DATABASE … STRATEGY FILE_COPY`, so the clone writes
almost no WAL), waits for the replica to catch up, then applies Epic 5 with the online plan, in this
process (the engine, not Airflow), while pgbench inserts `--rate` rows/s into behavioral_events and
logs every write's latency. When the apply logs its step `--pause-at`, replay is paused on the replica
for `--pause` seconds.

  (a) no gate: thresholds too high to ever wait, so the steps are measured the same way;
  (b) the gate: replay lag under `--lag-mb`, checked every `--poll` seconds.

A sampler reads the replica's replay lag every 0.05 s. Per step it prints the WAL written, the peak
replica lag, the gate's wait and the lag when the step started. For the application's writes it prints
p99 and max latency, and then the two targets:
  - with the gate, no online step starts while the lag is over its threshold;
  - the wait ends within one poll interval (plus one sample) of the lag falling below it.
"""
from __future__ import annotations

import argparse
import bisect
import importlib.util
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

from schema_deploy.bundle.discover import load_bundle  # noqa: E402
from schema_deploy.engine.apply import apply  # noqa: E402
from schema_deploy.health.gate import HealthGate  # noqa: E402
from schema_deploy.config.health import MB, HealthSettings  # noqa: E402

_spec = importlib.util.spec_from_file_location("write_stall", REPO / "bench" / "write_stall.py")
stall = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stall)

SOURCE = "bench_health_src"
INSERTS = """\
\\set u random(0, :nusers - 1)
INSERT INTO behavioral_events (id, "userId", "eventType", "eventData", "timestamp", "timeOfDay", "dayOfWeek")
  VALUES (gen_random_uuid()::text, 'user_' || lpad(:u::text, 6, '0'), 'CARD_REVIEWED', '{"bench": true}', now(), 12, 3);
"""


class LagSampler(threading.Thread):
    """(monotonic time, bytes of replay lag) every `every` seconds, on production."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url, self.every, self.samples = url, every, []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                lag = conn.execute("SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) "
                                   "FROM pg_stat_replication").fetchone()[0]
                self.samples.append((time.monotonic(), int(lag)))
                time.sleep(self.every)

    def at(self, t: float) -> int:
        """The last sample at or before `t`."""
        i = bisect.bisect_right([s[0] for s in self.samples], t) - 1
        return self.samples[max(i, 0)][1]


def replica_url(env: dict[str, str]) -> str:
    return env["PRODUCTION_REPLICA_ADMIN_URL"]


def caught_up(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0) "
                           "FROM pg_stat_replication").fetchone()[0] > 256 * 1024:
            if time.monotonic() > deadline:
                raise SystemExit("the replica did not catch up")
            time.sleep(0.2)


def run_variant(label: str, url: str, settings: HealthSettings, args: argparse.Namespace, env: dict[str, str]) -> dict:
    caught_up(url)
    with psycopg.connect(url) as conn:
        nusers = conn.execute('SELECT count(DISTINCT "userId") FROM experiment_assignments').fetchone()[0]
    work = Path(tempfile.mkdtemp(prefix=f"health-{label}-"))
    (work / "load.sql").write_text(INSERTS)
    load = subprocess.Popen(
        [str(Path(env["PG_BINDIR"]) / "pgbench"), "-n", "-c", "4", "-j", "2", "-R", str(args.rate), "-T",
         str(args.duration), "-D", f"nusers={nusers}", "-f", "load.sql", "-l", "--log-prefix=lat"],
        cwd=work, env=stall.pg_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = LagSampler(url)
    sampler.start()
    time.sleep(args.warmup)
    ends: list[tuple[float, str]] = []
    paused: dict[str, float] = {}

    def pause() -> None:
        with psycopg.connect(replica_url(env), autocommit=True) as replica:
            replica.execute("SELECT pg_wal_replay_pause()")
            paused["at"] = time.monotonic()
            time.sleep(args.pause)
            replica.execute("SELECT pg_wal_replay_resume()")
            paused["resumed"] = time.monotonic()

    def log(line: str) -> None:
        ends.append((time.monotonic(), line))
        if f": step {args.pause_at}/" in line and "at" not in paused:
            threading.Thread(target=pause, daemon=True).start()
            paused["at"] = time.monotonic()

    gate = HealthGate(url, settings, log=log)
    t0, w0 = time.time(), time.monotonic()
    result = apply(url, load_bundle(REPO / "sql/migrations"), online=True, health=gate, log=log)
    t1 = time.time()
    gate.close()
    out, _ = load.communicate()
    sampler.stop.set()
    if load.returncode != 0:
        raise SystemExit(f"{label}: pgbench failed:\n{out[-2000:]}")
    lat = [x for _, x in stall.latencies(work, t0, t1)]
    steps = []
    lines = {int(line.split(": step ")[1].split("/")[0]): at for at, line in ends if ": step " in line and " | " in line}
    for s in result.applied[-1].steps:
        end = lines.get(s.number, w0)
        start = end - s.seconds
        steps.append({"step": s.number, "seconds": s.seconds, "gated": s.health is not None,
                      "waited_s": s.health.waited_s if s.health else 0.0,
                      "wal_mb": s.health.wal_bytes / MB if s.health else None,
                      "lag_peak_mb": (s.health.replica_lag_peak_bytes or 0) / MB if s.health else None,
                      "lag_at_start_mb": sampler.at(start) / MB, "start": start})
    return {"label": label, "wall": t1 - t0, "steps": steps, "p99": stall.percentile(lat, 99),
            "max": max(lat) if lat else 0.0, "writes": len(lat), "paused": paused, "sampler": sampler}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="application rows per second (default 200)")
    parser.add_argument("--duration", type=int, default=90, help="pgbench seconds per variant")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--pause", type=float, default=20.0, help="seconds replay stays paused")
    parser.add_argument("--pause-at", type=int, default=4, help="pause when this step of Epic 5 is logged")
    parser.add_argument("--lag-mb", type=int, default=16, help="the gate's replica lag threshold in MB")
    parser.add_argument("--poll", type=float, default=1.0, help="the gate's poll interval in seconds")
    parser.add_argument("--rebuild", action="store_true", help="regenerate the source database")
    args = parser.parse_args()
    import stack

    stack.start_replica()  # production's replica (make replica-up); nothing when it runs already
    env = stall.stack_env()
    base = env["PRODUCTION_DATABASE_URL"]
    stall.SOURCE = SOURCE
    stall.build_source(base, args.rebuild)
    never = HealthSettings(max_replica_lag_bytes=1 << 50, max_wal_bytes_per_s=1 << 50, max_transaction_age_s=1e9,
                           max_lock_waiters=1 << 20, poll_s=args.poll)
    gated = HealthSettings(max_replica_lag_bytes=args.lag_mb * MB, max_wal_bytes_per_s=1 << 50,
                           max_transaction_age_s=1e9, poll_s=args.poll, max_wait_s=600)
    results = [run_variant("a-no-gate", stall.clone(base, "bench_health_a", "FILE_COPY"), never, args, env),
               run_variant("b-gate", stall.clone(base, "bench_health_b", "FILE_COPY"), gated, args, env)]
    print(f"\nEpic 5 on production (>= 2,000,000 behavioral_events), replica attached, {args.rate} rows/s written, "
          f"replay paused {args.pause:g} s from step {args.pause_at}; gate: lag < {args.lag_mb} MB, poll {args.poll:g} s")
    for r in results:
        print(f"\n{r['label']}: wall {r['wall']:.1f} s; application writes {r['writes']}, p99 {r['p99'] * 1e3:.1f} ms, "
              f"max {r['max'] * 1e3:.1f} ms")
        print(f"{'step':>5}{'s':>8}{'online':>8}{'waited s':>10}{'WAL MB':>9}{'peak lag MB':>13}{'lag at start MB':>17}")
        for s in r["steps"]:
            wal = f"{s['wal_mb']:.1f}" if s["wal_mb"] is not None else "-"
            peak = f"{s['lag_peak_mb']:.1f}" if s["lag_peak_mb"] is not None else "-"
            print(f"{s['step']:>5}{s['seconds']:>8.2f}{'yes' if s['gated'] else '':>8}{s['waited_s']:>10.2f}{wal:>9}"
                  f"{peak:>13}{s['lag_at_start_mb']:>17.1f}")
    a, b = results
    over_a = [s["step"] for s in a["steps"] if s["gated"] and s["lag_at_start_mb"] > args.lag_mb]
    over_b = [s["step"] for s in b["steps"] if s["gated"] and s["lag_at_start_mb"] > args.lag_mb]
    print(f"\n(a) online steps started with lag over {args.lag_mb} MB: {over_a or 'none'}")
    print(f"(b) online steps started with lag over {args.lag_mb} MB: {over_b or 'none'}   (target: none)   "
          f"{'OK' if not over_b else 'MISSED'}")
    waited = [s for s in b["steps"] if s["waited_s"] > 0]
    if waited:
        first = waited[0]
        under = next((t for t, lag in b["sampler"].samples if t > first["start"] - first["waited_s"]
                      and lag < args.lag_mb * MB), None)
        late = first["start"] - under if under is not None else float("nan")
        limit = args.poll + 0.05 + 0.3  # a poll, a sample, and the gate's own reading (a WAL-rate pair of reads)
        print(f"(b) step {first['step']} waited {first['waited_s']:.1f} s; it started {late:.2f} s after the lag fell "
              f"under {args.lag_mb} MB   (target <= {limit:.2f} s: one poll)   {'OK' if late <= limit else 'MISSED'}")
    else:
        print("(b) no step had to wait: the pause did not push the lag over the threshold (try a lower --lag-mb)")
    stall.drop_databases(base, "bench_health_a", "bench_health_b")
    return 0


if __name__ == "__main__":
    sys.exit(main())
