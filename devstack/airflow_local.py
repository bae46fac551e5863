"""`make airflow`: Airflow's real services on this machine, against the local stack.

    python devstack/airflow_local.py start [--executor local|celery] [--background] [--no-seed] [--port N]
                                           [--home DIR] [--config FILE] [--fleet-env FILE]
    python devstack/airflow_local.py stop [--home DIR]

`start` puts both stack databases back at the baseline with demo data (unless
`--no-seed`), runs `airflow db migrate`, starts `api-server`, `scheduler`,
`dag-processor` and `triggerer` as child processes (LocalExecutor, SQLite, the
environment of `airflow_env.py`, logs in <home>/logs/<component>.log), waits until
the API reports every component healthy, and prints the URL, the login and what to
do. It stays in the foreground; Ctrl-C stops all of it. `--background` runs the same
supervisor detached and returns once it is ready (state in <home>/airflow-local.json);
`stop` ends it.

Airflow's components stop cleanly on SIGINT, not SIGTERM, so stopping sends SIGINT to
each component's process group, waits, then SIGKILLs whatever is left, including task
processes that made a process group of their own.

`--executor celery` (`make airflow EXECUTOR=celery`) runs what a distributed
installation runs: the metadata database on the stack's `airflow` PostgreSQL
cluster (one database per home), Redis as broker and result backend, and two
Celery workers, each started from its own copy of the project under
<home>/workers/<env>/project (its own AIRFLOW_HOME, dags, plugins, settings, as
another machine would have), each consuming one queue (deploy.yaml `queues:`)
and holding only its own environment's database connection (plus the backup store
and Slack). The control plane (api-server, scheduler, dag-processor, triggerer)
holds no database connection at all, so the Execution API cannot hand one
environment's credentials to the other's worker. Task logs go to the stack's S3
(remote logging), so the UI reads the logs of either worker.

`--fleet-env FILE` ($DEVSTACK_FLEET_ENV) names deploy_fleet's member connections: a file of
`export AIRFLOW_CONN_<ID>=<url>` lines (`KEY=value` too; `#` comments), none of them one of the
stack's own connections. On Celery they go to exactly one process tree, the worker consuming the
queue deploy.yaml's fleets run on (the first declared fleet's `queue:`, else `queues.default`, as
the DAG reads it): never to the control plane, never to the other environment's worker; a fleet
queue no worker consumes is refused. On LocalExecutor every component gets them (one machine
runs every task there). Nothing else reaches a member worker: `AIRFLOW_*` variables of the
launching shell are dropped (airflow_env), so an exported connection cannot leak by accident.

Defaults: home `.devstack/airflow` ($DEVSTACK_AIRFLOW_HOME), port 8080
($DEVSTACK_AIRFLOW_PORT), settings `devstack/airflow-deploy.yaml`. AIRFLOW_CONN_STAGING_DB
and AIRFLOW_CONN_PRODUCTION_DB in the environment override the stack's (the tests use this). Any other
AIRFLOW_CONN_* of the launching shell is dropped: a fleet's members come only from --fleet-env.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "devstack") not in sys.path:
    sys.path.insert(0, str(REPO / "devstack"))

from airflow_env import CONNECTIONS, airflow_env, stack_env  # noqa: E402

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
ENVIRONMENTS = ("staging", "production")
DB_CONNECTION = {"staging": "AIRFLOW_CONN_STAGING_DB", "production": "AIRFLOW_CONN_PRODUCTION_DB"}
CONN_PREFIX = "AIRFLOW_CONN_"
ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# What a worker's copy of the project holds (the rest of the checkout is not needed to run tasks).
PROJECT_PARTS = ("dags", "plugins", "sql", "tests/gate", "devstack", "prisma", "deploy.yaml", "pytest.ini")
WORKER_READY = "ready."
MAX_RESTARTS, RESTART_WINDOW_S, RESTART_DELAY_S = 5, 120.0, 2.0  # a component that exits is started again
CONTROL_ONLY = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")  # the line a Celery worker logs once it consumes its queue
HOST = "127.0.0.1"
USERS = "admin:admin,watcher:viewer"  # watcher: read-only, as an on-call viewer signs in
DEFAULT_HOME = Path(os.environ.get("DEVSTACK_AIRFLOW_HOME")
                    or Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")) / "airflow").resolve()
DEFAULT_CONFIG = REPO / "devstack" / "airflow-deploy.yaml"
START_TIMEOUT_S = float(os.environ.get("DEVSTACK_AIRFLOW_START_TIMEOUT", "300"))
STOP_TIMEOUT_S = 45.0


class LocalAirflowError(Exception):
    """A problem the person running `make airflow` can fix; printed without a trace."""


# --- small helpers -----------------------------------------------------------

def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an exited child nobody has reaped yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def airflow_bin() -> str:
    candidate = Path(sys.executable).with_name("airflow")
    found = str(candidate) if candidate.exists() else shutil.which("airflow")
    if not found:
        raise LocalAirflowError("the `airflow` command is not installed next to this Python; run `make venv`.")
    return found


def airflow_processes(home: Path) -> list[psutil.Process]:
    """Live processes (other than this one and its ancestors) of the installation in `home`."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in me:
            continue
        try:
            if ours(proc.environ().get("AIRFLOW_HOME"), home) and alive(proc):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def ours(airflow_home: str | None, home: Path) -> bool:
    """An AIRFLOW_HOME of this installation: `home`, or one of its Celery workers' homes."""
    return airflow_home is not None and (airflow_home == str(home) or airflow_home.startswith(f"{home}/workers/"))


