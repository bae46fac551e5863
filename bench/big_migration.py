"""Lint and plan of one big migration.sql (a data seed) against parsing it with pglast, at 5, 25 and 50 MB.

    make stack-up && .venv/bin/python bench/big_migration.py [--sizes 5 25 50] [--non-ascii]

Each size is a Prisma-layout bundle with one migration: a CREATE TABLE, then INSERTs of
about 440 bytes each (≈115,000 at 50 MB), ASCII, a `;` inside a string in one row of a
hundred. Two measurements per size, each in a process of its own (so each peak RSS is its
own):

  baseline   read the file and pglast.parse_sql() it whole
  lint+plan  load_bundle + lint_bundle, then plan_for (online mode) and the data prechecks
             against an empty scratch database on the local stack: what preflight does

Prints seconds and peak RSS of both, and checks the targets: t(50 MB)/t(5 MB) ≤ 12 for
lint+plan (linear in size), lint+plan ≤ 3x the bare parse of the same file, peak RSS of
lint+plan ≤ 300 MB + 4x the file's size. Exits 1 when one is missed.

--non-ascii also runs lint+plan (no baseline) on a variant where a third of the rows hold
non-ASCII names: pglast.parse_sql's own handling of non-ASCII text grows with the square of
the file's size (9 s for 5 MB here, more than ten minutes for 25 MB), so there is no
baseline to compare with, only the growth from 5 to 50 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack"), str(REPO)]

LINEAR_RATIO, PARSE_RATIO, RSS_BASE_MB, RSS_PER_FILE = 12.0, 3.0, 300.0, 4.0


def write_seed(folder: Path, megabytes: float, non_ascii: bool) -> Path:
    """A bundle with one seed migration of about `megabytes` MB; returns the bundle's folder."""
    name = folder / "20260101000000_seed"
    name.mkdir(parents=True)
    (folder / "migration_lock.toml").write_text('provider = "postgresql"\n')
    rng = random.Random(7)
    parts = ['-- Seed data for the demo tenant\nCREATE TABLE "Seed" ("id" INTEGER PRIMARY KEY, "email" TEXT NOT NULL, '
             '"name" TEXT NOT NULL, "note" TEXT, "score" DOUBLE PRECISION, "createdAt" TIMESTAMP(3) NOT NULL);\n']
    size, i = len(parts[0]), 0
    while size < megabytes * 1_000_000:
        i += 1
        person = "Zoë Ünïcode-Øster" if non_ascii and i % 3 == 0 else "Alex Example-Person"
        note = ("first; then second" if i % 100 == 0 else "imported from the legacy CRM export of 2024") * 6
        row = (f'INSERT INTO "Seed" ("id", "email", "name", "note", "score", "createdAt") VALUES ({i}, '
               f"'user{i}@example.com', '{person} {i}', '{note}', {rng.random():.6f}, "
               f"'2024-{1 + i % 12:02d}-{1 + i % 28:02d} 10:{i % 60:02d}:00');\n")
        parts.append(row)
        size += len(row.encode())
    (name / "migration.sql").write_text("".join(parts))
    return folder


def child(kind: str, folder: str, url: str) -> None:
    """One measurement, in this process: prints {seconds, peak_rss_mb, ...} as JSON."""
    started = time.perf_counter()
    if kind == "baseline":
        import pglast

        text = (Path(folder) / "20260101000000_seed" / "migration.sql").read_text(encoding="utf-8")
        facts = {"statements": len(pglast.parse_sql(text))}
    else:
        from schema_deploy.bundle.discover import load_bundle
        from schema_deploy.engine.apply import load_state
        from schema_deploy.lint.engine import lint_bundle
        from schema_deploy.pg.db import connect
        from schema_deploy.plan.planner import plan_for
        from schema_deploy.plan.prechecks import run_prechecks

        bundle = load_bundle(folder)
        findings = lint_bundle(bundle)
        linted = time.perf_counter() - started
        with connect(url) as conn:
            status, interrupted = load_state(conn, bundle)
            plan = plan_for(conn, bundle, status, interrupted, online=True)
            prechecks = run_prechecks(conn, plan)
        facts = {"lint_s": round(linted, 2), "findings": len(findings), "prechecks": len(prechecks),
                 "statements": sum(len(mp.statements) for mp in plan.migrations),
                 "steps": sum(len(mp.steps) for mp in plan.migrations)}
    facts["seconds"] = round(time.perf_counter() - started, 2)
    facts["peak_rss_mb"] = round(peak_rss_kb() / 1024, 1)
    print(json.dumps(facts))


