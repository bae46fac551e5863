"""Start, stop and inspect the embedded local stack.

    python devstack/stack.py up | down | status | pids | destroy

The stack is two PostgreSQL 15 clusters (staging, production), a third one for
Airflow's metadata when Airflow runs on Celery, a disk-backed S3 endpoint, a Slack
stand-in and, when redis-server is installed (devstack/ensure_redis.sh), a Redis
with a password as the Celery broker, all on loopback, all state under
`.devstack/` (or `$DEVSTACK_DIR`). `up` is idempotent and returns once every
service answers; `down` stops every process `up` started. It works as root
(PostgreSQL then runs as the `postgres` user) and as a normal user.

Standard library only: it runs before the project's virtualenv exists.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
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

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("DEVSTACK_DIR", REPO / ".devstack")).resolve()
HOST = "127.0.0.1"
APP_ROLE = "migrator"
BACKUP_BUCKET = os.environ.get("DEVSTACK_BACKUP_BUCKET", "schema-deploy-backups")
S3_ACCESS_KEY = "devstack-access-key"
S3_REGION = "us-east-1"
START_TIMEOUT_S = 60.0


class StackError(Exception):
    """A problem the person running the stack can fix; printed without a trace."""


@dataclass(frozen=True)
class Cluster:
    """One PostgreSQL cluster of the stack."""

    env: str  # "staging" | "production" | "airflow" (Airflow's metadata, for the CeleryExecutor)
    port: int

    @property
    def database(self) -> str:
        return {"airflow": "airflow", "replica": "americano_production"}.get(self.env, f"americano_{self.env}")

    @property
    def role(self) -> str:
        return "airflow" if self.env == "airflow" else APP_ROLE

    @property
    def port_variable(self) -> str:
        return "DEVSTACK_AIRFLOW_DB_PORT" if self.env == "airflow" else f"DEVSTACK_{self.env.upper()}_PORT"


def port_from_env(name: str, default: int) -> int:
    """Read a port override such as DEVSTACK_STAGING_PORT, validating it."""
    raw = os.environ.get(name, str(default))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{name}={raw!r} is not a TCP port; use a number between 1024 and 65535.")
    return int(raw)


def clusters() -> list[Cluster]:
    """The two application databases' clusters."""
    return [
        Cluster("staging", port_from_env("DEVSTACK_STAGING_PORT", 55432)),
        Cluster("production", port_from_env("DEVSTACK_PRODUCTION_PORT", 55433)),
    ]


def metadata_cluster() -> Cluster:
    """Airflow's metadata database for the CeleryExecutor (production Airflow never runs on SQLite)."""
    return Cluster("airflow", port_from_env("DEVSTACK_AIRFLOW_DB_PORT", 55434))


def all_clusters() -> list[Cluster]:
    return [*clusters(), metadata_cluster()]


def replica_cluster() -> Cluster:
    """Production's streaming replica (hot standby), started on demand: `stack.py replica-up`."""
    return Cluster("replica", port_from_env("DEVSTACK_REPLICA_PORT", 55435))


def redis_port() -> int:
    return port_from_env("DEVSTACK_REDIS_PORT", 56379)


def s3_port() -> int:
    return port_from_env("DEVSTACK_S3_PORT", 59000)


def slack_port() -> int:
    return port_from_env("DEVSTACK_SLACK_PORT", 59001)


# --- secrets ---------------------------------------------------------------

LATER_SECRETS = {
    "airflow_password": lambda: "afm-" + secrets.token_urlsafe(18),
    "redis_password": lambda: "rds-" + secrets.token_urlsafe(18),
}


