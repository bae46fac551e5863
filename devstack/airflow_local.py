"""`make airflow`: Airflow's real services on this machine, against the local stack.

    python devstack/airflow_local.py start [--background] [--no-seed] [--port N] [--home DIR] [--config FILE]
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

Defaults: home `.devstack/airflow` ($DEVSTACK_AIRFLOW_HOME), port 8080
($DEVSTACK_AIRFLOW_PORT), settings `devstack/airflow-deploy.yaml`. AIRFLOW_CONN_STAGING_DB
and AIRFLOW_CONN_PRODUCTION_DB in the environment override the stack's (the tests use this).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "devstack") not in sys.path:
    sys.path.insert(0, str(REPO / "devstack"))

from airflow_env import CONNECTIONS, airflow_env, stack_env  # noqa: E402

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HOST = "127.0.0.1"
USERS = "admin:admin"
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
    """Live processes (other than this one and its ancestors) running with AIRFLOW_HOME=`home`."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter():
        if proc.pid in me:
            continue
        try:
            if proc.environ().get("AIRFLOW_HOME") == str(home) and alive(proc):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


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
    """(the stack's variables, the environment every Airflow component runs with)."""
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
    })
    return stack, env


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
    stop = ("Ctrl-C stops all four components" if not state.get("background")
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
        f"  component logs: {home / 'logs'}/{{{','.join(COMPONENTS)}}}.log",
        f"  {stop}",
    ])


# --- the supervisor ------------------------------------------------------------

class Supervisor:
    """Starts the four components, watches them, and stops every process they started."""

    def __init__(self, home: Path, port: int, env: dict[str, str], *, background: bool) -> None:
        self.home, self.port, self.env, self.background = home, port, env, background
        self.logs = home / "logs"
        self.children: dict[str, subprocess.Popen] = {}
        self.known: dict[int, psutil.Process] = {}
        self.stopping = False

    def request_stop(self, signum, _frame) -> None:
        self.stopping = True

    def command(self, name: str) -> list[str]:
        extra = ["--host", HOST, "--port", str(self.port)] if name == "api-server" else []
        return [airflow_bin(), name, *extra]

    def start(self) -> None:
        for name in COMPONENTS:
            with open(self.logs / f"{name}.log", "ab") as out:
                # Own session: Ctrl-C reaches only us, and we stop the components in order.
                self.children[name] = subprocess.Popen(self.command(name), env=self.env, stdout=out,
                                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                       cwd=REPO, start_new_session=True)
        self.track()

    def state(self, **extra) -> dict:
        return {"pid": os.getpid(), "url": f"http://localhost:{self.port}", "port": self.port,
                "config": self.env["SCHEMA_DEPLOY_CONFIG"],
                "background": self.background, "home": str(self.home),
                "components": {n: p.pid for n, p in self.children.items()}, **extra}

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
            missing = unhealthy(health(self.port))
            if not missing and (self.home / "passwords.json").exists():
                return
            self.track()
            time.sleep(1)
        if not self.stopping:
            raise LocalAirflowError(f"not healthy after {time.monotonic() - t0:.0f} s ({', '.join(missing)}); "
                                    f"see the logs in {self.logs}")

    def watch(self) -> None:
        while not self.stopping:
            if problem := self.exited():
                raise LocalAirflowError(problem)
            self.track()
            time.sleep(1)

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


def run(home: Path, port: int, config: Path, *, seed: bool, background: bool) -> int:
    """The foreground supervisor: set up, start, wait for Ctrl-C (or `stop`), stop everything."""
    t0 = time.monotonic()
    if supervisor_alive(read_state(home)):
        raise LocalAirflowError(f"Airflow already runs from {home} (pid {read_state(home)['pid']}); "
                                f"stop it first: {sys.executable} {__file__} stop --home {home}")
    if port_open(port):
        raise LocalAirflowError(f"port {port} is already in use; choose another: DEVSTACK_AIRFLOW_PORT=<port> make airflow")
    if not config.exists():
        raise LocalAirflowError(f"settings file {config} not found")
    stack, env = local_env(home, port, config)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if seed:
        say("seeding the local stack's databases ...")
        seed_databases(stack)
    say(f"airflow db migrate ({home / 'airflow.db'}) ...")
    migrate(env, logs)
    sup = Supervisor(home, port, env, background=background)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, sup.request_stop)
    code = 0
    try:
        say(f"starting {', '.join(COMPONENTS)} (logs in {logs}) ...")
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


def start_background(home: Path, port: int, config: Path, *, seed: bool) -> int:
    """Run the supervisor detached; return once it reports ready (or failed)."""
    if supervisor_alive(read_state(home)):
        raise LocalAirflowError(f"Airflow already runs from {home} (pid {read_state(home)['pid']})")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    out_path = home / "logs" / "airflow-local.out"
    cmd = [sys.executable, str(Path(__file__).resolve()), "start", "--home", str(home), "--port", str(port),
           "--config", str(config), "--detached"] + ([] if seed else ["--no-seed"])
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
    parser.add_argument("--background", action="store_true", help="detach; return once ready")
    parser.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)  # set by --background
    args = parser.parse_args(argv)
    home, config = args.home.resolve(), args.config.resolve()
    try:
        if args.command == "stop":
            return stop(home)
        if args.background:
            return start_background(home, args.port, config, seed=not args.no_seed)
        return run(home, args.port, config, seed=not args.no_seed, background=args.detached)
    except LocalAirflowError as exc:
        say(f"airflow-local: {exc}")
        return 2
    except KeyboardInterrupt:  # during seeding or db migrate: no component runs yet
        say("airflow-local: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
