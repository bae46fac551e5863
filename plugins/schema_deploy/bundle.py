"""Discover a migration bundle: Prisma's folder layout or a folder of `.sql` files.

Prisma layout::

    migrations/migration_lock.toml              provider = "postgresql"
    migrations/20251017120000_epic5/migration.sql
    migrations/20251017120000_epic5/down.sql     optional, for rollbacks

Plain layout::

    migrations/20251017120000_epic5.sql

Migrations are ordered by name (the 14-digit timestamp first). The checksum is
the sha256 of the file's raw bytes, as Prisma stores it in `_prisma_migrations`.
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from schema_deploy.errors import BundleError

NAME_RE = re.compile(r"^(?P<ts>\d{14})_(?P<label>[A-Za-z0-9][A-Za-z0-9_.-]*)$")
LOCK_FILE = "migration_lock.toml"


@dataclass(frozen=True)
class Migration:
    """One migration: its name (the ledger's `migration_name`), file and bytes."""

    name: str
    path: Path
    raw: bytes
    down_path: Path | None = None
    down_raw: bytes | None = None  # read with the migration, so a release can carry it frozen

    @property
    def timestamp(self) -> str:
        return self.name[:14]

    @property
    def checksum(self) -> str:
        return sha256_hex(self.raw)

    @property
    def sql(self) -> str:
        return self.raw.decode("utf-8")


@dataclass(frozen=True)
class Bundle:
    """An ordered set of migrations read from one folder."""

    root: Path
    layout: str  # "prisma" | "plain"
    migrations: tuple[Migration, ...]

    def by_name(self) -> dict[str, Migration]:
        return {m.name: m for m in self.migrations}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_matches(stored: str, raw: bytes) -> bool:
    """Does a ledger checksum match this file, allowing Prisma's line-ending variants?

    Like Prisma (prisma-engines `checksum.rs`), accepts the hash of the raw
    bytes, of the bytes with CRLF turned into LF, and of the bytes with LF
    turned into CRLF (git may have changed line endings). A stored checksum
    that is not 64 characters long was written by an old Prisma that dropped
    each byte's leading zero (prisma-engines#1887), and is compared that way.
    Anything else, even a comment or a trailing newline, is an edit.
    """
    stored = stored.lower()
    for variant in (raw, raw.replace(b"\r\n", b"\n"), raw.replace(b"\n", b"\r\n")):
        digest = hashlib.sha256(variant).digest()
        if stored == (digest.hex() if len(stored) == 64 else "".join(f"{b:x}" for b in digest)):
            return True
    return False


def load_bundle(root: Path | str) -> Bundle:
    """Read every migration under `root`, validating names, encoding and content."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(root, "migrations folder not found",
                          "Pass the folder that holds your migrations with --migrations DIR.")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix == ".sql")
    if dirs and files:
        raise BundleError(root, "mixes migration folders and loose .sql files",
                          "Use one layout: Prisma's <timestamp>_<name>/migration.sql folders, "
                          "or <timestamp>_<name>.sql files, not both.")
    if dirs or (root / LOCK_FILE).exists():
        check_lock_file(root)
        migrations = [read_prisma_migration(d) for d in dirs]
        layout = "prisma"
    else:
        migrations = [read_plain_migration(f) for f in files]
        layout = "plain"
    if not migrations:
        raise BundleError(root, "no migrations found",
                          "Add <YYYYMMDDHHMMSS>_<name>/migration.sql folders (Prisma layout) "
                          "or <YYYYMMDDHHMMSS>_<name>.sql files.")
    check_unique_timestamps(migrations)
    return Bundle(root=root, layout=layout, migrations=tuple(migrations))


def check_lock_file(root: Path) -> None:
    """Prisma's migration_lock.toml, when present, must name PostgreSQL."""
    lock = root / LOCK_FILE
    if not lock.exists():
        return
    try:
        provider = tomllib.loads(read_text(lock)).get("provider")
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(lock, f"not valid TOML ({exc})", 'It should contain one line: provider = "postgresql".')
    if provider != "postgresql":
        raise BundleError(lock, f"provider is {provider!r}, not 'postgresql'",
                          'This tool deploys to PostgreSQL only; set provider = "postgresql" '
                          "if these migrations were written for PostgreSQL.")


def check_name(path: Path, name: str) -> None:
    if not NAME_RE.match(name):
        raise BundleError(path, f"{name!r} is not a migration name",
                          "Name it <YYYYMMDDHHMMSS>_<name> (14 digits, an underscore, then letters, "
                          "digits, '_', '-' or '.'), e.g. 20251017120000_epic5_schema_completion.")


def read_prisma_migration(folder: Path) -> Migration:
    check_name(folder, folder.name)
    sql = folder / "migration.sql"
    if not sql.exists():
        raise BundleError(sql, "missing",
                          "Every migration folder needs a migration.sql; remove the empty folder "
                          "or add the file.")
    down = folder / "down.sql"
    has_down = down.is_file()
    return Migration(name=folder.name, path=sql, raw=read_sql_bytes(sql),
                     down_path=down if has_down else None, down_raw=read_sql_bytes(down) if has_down else None)


def read_plain_migration(path: Path) -> Migration:
    check_name(path, path.stem)
    return Migration(name=path.stem, path=path, raw=read_sql_bytes(path))


def read_sql_bytes(path: Path) -> bytes:
    """The file's bytes, which must be non-empty UTF-8 SQL."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(path, f"cannot be read ({exc.strerror})",
                          "Make it a regular file that the user running the deployment can read "
                          "(check its permissions).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BundleError(f"{path}:{line}", f"byte 0x{raw[exc.start]:02x} at offset {exc.start} is not UTF-8",
                          "Save the file as UTF-8 (PostgreSQL and Prisma read migrations as UTF-8).")
    if not text.strip():
        raise BundleError(path, "is empty", "Write the migration's SQL into it, or delete the migration.")
    if text.startswith("\ufeff"):
        raise BundleError(path, "starts with a byte-order mark (EF BB BF), which PostgreSQL would read as part "
                                "of the first word", "Save the file as UTF-8 without BOM.")
    return raw


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"cannot be read ({exc})", "Make it a readable UTF-8 file.")


def check_unique_timestamps(migrations: list[Migration]) -> None:
    seen: dict[str, Migration] = {}
    for m in migrations:
        other = seen.get(m.timestamp)
        if other is not None:
            raise BundleError(m.path.parent if m.path.name == "migration.sql" else m.path,
                              f"has the same timestamp {m.timestamp} as {other.name}",
                              "Give each migration its own timestamp so their order is unambiguous; "
                              "rename the newer one.")
        seen[m.timestamp] = m