def state_file(home: Path) -> Path:
    return home / "airflow-local.json"


def read_state(home: Path) -> dict | None:
    try:
        return json.loads(state_file(home).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_state(home: Path, state: dict) -> None:
    tmp = state_file(home).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, state_file(home))


def supervisor_alive(state: dict | None) -> bool:
    if not state:
        return False
    try:
        return alive(psutil.Process(state["pid"]))
    except psutil.Error:
        return False


# --- environment and set-up ------------------------------------------------

def local_env(home: Path, port: int, config: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(the stack's variables, the environment every Airflow component runs with on LocalExecutor)."""
    env_file = os.environ.get("DEVSTACK_ENV_FILE")
    try:
        stack = stack_env(Path(env_file) if env_file else None)
    except FileNotFoundError as exc:
        raise LocalAirflowError(f"the local stack's env file is missing ({exc.filename}): run `make stack-up`.") from None
    stack.update({k: os.environ[k] for k in CONNECTIONS if os.environ.get(k)})
    env = airflow_env(home, stack, config, api_port=port, users=USERS)
    env.update({
        # schedule=None: unpaused only means "a manual trigger runs at once".
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Free ports for the log servers, so a second instance (the tests) never collides.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # Each DAG file is parsed again every 30 s (Airflow's default), so an edited deploy.yaml shows
        # within a minute. The tests, whose files never change while the services run, parse once an
        # hour (DEVSTACK_DAG_REPARSE_S): the re-parses cost an idle dag-processor ~0.45 s of CPU every 30 s.
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": os.environ.get("DEVSTACK_DAG_REPARSE_S", "30"),
    })
    return stack, env


def home_key(home: Path) -> str:
    return hashlib.sha1(str(home).encode()).hexdigest()[:10]


def metadata_database(stack: dict[str, str], home: Path) -> str:
    """This home's Airflow metadata database on the stack's `airflow` cluster (created when missing);
    its SQLAlchemy URL. One database per home, so the tests' Airflow and `make airflow` never meet."""
    import psycopg
    from psycopg import sql

    if not stack.get("AIRFLOW_METADATA_URL"):
        raise LocalAirflowError("the local stack has no Airflow metadata cluster: run `make stack-up` again.")
    name = f"airflow_{home_key(home)}"
    try:
        with psycopg.connect(stack["AIRFLOW_METADATA_ADMIN_URL"], autocommit=True, connect_timeout=5) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER airflow").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise LocalAirflowError(f"cannot create Airflow's metadata database {name} on the stack's airflow "
                                f"cluster ({str(exc).strip()}): is the stack up? `make stack-up`") from None
    url = urlsplit(stack["AIRFLOW_METADATA_URL"])
    return urlunsplit(("postgresql+psycopg2", url.netloc, f"/{name}", "", ""))


def drop_metadata_database(stack: dict[str, str], home: Path) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(stack["AIRFLOW_METADATA_ADMIN_URL"], autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(f"airflow_{home_key(home)}")))


