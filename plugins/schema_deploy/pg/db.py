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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from schema_deploy.errors import shorten
from schema_deploy.pg import names
from schema_deploy.pg.errors import DatabaseError
from schema_deploy.redact import scrub

APPLICATION_NAME = "schema-deploy"
CONNECT_TIMEOUT_S = 10
MASK = "****"


# --- passwords ------------------------------------------------------------------------

# What RFC 3986 allows in a URL's user information as written: anything else must be percent-encoded.
USERINFO_OK = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")


def url_userinfo(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme, user, password as written or None, what follows the last '@') of a postgresql:// URL; None
    for a key=value string or a URL without user information. Split by hand at the last '@', so that a
    password with '#', '?', '/' or a space (which urlsplit would cut) is still found whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    userinfo, at, after = rest.rpartition("@")
    if not at:
        return None
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, after


def display_url(url: str) -> str:
    """The URL with its password as ****, however the password is written."""
    parts = url_userinfo(url)
    if parts is None:
        return scrub(url)
    scheme, user, password, after = parts
    return f"{scheme}://{user}{':' + MASK if password is not None else ''}@{after}"


def check_url(url: str) -> None:
    """Refuse a postgresql:// URL whose user or password libpq would misread, naming what to
    percent-encode and never echoing the password (libpq's own errors quote the bad token)."""
    parts = url_userinfo(url)
    if parts is None:
        return
    _, user, password, _ = parts
    if "/" in user or "@" in user or (password is not None and ("/" in password or "@" in password)):
        # libpq would split the URL inside the password and echo a piece of it as the host.
        raise DatabaseError(f"cannot connect to {display_url(url)}: the user name or password contains '@' or '/'. "
                            "Percent-encode them in the URL ('@' as %40, '/' as %2F).")
    for what, value in (("user name", user), ("password", password or "")):
        if not USERINFO_OK.fullmatch(value):
            raise DatabaseError(
                f"cannot connect to {display_url(url)}: the {what} in the URL is not valid percent-encoding (a '%' "
                "must be followed by two hex digits, and characters such as a space, '#', '?', '%' itself or "
                "non-ASCII letters must be written as %XX). Percent-encode it, e.g. in Python "
                "urllib.parse.quote(password, safe='') ('#' becomes %23, '%' becomes %25, a space %20).")


def passwords_of(url: str) -> set[str]:
    """The password of a URL or key=value string, as written and percent-decoded."""
    found: set[str | None] = set()
    parts = url_userinfo(url)
    if parts is not None and parts[2]:
        found |= {parts[2], unquote(parts[2])}
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
    check_url(url)
    # libpq splits `options` at unescaped spaces; a backslash escapes.
    options = " ".join(f"-c {name}=" + str(value).replace("\\", "\\\\").replace(" ", "\\ ")
                       for name, value in (settings or {}).items())
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout,
                               application_name=application_name, **({"options": options} if options else {}))
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {display_url(url)}: {mask_password(str(exc).strip(), url)}. "
                            "Check the URL, that the server is running, and the role's password.") from None
    apply_session_settings(conn)
    return conn


# Set on every session we open, and again after each reset_session.
# client_connection_check_interval lets the server abort our statements soon after this process dies
# (PostgreSQL 14+), so a crash leaves no backend building an index on our behalf.
SESSION_SETTINGS = {"client_connection_check_interval": "1s"}


def apply_session_settings(conn: psycopg.Connection) -> None:
    for name, value in SESSION_SETTINGS.items():
        conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))


def reset_session(conn: psycopg.Connection) -> None:
    """The session as `connect` left it: every setting at its default (a migration's SET search_path,
    SET ROLE, SET SESSION AUTHORIZATION included), then our own settings again. Run between migrations,
    outside a transaction, so nothing one migration set reaches the next."""
    conn.execute("RESET ALL")
    conn.execute("RESET ROLE")
    if conn.execute("SELECT session_user <> %s", (conn.info.user,)).fetchone()[0]:
        conn.execute("RESET SESSION AUTHORIZATION")  # only a superuser's session can have changed it
    apply_session_settings(conn)


def as_connecting_role(conn: psycopg.Connection) -> None:
    """Inside a transaction: act as the role that connected until it ends (a migration's session-level
    SET ROLE comes back after it), so the ledger is always written by the connecting role."""
    session_user, current_user = conn.execute("SELECT session_user, current_user").fetchone()
    if session_user != conn.info.user:
        conn.execute("SET LOCAL SESSION AUTHORIZATION DEFAULT")
    if current_user != conn.info.user or session_user != conn.info.user:
        conn.execute("SET LOCAL ROLE NONE")


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
    return names.quoted(*parts, split=split)


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
    """Other sessions holding the advisory lock with these pg_locks keys in this database
    (a bigint key k: classid k >> 32, objid k & 0xffffffff, objsubid 1; two int keys: objsubid 2).
    An advisory lock is per database: the same key held in another database of the cluster blocks
    nobody here, and its holder is not named."""
    return sessions(conn, "a.pid <> pg_backend_pid() AND a.pid IN (SELECT l.pid FROM pg_locks l "
                          "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
                          "AND l.objsubid = %s AND l.database = (SELECT oid FROM pg_database "
                          "WHERE datname = current_database()))", (classid, objid, objsubid))


def lock_holders(conn: psycopg.Connection, table: str) -> list[Session]:
    """Other sessions holding a granted lock on `table` (after a lock wait timed out: who was in the way)."""
    return sessions(conn, "a.pid <> pg_backend_pid() AND a.pid IN (SELECT l.pid FROM pg_locks l "
                          "WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass(%s))",
                    (quoted(table),))


def other_sessions(conn: psycopg.Connection) -> list[Session]:
    """Every other session on the same database but autovacuum workers, whoever's: PostgreSQL shows a role
    without pg_read_all_stats another role's session with most columns NULL (backend_type included),
    so such a row counts as a session, hidden details and all, when it has a role. A row without one
    (`usesysid` NULL, which PostgreSQL shows every role) is a server process, not a client: an
    autovacuum worker busy with a freshly filled database is one."""
    return sessions(conn, "a.datname = current_database() AND a.pid <> pg_backend_pid() "
                          "AND (a.backend_type = 'client backend' "
                          "OR (a.backend_type IS NULL AND a.usesysid IS NOT NULL))")


def sees_all_sessions(conn: psycopg.Connection) -> bool:
    """Can this role read other roles' sessions in pg_stat_activity (superuser or pg_read_all_stats)?"""
    return bool(conn.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
                             "FROM pg_roles WHERE rolname = current_user").fetchone()[0])


def describe_blockers(found: list[Session]) -> str:
    """Every blocking session, `as_blocker`, or what it means that there was none."""
    if not found:
        return "a session that ended before it could be sampled"
    return "; ".join(s.as_blocker() for s in found)


def describe_sessions(found: list[Session]) -> str:
    """Every session, `as_session`, joined with '; ' ('' for none)."""
    return "; ".join(s.as_session() for s in found)
