"""The audit trail: append-only, hash-chained rows in the target's `schema_deploy.audit_events`.

Every deploy and rollback records itself as one row. Each row carries

    row_hash = sha256_hex(prev_hash + canonical_json(content))

where `prev_hash` is the previous row's `row_hash` (64 zeros for the first
row), `content` is {kind, run_id, environment, recorded_at, payload},
`recorded_at` is ISO 8601 in UTC with microseconds (`2026-11-26T03:20:01.123456+00:00`)
and canonical JSON is `json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` of the payload *as jsonb returns it* (jsonb rewrites
numbers such as 1e+20, so the hash is taken over the stored form). The hex
strings are concatenated as text and hashed as UTF-8. Anyone can recompute it
from an export with these few lines (`check_rows` does).

What protects the rows:

* the trigger `audit_events_append_only` (BEFORE UPDATE OR DELETE OR TRUNCATE,
  enabled ALWAYS, so `session_replication_role = replica` does not skip it)
  refuses every change, whoever owns the table;
* UPDATE, DELETE and TRUNCATE are revoked from PUBLIC, from the creating role
  (the migrator usually owns the table it created, and owners hold every
  privilege until they revoke their own) and from `writer_role`;
* a superuser, or the owner on purpose, can still disable the trigger and
  re-grant itself the privileges. The chain is what catches that: an edited row
  no longer matches its row_hash, and a deleted row breaks the next row's
  prev_hash. Rows deleted from the *end* leave a shorter chain that still holds:
  compare the head with the newest audit document kept beside the backups in S3
  (`document`). Where the migrator must not be able to do even that, an admin
  creates the table (`ensure_table(admin_conn, writer_role="migrator")`): the
  migrator then holds only SELECT and INSERT and cannot ALTER the table.

Writers serialise on a transaction-level advisory lock, read the last hash and
insert under it, so concurrent appends never fork the chain.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from schema_deploy.audit.errors import (AuditError, AuditPayloadInvalid, AuditProtectionMissing, AuditReadRefused,
                                        AuditSetupFailed, AuditTableMissing, AuditWriteRefused)
from schema_deploy.redact import scrub

SCHEMA = "schema_deploy"
TABLE = "audit_events"
QUALIFIED = f"{SCHEMA}.{TABLE}"
TRIGGER = "audit_events_append_only"
GENESIS = "0" * 64
# pg_advisory_xact_lock key of audit writers: the first 8 bytes of sha256("schema_deploy.audit_events"),
# so it cannot meet Prisma's migration lock (72707369) or anyone's small integers.
LOCK_KEY = int.from_bytes(hashlib.sha256(QUALIFIED.encode()).digest()[:8], "big", signed=True)
DOCUMENT_FORMAT = "schema_deploy.audit/1"
COLUMNS = ("id", "recorded_at", "kind", "run_id", "environment", "payload", "prev_hash", "row_hash")

_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE {QUALIFIED} (
        id          bigserial PRIMARY KEY,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        kind        text NOT NULL,
        run_id      text,
        environment text,
        payload     jsonb NOT NULL,
        prev_hash   text NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{{64}}$'),
        row_hash    text NOT NULL CHECK (row_hash ~ '^[0-9a-f]{{64}}$')
    )""",
    f"COMMENT ON TABLE {QUALIFIED} IS 'Append-only, hash-chained record of schema deployments and rollbacks: "
    "row_hash = sha256(prev_hash || canonical JSON of kind, run_id, environment, recorded_at, payload). "
    "Check it with: python -m schema_deploy audit verify --db URL'",
    f"""CREATE OR REPLACE FUNCTION {SCHEMA}.audit_events_refuse_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '{QUALIFIED} is append-only: % refused', TG_OP
                USING HINT = 'Audit rows are never changed or removed; record a correction as a new row.';
        END
        $$""",
    f"""CREATE TRIGGER {TRIGGER} BEFORE UPDATE OR DELETE OR TRUNCATE ON {QUALIFIED}
        FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.audit_events_refuse_change()""",
    # ALWAYS: also fires under session_replication_role = replica.
    f"ALTER TABLE {QUALIFIED} ENABLE ALWAYS TRIGGER {TRIGGER}",
    f"REVOKE UPDATE, DELETE, TRUNCATE ON {QUALIFIED} FROM PUBLIC, CURRENT_USER",
]


