"""What backups need from PostgreSQL: pg_dump/pg_restore children, row counts.

Passwords never reach a command line: a URL becomes a libpq connection string
without its password (passed as `--dbname`) plus `PGPASSWORD` in the child's
environment only, and every line a child prints is scrubbed before it is shown.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from schema_deploy.errors import UsageError
from schema_deploy.pg import db
from schema_deploy.pg.errors import DatabaseError
from schema_deploy.redact import scrub

STDERR_TAIL_LINES = 20


def find_binary(name: str, pg_bindir: str | None = None) -> str:
    """Path of a PostgreSQL client program, from `pg_bindir`, `$PG_BINDIR` or PATH."""
    bindir = pg_bindir or os.environ.get("PG_BINDIR")
    if bindir:
        path = os.path.join(bindir, name)
        if os.access(path, os.X_OK):
            return path
        raise UsageError(f"{name} not found in {bindir} (PG_BINDIR): point PG_BINDIR at the bin directory of "
                         "a PostgreSQL client of the server's major version or newer.")
    found = shutil.which(name)
    if found:
        return found
    raise UsageError(f"{name} not found on PATH: install the PostgreSQL client programs "
                     "(e.g. apt-get install postgresql-client-15) or set PG_BINDIR to their bin directory.")


def tool_version(binary: str) -> str:
    """`pg_dump --version` output, e.g. 'pg_dump (PostgreSQL) 15.18'."""
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


@dataclass(frozen=True)
class Target:
    """A database URL split for child programs: conninfo without password, password apart."""

    url: str = field(repr=False)
    conninfo: str
    password: str | None = field(repr=False)
    dbname: str
    host: str

    def env(self, application: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PGAPPNAME"] = application
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def redact(self, text: str) -> str:
        """`text` without this target's password, in URL, key=value or bare form."""
        return db.mask_password(text, self.url)

    @property
    def display(self) -> str:
        return scrub(self.url)


def target_of(url: str) -> Target:
    """Parse a postgresql:// URL (or key=value string) into a `Target`."""
    try:
        db.check_url(url)
    except db.DatabaseError as exc:
        raise UsageError(exc.message) from None
    try:
        params = pg_conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise UsageError(f"{db.display_url(url)!r} is not a PostgreSQL URL ({db.mask_password(str(exc), url).strip()}); "
                         "expected a postgresql:// URL with user, password, host, port and database name.") from None
    password = params.pop("password", None)
    dbname = str(params.get("dbname") or params.get("user") or os.environ.get("PGDATABASE") or "")
    if not dbname:
        raise UsageError(f"{scrub(url)!r} names no database; expected a postgresql:// URL with user, password, "
                         "host, port and database name.")
    host = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
    conninfo = pg_conninfo.make_conninfo("", **{k: v for k, v in params.items() if v is not None})
    return Target(url=url, conninfo=conninfo, password=None if password is None else str(password),
                  dbname=dbname, host=host)


class Child:
    """A child program whose stderr is drained into a bounded tail (and stdout, if piped and
    `collect_stdout`, into memory), so it never blocks on a full pipe we do not read."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, *, stdin: int | None = subprocess.DEVNULL,
                 stdout: int | None = subprocess.DEVNULL, collect_stdout: bool = False) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, bufsize=0)
        self._tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._out: list[bytes] = []
        self._threads = [threading.Thread(target=self._drain_stderr, daemon=True)]
        if collect_stdout:
            self._threads.append(threading.Thread(target=self._drain_stdout, daemon=True))
        for thread in self._threads:
            thread.start()
        self.fed_all = True

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            self._tail.append(line.decode("utf-8", "replace").rstrip()[:500])

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for block in iter(lambda: self.proc.stdout.read(65536), b""):  # type: ignore[union-attr]
            self._out.append(block)

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def feed(self, data: bytes | bytearray) -> bool:
        """Write to stdin; False (and no more feeding) once the child stopped reading."""
        if not self.fed_all:
            return False
        try:
            view = memoryview(data)
            while view:  # an unbuffered pipe write may be partial
                view = view[self.proc.stdin.write(view):]  # type: ignore[union-attr]
            return True
        except (BrokenPipeError, ConnectionResetError, ValueError):
            self.fed_all = False
            return False

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass

    def wait(self) -> int:
        self.close_stdin()
        code = self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def stderr_tail(self) -> str:
        return "\n".join(self._tail)

    def output(self) -> str:
        return b"".join(self._out).decode("utf-8", "replace")


# --- catalog facts ------------------------------------------------------------------

USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Every ordinary table whose rows pg_dump dumps: all user schemas, no extension members."""
    return [(s, t) for s, t in conn.execute(USER_TABLES).fetchall()]


def qualified(schema: str, table: str) -> str:
    return f"{schema}.{table}"


def lock_tables_nowait(conn: psycopg.Connection, tables: list[tuple[str, str]]) -> None:
    """ACCESS SHARE on every table at once, failing (55P03) rather than queueing."""
    if tables:
        idents = sql.SQL(", ").join(db.ident(s, t) for s, t in tables)
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT").format(idents))


def count_rows(conn: psycopg.Connection, tables: list[str]) -> dict[str, int]:
    """Exact `count(*)` per table ('schema.table' names), in the session's snapshot."""
    return {name: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(db.ident(name))).fetchone()[0]
            for name in tables}


def compare_counts(conn: psycopg.Connection, expected: dict[str, int]) -> tuple[dict[str, int], list[str]]:
    """Exact counts of the tables in `expected` that exist here, and one line per difference."""
    present = {qualified(s, t) for s, t in user_tables(conn)}
    counts = count_rows(conn, sorted(name for name in expected if name in present))
    diffs = [f"{name}: manifest {want:,}, restored {counts[name]:,}" if name in counts
             else f"{name}: manifest {want:,}, missing after the restore"
             for name, want in sorted(expected.items()) if counts.get(name) != want]
    return counts, diffs


def drop_database(admin: Target, name: str, application: str) -> None:
    """Drop database `name` on `admin`'s server, ending the role's own sessions in it first.

    Plain DROP DATABASE, retried: it makes an autovacuum worker (likely right after a
    restore or bulk load) exit, which WITH (FORCE) cannot do for a role that is not a superuser.
    """
    with db.connect(admin.url, application_name=application) as conn:
        for _ in range(100):
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid() AND usename = current_user", (name,))
            try:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(db.ident(name, split=False)))
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.1)
    raise DatabaseError(f"could not drop the database {name} on {admin.display}: still in use. "
                        f"Drop it by hand: DROP DATABASE {db.quoted(name, split=False)}")
