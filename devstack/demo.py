"""`make demo`: bring both databases of the local stack to the baseline with data, and report.

Run by the Makefile after `stack-up`, with the stack's environment file read
here. Idempotent: a second run finds the baseline applied and the data in
place, and only prints the report.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

from generate_data import generate  # noqa: E402
from schema_deploy.apply import apply  # noqa: E402
from schema_deploy.bundle import load_bundle  # noqa: E402
from schema_deploy.errors import SchemaDeployError, scrub  # noqa: E402

BASELINE = "20250915090000_baseline"
TABLES = ("behavioral_events", "experiment_assignments", "personalization_experiments", "behavioral_patterns",
          "struggle_predictions", "recommendations", "personalization_configs", "study_schedule_recommendations")


def stack_env() -> dict[str, str]:
    path = Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")) / "env"
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[7:].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def row_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def prepare(name: str, url: str, seed: int) -> dict[str, int]:
    """Baseline through the engine (so the ledger is Prisma's), then data if empty."""
    bundle = load_bundle(REPO / "sql" / "migrations")
    apply(url, bundle, to=BASELINE, log=lambda msg: print(f"  [{name}] {msg}", file=sys.stderr))
    counts = row_counts(url)
    if counts["behavioral_events"] == 0:
        t0 = time.monotonic()
        generate(url, seed=seed, scale="demo")
        print(f"  [{name}] seeded demo data in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        counts = row_counts(url)
    return counts


def main() -> int:
    env = stack_env()
    targets = {"staging": env["STAGING_DATABASE_URL"], "production": env["PRODUCTION_DATABASE_URL"]}
    print("preparing the local stack's databases (baseline + deterministic demo data)...", file=sys.stderr)
    try:
        counts = {name: prepare(name, url, seed=42) for name, url in targets.items()}
    except SchemaDeployError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\n=== schema-deploy local stack ===")
    for name, url in targets.items():
        print(f"{name:<11} {scrub(url)}")
    print(f"{'S3':<11} {env['S3_ENDPOINT_URL']}  bucket {env['BACKUP_BUCKET']}")
    print(f"{'Slack':<11} {scrub(env['SLACK_API_URL'])}  messages recorded in {env['SLACK_MESSAGES_FILE']}")
    print(f"{'env file':<11} {env['DEVSTACK_DIR']}/env   (source it: . .devstack/env)")
    print(f"\n{'table':<34} {'staging':>10} {'production':>11}")
    for table in TABLES:
        print(f"{table:<34} {counts['staging'][table]:>10,} {counts['production'][table]:>11,}")
    print(f"\nboth databases are at {BASELINE}; the Epic 5 migration is pending:")
    print("  .venv/bin/python -m schema_deploy status --db \"$STAGING_DATABASE_URL\"   (with PYTHONPATH=plugins)")
    print("stop everything with: make stack-down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