# --- rows and their hashes (pure) ----------------------------------------------

def iso_utc(moment: datetime) -> str:
    """`recorded_at` as hashed and exported: ISO 8601, UTC, microseconds."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def canonical_json(kind: str, run_id: str | None, environment: str | None, recorded_at: datetime,
                   payload: Any) -> str:
    """The canonical JSON text of a row's content, the part its row_hash covers."""
    content = {"kind": kind, "run_id": run_id, "environment": environment,
               "recorded_at": iso_utc(recorded_at), "payload": payload}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    """sha256 hex of prev_hash ‖ canonical JSON (both as UTF-8 text)."""
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRow:
    """One row of `schema_deploy.audit_events`."""

    id: int
    recorded_at: datetime
    kind: str
    run_id: str | None
    environment: str | None
    payload: Any
    prev_hash: str
    row_hash: str

    def canonical(self) -> str:
        return canonical_json(self.kind, self.run_id, self.environment, self.recorded_at, self.payload)

    def computed_hash(self) -> str:
        """What row_hash should be, given this row's prev_hash and content."""
        return chain_hash(self.prev_hash or "", self.canonical())

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "recorded_at": iso_utc(self.recorded_at), "kind": self.kind, "run_id": self.run_id,
                "environment": self.environment, "payload": self.payload, "prev_hash": self.prev_hash,
                "row_hash": self.row_hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRow:
        """A row from `as_dict` (an export or an audit document), to check it offline with `check_rows`."""
        return cls(int(data["id"]), datetime.fromisoformat(data["recorded_at"]), data["kind"], data["run_id"],
                   data["environment"], data["payload"], data["prev_hash"], data["row_hash"])


@dataclass(frozen=True)
class BrokenRow:
    """The first row whose chain does not hold, and what differs."""

    id: int
    recorded_at: datetime
    kind: str
    run_id: str | None
    problems: list[str]
    prev_hash: str
    expected_prev_hash: str
    row_hash: str
    computed_row_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "recorded_at": iso_utc(self.recorded_at)}


@dataclass(frozen=True)
class ChainReport:
    """The result of walking the chain in id order: ok, or the first row that breaks it."""

    ok: bool
    count: int  # rows that hold, before the broken one if any
    first_id: int | None = None
    last_id: int | None = None
    last_recorded_at: datetime | None = None
    head: str = GENESIS  # row_hash of the last row that holds
    broken: BrokenRow | None = None
    where: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows_checked": self.count, "first_id": self.first_id, "last_id": self.last_id,
                "last_recorded_at": iso_utc(self.last_recorded_at) if self.last_recorded_at else None,
                "head": self.head, "broken": self.broken.as_dict() if self.broken else None, "where": self.where}

    @property
    def message(self) -> str:
        where = f" in {self.where}" if self.where else ""
        if self.broken:
            b = self.broken
            held = ("no row before it" if not self.count else f"row {self.first_id} before it holds"
                    if self.count == 1 else f"rows {self.first_id}–{self.last_id} before it hold")
            return (f"audit chain broken at row {b.id} (recorded {iso_utc(b.recorded_at)}, {b.kind} of run "
                    f"{b.run_id!r}){where}: {'; '.join(b.problems)}. {held.capitalize()}. Compare row {b.id} "
                    "with that run's audit document kept beside its backup in S3 to see what was changed; "
                    f"only a superuser or the table's owner can disable the trigger {TRIGGER}, and the server "
                    "log shows who did.")
        if not self.count:
            return f"audit chain ok{where}: no rows yet"
        return (f"audit chain ok{where}: {self.count} rows (ids {self.first_id}–{self.last_id}, last recorded "
                f"{iso_utc(self.last_recorded_at)}), head {self.head}. Rows removed from the end cannot show in "
                "the chain: compare the head with the newest audit document in S3.")


