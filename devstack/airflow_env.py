"""The environment every local Airflow process of this project runs with.

One function builds it for `make demo` (dag.test), `make airflow` (the real
services) and the DAG tests, so they cannot drift apart: a private AIRFLOW_HOME
with a SQLite metadata database, this repository's dags/ and plugins/,
LocalExecutor with parallelism 4 (the default 32 forks ~1 GB of workers), the
stack's connections as AIRFLOW_CONN_* variables, and deploy settings from
$SCHEMA_DEPLOY_CONFIG.
"""
from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONNECTIONS = ("AIRFLOW_CONN_STAGING_DB", "AIRFLOW_CONN_PRODUCTION_DB", "AIRFLOW_CONN_BACKUP_S3",
               "AIRFLOW_CONN_SLACK_DEPLOYS")


def stack_env(path: Path | None = None) -> dict[str, str]:
    """The `export KEY=value` lines `devstack/stack.py up` writes, as a dict."""
    path = path or Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")) / "env"
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            parts = shlex.split(value)
            env[key] = parts[0] if parts else ""
    return env


def _stable_secret(home: Path, name: str) -> str:
    """A random secret kept in AIRFLOW_HOME, so every process of one home shares it."""
    path = home / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_env(home: Path, stack: dict[str, str], config: Path, *, api_port: int = 8080,
                users: str = "admin:admin,approver:admin") -> dict[str, str]:
    """os.environ plus everything Airflow and schema_deploy need for `home` on the local stack."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({k: v for k, v in stack.items() if k in CONNECTIONS or k.startswith("AWS_")})
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": users,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _stable_secret(home, "jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": _stable_secret(home, "api_secret"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "SCHEMA_DEPLOY_CONFIG": str(config),
        "PG_BINDIR": stack.get("PG_BINDIR", os.environ.get("PG_BINDIR", "")),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
    })
    return env
