"""docker-compose.yaml, the production-like stack, validated without a Docker engine.

The stack cannot run on the CI machine (no engine), so these tests check what can be checked
statically: Compose accepts the file with the example env (`docker-compose config -q`, Debian's
docker-compose 1.29: its schema, variable interpolation, references between services and
volumes), it matches the Compose Specification's schema (`check-jsonschema --builtin-schema
vendor.compose-spec`), every image is pinned, every long-running service has a health check,
Airflow runs the CeleryExecutor, the connection ids and every environment variable the code
reads are set, and paths inside the containers lead to files of this repository.

Each check is a function that returns the problems it finds, so the tests at the end can show
that a broken file (an unpinned image, a service without a health check, ...) is caught.
"""
from __future__ import annotations

import base64
import copy
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

from schema_deploy import config as deploy_config
from schema_deploy_airflow import connections

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / "docker" / ".env.example"
DOCKERFILE = REPO / "docker" / "Dockerfile"
REPO_IN_CONTAINER = PurePosixPath("/opt/schema-deploy")

AIRFLOW_COMMANDS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker"}
CONNECTION_IDS = {*connections.DB_CONNECTIONS.values(), connections.S3_CONNECTION, connections.SLACK_CONNECTION}

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

def command_of(service: dict) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(command)


def airflow_services(cfg: dict) -> dict[str, dict]:
    return {name: s for name, s in cfg["services"].items() if command_of(s) in AIRFLOW_COMMANDS}


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
        for key, scheme in (("AIRFLOW__CELERY__BROKER_URL", "redis"),
                            ("AIRFLOW__CELERY__RESULT_BACKEND", "db+postgresql"),
                            ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2")):
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
    needed = {name for name in env_read_by_code() if name not in OPTIONAL_ENV}
    needed |= {"SCHEMA_DEPLOY_CONFIG", "PYTHONPATH"} | {f"AIRFLOW_CONN_{c.upper()}" for c in CONNECTION_IDS}
    return [f"{name}: {var} is not set" for name, s in airflow_services(cfg).items()
            for var in sorted(needed - {k for k, v in environment(s).items() if v})]


def connection_problems(cfg: dict) -> list[str]:
    want = {f"AIRFLOW_CONN_{c.upper()}" for c in CONNECTION_IDS}
    problems = []
    for name, s in airflow_services(cfg).items():
        have = {k for k in environment(s) if k.startswith("AIRFLOW_CONN_")}
        if have != want:
            problems.append(f"{name}: connections {sorted(have)} differ from the code's {sorted(want)}")
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


def test_airflow_runs_the_celery_executor_with_redis_and_postgres(resolved):
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

    env = environment(resolved["services"]["airflow-worker"])
    services = resolved["services"]
    conns = {cid: Connection.from_json(env[f"AIRFLOW_CONN_{cid.upper()}"], conn_id=cid) for cid in CONNECTION_IDS}
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
    worker = resolved["services"]["airflow-worker"]
    settings = deploy_config.load(host_path(worker, environment(worker)["SCHEMA_DEPLOY_CONFIG"]))
    assert environment(resolved["services"]["minio-init"])["BACKUP_BUCKET"] == settings.backup_bucket


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
    cfg["services"]["airflow-worker"]["environment"]["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor"


def _no_worker(cfg: dict) -> None:
    del cfg["services"]["airflow-worker"]


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
    (_renamed_connection, connection_problems),
    (_renamed_connection, missing_environment),
    (_no_config_setting, missing_environment),
    (_wrong_dags_folder, path_problems),
])
def test_a_broken_file_is_caught(resolved, breakage, check):
    broken = copy.deepcopy(resolved)
    breakage(broken)
    assert check(broken) != []


@pytest.mark.parametrize("edit, validator", [
    # depends_on a service that does not exist: Compose refuses it
    (lambda raw: raw["services"]["airflow-worker"]["depends_on"].update(
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
