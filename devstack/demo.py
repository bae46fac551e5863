"""`make demo`: the Epic 5 deployment, end to end, on the local stack.

Each run starts from scratch: both databases are recreated at the baseline with the
same deterministic demo data. Then, in the order the Airflow DAG will run them:

  preflight     lint, ledger status of both targets, staging-vs-production schema
                fingerprint, data prechecks on production, the online plan
  backup        production streamed to S3, then verified by a restore into a scratch
                database with row counts compared to the manifest
  staging       the online plan applied and verified
  production    the same plan applied and verified (the DAG adds the approval and the
                maintenance-window wait in front of this step)

Every step posts to the Slack stand-in, and a report says what happened where.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

from generate_data import generate  # noqa: E402
from schema_deploy.apply import apply, connect, load_state  # noqa: E402
from schema_deploy.backup import backup  # noqa: E402
from schema_deploy.backup_store import default_s3_client  # noqa: E402
from schema_deploy.bundle import load_bundle  # noqa: E402
from schema_deploy.errors import SchemaDeployError, scrub  # noqa: E402
from schema_deploy.fingerprint import diff_fingerprints, schema_fingerprint  # noqa: E402
from schema_deploy.lint import lint_bundle  # noqa: E402
from schema_deploy.notify import deliver, message, webhook_poster  # noqa: E402
from schema_deploy.parse import parse_migration  # noqa: E402
from schema_deploy.plan import plan_for  # noqa: E402
from schema_deploy.prechecks import require_clean  # noqa: E402
from schema_deploy.restore import verify_backup  # noqa: E402
from schema_deploy.verify import row_counts, verify  # noqa: E402

BASELINE = "20250915090000_baseline"
TABLES = ["behavioral_events", "experiment_assignments", "personalization_experiments", "behavioral_patterns",
          "struggle_predictions", "recommendations", "personalization_configs", "study_schedule_recommendations"]


def stack_env() -> dict[str, str]:
    path = Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")) / "env"
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[7:].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def say(text: str) -> None:
    print(scrub(text), file=sys.stderr, flush=True)


class Demo:
    """Runs the steps, timing each, posting each to Slack."""

    def __init__(self, env: dict[str, str]) -> None:
        from slack_sdk.webhook import WebhookClient

        self.env = env
        self.urls = {"staging": env["STAGING_DATABASE_URL"], "production": env["PRODUCTION_DATABASE_URL"]}
        self.bundle = load_bundle(REPO / "sql" / "migrations")
        self.run_id = f"demo-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.timings: dict[str, float] = {}
        self.facts: dict[str, object] = {}
        self.post = webhook_poster(WebhookClient(env["SLACK_WEBHOOK_URL"]))
        self.notes: list[str] = []

    def notify(self, event: str, facts: dict[str, object]) -> None:
        outcome = deliver(self.post, message(event, {"run": self.run_id, **facts}), event, log=say)
        self.notes.append(f"{event}: {'delivered' if outcome.ok else 'NOT delivered'}")

    def step(self, name: str, func):
        say(f"--- {name}")
        t0 = time.monotonic()
        result = func()
        self.timings[name] = time.monotonic() - t0
        return result

    # -- the steps ---------------------------------------------------------------------

    def reset(self) -> None:
        for name, url in self.urls.items():
            recreate(url)
            apply(url, self.bundle, to=BASELINE, log=lambda m, n=name: say(f"[{n}] {m}"))
            generate(url, seed=42, scale="demo")
            say(f"[{name}] recreated at the baseline with demo data")

    def preflight(self) -> None:
        findings = lint_bundle(self.bundle)
        errors = [f for f in findings if f.severity == "error" and not f.suppressed]
        fps = {}
        for name, url in self.urls.items():
            with connect(url) as conn:
                status, _ = load_state(conn, self.bundle)
                fps[name] = schema_fingerprint(conn)
            say(f"[{name}] pending: {', '.join(status.pending) or 'nothing'}")
        diff = diff_fingerprints(fps["staging"], fps["production"], "staging", "production")
        if diff:
            raise SystemExit("staging and production schemas differ before the change:\n" + "\n".join(diff))
        with connect(self.urls["production"]) as conn:
            status, interrupted = load_state(conn, self.bundle)
            plan = plan_for(conn, self.bundle, status, interrupted, online=True)
            checks = require_clean(conn, plan)
        rewritten = {id(ps.source) for step in plan.migrations[0].steps for ps in step.statements if ps.reason}
        rules = sorted({f.rule for f in errors})
        self.facts["lint"] = f"{len(errors)} errors in the SQL as written ({', '.join(rules)})"
        self.facts["plan"] = (f"{len(plan.migrations[0].steps)} online steps for {plan.migrations[0].migration.name}; "
                              f"{len(rewritten)} statements rewritten")
        self.facts["prechecks"] = f"{len(checks)} passed (no orphan assignments)"
        self.notify("started", {"migrations": plan.migrations[0].migration.name, "targets": "staging, production",
                                "plan": self.facts["plan"]})

    def backup(self) -> None:
        s3 = default_s3_client()
        target = f"s3://{self.env['BACKUP_BUCKET']}/demo"
        result = backup(s3, self.urls["production"], target, environment="production", run_id=self.run_id, log=say)
        check = verify_backup(s3, result.uri, restore_check=True, admin_url=self.urls["production"], log=say)
        self.facts["backup"] = result.uri
        self.facts["backup sha256"] = result.sha256
        self.facts["backup size"] = f"{result.size / 1e6:.1f} MB, {sum(result.row_counts.values()):,} rows"
        self.facts["backup verified"] = f"{check.method}: {'ok' if check.ok else 'FAILED'}"

    def deploy(self, name: str) -> None:
        url = self.urls[name]
        with psycopg.connect(url) as conn:
            before = row_counts(conn, TABLES)
        result = apply(url, self.bundle, online=True, log=lambda m: say(f"[{name}] {m}"))
        migrated = result.applied[0]
        with psycopg.connect(url) as conn:
            after = row_counts(conn, TABLES)
            statements = parse_migration(self.bundle.by_name()[migrated.name])
            report = verify(conn, statements, REPO / "sql" / "verify")
        lost = {t: before[t] - after[t] for t in TABLES if after.get(t) != before.get(t)}
        self.facts[f"{name} apply"] = f"{migrated.seconds:.2f} s, {len(migrated.steps)} steps, {migrated.lock_retries} lock retries"
        self.facts[f"{name} verification"] = f"{len(report.checks) - len(report.failed)}/{len(report.checks)} checks ok"
        self.facts[f"{name} rows"] = "unchanged in every touched table" if not lost else f"CHANGED: {lost}"
        if not report.ok or lost:
            self.notify("failed", {"step": f"verify {name}", "error": "; ".join(c.name for c in report.failed)})
            raise SystemExit(f"{name}: verification failed: {[c.name for c in report.failed]} {lost}")
        self.notify("gate_passed" if name == "staging" else "production_done",
                    {"target": name, "verification": self.facts[f"{name} verification"]})


def recreate(url: str) -> None:
    """Drop and create the database `url` names (the stack's role owns it)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                     "AND pid <> pg_backend_pid() AND usename = current_user", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def main() -> int:
    env = stack_env()
    os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
    os.environ.setdefault("PG_BINDIR", env.get("PG_BINDIR", ""))
    demo = Demo(env)
    try:
        demo.step("reset", demo.reset)
        demo.step("preflight", demo.preflight)
        demo.step("backup production", demo.backup)
        demo.step("apply + verify staging", lambda: demo.deploy("staging"))
        demo.step("apply + verify production", lambda: demo.deploy("production"))
    except SchemaDeployError as exc:
        say(f"demo: {exc}")
        demo.notify("failed", {"error": str(exc)[:500]})
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the demo reports, it does not dump a trace
        say(f"demo failed: {type(exc).__name__}: {exc}")
        demo.notify("failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})
        return 1
    print("\n=== Epic 5 deployment on the local stack ===")
    print(f"run id        {demo.run_id}")
    for name, url in demo.urls.items():
        print(f"{name:<13} {scrub(url)}")
    print("\nsteps")
    for name, seconds in demo.timings.items():
        print(f"  {name:<28} {seconds:7.2f} s")
    print("\nfacts")
    for key, value in demo.facts.items():
        print(f"  {key:<24} {value}")
    print("\nSlack (stand-in)")
    for note in demo.notes:
        print(f"  {note}")
    print(f"  messages recorded in {env['SLACK_MESSAGES_FILE']}")
    print("\nnext: the Airflow DAG (deploy_schema) runs these steps with approval and a maintenance window;")
    print("      `make stack-down` stops the stack.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