def _missing(after: int, before: int) -> str:
    if before - after == 2:
        return f"row {after + 1} is missing"
    return f"rows {after + 1}–{before - 1} are missing"


def _link_problem(previous: AuditRow | None, row: AuditRow) -> str:
    if previous is None:
        return ("prev_hash is not 64 zeros although this is the first row — the rows before it were deleted"
                + (f" (ids below {row.id} are absent)" if row.id > 1 else ""))
    if row.id - previous.id > 1:
        return (f"prev_hash does not match the row_hash of row {previous.id}, the row before it — "
                f"{_missing(previous.id, row.id)}: deleted after it was written")
    return (f"prev_hash does not match the row_hash of row {previous.id}, the row before it — one of the two "
            "hashes was rewritten (an edit covered up by re-hashing), or rows were deleted and re-inserted")


def check_rows(rows: Iterable[AuditRow], where: str = "") -> ChainReport:
    """Walk rows in id order; stop at the first whose prev_hash or row_hash does not hold."""
    expected_prev, previous, count, first_id = GENESIS, None, 0, None
    for row in rows:
        problems = []
        if row.prev_hash != expected_prev:
            problems.append(_link_problem(previous, row))
        computed = row.computed_hash()
        if row.row_hash != computed:
            problems.append("row_hash does not match its content — the row was edited after it was written")
        if problems:
            broken = BrokenRow(row.id, row.recorded_at, row.kind, row.run_id, problems, row.prev_hash,
                               expected_prev, row.row_hash, computed)
            return ChainReport(False, count, first_id, previous.id if previous else None,
                               previous.recorded_at if previous else None, expected_prev, broken, where)
        expected_prev, previous, count = row.row_hash, row, count + 1
        first_id = row.id if first_id is None else first_id
    return ChainReport(True, count, first_id, previous.id if previous else None,
                       previous.recorded_at if previous else None, expected_prev, None, where)


def document(rows: Iterable[AuditRow]) -> tuple[bytes, str]:
    """A self-describing JSON document of `rows` to keep beside a backup, and its sha256 hex.

    The same rows always give the same bytes (sorted keys, no generation time), so
    the sha256 identifies the record.
    """
    rows = list(rows)
    body = {
        "format": DOCUMENT_FORMAT,
        "table": QUALIFIED,
        "hashing": "row_hash = sha256_hex(prev_hash + canonical_json({kind, run_id, environment, recorded_at, "
                   "payload})); canonical_json = json.dumps(sort_keys=True, separators=(',', ':'), "
                   "ensure_ascii=False); recorded_at = ISO 8601 UTC with microseconds; the first row's "
                   "prev_hash is 64 zeros",
        "count": len(rows),
        "first_id": rows[0].id if rows else None,
        "last_id": rows[-1].id if rows else None,
        "head": rows[-1].row_hash if rows else None,
        "rows": [r.as_dict() for r in rows],
    }
    data = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"
    return data, hashlib.sha256(data).hexdigest()


# --- the table ------------------------------------------------------------------

def _pg_message(exc: psycopg.Error) -> str:
    """PostgreSQL's message and detail on one line, without the CONTEXT that echoes our parameters."""
    primary = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    return f"{primary} ({exc.diag.message_detail.strip()})" if exc.diag.message_detail else primary


def where(conn: psycopg.Connection) -> str:
    """`database 'x' on host:port`, for messages."""
    return f"database {conn.info.dbname!r} on {conn.info.host}:{conn.info.port}"