def load_secrets() -> dict[str, str]:
    """Passwords and keys, generated once per stack and kept in secrets.json (0600)."""
    path = STATE / "secrets.json"
    if path.exists():
        values = json.loads(path.read_text())
        if not set(LATER_SECRETS) <= set(values):  # a stack created before these services existed
            values = {**{k: make() for k, make in LATER_SECRETS.items()}, **values}
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(values, fh, indent=2)
            os.replace(tmp, path)
        return values
    values = {
        "staging_password": "stg-" + secrets.token_urlsafe(18),
        "production_password": "prd-" + secrets.token_urlsafe(18),
        "s3_secret_key": secrets.token_urlsafe(30),
        "slack_token": "xoxb-devstack-" + secrets.token_hex(12),
        "slack_webhook_path": "/services/T0DEVSTACK/B0DEPLOYS/" + secrets.token_hex(12),
        **{k: make() for k, make in LATER_SECRETS.items()},
    }
    STATE.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(values, fh, indent=2)
    return values


# --- PostgreSQL --------------------------------------------------------------

def pg_bindir() -> Path:
    """Where initdb/pg_ctl/psql live: $PG_BINDIR, Debian's layout, or PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    if debian:
        return debian[0].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with "
        "`sudo apt-get install postgresql-15` (as root, `make` does this for you), "
        "or set PG_BINDIR to the directory that holds pg_ctl."
    )


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_pg_user(cmd: list[str]) -> list[str]:
    """Prefix a command so it runs as `postgres` when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if running_as_root() else cmd


def postgres_can_use(path: Path) -> bool:
    """Can the `postgres` user traverse into `path`? (A clone under /root cannot.)"""
    probe = subprocess.run(as_pg_user(["test", "-x", str(path)]), capture_output=True)
    return probe.returncode == 0


def pg_root() -> Path:
    """Directory holding the clusters' data.

    As root, PostgreSQL runs as `postgres`, which must be able to reach its data
    directory; when the checkout lives where it cannot (e.g. /root), the data
    goes to /var/tmp under a name derived from the checkout's path.
    """
    preferred = STATE / "pg"
    if not running_as_root():
        return preferred
    preferred.mkdir(parents=True, exist_ok=True)
    shutil.chown(preferred, "postgres", "postgres")
    if postgres_can_use(preferred):
        return preferred
    digest = hashlib.sha1(str(STATE).encode()).hexdigest()[:12]
    fallback = Path("/var/tmp") / f"schema-deploy-devstack-{digest}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    shutil.chown(fallback, "postgres", "postgres")
    return fallback


