"""How fast `lint` is on a large bundle, against just parsing it with pglast.

    .venv/bin/python bench/lint_speed.py [--migrations 1000] [--repeat 3]

Generates a bundle of 1,000 migrations (Prisma layout, ~10 mixed realistic
statements each: tables, indexes plain and concurrent, columns, foreign keys,
NOT VALID/VALIDATE, type changes, backfills, suppressions, the odd over-long
name) in a temporary folder. Then, in this process, best of `--repeat`:

  baseline  read every migration.sql and pglast.parse_sql() it
  lint      load_bundle + lint_bundle (no database): what `python -m schema_deploy lint` does

run in turns (so both see the same machine load), and prints both times (wall
and CPU), the ratio lint/baseline, and lint's wall time against the 2 s
target. Exits 1 if lint misses the target.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pglast

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins")]

from schema_deploy.bundle.discover import load_bundle  # noqa: E402
from schema_deploy.lint.engine import lint_bundle  # noqa: E402

TARGET_S = 2.0


def migration_sql(i: int, rng: random.Random, tables: list[str]) -> str:
    """About ten statements a Prisma user (or a hand-written migration) would plausibly contain."""
    new = f"feature_{i}_items"
    old = rng.choice(tables) if tables else new
    other = rng.choice(tables) if tables else new
    parts = [
        f"-- Migration {i}: feature {i}\n",
        f'CREATE TABLE "{new}" (\n    "id" TEXT NOT NULL,\n    "userId" TEXT NOT NULL,\n'
        f'    "{old}Id" TEXT,\n    "score" DOUBLE PRECISION NOT NULL DEFAULT 0,\n    "label" VARCHAR(120),\n'
        f'    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,\n    "updatedAt" TIMESTAMP(3) NOT NULL,\n\n'
        f'    CONSTRAINT "{new}_pkey" PRIMARY KEY ("id")\n);',
        f'CREATE INDEX "{new}_userId_idx" ON "{new}"("userId");',
        f'CREATE UNIQUE INDEX "{new}_userId_createdAt_key" ON "{new}"("userId", "createdAt");',
        f'ALTER TABLE "{new}" ADD CONSTRAINT "{new}_{old}Id_fkey" FOREIGN KEY ("{old}Id") '
        f'REFERENCES "{old}"("id") ON DELETE SET NULL ON UPDATE CASCADE;',
        f'ALTER TABLE "{old}" ADD COLUMN "feature{i}Enabled" BOOLEAN NOT NULL DEFAULT false;',
        f'-- CreateIndex\nCREATE INDEX "{old}_feature{i}Enabled_idx" ON "{old}"("feature{i}Enabled");',
        f'ALTER TABLE "{other}" ADD CONSTRAINT "{other}_score_{i}_check" CHECK ("score" >= 0) NOT VALID;',
        f'ALTER TABLE "{other}" VALIDATE CONSTRAINT "{other}_score_{i}_check";',
        f"UPDATE \"{new}\" SET \"label\" = 'none' WHERE \"label\" IS NULL;",
    ]
    kind = i % 5
    if kind == 0:
        parts.append(f'ALTER TABLE "{other}" ALTER COLUMN "score" TYPE NUMERIC(12, 4);')
    elif kind == 1:
        parts.append(f"-- schema-deploy: ignore ban-drop-column replaced by feature{i}Enabled in release {i}\n"
                     f'ALTER TABLE "{other}" DROP COLUMN IF EXISTS "legacy{i}";')
    elif kind == 2:
        parts.append(f'ALTER TABLE "{old}" ALTER COLUMN "userId" SET NOT NULL;')
    elif kind == 3:
        parts.append(f'CREATE INDEX "{new}_userId_score_createdAt_updatedAt_label_feature_combined_{i}_idx" '
                     f'ON "{new}"("userId", "score", "createdAt", "updatedAt", "label");')
    else:
        parts.append(f"SELECT count(*) FROM \"{old}\" WHERE \"createdAt\" > now() - interval '1 day';")
    tables.append(new)
    return "\n\n".join(parts) + "\n"


def generate(root: Path, count: int) -> int:
    """Write `count` migrations under `root`; returns the number of statements."""
    rng, tables, statements = random.Random(42), [], 0
    root.mkdir(parents=True)
    (root / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for i in range(count):
        folder = root / f"{20240101000000 + i:014d}_feature_{i}"
        folder.mkdir()
        sql = migration_sql(i, rng, tables)
        statements += sql.count(";")
        (folder / "migration.sql").write_text(sql)
    return statements


def timed(func) -> tuple[float, float, object]:
    """Wall time, CPU time (less sensitive to other processes on the machine) and result of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = func()
    return time.perf_counter() - w0, time.process_time() - c0, result


def best_of_interleaved(repeat: int, *funcs) -> list[tuple[float, float, object]]:
    """Best wall and CPU time of each function, running them in turns so that both see the same load."""
    best = [(float("inf"), float("inf"), None) for _ in funcs]
    for _ in range(repeat):
        for i, func in enumerate(funcs):
            wall, cpu, result = timed(func)
            best[i] = (min(best[i][0], wall), min(best[i][1], cpu), result)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--migrations", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lint-bench-") as tmp:
        root = Path(tmp) / "migrations"
        statements = generate(root, args.migrations)
        files = sorted(root.glob("*/migration.sql"))

        def parse_only() -> int:
            return sum(len(pglast.parse_sql(f.read_text(encoding="utf-8"))) for f in files)

        def lint() -> list:
            return lint_bundle(load_bundle(root))

        (base_s, base_cpu, parsed), (lint_s, lint_cpu, findings) = best_of_interleaved(args.repeat, parse_only, lint)
    rules = {f.rule for f in findings}
    print(f"bundle    {args.migrations} migrations, {parsed} statements, {len(findings)} findings "
          f"({len(rules)} rules fired)")
    print(f"baseline  {base_s:.3f} s wall, {base_cpu:.3f} s CPU  read + pglast.parse_sql (best of {args.repeat})")
    print(f"lint      {lint_s:.3f} s wall, {lint_cpu:.3f} s CPU  load_bundle + lint_bundle, no database "
          f"(best of {args.repeat})")
    print(f"ratio     {lint_s / base_s:.2f}x the parse-only baseline (CPU {lint_cpu / base_cpu:.2f}x)")
    ok = lint_s < TARGET_S
    print(f"target    {lint_s:.3f} s vs {TARGET_S:.1f} s: {'ok' if ok else 'MISSED'} "
          f"({lint_s / TARGET_S:.0%} of the budget; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