def _append_refused(conn: psycopg.Connection, exc: psycopg.Error) -> AuditError:
    """Why this role may not append: it may not create a trail that is missing, or, when an admin
    created it without making the role a writer, may not write to it."""
    if _table_exists(conn):
        return AuditWriteRefused(where(conn), conn.info.user, _pg_message(exc))
    return AuditSetupFailed(where(conn), conn.info.user, _pg_message(exc))


def _table_exists(conn: psycopg.Connection) -> bool:
    """Whether the audit table exists, read from the catalog (which any role may read, unlike the schema)."""
    return conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s)",
                        (SCHEMA, TABLE)).fetchone()[0]


def _protection(conn: psycopg.Connection) -> tuple[bool, str | None]:
    """(table exists, tgenabled of the append-only trigger or None when it has none)."""
    exists, enabled = conn.execute(
        "SELECT c.oid IS NOT NULL, t.tgenabled FROM (SELECT to_regclass(%s) AS oid) c "
        "LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = %s", (QUALIFIED, TRIGGER)).fetchone()
    return bool(exists), enabled


def _grant_writer(conn: psycopg.Connection, role: str) -> None:
    r = sql.Identifier(role)
    for statement in (f"GRANT USAGE ON SCHEMA {SCHEMA} TO {{r}}",
                      f"GRANT SELECT, INSERT ON {QUALIFIED} TO {{r}}",
                      f"GRANT USAGE ON SEQUENCE {QUALIFIED}_id_seq TO {{r}}",
                      f"REVOKE UPDATE, DELETE, TRUNCATE ON {QUALIFIED} FROM {{r}}"):
        conn.execute(sql.SQL(statement).format(r=r))


def _ensure_locked(conn: psycopg.Connection, writer_role: str | None) -> None:
    """ensure_table's work; the caller holds the audit lock in a transaction."""
    exists, enabled = _protection(conn)
    if not exists:
        for statement in _DDL:
            conn.execute(statement)
    elif enabled not in ("O", "A"):  # 'D' disabled, 'R' fires only under replication
        raise AuditProtectionMissing(where(conn), "does not exist" if enabled is None else "is disabled")
    if writer_role:
        _grant_writer(conn, writer_role)


def ensure_table(conn: psycopg.Connection, writer_role: str | None = None) -> None:
    """Create the schema, the append-only table and its trigger when missing; idempotent.

    With `writer_role` (run as an admin that will own the table), that role gets SELECT and
    INSERT only. Raises AuditProtectionMissing when the table exists but its trigger was
    dropped or disabled: a trail that can be edited is not written to.
    """
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            _ensure_locked(conn, writer_role)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AuditSetupFailed(where(conn), conn.info.user, _pg_message(exc)) from None