def celery_env(home: Path, stack: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """The control plane's environment on CeleryExecutor: metadata on PostgreSQL, Redis as broker and
    result backend (the workers then need no metadata database), task logs in the stack's S3, and no
    database connection (a worker asking the Execution API for one it lacks must get nothing)."""
    if not stack.get("REDIS_URL") or not port_open(urlsplit(stack["REDIS_URL"]).port or 0):
        raise LocalAirflowError("Redis (the Celery broker) is not running: install it with "
                                "devstack/ensure_redis.sh (as root: `make redis`), then `make stack-up`.")
    broker = f"{stack['REDIS_URL']}/{int(home_key(home), 16) % 15 + 1}"  # a Redis db per home
    env = {k: v for k, v in env.items() if k not in DB_CONNECTION.values()}
    env.update({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_database(stack, home),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": broker,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # A message not acknowledged within this is handed out again (a deployment step may build
        # indexes for hours; a day is the provider's default, said out loud here).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        # A worker that died (SIGKILL, OOM, power) is noticed after a minute here, not 5: its task
        # then fails and is retried by Airflow on a live worker of the same queue.
        # (The tests lower it, and how often the scheduler looks, with DEVSTACK_TASK_HEARTBEAT_TIMEOUT
        # and DEVSTACK_TASK_HEARTBEAT_CHECK_EVERY: tests/e2e/test_celery.py.)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": os.environ.get("DEVSTACK_TASK_HEARTBEAT_TIMEOUT", "60"),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL":
            os.environ.get("DEVSTACK_TASK_HEARTBEAT_CHECK_EVERY", "10"),
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "backup_s3",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER":
            f"s3://{stack.get('BACKUP_BUCKET', 'schema-deploy-backups')}/airflow-logs/{home_key(home)}",
    })
    return env


def worker_copy(home: Path, env_name: str) -> Path:
    """A fresh copy of the project for one worker (as on another machine): the parts tasks need."""
    root = home / "workers" / env_name / "project"
    shutil.rmtree(root, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", ".pytest_cache", "*.pyc")
    for part in PROJECT_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=ignore)
        elif src.exists():
            (root / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / part)
    return root


def settings_in_copy(path: Path, root: Path) -> Path:
    """The deploy settings file as a worker's copy has it: the same file of the copy, or, for a file
    outside the checkout, a copy of it in <copy>/settings/ (its relative paths then name the copy's
    files: `../sql/migrations` is the copy's migrations folder)."""
    try:
        return root / path.resolve().relative_to(REPO)
    except ValueError:
        (root / "settings").mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(path, root / "settings" / path.name))


def worker_env(control: dict[str, str], stack: dict[str, str], home: Path, env_name: str,
               root: Path) -> dict[str, str]:
    """A worker's environment: its own home, copy, hostname and log server port, and of the two
    database connections only its own environment's."""
    whome = home / "workers" / env_name / "home"
    whome.mkdir(parents=True, exist_ok=True)
    # Nor the metadata database or the API's signing secrets: an Airflow 3 worker talks to the
    # Execution API with the token each task brings, and to Redis.
    env = {k: v for k, v in control.items() if k not in CONTROL_ONLY}
    env.update({
        DB_CONNECTION[env_name]: stack[DB_CONNECTION[env_name]],
        "AIRFLOW_HOME": str(whome),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.worker_hostname.hostname",
        "DEVSTACK_WORKER_HOSTNAME": f"{env_name}-worker",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "SCHEMA_DEPLOY_CONFIG": str(settings_in_copy(Path(control["SCHEMA_DEPLOY_CONFIG"]), root)),
        "PYTHONPATH": os.pathsep.join([str(root / "plugins"), str(root)]),
    })
    return env


def worker_queue(env: dict[str, str], env_name: str) -> str:
    """The queue deploy.yaml (as the worker's copy has it) routes `env_name`'s tasks to."""
    sys.path.insert(0, str(REPO / "plugins"))
    from schema_deploy.config import settings as config

    return config.load(env["SCHEMA_DEPLOY_CONFIG"]).queue(env_name)