def run(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure raise StackError with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise StackError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def cluster_dirs(cluster: Cluster) -> tuple[Path, Path, Path]:
    """(data dir, socket dir, log file) of a cluster."""
    base = pg_root() / cluster.env
    return base / "data", base / "run", base / "postgres.log"


def pg_running(cluster: Cluster) -> bool:
    data, _, _ = cluster_dirs(cluster)
    if not (data / "PG_VERSION").exists():
        return False
    proc = subprocess.run(as_pg_user([str(pg_bindir() / "pg_ctl"), "-D", str(data), "status"]),
                          capture_output=True)
    return proc.returncode == 0


def init_cluster(cluster: Cluster) -> None:
    """initdb a new cluster configured for loopback only."""
    data, sockdir, _ = cluster_dirs(cluster)
    base = data.parent
    base.mkdir(parents=True, exist_ok=True)
    sockdir.mkdir(exist_ok=True)
    if running_as_root():
        for path in (base, sockdir):
            shutil.chown(path, "postgres", "postgres")
    run(as_pg_user([str(pg_bindir() / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256",
                    "-E", "UTF8", "--locale=C.UTF-8"]),
        what=f"initdb for the {cluster.env} cluster")
    conf = (
        "\n# --- devstack ---\n"
        f"listen_addresses = '{HOST}'\n"
        f"unix_socket_directories = '{sockdir}'\n"
        "unix_socket_permissions = 0700\n"  # local connections are trusted: owner only
        "max_connections = 100\n"
        "shared_buffers = 128MB\n"
        "max_wal_size = 2GB\n"
        "log_line_prefix = '%m [%p] %a '\n"
    )
    with open(data / "postgresql.conf", "a") as fh:
        fh.write(conf)


# A TCP session proves its password with SCRAM-SHA-256, whose client runs PBKDF2 for as many rounds as
# the role's stored verifier says: 4,096 when the server derives it from the plain password. The
# stack's roles get a verifier of SCRAM_ROUNDS rounds instead. Their passwords are random (24 URL-safe
# characters, 144 bits), so rounds add no strength here, and the suite opens thousands of sessions:
# at 4,096 rounds each cost about 3.6 ms more client CPU than a trusted local one (7 Dec, this machine).
SCRAM_ROUNDS = 16


def scram_verifier(password: str, rounds: int = SCRAM_ROUNDS) -> str:
    """What PostgreSQL stores for `password` under SCRAM-SHA-256 (RFC 5802/7677), made here with `rounds`
    PBKDF2 rounds; CREATE/ALTER ROLE … PASSWORD takes it in place of the password. `password` is
    ASCII, which SASLprep leaves as it is."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, rounds)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${rounds}:{b64[0]}${b64[1]}:{b64[2]}"


def start_cluster(cluster: Cluster, password: str) -> None:
    """Start (if needed) a cluster and make sure its role and database exist."""
    data, sockdir, log = cluster_dirs(cluster)
    if not (data / "PG_VERSION").exists():
        init_cluster(cluster)
    if not pg_running(cluster):
        ensure_port_free(cluster.port, f"{cluster.env} PostgreSQL", cluster.port_variable)
        run(as_pg_user([str(pg_bindir() / "pg_ctl"), "-D", str(data), "-l", str(log),
                        "-w", "-t", "60", "-o", f"-p {cluster.port}", "start"]),
            what=f"starting the {cluster.env} cluster (log: {log})")
    psql = [str(pg_bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(sockdir), "-p", str(cluster.port), "-U", "postgres", "-d", "postgres"]
    role = cluster.role
    role_sql = (
        f"SELECT format('CREATE ROLE {role} LOGIN CREATEDB PASSWORD %L', :'pw') "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') \\gexec\n"
        f"SELECT format('ALTER ROLE {role} PASSWORD %L', :'pw') \\gexec\n"
        f"SELECT 'CREATE DATABASE {cluster.database} OWNER {role}' "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{cluster.database}') \\gexec\n"
    )
    if cluster.env == "production":
        # The health gate reads replication and other sessions' statistics (plugins/schema_deploy/health);
        # it runs only in production, and staging's role stays without them (tests of that case use it).
        role_sql += f"GRANT pg_read_all_stats TO {role};\n"
    # The verifier goes in on stdin, not argv, where `ps` would show it (base64, `$` and `:`).
    proc = subprocess.run(psql, input=f"\\set pw '{scram_verifier(password)}'\n" + role_sql, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise StackError(f"creating role/database on the {cluster.env} cluster failed: {proc.stderr.strip()}")


def stop_cluster(cluster: Cluster) -> None:
    if pg_running(cluster):
        data, _, _ = cluster_dirs(cluster)
        run(as_pg_user([str(pg_bindir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            what=f"stopping the {cluster.env} cluster")


REPLICA_NAME = "production_replica"  # its application_name in production's pg_stat_replication


def start_replica(primary: Cluster | None = None, replica: Cluster | None = None, name: str = REPLICA_NAME) -> None:
    """A streaming replica of `primary` (production's by default): a base backup (`pg_basebackup -R`, no
    slot) with its own port, data directory and socket, listed in the primary's pg_stat_replication as
    `name`. A stopped replica is made again from a fresh base backup: without a slot, the primary may
    have recycled the WAL it would need to catch up."""
    primary = primary or next(c for c in clusters() if c.env == "production")
    replica = replica or replica_cluster()
    if not pg_running(primary):
        raise StackError(f"{primary.env} is not running: start the stack first (make stack-up)")
    data, sockdir, log = cluster_dirs(replica)
    if pg_running(replica):
        return
    stop_cluster(replica)
    shutil.rmtree(data.parent, ignore_errors=True)
    data.parent.mkdir(parents=True)
    sockdir.mkdir()
    if running_as_root():
        for path in (data.parent, sockdir):
            shutil.chown(path, "postgres", "postgres")
    _, primary_sock, _ = cluster_dirs(primary)
    run(as_pg_user([str(pg_bindir() / "pg_basebackup"), "-D", str(data), "-R", "-X", "stream", "-c", "fast",
                    "-h", str(primary_sock), "-p", str(primary.port), "-U", "postgres"]),
        what="pg_basebackup of production for its replica")
    with open(data / "postgresql.conf", "a") as fh:
        fh.write(f"\n# --- devstack replica ---\nunix_socket_directories = '{sockdir}'\n"
                 f"cluster_name = '{name}'\nhot_standby = on\n")
    ensure_port_free(replica.port, f"{primary.env}'s replica", replica.port_variable)
    run(as_pg_user([str(pg_bindir() / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                    "-o", f"-p {replica.port}", "start"]), what=f"starting {primary.env}'s replica (log: {log})")
    wait_for_streaming(primary, replica, name)


def wait_for_streaming(primary: Cluster, replica: Cluster, name: str) -> None:
    """Until the primary lists the replica as streaming in pg_stat_replication."""
    psql = [str(pg_bindir() / "psql"), "-X", "-At", "-h", str(cluster_dirs(primary)[1]), "-p", str(primary.port),
            "-U", "postgres", "-d", "postgres", "-c",
            f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' "
            "AND state = 'streaming'"]
    deadline = time.monotonic() + START_TIMEOUT_S
    while subprocess.run(psql, capture_output=True, text=True).stdout.strip() != "1":
        if time.monotonic() > deadline:
            raise StackError(f"the replica does not stream from {primary.env} after {START_TIMEOUT_S:.0f} s: see "
                             f"{cluster_dirs(replica)[2]}")
        time.sleep(0.2)


def database_url(cluster: Cluster, password: str) -> str:
    return f"postgresql://{cluster.role}:{password}@{HOST}:{cluster.port}/{cluster.database}"


def admin_url(cluster: Cluster) -> str:
    """Superuser over the cluster's unix socket (trust auth; tests that need roles)."""
    _, sockdir, _ = cluster_dirs(cluster)
    return f"postgresql://postgres@/postgres?host={sockdir}&port={cluster.port}"


# --- the two Python services -------------------------------------------------

@dataclass(frozen=True)
class Service:
    """A stdlib HTTP server of ours run as a background process."""

    name: str
    script: str
    port: int
    health_path: str
    port_variable: str

    @property
    def pid_file(self) -> Path:
        return STATE / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return STATE / f"{self.name}.log"


def services() -> list[Service]:
    return [
        Service("s3", "s3server.py", s3_port(), "/", "DEVSTACK_S3_PORT"),
        Service("slack", "slack_standin.py", slack_port(), "/_standin/health", "DEVSTACK_SLACK_PORT"),
    ]


def service_args(service: Service, values: dict[str, str]) -> list[str]:
    if service.name == "s3":
        # `--opt=value`: a generated secret may begin with '-', which argparse would take for an option.
        return [f"--root={STATE / 's3'}", f"--access-key={S3_ACCESS_KEY}",
                f"--secret-key={values['s3_secret_key']}", f"--bucket={BACKUP_BUCKET}"]
    return [f"--messages-file={STATE / 'slack-messages.jsonl'}", f"--token={values['slack_token']}"]


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def ensure_port_free(port: int, what: str, variable: str) -> None:
    if port_open(port):
        raise StackError(
            f"port {port} ({what}) is already in use by another process. "
            f"Stop that process or choose another port: export {variable}=<free port>."
        )


def http_answers(port: int, path: str) -> bool:
    try:
        urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=1)
    except urllib.error.HTTPError:
        return True  # an HTTP answer, even 403, means it is serving
    except OSError:
        return False
    return True


def start_service(service: Service, values: dict[str, str]) -> None:
    """Start a service unless it is already running, then wait until it answers."""
    if read_pid(service.pid_file) and http_answers(service.port, service.health_path):
        return
    service.pid_file.unlink(missing_ok=True)
    ensure_port_free(service.port, f"{service.name} endpoint", service.port_variable)
    cmd = [sys.executable, str(REPO / "devstack" / service.script), "--host", HOST,
           "--port", str(service.port), "--pid-file", str(service.pid_file),
           "--log-file", str(service.log_file), *service_args(service, values)]
    with open(STATE / f"{service.name}.out", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the {service.name} endpoint exited at start (exit {proc.returncode}); "
                             f"see {STATE / (service.name + '.out')}")
        if service.pid_file.exists() and http_answers(service.port, service.health_path):
            return
        time.sleep(0.1)
    raise StackError(f"the {service.name} endpoint did not answer on port {service.port} "
                     f"within {START_TIMEOUT_S:.0f} s; see {service.log_file}")


def stop_service(service: Service) -> None:
    """SIGTERM the service, then SIGKILL if it has not gone within 10 s."""
    pid = read_pid(service.pid_file)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and read_pid(service.pid_file) == pid:
        time.sleep(0.1)
    if read_pid(service.pid_file) == pid:
        os.kill(pid, signal.SIGKILL)
    service.pid_file.unlink(missing_ok=True)


# --- Redis (the Celery broker) ------------------------------------------------

def redis_server() -> str | None:
    """The redis-server binary ($REDIS_SERVER or PATH), or None: the stack then runs without it."""
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    return found if found and os.access(found, os.X_OK) else None


def redis_dir() -> Path:
    return STATE / "redis"


def redis_running() -> int | None:
    pid = read_pid(redis_dir() / "redis.pid")
    return pid if pid and port_open(redis_port()) else None


def start_redis(password: str) -> None:
    """Start Redis on loopback with a password, its data (an append-only file, so queued Celery
    messages survive a restart) under .devstack/redis. The password is in a 0600 config file, not argv."""
    if redis_server() is None or redis_running():
        return
    home = redis_dir()
    home.mkdir(parents=True, exist_ok=True)
    (home / "redis.pid").unlink(missing_ok=True)
    ensure_port_free(redis_port(), "Redis", "DEVSTACK_REDIS_PORT")
    conf = home / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join([
            "# Written by devstack/stack.py up",
            f"bind {HOST}", f"port {redis_port()}", "protected-mode yes",
            f"requirepass {password}", f"dir {home}", f"pidfile {home / 'redis.pid'}",
            f"logfile {home / 'redis.log'}", "daemonize yes",
            "appendonly yes", "appendfsync everysec", 'save ""', "databases 16", "",
        ]))
    run([redis_server(), str(conf)], what=f"starting Redis (log: {home / 'redis.log'})")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if redis_running():
            return
        time.sleep(0.1)
    raise StackError(f"Redis did not answer on port {redis_port()} within {START_TIMEOUT_S:.0f} s; "
                     f"see {home / 'redis.log'}")


