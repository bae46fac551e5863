"""The one home for what every module needs from PostgreSQL.

* `connect`: a session with a connect timeout, an application name, and
  `client_connection_check_interval`; a failure names the target, never its password.
* `mask_password`: the one password masker for text that may echo a URL back.
* `ident`, `quoted`: identifiers only through `psycopg.sql`, never string formatting.
* `relation_oid`, `relation_exists`, `existing_relations`: "does this table exist" by `to_regclass`.
* `blockers`, `advisory_lock_holders`, `other_sessions`: one `pg_stat_activity` query, as
  `Session`s; `Session.as_blocker()` is the one rendering of a session in a lock's way.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from schema_deploy.errors import DatabaseError, scrub, shorten

APPLICATION_NAME = "schema-deploy"
CONNECT_TIMEOUT_S = 10
MASK = "****"


# --- passwords ------------------------------------------------------------------------

def passwords_of(url: str) -> set[str]:
    """The password of a URL or key=value string, as written and percent-decoded."""
    found: set[str | None] = set()
    try:
        raw = urlsplit(url).password
        found |= {raw, unquote(raw or "")}
    except ValueError:
        pass
    try:
        found.add(pg_conninfo.conninfo_to_dict(url).get("password"))  # type: ignore[arg-type]
    except psycopg.Error:
        pass
    return {str(p) for p in found if p}


def mask_password(text: str, url: str | None = None) -> str:
    """`text` with `url`'s password (libpq may echo a piece of the URL back) and every
    URL or `password=` password replaced by ****."""
    if url:
        for secret in sorted(passwords_of(url), key=len, reverse=True):
            text = text.replace(secret, MASK)
    return scrub(text)


# --- connecting -------------------------------------------------------------------------

def connect(url: str, *, autocommit: bool = True, application_name: str = APPLICATION_NAME,
            connect_timeout: int = CONNECT_TIMEOUT_S, settings: Mapping[str, str] | None = None
            ) -> psycopg.Connection:
    """Open a session on `url`; errors name the target without its password.

    `settings` are server settings given at connection start (say, read-only with a
    short statement_timeout).
    """
    userinfo, at, _ = url.partition("://")[2].partition("?")[0].rpartition("@")
    if at and any(c in userinfo for c in "@/"):
        # libpq would split the URL inside the password and echo a piece of it as the host.
        raise DatabaseError(f"cannot connect to {scrub(url)}: the user name or password contains '@' or '/'. "
                            "Percent-encode them in the URL ('@' as %40, '/' as %2F).")
    # libpq splits `options` at unescaped spaces; a backslash escapes.
    options = " ".join(f"-c {name}=" + str(value).replace("\\", "\\\\").replace(" ", "\\ ")
                       for name, value in (settings or {}).items())
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout,
                               application_name=application_name, **({"options": options} if options else {}))
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {scrub(url)}: {mask_password(str(exc).strip(), url)}. "
                            "Check the URL, that the server is running, and the role's password.") from None
    # Lets the server abort our statements soon after this process dies (PostgreSQL 14+),
    # so a crash leaves no backend building an index on our behalf.
    conn.execute("SET client_connection_check_interval = '1s'")
    return conn


# --- identifiers ----------------------------------------------------------------------

def ident(*parts: str, split: bool = True) -> sql.Identifier:
    """A (schema-)qualified identifier: `ident("public.t")` or `ident("public", "t")`.

    A single argument is a qualified name, split at its first dot; parts given apart, or
    `split=False` (a column, a constraint, a database), are taken as they are, so a name
    that contains a dot stays one name."""
    if split and len(parts) == 1:
        parts = tuple(parts[0].split(".", 1))
    return sql.Identifier(*parts)


def quoted(*parts: str, split: bool = True) -> str:
    """`ident(...)` as text: for `to_regclass`/`to_regtype`, SQL built as text, and messages."""
    return ident(*parts, split=split).as_string()


def relation_oid(conn: psycopg.Connection, *parts: str, split: bool = True) -> int | None:
    """The oid of the relation named (as for `ident`), or None when there is none."""
    row = conn.execute("SELECT to_regclass(%s)::oid", (quoted(*parts, split=split),)).fetchone()
    return row[0] if row and row[0] else None


def relation_exists(conn: psycopg.Connection, *parts: str, split: bool = True) -> bool:
    """Does the relation named (as for `ident`) exist, on the search path if unqualified?"""
    return relation_oid(conn, *parts, split=split) is not None


def existing_relations(conn: psycopg.Connection, names: Iterable[str]) -> set[str]:
    """The subset of `names` ("table" or "schema.table") that exists now, in one query."""
    names = list(names)
    if not names:
        return set()
    rows = conn.execute("SELECT i FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, i) "
                        "WHERE to_regclass(u.name) IS NOT NULL", ([quoted(n) for n in names],)).fetchall()
    return {names[i - 1] for (i,) in rows}


# --- sessions: who holds what ----------------------------------------------------------------

SESSIONS = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), '(none)'),
       coalesce(host(a.client_addr), CASE WHEN a.client_port = -1 THEN 'local socket' ELSE '(hidden)' END),
       coalesce(a.usename::text, '?'), coalesce(a.state, '?'), now() - a.xact_start,
       coalesce(a.query, '')
FROM pg_stat_activity a WHERE {condition} ORDER BY a.pid
"""


