"""Compare a bundle with a database's ledger: what is applied, pending, failed or drifted."""
from __future__ import annotations

from dataclasses import dataclass, field

from schema_deploy.bundle.discover import Bundle, Migration, checksum_matches
from schema_deploy.state.ledger import LedgerRow

APPLIED, PENDING, FAILED, INTERRUPTED, EDITED, MISSING = (
    "applied", "pending", "failed", "interrupted", "edited-after-apply", "missing-from-bundle")


@dataclass(frozen=True)
class MigrationState:
    """One migration's state against one database."""

    name: str
    state: str
    checksum: str | None = None  # the file's
    ledger_checksum: str | None = None
    applied_at: str | None = None
    applied_steps: int = 0
    logs: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Status:
    """A bundle against a ledger."""

    states: list[MigrationState] = field(default_factory=list)

    def names(self, *states: str) -> list[str]:
        return [s.name for s in self.states if s.state in states]

    @property
    def pending(self) -> list[str]:
        return self.names(PENDING)

    @property
    def failed(self) -> list[MigrationState]:
        return [s for s in self.states if s.state == FAILED]

    @property
    def drift(self) -> list[MigrationState]:
        return [s for s in self.states if s.state in (EDITED, MISSING)]

    @property
    def clean(self) -> bool:
        return all(s.state == APPLIED for s in self.states)

    def as_dict(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for s in self.states:
            counts[s.state] = counts.get(s.state, 0) + 1
        return {"clean": self.clean, "counts": counts, "migrations": [s.as_dict() for s in self.states]}


def compute_status(bundle: Bundle, rows: list[LedgerRow]) -> Status:
    """Classify every migration of the bundle, plus ledger rows with no file."""
    by_name: dict[str, list[LedgerRow]] = {}
    for row in rows:
        by_name.setdefault(row.migration_name, []).append(row)
    status = Status()
    for m in bundle.migrations:
        status.states.append(state_of(m, by_name.get(m.name, [])))
    known = {m.name for m in bundle.migrations}
    for name, name_rows in by_name.items():
        applied = [r for r in name_rows if r.applied]
        if name not in known and applied:
            last = applied[-1]
            status.states.append(MigrationState(name=name, state=MISSING, ledger_checksum=last.checksum,
                                                applied_at=iso(last.finished_at)))
    return status


def state_of(m: Migration, rows: list[LedgerRow]) -> MigrationState:
    """Prisma's reading of a migration's rows, plus our edited-after-apply check."""
    failed = [r for r in rows if r.failed]
    if failed:
        row = failed[-1]
        state = INTERRUPTED if row.resumable else FAILED
        return MigrationState(name=m.name, state=state, checksum=m.checksum, ledger_checksum=row.checksum,
                              applied_steps=row.applied_steps_count, logs=row.logs)
    applied = [r for r in rows if r.applied]
    if not applied:
        return MigrationState(name=m.name, state=PENDING, checksum=m.checksum)
    row = applied[-1]
    state = APPLIED if checksum_matches(row.checksum, m.raw) else EDITED
    return MigrationState(name=m.name, state=state, checksum=m.checksum, ledger_checksum=row.checksum,
                          applied_at=iso(row.finished_at), applied_steps=row.applied_steps_count)


def iso(value: object) -> str | None:
    return value.isoformat() if value is not None else None
