"""Write stalls caused by the Epic 5 migration: as written vs our online plan.

    make stack-up && .venv/bin/python bench/write_stall.py [--rate 200] [--rebuild]

On the local stack's staging cluster it builds (once; reused afterwards) a
database at the baseline filled by the generator's `bench` preset
(≥ 2,000,000 behavioral_events, ≥ 500,000 experiment_assignments), then for
each variant clones it (CREATE DATABASE … TEMPLATE) and applies Epic 5 while
pgbench writes at a fixed rate into the tables the migration touches (inserts
into behavioral_events, updates of experiment_assignments), logging every
transaction's latency:

  (a) as written, one transaction — what `psql -1 -f` or `prisma migrate deploy` does;
  (b) our plan: `python -m schema_deploy apply --online` (prechecks included).

For the transactions that overlap the migration it prints wall time, max and
p99 write latency (measured from the scheduled start, so queueing behind a
lock counts), writes slower than 100 ms and 1 s, and the ratios against the
targets: (b) max ≤ 100 ms, max(a)/max(b) ≥ 50, wall(b) ≤ 3 × wall(a).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

from generate_data import generate  # noqa: E402
from schema_deploy.bundle.discover import load_bundle  # noqa: E402
from schema_deploy.engine.apply import apply  # noqa: E402

SOURCE = "bench_stall_src"
EPIC5 = REPO / "sql/migrations/20251017120000_epic5_schema_completion/migration.sql"
BASELINE = "20250915090000_baseline"
PGBENCH_SCRIPT = """\
\\set u random(0, :nusers - 1)
\\set kind random(0, 9)
\\if :kind < 6
INSERT INTO behavioral_events (id, "userId", "eventType", "eventData", "timestamp", "timeOfDay", "dayOfWeek")
  VALUES (gen_random_uuid()::text, 'user_' || lpad(:u::text, 6, '0'), 'CARD_REVIEWED', '{"bench": true}', now(), 12, 3);
\\else
UPDATE experiment_assignments SET "assignedAt" = now()
  WHERE id = (SELECT id FROM experiment_assignments WHERE "userId" = 'user_' || lpad(:u::text, 6, '0') LIMIT 1);
