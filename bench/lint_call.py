"""One `lint` call on one migration file, as a pre-commit hook makes it, against squawk's on the same file.

    .venv/bin/python bench/lint_call.py [--file sql/migrations/…/migration.sql] [--repeat 15]

Both are run as the hook runs them, a fresh process per call: ours is
`python -m schema_deploy lint FILE` (what the `schema-deploy` console script of
.pre-commit-hooks.yaml runs), squawk's is the `squawk FILE` binary that
requirements.txt pins (squawk-cli) as this benchmark's baseline. The calls run in
turns, so both see the same machine load; the medians are printed with their ratio and
ours is checked against the 0.15 s target. Exits 1 when the target is missed.
(`bench/lint_speed.py` is the whole-bundle benchmark.)
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FILE = REPO / "sql" / "migrations" / "20251017120000_epic5_schema_completion" / "migration.sql"
TARGET_S = 0.15


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: findings, which this file has
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=DEFAULT_FILE)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    squawk = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if squawk is None:
        raise SystemExit("squawk not found: it is pinned in requirements.txt (squawk-cli); rebuild the venv")
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    ours_argv = [sys.executable, "-m", "schema_deploy", "lint", str(args.file)]
    theirs_argv = [squawk, str(args.file)]
    timed(ours_argv, env), timed(theirs_argv, env)  # warm the page cache and the .pyc files, uncounted
    ours, theirs = [], []
    for _ in range(args.repeat):
        ours.append(timed(ours_argv, env))
        theirs.append(timed(theirs_argv, env))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"file      {args.file.relative_to(REPO) if args.file.is_relative_to(REPO) else args.file} "
          f"({args.file.stat().st_size:,} bytes), {args.repeat} calls each, in turns")
    print(f"baseline  squawk {t * 1000:7.1f} ms median ({min(theirs) * 1000:.1f}–{max(theirs) * 1000:.1f})")
    print(f"ours      lint   {o * 1000:7.1f} ms median ({min(ours) * 1000:.1f}–{max(ours) * 1000:.1f})")
    print(f"ratio     {o / t:.1f}x squawk's per-call time")
    ok = o <= TARGET_S
    print(f"target    {o:.3f} s vs {TARGET_S:.2f} s: {'ok' if ok else 'MISSED'} "
          f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