def fleet_connections(path: Path | None) -> dict[str, str]:
    """The fleet members' connections in a --fleet-env file, AIRFLOW_CONN_<ID> -> URL: one
    `[export ]AIRFLOW_CONN_<ID>=<value>` a line (shell quoting, `#` comments). A line of another
    form, a stack connection, a repeated key or a file without any is refused, by file:line and
    never with a value (a line that is not a variable name may be a URL with its password)."""
    if path is None:
        return {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise LocalAirflowError(f"--fleet-env {path}: cannot read it ({exc.strerror})") from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, eq, raw = text.removeprefix("export ").partition("=")
        key, where = key.strip(), f"--fleet-env {path}:{number}"
        named = f"{key} " if ENV_KEY.match(key) else ""
        try:
            value = (shlex.split(raw) or [""])[0] if eq else ""
        except ValueError:
            value = ""
        if not ENV_KEY.match(key) or not key.startswith(CONN_PREFIX) or key == CONN_PREFIX or not value:
            raise LocalAirflowError(f"{where}: {named}is not `export AIRFLOW_CONN_<ID>=<url>`; the file holds "
                                    "the fleet's member connections only, one a line")
        if key in CONNECTIONS:
            raise LocalAirflowError(f"{where}: {key} is one of the stack's own connections, which each worker "
                                    "already gets as it needs; the file holds the fleet's member connections only")
        if key in found:
            raise LocalAirflowError(f"{where}: {key} is set twice; keep one")
        found[key] = value
    if not found:
        raise LocalAirflowError(f"--fleet-env {path} names no connection: add `export AIRFLOW_CONN_<ID>=<url>` "
                                "lines, or leave --fleet-env out")
    return found


def fleet_queue(settings: Path) -> str:
    """The queue deploy_fleet's member tasks run on, as the DAG reads it (fleet_steps.member_queue):
    the first declared fleet's `queue:`, else the default queue."""
    sys.path.insert(0, str(REPO / "plugins"))
    from schema_deploy.config import settings as config
    from schema_deploy.errors import SchemaDeployError

    try:
        cfg = config.load(settings)
        if not cfg.fleets:
            raise LocalAirflowError(f"--fleet-env is given, but {settings} declares no fleets: (docs/fleets.md): "
                                    "declare the fleet, or leave --fleet-env out")
        return cfg.fleet_queue(cfg.fleets[0].name)
    except SchemaDeployError as exc:
        raise LocalAirflowError(str(exc)) from None


def fleet_worker(queues: dict[str, str], queue: str) -> str:
    """The environment whose worker consumes the fleet's `queue` (`queues`: environment -> its queue)."""
    for env_name, consumed in queues.items():
        if consumed == queue:
            return env_name
    served = ", ".join(f"{env_name}: {consumed}" for env_name, consumed in queues.items())
    raise LocalAirflowError(f"deploy.yaml's fleets run on queue {queue!r}, which no worker consumes ({served}): "
                            "set the first fleet's queue: to one of those, so its member connections have a worker")


def connection_ids(env: dict[str, str]) -> list[str]:
    """The connection ids an environment defines as AIRFLOW_CONN_<ID> (ids only, never a value)."""
    return sorted(k[len(CONN_PREFIX):].lower() for k in env if k.startswith(CONN_PREFIX) and len(k) > len(CONN_PREFIX))


def member_connections(env: dict[str, str]) -> list[str]:
    """The connection ids in `env` other than the stack's own: a fleet's members."""
    return [c for c in connection_ids(env) if f"{CONN_PREFIX}{c.upper()}" not in CONNECTIONS]


def seed_databases(stack: dict[str, str]) -> None:
    """Both stack databases back at the baseline with the same demo data."""
    from seed import reset

    for name in ("STAGING", "PRODUCTION"):
        t0 = time.monotonic()
        reset(stack[f"{name}_DATABASE_URL"], log=lambda _msg: None)
        say(f"  {name.lower()} database reset to the baseline with demo data ({time.monotonic() - t0:.1f} s)")


def migrate(env: dict[str, str], logs: Path) -> None:
    log = logs / "db-migrate.log"
    with open(log, "wb") as out:
        proc = subprocess.run([airflow_bin(), "db", "migrate"], env=env, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd=REPO)
    if proc.returncode != 0:
        raise LocalAirflowError(f"`airflow db migrate` failed (exit {proc.returncode}); {log} ends with:\n{tail(log)}")


def health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/v2/monitor/health", timeout=3) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError, urllib.error.HTTPError):
        return None


def unhealthy(report: dict | None) -> list[str]:
    """The components the health report does not call healthy (all of them if there is none)."""
    keys = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    if report is None:
        return ["api-server"]
    return [k for k in keys if (report.get(k) or {}).get("status") != "healthy"]


def banner(home: Path, state: dict) -> str:
    """URL, login, the three steps, logs, how to stop."""
    try:
        passwords = json.loads((home / "passwords.json").read_text())
    except (FileNotFoundError, ValueError):
        passwords = {}
    login = ", ".join(f"{user} / {pw}" for user, pw in passwords.items()) or f"see {home / 'passwords.json'}"
    python = sys.executable.removeprefix(f"{REPO}/")
    workers = state.get("workers") or {}
    names = [*COMPONENTS, *workers]
    stop = (f"Ctrl-C stops all {len(names)} components" if not state.get("background")
            else f"stop with: {python} devstack/airflow_local.py stop" + (f" --home {home}" if home != DEFAULT_HOME else ""))
    return "\n".join([
        f"Airflow is up: {state['url']}   (ready after {state['ready_after_s']} s)",
        f"  login: {login}   (SimpleAuthManager; passwords in {home / 'passwords.json'})",
        "  1. Dags -> deploy_schema -> Trigger (keep \"Require approval\" on)",
        "  2. When the run reaches approve_production: Browse -> Required Actions -> Approve",
        ("  3. Watch: wait_for_window passes while the window local-every-5-min is open (4 min of every 5)\n"
         "     or defers to the next 5-minute mark; then apply_production and verify_production run"
         if Path(state["config"]) == DEFAULT_CONFIG else
         f"  3. Watch: wait_for_window waits for a window of {state['config']}; then apply_production and "
         "verify_production run"),
        *([f"  executor: CeleryExecutor (metadata on PostgreSQL, Redis broker); task logs in S3 and in each "
           "worker's home"] if workers else []),
        *(f"  {name}: queue {w['queue']}, hostname {w['hostname']}, project copy {w['project']}"
          + (f", fleet member connections: {', '.join(w['fleet_connections'])}" if w.get("fleet_connections") else "")
          for name, w in workers.items()),
        f"  component logs: {home / 'logs'}/{{{','.join(names)}}}.log",
        f"  {stop}",
    ])


# --- the supervisor ------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    """One process tree the supervisor starts: its command, environment and working directory."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    queue: str | None = None  # a Celery worker's queue


def components(port: int, env: dict[str, str]) -> list[Component]:
    """The four services of every installation."""
    return [Component(name, (airflow_bin(), name, *(["--host", HOST, "--port", str(port)]
                                                    if name == "api-server" else [])), env, REPO)
            for name in COMPONENTS]


def celery_workers(home: Path, stack: dict[str, str], control: dict[str, str],
                   fleet: dict[str, str] | None = None) -> list[Component]:
    """A worker per environment, each from its own copy of the project, consuming its queue; the
    fleet's member connections (`fleet`, from --fleet-env) go to the worker of the fleet's queue only."""
    prepared = []
    for env_name in ENVIRONMENTS:
        root = worker_copy(home, env_name)
        env = worker_env(control, stack, home, env_name, root)
        prepared.append((env_name, root, env, worker_queue(env, env_name)))
    queues = {env_name: queue for env_name, _, _, queue in prepared}
    if len(set(queues.values())) < len(queues):
        raise LocalAirflowError(f"deploy.yaml routes staging and production to the same queue "
                                f"({queues['staging']}): give each its own under queues:, or run LocalExecutor")
    if fleet:
        members_on = fleet_worker(queues, fleet_queue(Path(prepared[0][2]["SCHEMA_DEPLOY_CONFIG"])))
        next(env for env_name, _, env, _ in prepared if env_name == members_on).update(fleet)
    return [Component(f"worker-{env_name}", (
        airflow_bin(), "celery", "worker", "--queues", queue, "--concurrency", "2",
        "--celery-hostname", f"{env_name}@{env['DEVSTACK_WORKER_HOSTNAME']}", "--without-mingle",
        "--without-gossip"), env, root, queue) for env_name, root, env, queue in prepared]


class Supervisor:
    """Starts the components, watches them, and stops every process they started."""

    def __init__(self, home: Path, port: int, parts: list[Component], *, background: bool,
                 executor: str = "local") -> None:
        self.home, self.port, self.parts, self.background = home, port, parts, background
        self.executor = executor
        self.env = parts[0].env
        self.logs = home / "logs"
        self.children: dict[str, subprocess.Popen] = {}
        self.known: dict[int, psutil.Process] = {}
        self.stopping = False

    def request_stop(self, signum, _frame) -> None:
        self.stopping = True

    def start(self) -> None:
        for part in self.parts:
            with open(self.logs / f"{part.name}.log", "ab") as out:
                # Own session: Ctrl-C reaches only us, and we stop the components in order.
                self.children[part.name] = subprocess.Popen(list(part.argv), env=part.env, stdout=out,
                                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                            cwd=part.cwd, start_new_session=True)
        self.track()

    def workers_ready(self) -> list[str]:
        """The Celery workers that have not logged that they consume their queue yet."""
        waiting = []
        for part in self.parts:
            if part.queue is not None:
                try:
                    text = (self.logs / f"{part.name}.log").read_text(errors="replace")
                except FileNotFoundError:
                    text = ""
                if WORKER_READY not in text:
                    waiting.append(part.name)
        return waiting

    def state(self, **extra) -> dict:
        return {"pid": os.getpid(), "url": f"http://localhost:{self.port}", "port": self.port,
                "config": self.env["SCHEMA_DEPLOY_CONFIG"], "executor": self.executor,
                "background": self.background, "home": str(self.home),
                "components": {n: p.pid for n, p in self.children.items()},
                # Who was given which connection (ids only): a process that sets its title (the
                # api-server) hides its environment from /proc/<pid>/environ.
                "connections": {p.name: connection_ids(p.env) for p in self.parts},
                "workers": {p.name: {"queue": p.queue, "hostname": p.env.get("DEVSTACK_WORKER_HOSTNAME"),
                                     "project": str(p.cwd), "home": p.env["AIRFLOW_HOME"],
                                     "fleet_connections": member_connections(p.env),
                                     "pid": self.children[p.name].pid if p.name in self.children else None}
                            for p in self.parts if p.queue is not None}, **extra}

    def track(self) -> None:
        """Remember every descendant, so task processes in their own groups are stopped too."""
        for child in self.children.values():
            try:
                root = psutil.Process(child.pid)
                for proc in [root, *root.children(recursive=True)]:
                    self.known.setdefault(proc.pid, proc)
            except psutil.Error:
                continue

    def members(self) -> list[psutil.Process]:
        """Live processes we started: known descendants plus anyone left in a component's group."""
        groups = {p.pid for p in self.children.values()}
        found = {pid: proc for pid, proc in self.known.items() if alive(proc)}
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and os.getpgid(proc.pid) in groups and alive(proc):
                    found[proc.pid] = proc
            except (psutil.Error, OSError):
                continue
        return list(found.values())

    def exited(self) -> str | None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return f"{name} exited (code {proc.returncode}); {self.logs / (name + '.log')} ends with:\n" \
                       + tail(self.logs / f"{name}.log")
        return None

    def wait_ready(self, t0: float) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        missing = ["api-server"]
        while time.monotonic() < deadline and not self.stopping:
            if problem := self.exited():
                raise LocalAirflowError(problem)
            missing = unhealthy(health(self.port)) + self.workers_ready()
            if not missing and (self.home / "passwords.json").exists():
                return
            self.track()
            time.sleep(1)
        if not self.stopping:
            raise LocalAirflowError(f"not healthy after {time.monotonic() - t0:.0f} s ({', '.join(missing)}); "
                                    f"see the logs in {self.logs}")

    def watch(self) -> None:
        """Until asked to stop, a component that exits is started again, as `restart: always` in
        compose or systemd would (Airflow's scheduler exits when it loses Redis; a killed Celery
        worker's task is then retried by Airflow). One that keeps exiting ends the run."""
        exits: dict[str, list[float]] = {}
        while not self.stopping:
            for part in self.parts:
                proc = self.children[part.name]
                if proc.poll() is None or self.stopping:
                    continue
                recent = [t for t in exits.get(part.name, []) if time.monotonic() - t < RESTART_WINDOW_S]
                exits[part.name] = recent + [time.monotonic()]
                if len(exits[part.name]) > MAX_RESTARTS:
                    raise LocalAirflowError(f"{part.name} exited {len(exits[part.name])} times within "
                                            f"{RESTART_WINDOW_S:.0f} s (last code {proc.returncode}); "
                                            f"{self.logs / (part.name + '.log')} ends with:\n"
                                            + tail(self.logs / f"{part.name}.log"))
                say(f"{part.name} exited (code {proc.returncode}); starting it again")
                time.sleep(RESTART_DELAY_S)
                self.restart(part)
            self.track()
            time.sleep(1)

    def restart(self, part: Component) -> None:
        if part.queue is not None:
            for proc in self.members():  # what the dead worker left (forked pool, task processes)
                try:
                    if proc.environ().get("AIRFLOW_HOME") == part.env["AIRFLOW_HOME"]:
                        proc.kill()
                except psutil.Error:
                    continue
        with open(self.logs / f"{part.name}.log", "ab") as out:
            self.children[part.name] = subprocess.Popen(list(part.argv), env=part.env, stdout=out,
                                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                        cwd=part.cwd, start_new_session=True)
        write_state(self.home, self.state(ready=True, ready_after_s=read_state(self.home).get("ready_after_s")))

    def stop(self) -> list[str]:
        """SIGINT each component's group, wait, SIGKILL what is left; returns what had to be killed."""
        self.track()
        for proc in self.children.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.children.values():
                proc.poll()  # reap, so a finished component does not linger as a zombie
            if not self.members():
                return []
            time.sleep(0.3)
        killed = []
        for proc in self.members():
            try:
                killed.append(f"{' '.join(proc.cmdline()[:3])} (pid {proc.pid})")
                proc.kill()
            except psutil.Error:
                continue
        for child in self.children.values():
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        psutil.wait_procs(self.members(), timeout=10)
        return killed


def run(home: Path, port: int, config: Path, *, seed: bool, background: bool, executor: str = "local",
        fleet_env: Path | None = None) -> int:
    """The foreground supervisor: set up, start, wait for Ctrl-C (or `stop`), stop everything."""
    t0 = time.monotonic()
    if supervisor_alive(read_state(home)):
        raise LocalAirflowError(f"Airflow already runs from {home} (pid {read_state(home)['pid']}); "
                                f"stop it first: {sys.executable} {__file__} stop --home {home}")
    if port_open(port):
        raise LocalAirflowError(f"port {port} is already in use; choose another: DEVSTACK_AIRFLOW_PORT=<port> make airflow")
    if not config.exists():
        raise LocalAirflowError(f"settings file {config} not found")
    fleet = fleet_connections(fleet_env)
    stack, env = local_env(home, port, config)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[Component] = []
    if executor == "celery":
        env = celery_env(home, stack, env)
        workers = celery_workers(home, stack, env, fleet)
    else:
        env.update(fleet)  # LocalExecutor: the scheduler's processes run every task
    if seed:
        say("seeding the local stack's databases ...")
        seed_databases(stack)
    where = home / "airflow.db" if executor == "local" else urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).path[1:]
    say(f"airflow db migrate ({where}) ...")
    migrate(env, logs)
    sup = Supervisor(home, port, components(port, env) + workers, background=background, executor=executor)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, sup.request_stop)
    code = 0
    try:
        say(f"starting {', '.join(p.name for p in sup.parts)} (logs in {logs}) ...")
        sup.start()
        write_state(home, sup.state(ready=False))
        sup.wait_ready(t0)
        if not sup.stopping:
            state = sup.state(ready=True, ready_after_s=round(time.monotonic() - t0, 1))
            write_state(home, state)
            say(banner(home, state))
            sup.watch()
    except LocalAirflowError as exc:
        say(f"airflow-local: {exc}")
        code = 2
    finally:
        say("stopping Airflow (SIGINT to each component) ...")
        killed = sup.stop()
        left = sup.members()
        state_file(home).unlink(missing_ok=True)
        if killed:
            say("had to SIGKILL: " + ", ".join(killed))
        if left:
            say("still running after stop: " + ", ".join(f"pid {p.pid}" for p in left))
            code = code or 1
        else:
            say("Airflow stopped; no process left")
    return code