def peak_rss_kb() -> int:
    """This process's peak RSS since it started its program: VmHWM (getrusage's ru_maxrss survives exec on
    Linux, so a child of a large parent would report the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(kind: str, folder: Path, url: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(folder), url], capture_output=True,
                          text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{kind} of {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scratch_database() -> tuple[str, callable]:
    """An empty database on the local stack's staging cluster, and how to drop it."""
    import psycopg
    from conftest import read_env_file, with_database

    env = read_env_file(REPO / ".devstack" / "env")
    base = env["STAGING_DATABASE_URL"]
    name = f"bench_big_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return with_database(base, name), drop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[5, 25, 50], help="file sizes in MB")
    ap.add_argument("--non-ascii", action="store_true", help="also lint+plan a non-ASCII variant (no baseline)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    sys.path.insert(0, str(REPO / "tests"))
    url, drop = scratch_database()
    rows, ok = [], True
    try:
        with tempfile.TemporaryDirectory(prefix="big-migration-") as tmp:
            for mb in args.sizes:
                folder = write_seed(Path(tmp) / f"ascii-{mb:g}", mb, non_ascii=False)
                size = (folder / "20260101000000_seed" / "migration.sql").stat().st_size / 1e6
                base = measure("baseline", folder, url)
                ours = measure("lintplan", folder, url)
                rows.append((mb, size, base, ours))
                print(f"{size:6.1f} MB  {ours['statements']:>7,} statements  baseline {base['seconds']:7.2f} s "
                      f"{base['peak_rss_mb']:7.1f} MB   lint+plan {ours['seconds']:7.2f} s (lint {ours['lint_s']:.2f}) "
                      f"{ours['peak_rss_mb']:7.1f} MB   ratio {ours['seconds'] / base['seconds']:.2f}x", flush=True)
            non_ascii = []
            if args.non_ascii:
                for mb in (min(args.sizes), max(args.sizes)):
                    folder = write_seed(Path(tmp) / f"non-ascii-{mb:g}", mb, non_ascii=True)
                    size = (folder / "20260101000000_seed" / "migration.sql").stat().st_size / 1e6
                    ours = measure("lintplan", folder, url)
                    non_ascii.append((size, ours))
                    print(f"{size:6.1f} MB  non-ASCII  lint+plan {ours['seconds']:7.2f} s {ours['peak_rss_mb']:7.1f} MB",
                          flush=True)
    finally:
        drop()
    print()
    small, big = rows[0], rows[-1]
    growth = big[3]["seconds"] / small[3]["seconds"]
    ok &= growth <= LINEAR_RATIO * (big[1] / small[1]) / 10
    print(f"linear    t({big[1]:.0f} MB)/t({small[1]:.0f} MB) = {growth:.2f} for {big[1] / small[1]:.1f}x the size "
          f"(target <= {LINEAR_RATIO * (big[1] / small[1]) / 10:.1f}): {'ok' if growth <= LINEAR_RATIO * (big[1] / small[1]) / 10 else 'MISSED'}")
    for mb, size, base, ours in rows:
        ratio = ours["seconds"] / base["seconds"]
        budget = RSS_BASE_MB + RSS_PER_FILE * size
        ok &= ratio <= PARSE_RATIO and ours["peak_rss_mb"] <= budget
        print(f"{size:5.1f} MB  lint+plan/parse {ratio:.2f}x (target <= {PARSE_RATIO:.0f}x: "
              f"{'ok' if ratio <= PARSE_RATIO else 'MISSED'});  peak RSS {ours['peak_rss_mb']:.0f} MB "
              f"(target <= {budget:.0f} MB: {'ok' if ours['peak_rss_mb'] <= budget else 'MISSED'})")
    if len(non_ascii) == 2:
        (s0, o0), (s1, o1) = non_ascii
        print(f"non-ASCII t({s1:.0f} MB)/t({s0:.0f} MB) = {o1['seconds'] / o0['seconds']:.2f} for "
              f"{s1 / s0:.1f}x the size; peak RSS {o1['peak_rss_mb']:.0f} MB")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