def _json_default(value: object) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _scrubbed(value: Any) -> Any:
    """The payload with passwords masked in every string: the trail outlives every credential."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    return value


def _payload_text(kind: str, run_id: str | None, payload: Mapping[str, Any]) -> str:
    if not isinstance(kind, str) or not kind:
        raise AuditPayloadInvalid(str(kind), run_id, "kind must be a non-empty string such as 'deploy' or 'rollback'")
    if not isinstance(payload, Mapping):
        raise AuditPayloadInvalid(kind, run_id, f"the payload is a {type(payload).__name__}, not a JSON object")
    try:
        text = json.dumps(payload, default=_json_default, allow_nan=False, ensure_ascii=False)
    except ValueError as exc:  # NaN or Infinity, which jsonb cannot hold
        raise AuditPayloadInvalid(kind, run_id, str(exc)) from None
    return json.dumps(_scrubbed(json.loads(text)), ensure_ascii=False)


def append(conn: psycopg.Connection, kind: str, run_id: str | None, environment: str | None,
           payload: Mapping[str, Any]) -> AuditRow:
    """Append one record to the chain and return it (creating the table on first use).

    On an autocommit connection (as `db.connect` opens them) the row is committed when
    this returns. Dates in the payload become ISO strings, other non-JSON values their str(),
    and passwords in strings are masked (`errors.scrub`).
    """
    text = _payload_text(kind, run_id, payload)
    own_transaction = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        with conn.transaction():
            if own_transaction:  # whatever the role's default_transaction_isolation says
                conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            _ensure_locked(conn, None)
            isolation, last, recorded_at, stored = conn.execute(
                f"SELECT current_setting('transaction_isolation'), "
                f"(SELECT row_hash FROM {QUALIFIED} ORDER BY id DESC LIMIT 1), clock_timestamp(), %s::jsonb",
                (text,)).fetchone()
            if isolation != "read committed":
                # The snapshot predates the lock: the last row another writer just added may be invisible.
                raise AuditError(f"cannot append to the audit trail in {where(conn)} inside a {isolation} "
                                 "transaction: its snapshot may miss a row another writer just appended and fork "
                                 "the chain. Append on an autocommit connection or in a READ COMMITTED transaction.")
            prev = last or GENESIS
            # Hash the payload as jsonb stores it, so that verify, reading it back, gets the same text.
            digest = chain_hash(prev, canonical_json(kind, run_id, environment, recorded_at, stored))
            row_id = conn.execute(
                f"INSERT INTO {QUALIFIED} (recorded_at, kind, run_id, environment, payload, prev_hash, row_hash) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (recorded_at, kind, run_id, environment, Jsonb(stored), prev, digest)).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege as exc:
        raise _append_refused(conn, exc) from None
    except psycopg.DataError as exc:
        raise AuditPayloadInvalid(kind, run_id, f"PostgreSQL refused it as jsonb: {_pg_message(exc)}") from None
    return AuditRow(row_id, recorded_at, kind, run_id, environment, stored, prev, digest)


# --- reading -------------------------------------------------------------------------

def _require_table(conn: psycopg.Connection) -> None:
    if not _protection(conn)[0]:
        raise AuditTableMissing(where(conn))


def _select(since: datetime | None) -> tuple[str, tuple]:
    query = f"SELECT {', '.join(COLUMNS)} FROM {QUALIFIED}"
    if since is None:
        return query + " ORDER BY id", ()
    if since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    return query + " WHERE recorded_at >= %s ORDER BY id", (since,)


@contextmanager
def _reading(conn: psycopg.Connection) -> Iterator[None]:
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise AuditReadRefused(where(conn), conn.info.user, _pg_message(exc)) from None


def read_rows(conn: psycopg.Connection, since: datetime | None = None) -> list[AuditRow]:
    """Rows recorded at or after `since` (naive means UTC), in id order."""
    query, params = _select(since)
    with _reading(conn):
        _require_table(conn)
        return [AuditRow(*r) for r in conn.execute(query, params).fetchall()]


def verify_chain(conn: psycopg.Connection) -> ChainReport:
    """Walk the whole chain in id order (streamed, one snapshot) and report the first broken row."""
    query, _ = _select(None)
    with _reading(conn):
        _require_table(conn)
        with conn.transaction(), conn.cursor(name="schema_deploy_audit_verify") as cur:
            cur.itersize = 2000
            cur.execute(query)
            return check_rows((AuditRow(*r) for r in cur), where(conn))


def export(conn: psycopg.Connection, since: datetime | None = None, fmt: str = "json") -> str:
    """Rows recorded at or after `since` as a JSON array or CSV (payload as canonical JSON), with hashes."""
    if fmt not in ("json", "csv"):
        raise AuditError(f"export format {fmt!r} is not supported; use 'json' or 'csv'.")
    rows = read_rows(conn, since)
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2, ensure_ascii=False) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        d = r.as_dict()
        d["payload"] = json.dumps(r.payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        writer.writerow(["" if d[c] is None else d[c] for c in COLUMNS])
    return out.getvalue()