def stop_redis() -> None:
    """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after 10 s."""
    pid = read_pid(redis_dir() / "redis.pid")
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    (redis_dir() / "redis.pid").unlink(missing_ok=True)


# --- environment file --------------------------------------------------------

def environment(values: dict[str, str]) -> dict[str, str]:
    """Every variable people and scripts need to reach the stack."""
    by_env = {c.env: c for c in clusters()}
    staging_url = database_url(by_env["staging"], values["staging_password"])
    production_url = database_url(by_env["production"], values["production_password"])
    s3_url = f"http://{HOST}:{s3_port()}"
    slack_base = f"http://{HOST}:{slack_port()}"
    webhook = slack_base + values["slack_webhook_path"]
    aws_conn = {
        "conn_type": "aws",
        "login": S3_ACCESS_KEY,
        "password": values["s3_secret_key"],
        "extra": {"endpoint_url": s3_url, "region_name": S3_REGION},
    }
    slack_conn = {"conn_type": "slackwebhook", "password": webhook}
    return {
        "DEVSTACK_DIR": str(STATE),
        "STAGING_DATABASE_URL": staging_url,
        "PRODUCTION_DATABASE_URL": production_url,
        "STAGING_ADMIN_URL": admin_url(by_env["staging"]),
        "PRODUCTION_ADMIN_URL": admin_url(by_env["production"]),
        # Production's replica, when started (make replica-up): read-only, a superuser over its socket.
        "PRODUCTION_REPLICA_ADMIN_URL": admin_url(replica_cluster()),
        "PG_BINDIR": str(pg_bindir()),
        "S3_ENDPOINT_URL": s3_url,
        "BACKUP_BUCKET": BACKUP_BUCKET,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": values["s3_secret_key"],
        "AWS_ENDPOINT_URL": s3_url,
        "AWS_DEFAULT_REGION": S3_REGION,
        "SLACK_WEBHOOK_URL": webhook,
        "SLACK_API_URL": slack_base + "/api/",
        "SLACK_API_TOKEN": values["slack_token"],
        "SLACK_CONTROL_URL": slack_base + "/_standin",
        "SLACK_MESSAGES_FILE": str(STATE / "slack-messages.jsonl"),
        "AIRFLOW_CONN_STAGING_DB": staging_url,
        "AIRFLOW_CONN_PRODUCTION_DB": production_url,
        "AIRFLOW_CONN_BACKUP_S3": json.dumps(aws_conn, separators=(",", ":")),
        "AIRFLOW_CONN_SLACK_DEPLOYS": json.dumps(slack_conn, separators=(",", ":")),
        # Airflow on Celery: its metadata database and the broker (devstack/airflow_local.py --executor celery).
        "AIRFLOW_METADATA_URL": database_url(metadata_cluster(), values["airflow_password"]),
        "AIRFLOW_METADATA_ADMIN_URL": admin_url(metadata_cluster()),
        "REDIS_URL": f"redis://:{values['redis_password']}@{HOST}:{redis_port()}",
    }