@dataclass(frozen=True)
class Session:
    """One row of `pg_stat_activity`, as the messages about it need it."""

    pid: int
    application: str
    client: str
    user: str
    state: str
    xact_age: timedelta | None = None
    query: str = ""

    def as_blocker(self) -> str:
        """`pid 123 application 'psql' state idle in transaction transaction age 0:00:04 query: SELECT …`"""
        age = self.xact_age if self.xact_age is not None else "none (not in a transaction)"
        return (f"pid {self.pid} application {self.application!r} state {self.state} transaction age {age} "
                f"query: {shorten(scrub(self.query), 200)}")

    def as_session(self) -> str:
        """`pid 123 (application 'psql', client 10.0.0.5, user app, state idle)`"""
        return (f"pid {self.pid} (application {self.application!r}, client {self.client}, user {self.user}, "
                f"state {self.state})")


def sessions(conn: psycopg.Connection, condition: str, params: tuple = ()) -> list[Session]:
    """Sessions of `pg_stat_activity a` matching the SQL `condition` (a fixed text with %s params)."""
    query = sql.SQL(SESSIONS).format(condition=sql.SQL(condition))  # type: ignore[arg-type]
    return [Session(*row) for row in conn.execute(query, params).fetchall()]


def blockers(conn: psycopg.Connection, pid: int) -> list[Session]:
    """The sessions that block backend `pid` (`pg_blocking_pids`)."""
    return sessions(conn, "a.pid = ANY (pg_blocking_pids(%s))", (pid,))


def advisory_lock_holders(conn: psycopg.Connection, classid: int, objid: int, objsubid: int) -> list[Session]:
    """Other sessions holding the advisory lock with these pg_locks keys
    (a bigint key k: classid k >> 32, objid k & 0xffffffff, objsubid 1; two int keys: objsubid 2)."""
    return sessions(conn, "a.pid <> pg_backend_pid() AND a.pid IN (SELECT l.pid FROM pg_locks l "
                          "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
                          "AND l.objsubid = %s)", (classid, objid, objsubid))


def other_sessions(conn: psycopg.Connection) -> list[Session]:
    """Client sessions on the same database other than this one."""
    return sessions(conn, "a.datname = current_database() AND a.pid <> pg_backend_pid() "
                          "AND a.backend_type = 'client backend'")


def describe_blockers(found: list[Session]) -> str:
    """Every blocking session, `as_blocker`, or what it means that there was none."""
    if not found:
        return "a session that ended before it could be sampled"
    return "; ".join(s.as_blocker() for s in found)


def describe_sessions(found: list[Session]) -> str:
    """Every session, `as_session`, joined with '; ' ('' for none)."""
    return "; ".join(s.as_session() for s in found)