\\endif
"""


def stack_env() -> dict[str, str]:
    env = {}
    for line in (Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")) / "env").read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[7:].partition("=")
            env[key] = shlex.split(value)[0]
    return env


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def source_ready(admin: psycopg.Connection, url: str) -> bool:
    if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SOURCE,)).fetchone():
        return False
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT reltuples >= 2000000 FROM pg_class WHERE relname = 'behavioral_events'"
                            ).fetchone() == (True,)


def build_source(base: str, rebuild: bool) -> str:
    url = with_db(base, SOURCE)
    with psycopg.connect(base, autocommit=True) as admin:
        if not rebuild and source_ready(admin, url):
            print(f"reusing {SOURCE}", file=sys.stderr)
            return url
        admin.execute(f"DROP DATABASE IF EXISTS {SOURCE} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {SOURCE}")
    t0 = time.monotonic()
    apply(url, load_bundle(REPO / "sql/migrations"), to=BASELINE)
    counts = generate(url, seed=42, scale="bench")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"built {SOURCE} in {time.monotonic() - t0:.0f} s: {counts}", file=sys.stderr)
    return url


def clone(base: str, name: str, strategy: str = "") -> str:
    """A copy of SOURCE; `strategy` "FILE_COPY" writes almost no WAL (a replica then has little to replay)."""
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {SOURCE}" + (f" STRATEGY {strategy}" if strategy else ""))
    return with_db(base, name)


def drop_databases(base: str, *names: str) -> None:
    with psycopg.connect(base, autocommit=True) as admin:
        for name in names:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {**os.environ, "PGHOST": parts.hostname, "PGPORT": str(parts.port), "PGUSER": parts.username,
            "PGPASSWORD": parts.password, "PGDATABASE": parts.path.lstrip("/")}


def run_variant(label: str, url: str, migrate: list[str], args: argparse.Namespace, bindir: Path) -> dict:
    with psycopg.connect(url) as conn:
        nusers = conn.execute('SELECT count(DISTINCT "userId") FROM experiment_assignments').fetchone()[0]
    work = Path(tempfile.mkdtemp(prefix=f"stall-{label}-"))
    (work / "load.sql").write_text(PGBENCH_SCRIPT)
    load = subprocess.Popen(
        [str(bindir / "pgbench"), "-n", "-c", str(args.clients), "-j", "2", "-R", str(args.rate),
         "-T", str(args.duration), "-D", f"nusers={nusers}", "-f", "load.sql", "-l", "--log-prefix=lat"],
        cwd=work, env=pg_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(args.warmup)
    t0 = time.time()
    mig = subprocess.run(migrate, env={**pg_env(url), "PYTHONPATH": str(REPO / "plugins"), **extra_env(args)},
                         capture_output=True, text=True)
    t1 = time.time()
    out, _ = load.communicate()
    if mig.returncode != 0:
        raise SystemExit(f"{label}: migration failed:\n{mig.stderr[-2000:]}")
    if load.returncode != 0:
        raise SystemExit(f"{label}: pgbench failed:\n{out[-2000:]}")
    timed = latencies(work, t0, t1)
    lat = [x for _, x in timed]
    slow = sorted((round(end - t0, 2), round(x * 1e3, 1)) for end, x in timed if x > 0.1)
    if slow:
        per_second: dict[int, int] = {}
        for at, _ in slow:
            per_second[int(at)] = per_second.get(int(at), 0) + 1
        print(f"{label}: writes over 100 ms per second after the migration started: {per_second}", file=sys.stderr)
        print(f"{label}: slow writes ended at (s after start, ms): {slow[:40]}", file=sys.stderr)
    if args.show_log:
        for line in mig.stderr.splitlines():
            stamp, _, rest = line.partition(" ")
            try:
                print(f"  +{float(stamp) - t0:7.2f}s {rest}", file=sys.stderr)
            except ValueError:
                print(f"  {line}", file=sys.stderr)
    return {"label": label, "wall": t1 - t0, "count": len(lat), "max": max(lat) if lat else 0.0,
            "p99": percentile(lat, 99), "over_100ms": sum(x > 0.1 for x in lat), "over_1s": sum(x > 1 for x in lat)}


def extra_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"SCHEMA_DEPLOY_LOG_TIME": "1"}
    return {**env, "PGOPTIONS": args.pgoptions} if args.pgoptions else env


def latencies(work: Path, t0: float, t1: float) -> list[tuple[float, float]]:
    """(end time, seconds from scheduled start to end) of transactions overlapping [t0, t1]."""
    result = []
    for log in work.glob("lat.*"):
        for line in log.read_text().splitlines():
            f = line.split()
            # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            # With --rate, `time` already counts from the scheduled start (lag included).
            latency_us, end = int(f[2]), int(f[4]) + int(f[5]) / 1e6
            start = end - latency_us / 1e6
            if end >= t0 and start <= t1:
                result.append((end, latency_us / 1e6))
    return result


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=200, help="writes per second (default 200)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=int, default=40, help="pgbench seconds per variant")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rebuild", action="store_true", help="regenerate the source database")
    parser.add_argument("--pgoptions", default="", help="PGOPTIONS for the migration sessions (diagnostics)")
    parser.add_argument("--only-online", action="store_true", help="skip variant (a)")
    parser.add_argument("--show-log", action="store_true", help="print the migration's own log")
    parser.add_argument("--apply-args", default="", help="extra arguments for schema_deploy apply in (b)")
    args = parser.parse_args()
    env = stack_env()
    base, bindir = env["STAGING_DATABASE_URL"], Path(env["PG_BINDIR"])
    build_source(base, args.rebuild)
    a_url, b_url = clone(base, "bench_stall_a"), clone(base, "bench_stall_b")
    psql = [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(EPIC5)]
    ours = [sys.executable, "-m", "schema_deploy", "apply", "--db", b_url, "--online", *shlex.split(args.apply_args)]
    a = (run_variant("a-as-written", a_url, psql, args, bindir) if not args.only_online
         else {"label": "a-skipped", "wall": 1.0, "count": 0, "max": 0.0, "p99": 0.0, "over_100ms": 0, "over_1s": 0})
    b = run_variant("b-online", b_url, ours, args, bindir)
    print(f"\nEpic 5 under {args.rate} writes/s ({args.clients} clients), staging cluster of the local stack")
    print(f"{'variant':<16}{'wall s':>8}{'writes':>8}{'max ms':>9}{'p99 ms':>9}{'>100ms':>8}{'>1s':>6}")
    for r in (a, b):
        print(f"{r['label']:<16}{r['wall']:>8.2f}{r['count']:>8}{r['max'] * 1e3:>9.1f}{r['p99'] * 1e3:>9.1f}"
              f"{r['over_100ms']:>8}{r['over_1s']:>6}")
    ratio = a["max"] / b["max"] if b["max"] else float("inf")
    wall = b["wall"] / a["wall"]
    print(f"\nmax stall ratio (a)/(b): {ratio:.1f}x   (target >= 50x)   {'OK' if ratio >= 50 else 'MISSED'}")
    print(f"(b) max write latency: {b['max'] * 1e3:.1f} ms   (target <= 100 ms)   {'OK' if b['max'] <= 0.1 else 'MISSED'}")
    print(f"wall time ratio (b)/(a): {wall:.2f}x   (target <= 3x)   {'OK' if wall <= 3 else 'MISSED'}")
    drop_databases(base, "bench_stall_a", "bench_stall_b")
    return 0


if __name__ == "__main__":
    sys.exit(main())