def write_env_file(env: dict[str, str]) -> Path:
    path = STATE / "env"
    lines = ["# Written by devstack/stack.py up; source it: . .devstack/env"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def mask(text: str, values: dict[str, str]) -> str:
    """Replace every stack secret in `text` with ****."""
    for secret in values.values():
        if secret and not secret.startswith("/"):
            text = text.replace(secret, "****")
    return text.replace(values["slack_webhook_path"].rsplit("/", 1)[-1], "****")


# --- commands ----------------------------------------------------------------

def wait_for_database(cluster: Cluster, password: str) -> None:
    """Wait until the app role can log in over TCP with its password."""
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "2"}
    cmd = [str(pg_bindir() / "psql"), "-X", "-q", "-h", HOST, "-p", str(cluster.port),
           "-U", cluster.role, "-d", cluster.database, "-c", "SELECT 1"]
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise StackError(f"the {cluster.env} database does not accept logins: {proc.stderr.strip()}")
        time.sleep(0.2)


def cmd_up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    values = load_secrets()
    for cluster in all_clusters():
        password = values[f"{cluster.env}_password"]
        start_cluster(cluster, password)
        wait_for_database(cluster, password)
    for service in services():
        start_service(service, values)
    start_redis(values["redis_password"])
    path = write_env_file(environment(values))
    print(f"local stack is up; environment in {path}", file=sys.stderr)
    cmd_status()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def cmd_down() -> None:
    """Stop every process of the stack and check that none is left."""
    started = stack_pids()
    for service in services():
        stop_service(service)
    stop_redis()
    for cluster in [replica_cluster(), *all_clusters()]:
        stop_cluster(cluster)
    leftovers = [f"{name} (pid {pid})" for name, pid in started.items() if pid_alive(pid)]
    if leftovers:
        raise StackError("still running after stop: " + ", ".join(leftovers))
    print("local stack is stopped", file=sys.stderr)