def start_background(home: Path, port: int, config: Path, *, seed: bool, executor: str = "local",
                     fleet_env: Path | None = None) -> int:
    """Run the supervisor detached; return once it reports ready (or failed)."""
    if supervisor_alive(read_state(home)):
        raise LocalAirflowError(f"Airflow already runs from {home} (pid {read_state(home)['pid']})")
    fleet_connections(fleet_env)  # a malformed file is refused here, not in the detached supervisor's log
    (home / "logs").mkdir(parents=True, exist_ok=True)
    out_path = home / "logs" / "airflow-local.out"
    cmd = [sys.executable, str(Path(__file__).resolve()), "start", "--home", str(home), "--port", str(port),
           "--config", str(config), "--executor", executor, "--detached"] + ([] if seed else ["--no-seed"]) \
        + (["--fleet-env", str(fleet_env)] if fleet_env else [])
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, start_new_session=True)
    timeout = START_TIMEOUT_S + 120  # + seeding and db migrate
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalAirflowError(f"Airflow did not start (exit {proc.returncode}); {out_path}:\n{tail(out_path, 40)}")
        state = read_state(home)
        if state and state.get("pid") == proc.pid and state.get("ready"):
            say(banner(home, state))
            return 0
        time.sleep(0.5)
    stop(home)
    raise LocalAirflowError(f"Airflow was not ready within {timeout:.0f} s; see {out_path} and {home / 'logs'}")


