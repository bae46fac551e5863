"""Roll a target back to a backup: restore.py's streamed restore, over a database that has moved on.

`pg_restore --clean` drops the backup's own objects before recreating them, in one
transaction. Two things a deployment made since the backup get in its way:

* a foreign key added since (Epic 5's `experiment_assignments_experimentId_fkey`)
  depends on a primary key the restore must drop, so the whole restore fails.
  Foreign keys touching the backup's tables are dropped first (the backup brings
  back its own); if the restore fails they are added back, so the target ends as it was;
* the audit trail (`schema_deploy.audit_events`), when the backup holds it, would
  be replaced by the backup's shorter chain. The rows recorded since are put back
  verbatim (same ids, hashes and times), so the chain still verifies and the
  rollback's own record follows them;
* the other tables of `schema_deploy` that the backup does not hold (the backfill
  checkpoints, `schema_deploy.backfills`) count work the restore undoes, and would
  make its `DROP SCHEMA` fail: they are set aside in a schema of their own for the
  restore, dropped after it, and put back if it fails.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from schema_deploy.audit import chain
from schema_deploy.backups.restore import RestoreResult, _refuse_production, check_source, load_backup, restore
from schema_deploy.pg import db
from schema_deploy.pg.tools import target_of

Log = Callable[[str], None]

FOREIGN_KEYS = """
    SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
    WHERE k.contype = 'f' AND n.nspname <> 'schema_deploy'
      AND (n.nspname || '.' || c.relname = ANY (%(tables)s) OR fn.nspname || '.' || f.relname = ANY (%(tables)s))
    ORDER BY 1, 2, 3
"""


@dataclass
class BackupRollback:
    """What a restore over the target did besides the restore itself."""

    restore: RestoreResult
    manifest: dict[str, Any] = field(repr=False)
    foreign_keys_dropped: list[str] = field(default_factory=list)
    audit_rows_kept: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.restore.as_dict(), "foreign_keys_dropped_first": self.foreign_keys_dropped,
                "audit_rows_put_back": self.audit_rows_kept, "manifest_sha256": self.manifest.get("sha256"),
                "manifest_row_counts": self.manifest.get("row_counts")}


def restore_over(s3: Any, uri: str, url: str, *, confirm_production: str | None, environment: str | None,
                 force: bool = False, log: Log = lambda _: None, pg_bindir: str | None = None,
                 allow_other_source: bool = False) -> BackupRollback:
    """Restore backup `uri` into the existing database `url` (clean), as described above. A backup
    of another environment or database than the target is refused unless `allow_other_source`."""
    # restore() checks these too; checked here first so a refused restore never touches a foreign key.
    target = target_of(url)
    _refuse_production(target, environment, confirm_production)
    _, _, manifest = load_backup(s3, uri)
    check_source(uri, manifest, environment, target.dbname, allow_other_source=allow_other_source)
    tables = sorted(manifest.get("row_counts") or {})
    with db.connect(url) as conn:
        kept = audit_rows(conn)
        dropped = drop_foreign_keys(conn, tables, log)
        aside = set_aside(conn, tables)
    try:
        result = restore(s3, uri, url, clean=True, force=force, confirm_production=confirm_production,
                         environment=environment, log=log, pg_bindir=pg_bindir,
                         allow_other_source=allow_other_source)
    except BaseException:
        with db.connect(url) as conn:
            if dropped:
                add_foreign_keys(conn, dropped, log)
            put_aside_back(conn, aside)
        raise
    with db.connect(url) as conn:
        put_back = put_back_audit_rows(conn, kept, log)
        if aside:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(ASIDE)))
            log(f"dropped {', '.join(f'schema_deploy.{t}' for t in aside)}, which the backup does not hold: the "
                "progress it kept (backfill checkpoints) was of work the restore undid")
    return BackupRollback(result, manifest, [f"{s}.{t}.{name}" for s, t, name, _ in dropped], put_back)


ASIDE = "schema_deploy_restore_aside"


def set_aside(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """Move the `schema_deploy` tables the backup does not hold, but the audit trail (put back row by row),
    into a schema of their own, in one transaction; returns their names."""
    found = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = "
        "'schema_deploy' AND c.relkind IN ('r', 'p') AND c.relname <> 'audit_events' ORDER BY 1").fetchall()]
    aside = [t for t in found if f"schema_deploy.{t}" not in tables]
    if aside:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ASIDE)))
            for table in aside:
                conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    db.ident("schema_deploy", table), sql.Identifier(ASIDE)))
    return aside


def put_aside_back(conn: psycopg.Connection, aside: list[str]) -> None:
    """After a failed restore: the tables `set_aside` moved go back where they were."""
    if not aside:
        return
    with conn.transaction():
        conn.execute("CREATE SCHEMA IF NOT EXISTS schema_deploy")
        for table in aside:
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA schema_deploy").format(db.ident(ASIDE, table)))
        conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(ASIDE)))


def drop_foreign_keys(conn: psycopg.Connection, tables: list[str], log: Log) -> list[tuple[str, str, str, str]]:
    """Drop, in one transaction, every foreign key from or to one of `tables`; returns their definitions."""
    fks = [tuple(r) for r in conn.execute(FOREIGN_KEYS, {"tables": tables}).fetchall()]
    if fks:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '5s'")
            for schema, table, name, _ in fks:
                conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    db.ident(schema, table), db.ident(name, split=False)))
        log(f"dropped {len(fks)} foreign key(s) first (the backup brings back its own): "
            + ", ".join(f"{t}.{n}" for _, t, n, _ in fks))
    return fks


def add_foreign_keys(conn: psycopg.Connection, fks: list[tuple[str, str, str, str]], log: Log) -> None:
    """Put foreign keys back after a failed restore (the target is otherwise unchanged)."""
    for schema, table, name, definition in fks:
        try:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} ").format(
                db.ident(schema, table), db.ident(name, split=False)) + sql.SQL(definition))
            log(f"restore failed: foreign key {table}.{name} added back")
        except psycopg.Error as exc:
            log(f"restore failed, and foreign key {table}.{name} could not be added back ({str(exc).strip()}): "
                f"add it by hand: ALTER TABLE {db.quoted(schema, table)} ADD CONSTRAINT {db.quoted(name, split=False)} "
                f"{definition}")


def audit_rows(conn: psycopg.Connection) -> list[chain.AuditRow]:
    if not db.relation_exists(conn, chain.QUALIFIED):
        return []
    return chain.read_rows(conn)


def put_back_audit_rows(conn: psycopg.Connection, before: list[chain.AuditRow], log: Log) -> int:
    """Re-insert, verbatim, the audit rows the restore took away (those after the backup's chain head)."""
    if not before:
        return 0
    after = audit_rows(conn)
    if not db.relation_exists(conn, chain.QUALIFIED):
        chain.ensure_table(conn)
    have = {r.id: r.row_hash for r in after}
    missing = [r for r in before if r.id not in have]
    if not missing:
        return 0
    with conn.transaction():
        for r in missing:
            conn.execute(
                f"INSERT INTO {chain.QUALIFIED} (id, recorded_at, kind, run_id, environment, payload, prev_hash, "
                "row_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (r.id, r.recorded_at, r.kind, r.run_id, r.environment, Jsonb(r.payload), r.prev_hash, r.row_hash))
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{chain.QUALIFIED}', 'id'), %s)",
                     (max(r.id for r in before),))
    log(f"audit trail: {len(missing)} row(s) recorded after the backup put back verbatim (ids "
        f"{missing[0].id}..{missing[-1].id}); the chain is unbroken")
    return len(missing)