def cmd_destroy() -> None:
    """Stop the stack and delete all of its state (data, objects, messages, secrets)."""
    cmd_down()
    root = pg_root()
    if root != STATE / "pg":
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(STATE, ignore_errors=True)
    print(f"deleted {STATE}", file=sys.stderr)


def cmd_status() -> int:
    """Print what runs where, passwords masked. Exit 1 if anything is down."""
    if not (STATE / "secrets.json").exists():
        print(f"local stack not created yet ({STATE}); start it with `make stack-up`")
        return 1
    values = load_secrets()
    env = environment(values)
    rows: list[tuple[str, str, str]] = []
    for cluster in all_clusters():
        state = "running" if pg_running(cluster) else "stopped"
        url = env["AIRFLOW_METADATA_URL" if cluster.env == "airflow" else f"{cluster.env.upper()}_DATABASE_URL"]
        rows.append((f"postgres {cluster.env}", state, url))
    for service in services():
        pid = read_pid(service.pid_file)
        state = f"running (pid {pid})" if pid and port_open(service.port) else "stopped"
        url = env["S3_ENDPOINT_URL"] + f"  bucket {BACKUP_BUCKET}" if service.name == "s3" else env["SLACK_WEBHOOK_URL"]
        rows.append((service.name, state, url))
    redis_pid = redis_running()
    optional = {"redis"} if redis_server() is None else set()
    rows.append(("redis", f"running (pid {redis_pid})" if redis_pid else
                 "not installed" if optional else "stopped",
                 env["REDIS_URL"] + ("  (only for Celery: devstack/ensure_redis.sh)" if optional else "")))
    replica = replica_cluster()
    rows.append(("postgres replica", "running" if pg_running(replica) else "stopped",
                 f"{env['PRODUCTION_REPLICA_ADMIN_URL']}  (production's streaming replica; on demand: make replica-up)"))
    optional.add("postgres replica")
    for name, state, url in rows:
        print(f"{name:<20} {state:<20} {mask(url, values)}")
    print(f"{'state':<20} {'':<20} {STATE}  (env file: {STATE / 'env'})")
    return 0 if all(r[1].startswith("running") or r[0] in optional for r in rows) else 1