def stop(home: Path) -> int:
    """End a background supervisor (SIGINT: it stops its components), then check nothing is left."""
    state = read_state(home)
    if supervisor_alive(state):
        sup = psutil.Process(state["pid"])
        sup.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S + 30
        while time.monotonic() < deadline and alive(sup):
            time.sleep(0.3)
        if alive(sup):
            say(f"the supervisor (pid {sup.pid}) did not stop; killing it and its components")
            sup.kill()
            for pid in (state or {}).get("components", {}).values():
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    elif state is None:
        say(f"no Airflow supervisor recorded in {home}")
    left = airflow_processes(home)
    for proc in left:
        say(f"killing leftover {' '.join(proc.cmdline()[:3])} (pid {proc.pid})")
        proc.kill()
    psutil.wait_procs(left, timeout=10)
    state_file(home).unlink(missing_ok=True)
    still = airflow_processes(home)
    if still:
        say("still running: " + ", ".join(f"pid {p.pid}" for p in still))
        return 1
    say(f"Airflow ({home}) is stopped; no process left")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME,
                        help="AIRFLOW_HOME (default .devstack/airflow)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEVSTACK_AIRFLOW_PORT", "8080")),
                        help="API server / UI port (default 8080, or $DEVSTACK_AIRFLOW_PORT)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="SCHEMA_DEPLOY_CONFIG for the tasks")
    parser.add_argument("--no-seed", action="store_true", help="leave the stack's databases as they are")
    parser.add_argument("--executor", choices=["local", "celery"], default=os.environ.get("EXECUTOR") or "local",
                        help="LocalExecutor on SQLite (default), or CeleryExecutor: metadata on PostgreSQL, Redis, "
                             "a worker per environment")
    parser.add_argument("--fleet-env", type=Path, default=os.environ.get("DEVSTACK_FLEET_ENV") or None,
                        help="a file of `export AIRFLOW_CONN_<ID>=<url>` lines, deploy_fleet's member connections: "
                             "on Celery only the worker of the fleets' queue gets them ($DEVSTACK_FLEET_ENV)")
    parser.add_argument("--background", action="store_true", help="detach; return once ready")
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)  # set by --background
    args = parser.parse_args(argv)
    home, config = args.home.resolve(), args.config.resolve()
    fleet_env = args.fleet_env.resolve() if args.fleet_env else None
    try:
        if args.command == "stop":
            return stop(home)
        if args.background:
            return start_background(home, args.port, config, seed=not args.no_seed, executor=args.executor,
                                    fleet_env=fleet_env)
        return run(home, args.port, config, seed=not args.no_seed, background=args.detached, executor=args.executor,
                   fleet_env=fleet_env)
    except LocalAirflowError as exc:
        say(f"airflow-local: {exc}")
        return 2
    except KeyboardInterrupt:  # during seeding or db migrate: no component runs yet
        say("airflow-local: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
