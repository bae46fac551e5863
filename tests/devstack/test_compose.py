"""docker-compose.yaml, the production-like stack, validated without a Docker engine.

The stack cannot run on the CI machine (no engine), so these tests check what can be checked
statically: Compose accepts the file with the example env (`docker-compose config -q`, Debian's
docker-compose 1.29: its schema, variable interpolation, references between services and
volumes), it matches the Compose Specification's schema (`check-jsonschema --builtin-schema
vendor.compose-spec`), every image is pinned, every long-running service has a health check,
Airflow runs the CeleryExecutor, the connection ids and every environment variable the code
reads are set, and paths inside the containers lead to files of this repository.

It also checks who holds what: one Celery worker per environment, consuming the queue
docker/deploy.yaml routes that environment to and holding that environment's database
connection only; a control plane (api-server, scheduler, dag-processor, triggerer, init) with
no database connection, since the Execution API hands a worker any connection the api-server
can see; workers without the metadata database's password or the API's signing secrets.

Each check is a function that returns the problems it finds, so the tests at the end can show
that a broken file (an unpinned image, a service without a health check, ...) is caught.
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from schema_deploy.config import settings as deploy_config
from schema_deploy_airflow import connections

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / "docker" / ".env.example"
DOCKERFILE = REPO / "docker" / "Dockerfile"
REPO_IN_CONTAINER = PurePosixPath("/opt/schema-deploy")

AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}
WORKER = "celery worker"
CONNECTION_IDS = {*connections.DB_CONNECTIONS.values(), connections.S3_CONNECTION, connections.SLACK_CONNECTION}
SHARED_CONNECTIONS = {connections.S3_CONNECTION, connections.SLACK_CONNECTION}  # every Airflow container's
# What only the control plane may hold: the metadata database, the key that encrypts it, the
# secrets that sign task tokens (JWT) and UI sessions and log-server requests (API secret key).
CONTROL_ONLY = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY",
                "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY")

# Variables the code reads that the stack leaves unset on purpose, and why.
OPTIONAL_ENV = {
    "DATABASE_URL": "the CLI's default --db; in Airflow the URLs come from the staging_db/production_db "
                    "connections, and the test gate sets it for its own commands",
    "PG_BINDIR": "unset, so pg_dump/pg_restore come from PATH (the image's postgresql-client)",
    "PGDATABASE": "libpq's default database, a fallback for URLs that name none; every connection names one",
    "SCHEMA_DEPLOY_LOG_TIME": "wall-clock prefix on CLI log lines, off by default",
    "SLACK_WEBHOOK_URL": "`deploy` (the CLI, outside Airflow) posts there when set; in Airflow Slack is the "
                         "slack_deploys connection",
    "USER": "`deploy` records who ran it; in Airflow the triggering user comes from the DAG run",
    "LOGNAME": "the same, where USER is not set",
    "SCHEMA_DEPLOY_UI": "builds the UI page's app outside `airflow api-server` too; the api-server builds it anyway",
    "SCHEMA_DEPLOY_RETRY_DELAY_S": "a task's first retry delay; unset, it is 30 s (tests shorten it)",
}
ENV_READ = re.compile(r"""(?:environ\.get|getenv|environ\.setdefault)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
                      r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]""")


# --- running the validators -------------------------------------------------------------------

def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if not path:
        pytest.fail("docker-compose not found: run devstack/ensure_compose.sh (as root it installs Debian's "
                    "docker-compose; no Docker engine needed), or `make test`, which does.")
    return path


def compose_config(compose_file: Path, env_file: Path = ENV_EXAMPLE, *, quiet: bool = True
                   ) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of `compose_file` (relative paths resolve against the repository)."""
    argv = [docker_compose(), "--project-directory", str(REPO), "--env-file", str(env_file),
            "-f", str(compose_file), "config"] + (["-q"] if quiet else [])
    # Only the example env file fills the variables: not whatever this test process has exported
    # (the DAG tests' conftest sets SCHEMA_DEPLOY_CONFIG and AIRFLOW_* for their own Airflow).
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def schema_check(compose_file: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(compose_file)]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The file as Compose resolves it with the example env: anchors merged, variables filled in."""
    done = compose_config(COMPOSE, quiet=False)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


# --- reading a resolved compose file ----------------------------------------------------------

def command_args(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def command_of(service: dict) -> str:
    """The Airflow command without its options: "celery worker" for `celery worker --queues x`."""
    args = command_args(service)
    words = args[:next((i for i, a in enumerate(args) if a.startswith("-")), len(args))]
    return " ".join(words)


def option_value(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def worker_queues(service: dict) -> list[str]:
    """The queues a `celery worker` consumes (`--queues a,b`; Airflow's default queue without it)."""
    value = option_value(command_args(service), "--queues", "-q")
    return value.split(",") if value else [deploy_config.DEFAULT_QUEUE]


def airflow_services(cfg: dict) -> dict[str, dict]:
    return {name: s for name, s in cfg["services"].items() if command_of(s) in AIRFLOW_COMMANDS}


def workers(cfg: dict) -> dict[str, dict]:
    return {name: s for name, s in cfg["services"].items() if command_of(s) == WORKER}


def control_plane(cfg: dict) -> dict[str, dict]:
    """Every Airflow container that is not a worker, airflow-init included (it has Airflow's config)."""
    return {name: s for name, s in cfg["services"].items()
            if "AIRFLOW__CORE__EXECUTOR" in environment(s) and command_of(s) != WORKER}


def conn_var(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def worker_environment(name: str) -> str | None:
    """The deployment environment a worker serves, by its name: airflow-worker-<environment>."""
    env_name = name.removeprefix("airflow-worker-")
    return env_name if env_name in connections.DB_CONNECTIONS else None


def database_service(env_name: str) -> str:
    return f"{env_name}-db"


def secret_values(service: dict) -> dict[str, str]:
    """The service's secret settings (passwords, keys), by variable."""
    return {var: value for var, value in environment(service).items()
            if value and re.search(r"PASSWORD|SECRET|_KEY$", var)}


def holding(service: dict, secrets: dict[str, str]) -> list[str]:
    """The names of `secrets` whose value appears anywhere in the service's environment."""
    values = environment(service).values()
    return sorted(name for name, secret in secrets.items() if any(secret in v for v in values))


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def one_shot_services(cfg: dict) -> set[str]:
    """Services another one waits for to *finish* (init and seed containers)."""
    return {dep for s in cfg["services"].values() for dep, cond in (s.get("depends_on") or {}).items()
            if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"}


def bind_mounts(service: dict) -> list[tuple[Path, PurePosixPath]]:
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        if source.startswith(("/", ".")):
            mounts.append(((REPO / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path(service: dict, path: str) -> Path | None:
    """The file of this machine that `path` inside the service's containers is, via its bind mounts."""
    for source, target in bind_mounts(service):
        inside = PurePosixPath(path)
        if inside == target or target in inside.parents:
            return source / inside.relative_to(target)
    return None


def image_is_pinned(image: str) -> bool:
    name, _, digest = image.partition("@")
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    return bool(digest) or (tag != "" and tag != "latest" and "$" not in tag)


# --- the checks: each returns the problems it finds --------------------------------------------

def unpinned_images(cfg: dict) -> list[str]:
    return [f"{name}: image {s.get('image')!r} has no version tag (or is 'latest')"
            for name, s in cfg["services"].items()
            if not s.get("build") and not image_is_pinned(s.get("image") or "")]


def missing_healthchecks(cfg: dict) -> list[str]:
    problems = []
    for name, s in cfg["services"].items():
        if name in one_shot_services(cfg):
            if s.get("restart") in ("always", "unless-stopped"):
                problems.append(f"{name}: a one-shot service must not restart {s['restart']}")
            continue
        check = s.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test in (["NONE"], "NONE"):
            problems.append(f"{name}: long-running service without a health check")
    return problems


def celery_problems(cfg: dict) -> list[str]:
    services = airflow_services(cfg)
    problems = [f"no Airflow service runs `{c}`" for c in AIRFLOW_COMMANDS
                if c not in {command_of(s) for s in services.values()}]
    for name, s in services.items():
        env = environment(s)
        if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
            problems.append(f"{name}: AIRFLOW__CORE__EXECUTOR is {env.get('AIRFLOW__CORE__EXECUTOR')!r}")
        # Results in Redis, not the metadata database: the workers then need no metadata credential.
        urls = [("AIRFLOW__CELERY__BROKER_URL", "redis"), ("AIRFLOW__CELERY__RESULT_BACKEND", "redis")]
        if command_of(s) != WORKER:
            urls.append(("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2"))
        for key, scheme in urls:
            url = urlsplit(env.get(key, ""))
            if url.scheme != scheme or url.hostname not in cfg["services"]:
                problems.append(f"{name}: {key} is not a {scheme} URL to a service of the stack")
    return problems


def env_read_by_code() -> dict[str, set[str]]:
    """Environment variables read in plugins/ and dags/, each with the files that read it."""
    found: dict[str, set[str]] = {}
    for path in sorted([*REPO.glob("plugins/**/*.py"), *REPO.glob("dags/**/*.py")]):
        for match in ENV_READ.finditer(path.read_text()):
            found.setdefault(match.group(1) or match.group(2), set()).add(str(path.relative_to(REPO)))
    return found


def missing_environment(cfg: dict) -> list[str]:
    """Variables the code reads (and the connections every container needs) that a service lacks;
    the database connections are the workers' own (connection_problems)."""
    needed = {name for name in env_read_by_code() if name not in OPTIONAL_ENV}
    needed |= {"SCHEMA_DEPLOY_CONFIG", "PYTHONPATH"} | {conn_var(c) for c in SHARED_CONNECTIONS}
    return [f"{name}: {var} is not set" for name, s in airflow_services(cfg).items()
            for var in sorted(needed - {k for k, v in environment(s).items() if v})]


def connection_problems(cfg: dict) -> list[str]:
    """The control plane holds the shared connections only; a worker, those and its own
    environment's database connection; every environment has a worker."""
    shared = {conn_var(c) for c in SHARED_CONNECTIONS}
    problems = []
    for name, s in airflow_services(cfg).items():
        have = {k for k in environment(s) if k.startswith("AIRFLOW_CONN_")}
        want = set(shared)
        if command_of(s) == WORKER:
            env_name = worker_environment(name)
            if env_name is None:
                problems.append(f"{name}: name a worker airflow-worker-<environment>, one of "
                                f"{sorted(connections.DB_CONNECTIONS)}")
                continue
            want.add(conn_var(connections.DB_CONNECTIONS[env_name]))
        if have != want:
            problems.append(f"{name}: connections {sorted(have)} differ from {sorted(want)}")
    served = {worker_environment(name) for name in workers(cfg)}
    problems += [f"no worker serves {e} (airflow-worker-{e}, holding {cid})"
                 for e, cid in connections.DB_CONNECTIONS.items() if e not in served]
    return problems


def queue_problems(cfg: dict) -> list[str]:
    """Every worker consumes exactly the queue the deploy settings route its environment to, the
    tasks that open no database have a worker, and every Airflow service reads the same settings
    (the DAG takes its queues from them at parse time)."""
    paths = {environment(s).get("SCHEMA_DEPLOY_CONFIG") for s in airflow_services(cfg).values()}
    if len(paths) != 1:
        return [f"the Airflow services read different deploy settings: {sorted(map(str, paths))}"]
    problems, consumed, default = [], set(), None
    for name, s in workers(cfg).items():
        settings = deploy_config.load(host_path(s, environment(s)["SCHEMA_DEPLOY_CONFIG"]), must_exist=True)
        queues, default = worker_queues(s), settings.queue(None)
        consumed |= set(queues)
        env_name = worker_environment(name)
        if env_name is not None and queues != [settings.queue(env_name)]:
            problems.append(f"{name}: consumes {','.join(queues)}, but deploy.yaml routes {env_name}'s "
                            f"tasks to queue {settings.queue(env_name)}: run it with --queues "
                            f"{settings.queue(env_name)}")
    if default is not None and default not in consumed:
        problems.append(f"the tasks that open no database go to queue {default} (queues.default), "
                        f"which no worker consumes")
    return problems


def worker_identity_problems(cfg: dict) -> list[str]:
    """Each worker has a hostname of its own (what Airflow records and the wrong-worker message
    names), and its health check asks that Celery node whether it consumes its queue."""
    problems = []
    seen: dict[str, str] = {}
    for name, s in workers(cfg).items():
        host = s.get("hostname")
        if not host:
            problems.append(f"{name}: no hostname (the task's worker would be a container id)")
            continue
        if host in seen:
            problems.append(f"{name}: hostname {host} is also {seen[host]}'s")
        seen[host] = name
        test = " ".join((s.get("healthcheck") or {}).get("test") or [])
        # The check greps the JSON of `inspect active_queues` for "name": "<queue>".
        for part in (f"celery@{host}", "active_queues", *(f'\\"{q}\\"' for q in worker_queues(s))):
            if part not in test:
                problems.append(f"{name}: the health check does not check {part}")
    return problems


def cross_environment_problems(cfg: dict) -> list[str]:
    """A worker holds no credential of another environment: neither its connection nor any of its
    database server's passwords."""
    problems = []
    for name, s in workers(cfg).items():
        for other in connections.DB_CONNECTIONS:
            if other == worker_environment(name):
                continue
            if conn_var(connections.DB_CONNECTIONS[other]) in environment(s):
                problems.append(f"{name}: holds {conn_var(connections.DB_CONNECTIONS[other])}, "
                                f"{other}'s connection")
            leaked = holding(s, secret_values(cfg["services"][database_service(other)]))
            if leaked:
                problems.append(f"{name}: holds {database_service(other)}'s {', '.join(leaked)}")
    return problems


def control_plane_db_problems(cfg: dict) -> list[str]:
    """No control-plane service holds a deployment database's connection or password."""
    problems = []
    for name, s in control_plane(cfg).items():
        for env_name, cid in connections.DB_CONNECTIONS.items():
            if conn_var(cid) in environment(s):
                problems.append(f"{name}: holds {conn_var(cid)} (the Execution API would hand it to any worker)")
            leaked = holding(s, secret_values(cfg["services"][database_service(env_name)]))
            if leaked:
                problems.append(f"{name}: holds {database_service(env_name)}'s {', '.join(leaked)}")
    return problems


def worker_secret_problems(cfg: dict) -> list[str]:
    """No worker holds the metadata database's password, the Fernet key or the API's signing secrets."""
    secrets = {f"airflow-db's {var}": value for var, value in secret_values(cfg["services"]["airflow-db"]).items()}
    for s in control_plane(cfg).values():
        secrets.update({var: environment(s)[var] for var in CONTROL_ONLY if environment(s).get(var)})
    problems = []
    for name, s in workers(cfg).items():
        present = [var for var in CONTROL_ONLY if var in environment(s)]
        if present:
            problems.append(f"{name}: sets {', '.join(present)} (the control plane's only)")
        leaked = holding(s, secrets)
        if leaked:
            problems.append(f"{name}: holds the value of {', '.join(leaked)}")
    return problems


def path_problems(cfg: dict) -> list[str]:
    """Container paths in settings and entrypoints that lead to no file of this repository."""
    problems = []
    for name, s in cfg["services"].items():
        env = environment(s)
        paths = [env[k] for k in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER",
                                  "SCHEMA_DEPLOY_CONFIG") if k in env]
        paths += [p for p in env.get("PYTHONPATH", "").split(":") if p]
        entrypoint = s.get("entrypoint") or []
        paths += [a for a in ([entrypoint] if isinstance(entrypoint, str) else entrypoint)
                  if a.startswith(str(REPO_IN_CONTAINER))]
        for path in paths:
            local = host_path(s, path)
            if local is None or not local.exists():
                problems.append(f"{name}: {path} is not a mounted file of the repository")
    return problems


# --- the file as it is ----------------------------------------------------------------------

@pytest.mark.slow
def test_compose_accepts_the_file_with_the_example_env():
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr


def test_file_matches_the_compose_specification_schema():
    done = schema_check(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = compose_config(COMPOSE, empty)
    assert done.returncode != 0
    assert "set AIRFLOW_DB_PASSWORD in docker/.env" in done.stderr


@pytest.mark.slow
def test_every_image_is_pinned_to_a_version(resolved):
    assert unpinned_images(resolved) == []
    images = {s["image"] for s in resolved["services"].values() if s.get("image")}
    assert all(image_is_pinned(i) for i in images), images


def test_dockerfile_builds_on_the_pinned_airflow_of_requirements():
    bases = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert bases and all(image_is_pinned(b) for b in bases), bases
    airflow = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert bases[0].startswith(f"apache/airflow:{airflow}-python3.11"), (bases[0], airflow)


def test_build_context_sends_only_requirements():
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules == ["*", "!requirements.txt"]


def test_every_long_running_service_has_a_healthcheck(resolved):
    assert missing_healthchecks(resolved) == []
    assert one_shot_services(resolved) == {"airflow-init", "minio-init", "seed-databases"}


def test_scheduler_healthcheck_has_its_health_server(resolved):
    scheduler = resolved["services"]["airflow-scheduler"]
    assert "8974/health" in " ".join(scheduler["healthcheck"]["test"])
    assert environment(scheduler)["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_airflow_runs_the_celery_executor_with_redis_as_broker_and_result_backend(resolved):
    assert celery_problems(resolved) == []
    assert resolved["services"]["redis"]["image"].startswith("redis:")
    assert resolved["services"]["airflow-db"]["image"].startswith("postgres:")


def test_every_variable_the_code_reads_is_set_or_knowingly_optional(resolved):
    assert missing_environment(resolved) == []
    stale = set(OPTIONAL_ENV) - set(env_read_by_code())
    assert not stale, f"no longer read by the code, drop from OPTIONAL_ENV: {sorted(stale)}"


def test_connection_ids_are_the_ones_the_dag_uses(resolved):
    assert connection_problems(resolved) == []
    assert {"staging_db", "production_db", "backup_s3", "slack_deploys"} == CONNECTION_IDS


def test_connections_parse_as_airflow_connections_to_services_of_the_stack(resolved):
    from airflow.sdk.definitions.connection import Connection  # what task code gets for AIRFLOW_CONN_*

    services = resolved["services"]
    # Each connection as the worker that holds it has it (the database ones are one worker's each).
    env = {k: v for s in workers(resolved).values() for k, v in environment(s).items()}
    conns = {cid: Connection.from_json(env[conn_var(cid)], conn_id=cid) for cid in CONNECTION_IDS}
    for env_name, cid in connections.DB_CONNECTIONS.items():
        conn = conns[cid]
        assert (conn.conn_type, conn.login) == ("postgres", "migrator"), cid
        db = environment(services[conn.host])
        assert conn.schema == db["APP_DATABASE"] and env_name in conn.schema
        assert conn.password == db["MIGRATOR_PASSWORD"], f"{cid}: password differs from {conn.host}'s migrator"
    s3 = conns[connections.S3_CONNECTION]
    endpoint = urlsplit(s3.extra_dejson["endpoint_url"])
    assert s3.conn_type == "aws" and endpoint.hostname == "minio" and endpoint.port == 9000
    minio_init = environment(services["minio-init"])
    assert (s3.login, s3.password) == (minio_init["BACKUP_S3_ACCESS_KEY"], minio_init["BACKUP_S3_SECRET_KEY"])
    slack = conns[connections.SLACK_CONNECTION]
    assert slack.conn_type in ("slackwebhook", "slack")


def test_backup_bucket_is_the_one_deploy_settings_name(resolved):
    bucket = environment(resolved["services"]["minio-init"])["BACKUP_BUCKET"]
    for name, worker in workers(resolved).items():
        settings = deploy_config.load(host_path(worker, environment(worker)["SCHEMA_DEPLOY_CONFIG"]), must_exist=True)
        assert settings.backup_bucket == bucket, name


def test_task_logs_go_to_the_backup_bucket_with_the_backup_connection(resolved):
    bucket = environment(resolved["services"]["minio-init"])["BACKUP_BUCKET"]
    for name, s in airflow_services(resolved).items():
        env = environment(s)
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"].lower() == "true", name
        assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == connections.S3_CONNECTION, name
        folder = urlsplit(env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"])
        assert (folder.scheme, folder.hostname, folder.path) == ("s3", bucket, "/airflow-logs"), name


# --- who holds what -----------------------------------------------------------------------------

def test_there_is_one_worker_per_environment(resolved):
    assert sorted(worker_environment(name) or name for name in workers(resolved)) == sorted(connections.DB_CONNECTIONS)
    assert set(control_plane(resolved)) == {"airflow-init", "airflow-apiserver", "airflow-scheduler",
                                            "airflow-dag-processor", "airflow-triggerer"}


def test_each_worker_consumes_the_queue_deploy_settings_route_its_environment_to(resolved):
    assert queue_problems(resolved) == []
    for name, worker in workers(resolved).items():
        settings = deploy_config.load(host_path(worker, environment(worker)["SCHEMA_DEPLOY_CONFIG"]), must_exist=True)
        assert worker_queues(worker) == [settings.queue(worker_environment(name))], name
    # The tasks that open no database run on the staging worker.
    assert settings.queue(None) == "staging"
    assert worker_queues(resolved["services"]["airflow-worker-staging"]) == ["staging"]
    assert worker_queues(resolved["services"]["airflow-worker-production"]) == ["production"]


def test_a_worker_holds_no_credential_of_the_other_environment(resolved):
    assert cross_environment_problems(resolved) == []
    staging = environment(resolved["services"]["airflow-worker-staging"])
    production = environment(resolved["services"]["airflow-worker-production"])
    assert "AIRFLOW_CONN_PRODUCTION_DB" not in staging and "AIRFLOW_CONN_STAGING_DB" not in production
    for env, other in ((staging, "production-db"), (production, "staging-db")):
        passwords = [environment(resolved["services"][other])[v] for v in ("MIGRATOR_PASSWORD", "POSTGRES_PASSWORD")]
        assert not [k for k, v in env.items() if any(p in v for p in passwords)], other


def test_no_control_plane_service_holds_a_database_connection(resolved):
    assert control_plane_db_problems(resolved) == []
    for name, s in control_plane(resolved).items():
        assert not [k for k in environment(s) if k.endswith("_DB") and k.startswith("AIRFLOW_CONN_")], name


def test_no_worker_holds_the_metadata_database_password_or_the_api_secrets(resolved):
    assert worker_secret_problems(resolved) == []
    metadata_password = environment(resolved["services"]["airflow-db"])["POSTGRES_PASSWORD"]
    jwt_secret = environment(resolved["services"]["airflow-apiserver"])["AIRFLOW__API_AUTH__JWT_SECRET"]
    for name, s in workers(resolved).items():
        values = environment(s).values()
        assert not any(metadata_password in v or jwt_secret in v for v in values), name


def test_workers_have_hostnames_of_their_own_and_check_their_queue(resolved):
    assert worker_identity_problems(resolved) == []
    hostnames = [s["hostname"] for s in workers(resolved).values()]
    assert len(set(hostnames)) == len(hostnames) == 2


def test_stack_settings_are_the_repository_settings_plus_queues():
    """docker/deploy.yaml differs from deploy.yaml only in the queues (paths resolve to the same files)."""
    stack = deploy_config.load(REPO / "docker" / "deploy.yaml", must_exist=True)
    repo = deploy_config.load(REPO / "deploy.yaml", must_exist=True)

    def comparable(cfg: deploy_config.DeployConfig) -> dict:
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("source", "queues")}
        fields["bundles"] = tuple((name, path.resolve()) for name, path in cfg.bundles)
        fields["verify_dir"] = cfg.verify_dir.resolve()
        fields["lint"] = cfg.lint.severity
        return fields

    assert comparable(stack) == comparable(repo)
    assert dict(stack.queues) == {"staging": "staging", "production": "production", "default": "staging"}


def test_gate_commands_name_files_of_the_repository_root():
    """The gate runs its commands in the repository's root (/opt/schema-deploy in the containers)."""
    from schema_deploy.pipeline import deploy

    assert deploy.ROOT == deploy_config.ROOT == REPO
    stack = deploy_config.load(REPO / "docker" / "deploy.yaml", must_exist=True)
    paths = [a for cmd in stack.gate_commands for a in cmd if "/" in a and not a.startswith(("-", "{"))]
    assert paths and all((REPO / a).exists() for a in paths), paths


def test_container_paths_are_files_of_this_repository(resolved):
    assert path_problems(resolved) == []
    for name in ("staging-db", "production-db"):
        init = host_path(resolved["services"][name], "/docker-entrypoint-initdb.d")
        assert init is not None and sorted(p.name for p in init.iterdir()) == ["10-migrator.sh"]
    assert host_path(resolved["services"]["minio-init"], "/opt/schema-deploy/docker/minio-init.sh").exists()


def test_seed_applies_a_migration_of_the_bundle():
    baseline = re.search(r"^baseline=(\S+)$", (REPO / "docker" / "seed.sh").read_text(), re.M).group(1)
    assert (REPO / "sql" / "migrations" / baseline / "migration.sql").exists()


def test_scripts_are_valid_shell():
    for script in ("docker/seed.sh", "docker/new-env.sh", "docker/postgres-init/10-migrator.sh"):
        done = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)
    done = subprocess.run(["sh", "-n", "docker/minio-init.sh"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- secrets ----------------------------------------------------------------------------------

def secret_like(name: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|^AIRFLOW_CONN_|^MC_HOST_|_URL$|_CONN$|BACKEND$", name))


def test_compose_file_holds_no_secret_values():
    raw = yaml.safe_load(COMPOSE.read_text())
    literal = [(name, var) for name, s in raw["services"].items() for var, value in environment(s).items()
               if secret_like(var) and re.search(r"(password|token|:[^/@]+@)", value, re.I) and "${" not in value]
    assert literal == []


def test_env_example_holds_placeholders_only():
    values = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#"))
    for var, value in values.items():
        if secret_like(var):
            assert re.search(r"change-?me", value), f"{var} in .env.example looks like a real secret"
    done = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert done.returncode == 0, "docker/.env must be git-ignored"


@pytest.mark.slow
def test_new_env_fills_every_placeholder_with_values_the_services_accept(tmp_path):
    out = tmp_path / "stack.env"
    done = subprocess.run(["bash", "docker/new-env.sh", str(out)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    text = out.read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert not re.search(r"change-?me", "\n".join(values.values()))
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    key_name, _, key = values["MINIO_KMS_SECRET_KEY"].partition(":")
    assert key_name and len(base64.b64decode(key)) == 32
    for var in ("MINIO_ROOT_USER", "BACKUP_S3_ACCESS_KEY"):
        assert 3 <= len(values[var]) <= 20, var  # MinIO's access key limits
    for var in ("MINIO_ROOT_PASSWORD", "BACKUP_S3_SECRET_KEY"):
        assert 8 <= len(values[var]) <= 40, var  # MinIO's secret key limits
    assert compose_config(COMPOSE, out).returncode == 0
    again = subprocess.run(["bash", "docker/new-env.sh", str(out)], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and out.read_text() == text


def test_example_minio_credentials_are_within_minio_limits():
    values = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#"))
    assert all(3 <= len(values[v]) <= 20 for v in ("MINIO_ROOT_USER", "BACKUP_S3_ACCESS_KEY"))
    assert all(8 <= len(values[v]) <= 40 for v in ("MINIO_ROOT_PASSWORD", "BACKUP_S3_SECRET_KEY"))


# --- a broken file is caught ------------------------------------------------------------------

def _without_healthcheck(cfg: dict) -> None:
    cfg["services"]["airflow-scheduler"].pop("healthcheck", None)


def _latest_image(cfg: dict) -> None:
    cfg["services"]["redis"]["image"] = "redis:latest"


def _untagged_image(cfg: dict) -> None:
    cfg["services"]["minio"]["image"] = "minio/minio"


def _local_executor(cfg: dict) -> None:
    cfg["services"]["airflow-worker-staging"]["environment"]["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"


def _no_worker(cfg: dict) -> None:
    del cfg["services"]["airflow-worker-staging"], cfg["services"]["airflow-worker-production"]


def _no_production_worker(cfg: dict) -> None:
    del cfg["services"]["airflow-worker-production"]


def _worker_holds_the_other_environments_connection(cfg: dict) -> None:
    production = cfg["services"]["airflow-worker-production"]["environment"]
    cfg["services"]["airflow-worker-staging"]["environment"]["AIRFLOW_CONN_PRODUCTION_DB"] = \
        production["AIRFLOW_CONN_PRODUCTION_DB"]


def _worker_holds_the_other_environments_password_elsewhere(cfg: dict) -> None:
    password = cfg["services"]["production-db"]["environment"]["MIGRATOR_PASSWORD"]
    cfg["services"]["airflow-worker-staging"]["environment"]["DATABASE_URL"] = \
        f"postgresql://migrator:{password}@production-db/americano_production"


def _worker_consumes_the_wrong_queue(cfg: dict) -> None:
    cfg["services"]["airflow-worker-production"]["command"] = ["celery", "worker", "--queues", "staging"]


def _default_queue_unserved(cfg: dict) -> None:
    cfg["services"]["airflow-worker-staging"]["command"] = ["celery", "worker", "--queues", "staging-only"]


def _settings_differ(cfg: dict) -> None:
    cfg["services"]["airflow-scheduler"]["environment"]["SCHEMA_DEPLOY_CONFIG"] = "/opt/schema-deploy/deploy.yaml"


def _control_plane_holds_a_database_connection(cfg: dict) -> None:
    worker = cfg["services"]["airflow-worker-production"]["environment"]
    cfg["services"]["airflow-apiserver"]["environment"]["AIRFLOW_CONN_PRODUCTION_DB"] = \
        worker["AIRFLOW_CONN_PRODUCTION_DB"]


def _worker_holds_the_metadata_database(cfg: dict) -> None:
    scheduler = cfg["services"]["airflow-scheduler"]["environment"]
    cfg["services"]["airflow-worker-staging"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = \
        scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def _result_backend_in_the_metadata_database(cfg: dict) -> None:
    url = cfg["services"]["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    cfg["services"]["airflow-worker-production"]["environment"]["AIRFLOW__CELERY__RESULT_BACKEND"] = \
        "db+postgresql://" + url.split("://", 1)[1]


def _worker_holds_the_jwt_secret(cfg: dict) -> None:
    secret = cfg["services"]["airflow-apiserver"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"]
    cfg["services"]["airflow-worker-staging"]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] = secret


def _same_hostname(cfg: dict) -> None:
    cfg["services"]["airflow-worker-production"]["hostname"] = "airflow-worker-staging"


def _healthcheck_of_another_queue(cfg: dict) -> None:
    cfg["services"]["airflow-worker-production"]["healthcheck"] = \
        copy.deepcopy(cfg["services"]["airflow-worker-staging"]["healthcheck"])


def _renamed_connection(cfg: dict) -> None:
    env = cfg["services"]["airflow-triggerer"]["environment"]
    env["AIRFLOW_CONN_BACKUPS"] = env.pop("AIRFLOW_CONN_BACKUP_S3")


def _no_config_setting(cfg: dict) -> None:
    del cfg["services"]["airflow-dag-processor"]["environment"]["SCHEMA_DEPLOY_CONFIG"]


def _wrong_dags_folder(cfg: dict) -> None:
    cfg["services"]["airflow-apiserver"]["environment"]["AIRFLOW__CORE__DAGS_FOLDER"] = "/opt/airflow/dags"


@pytest.mark.parametrize("breakage, check", [
    (_without_healthcheck, missing_healthchecks),
    (_latest_image, unpinned_images),
    (_untagged_image, unpinned_images),
    (_local_executor, celery_problems),
    (_no_worker, celery_problems),
    (_no_production_worker, connection_problems),
    (_worker_holds_the_other_environments_connection, cross_environment_problems),
    (_worker_holds_the_other_environments_connection, connection_problems),
    (_worker_holds_the_other_environments_password_elsewhere, cross_environment_problems),
    (_worker_consumes_the_wrong_queue, queue_problems),
    (_default_queue_unserved, queue_problems),
    (_settings_differ, queue_problems),
    (_control_plane_holds_a_database_connection, control_plane_db_problems),
    (_control_plane_holds_a_database_connection, connection_problems),
    (_worker_holds_the_metadata_database, worker_secret_problems),
    (_result_backend_in_the_metadata_database, worker_secret_problems),
    (_result_backend_in_the_metadata_database, celery_problems),
    (_worker_holds_the_jwt_secret, worker_secret_problems),
    (_same_hostname, worker_identity_problems),
    (_healthcheck_of_another_queue, worker_identity_problems),
    (_renamed_connection, connection_problems),
    (_renamed_connection, missing_environment),
    (_no_config_setting, missing_environment),
    (_wrong_dags_folder, path_problems),
])
def test_a_broken_file_is_caught(resolved, breakage, check):
    broken = copy.deepcopy(resolved)
    breakage(broken)
    assert check(broken) != []


@pytest.mark.slow
@pytest.mark.parametrize("edit, validator", [
    # depends_on a service that does not exist: Compose refuses it
    (lambda raw: raw["services"]["airflow-worker-staging"]["depends_on"].update(
        {"redis-sentinel": {"condition": "service_healthy"}}), "compose"),
    # a misspelt key: both the spec schema and Compose refuse it
    (lambda raw: raw["services"]["redis"].update({"helthcheck": {"test": ["CMD", "true"]}}), "schema"),
    (lambda raw: raw["services"]["redis"].update({"helthcheck": {"test": ["CMD", "true"]}}), "compose"),
    # an unknown top-level key
    (lambda raw: raw.update({"service": {}}), "schema"),
])
def test_the_validators_refuse_an_invalid_file(tmp_path, edit, validator):
    raw = yaml.safe_load(COMPOSE.read_text())
    edit(raw)
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = compose_config(broken) if validator == "compose" else schema_check(broken)
    assert done.returncode != 0, done.stdout + done.stderr
