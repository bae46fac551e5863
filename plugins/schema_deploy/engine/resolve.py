"""`resolve`: mark a migration applied or rolled back, with Prisma's semantics and refusals."""
from __future__ import annotations

from schema_deploy.bundle.discover import Bundle
from schema_deploy.engine.errors import ResolveRefused
from schema_deploy.pg.db import connect
from schema_deploy.pg.retry import Settings
from schema_deploy.state import ledger


def resolve_rolled_back(url: str, bundle: Bundle, name: str, settings: Settings = Settings()) -> int:
    """Set `rolled_back_at` on the failed rows of `name` (Prisma: `migrate resolve --rolled-back`).

    Refused when the migration was never applied (Prisma's P3011) or is not in a
    failed state (P3012). Returns the number of rows marked.
    """
    require_in_bundle(bundle, name)
    with connect(url) as conn, ledger.migration_lock(conn, settings.advisory_lock_timeout_s):
        rows = [r for r in ledger.read_rows(conn, settings.schema) if r.migration_name == name]
        if not rows:
            raise ResolveRefused(
                f"cannot mark {name} as rolled back: it was never applied to the database (Prisma P3011). "
                "Only a failed migration can be resolved as rolled back; check `status`."
            )
        if not any(r.failed for r in rows):
            state = "applied" if any(r.applied for r in rows) else "already rolled back"
            raise ResolveRefused(
                f"cannot mark {name} as rolled back: it is not in a failed state ({state}). "
                "Only a failed migration can be resolved as rolled back (Prisma P3012)."
            )
        return ledger.mark_rolled_back(conn, name, settings.schema)


def resolve_applied(url: str, bundle: Bundle, name: str, settings: Settings = Settings()) -> None:
    """Record `name` as applied without running it (Prisma: `migrate resolve --applied`).

    Failed rows of it are marked rolled back first. Creates the ledger when it is
    missing (baselining an existing database). Refused when already applied (P3008).
    """
    migration = require_in_bundle(bundle, name)
    with connect(url) as conn, ledger.migration_lock(conn, settings.advisory_lock_timeout_s):
        ledger.ensure_ledger(conn, settings.schema)
        rows = [r for r in ledger.read_rows(conn, settings.schema) if r.migration_name == name]
        if any(r.applied for r in rows):
            raise ResolveRefused(f"cannot mark {name} as applied: it is already recorded as applied (Prisma P3008).")
        with conn.transaction():
            ledger.mark_rolled_back(conn, name, settings.schema)
            ledger.insert_applied(conn, name, migration.checksum, settings.schema)


def require_in_bundle(bundle: Bundle, name: str):
    migration = bundle.by_name().get(name)
    if migration is None:
        known = ", ".join(m.name for m in bundle.migrations[-5:])
        raise ResolveRefused(
            f"migration {name} is not in {bundle.root} (Prisma P3017). Use the folder name exactly; "
            f"the latest ones are: {known}."
        )
    return migration