def stack_pids() -> dict[str, int]:
    """The pid of every running process of this stack (postmasters and our two servers)."""
    pids: dict[str, int] = {}
    for cluster in [*all_clusters(), replica_cluster()]:
        data, _, _ = cluster_dirs(cluster)
        pid_file = data / "postmaster.pid"
        if pg_running(cluster) and pid_file.exists():
            pids[f"postgres-{cluster.env}"] = int(pid_file.read_text().split()[0])
    for service in services():
        pid = read_pid(service.pid_file)
        if pid:
            pids[service.name] = pid
    if redis_pid := read_pid(redis_dir() / "redis.pid"):
        pids["redis"] = redis_pid
    return pids


def cmd_pids() -> int:
    """Print the stack's pids as JSON (for tests and scripts)."""
    print(json.dumps(stack_pids()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "pids", "destroy", "replica-up", "replica-down"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            cmd_up()
        elif args.command == "down":
            cmd_down()
        elif args.command == "destroy":
            cmd_destroy()
        elif args.command == "replica-up":
            start_replica()
            print(f"production's replica streams on port {replica_cluster().port}", file=sys.stderr)
        elif args.command == "replica-down":
            stop_cluster(replica_cluster())
        elif args.command == "pids":
            return cmd_pids()
        else:
            return cmd_status()
    except StackError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
