"""Discover a migration bundle: Prisma's folder layout or a folder of `.sql` files.

Prisma layout::

    migrations/migration_lock.toml              provider = "postgresql"
    migrations/20251017120000_epic5/migration.sql
    migrations/20251017120000_epic5/down.sql     optional, for rollbacks

Plain layout::

    migrations/20251017120000_epic5.sql

Migrations are ordered by name (the 14-digit timestamp first). The checksum is
the sha256 of the file's raw bytes, as Prisma stores it in `_prisma_migrations`.

What is wrong with one migration's file (not UTF-8, a byte-order mark, empty, a
symbolic link out of the bundle's folder) is recorded on that migration as its
`problem`, not raised while reading: whether it stops a run depends on whether
the run deploys that migration (see `plan/planner.py`). What is wrong with the folder
as a whole (missing, mixed layouts, two migrations with one timestamp, a name
that does not sort) is raised at once.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from schema_deploy.bundle.errors import BundleError, MigrationFileError, NotUtf8, SymlinkOutsideBundle

if TYPE_CHECKING:
    from schema_deploy.config.settings import DeployConfig

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
    backfill_raw: bytes | None = None  # its backfill.yaml (schema_deploy.backfill), frozen the same way
    problem: MigrationFileError | None = field(default=None, compare=False)  # why it cannot be deployed

    @property
    def timestamp(self) -> str:
        return self.name[:14]

    @property
    def checksum(self) -> str:
        return sha256_hex(self.raw)

    @property
    def sql(self) -> str:
        """The file's text; NotUtf8 (with line and column) when its bytes are not UTF-8."""
        return decode(self.path, self.raw)

    @property
    def backfill_path(self) -> Path:
        return self.path.with_name("backfill.yaml")


@dataclass(frozen=True)
class Bundle:
    """An ordered set of migrations read from one folder."""

    root: Path
    layout: str  # "prisma" | "plain"
    migrations: tuple[Migration, ...]
    symlinks: tuple[tuple[str, str], ...] = ()  # (path in the bundle, where it resolves) of allowed links

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


def load_bundle(root: Path | str, *, allow_symlinks: bool = False, name: str | None = None) -> Bundle:
    """Read every migration under `root`, validating names and the folder's shape; what is wrong with
    one file is recorded on its migration (`Migration.problem`). `allow_symlinks`: symbolic links that
    resolve outside `root` are followed (and listed in `Bundle.symlinks`); otherwise each is a problem.
    `name`: the declared bundle's name, for messages."""
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
    links = Links(root, root.resolve(), allow_symlinks, name)
    if dirs or (root / LOCK_FILE).exists():
        check_lock_file(root)
        migrations = [read_prisma_migration(d, links) for d in dirs]
        layout = "prisma"
    else:
        migrations = [read_plain_migration(f, links) for f in files]
        layout = "plain"
    if not migrations:
        raise BundleError(root, "no migrations found",
                          "Add <YYYYMMDDHHMMSS>_<name>/migration.sql folders (Prisma layout) "
                          "or <YYYYMMDDHHMMSS>_<name>.sql files.")
    check_unique_timestamps(migrations)
    return Bundle(root=root, layout=layout, migrations=tuple(migrations), symlinks=tuple(links.followed))


@dataclass
class Links:
    """Where the bundle's folder really is, whether links out of it are allowed, and those followed."""

    root: Path
    real_root: Path
    allowed: bool
    bundle: str | None
    followed: list[tuple[str, str]] = field(default_factory=list)

    def outside(self, path: Path) -> MigrationFileError | None:
        """A problem when `path` (or a folder on its way from the root) resolves outside the bundle."""
        real = path.resolve()
        if real == self.real_root or real.is_relative_to(self.real_root):
            return None
        if self.allowed:
            if path.is_symlink():
                self.followed.append((str(path.relative_to(self.root)), str(real)))
            return None
        return SymlinkOutsideBundle(path, real, self.bundle)


def check_lock_file(root: Path) -> None:
    """Prisma's migration_lock.toml, when present, must name PostgreSQL."""
    import tomllib  # here, not at the top: reading the lock file is the only use

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


def read_prisma_migration(folder: Path, links: Links) -> Migration:
    check_name(folder, folder.name)
    sql = folder / "migration.sql"
    if not sql.exists():
        raise BundleError(sql, "missing",
                          "Every migration folder needs a migration.sql; remove the empty folder "
                          "or add the file.")
    down, backfill = folder / "down.sql", folder / "backfill.yaml"
    has_down, has_backfill = down.is_file(), backfill.is_file()
    raw = read_sql_bytes(sql)
    problem = links.outside(folder) or links.outside(sql) or (links.outside(down) if has_down else None) \
        or (links.outside(backfill) if has_backfill else None) or content_problem(sql, raw)
    return Migration(name=folder.name, path=sql, raw=raw, down_path=down if has_down else None,
                     down_raw=read_sql_bytes(down) if has_down else None,
                     backfill_raw=read_sql_bytes(backfill) if has_backfill else None, problem=problem)


def read_plain_migration(path: Path, links: Links) -> Migration:
    check_name(path, path.stem)
    raw = read_sql_bytes(path)
    return Migration(name=path.stem, path=path, raw=raw, problem=links.outside(path) or content_problem(path, raw))


def read_sql_bytes(path: Path) -> bytes:
    """The file's bytes."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(path, f"cannot be read ({exc.strerror})",
                          "Make it a regular file that the user running the deployment can read "
                          "(check its permissions).")


def decode(path: Path, raw: bytes) -> str:
    """`raw` as UTF-8 text, or NotUtf8 naming the line, the column and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        column = len(raw[line_start:exc.start].decode("utf-8", "replace")) + 1
        raise NotUtf8(path, line, column, f"byte 0x{raw[exc.start]:02x} (file offset {exc.start}) is not UTF-8",
                      "Save the file as UTF-8 (PostgreSQL and Prisma read migrations as UTF-8)") from None


def content_problem(path: Path, raw: bytes) -> MigrationFileError | None:
    """What keeps a file's bytes from being a migration's SQL: not UTF-8, empty, a byte-order mark."""
    try:
        text = decode(path, raw)
    except NotUtf8 as exc:
        return exc
    if not text.strip():
        return MigrationFileError(path, None, None, "is empty",
                                  "Write the migration's SQL into it, or delete the migration", code="empty-file")
    if text.startswith("\ufeff"):
        return MigrationFileError(path, 1, 1, "starts with a byte-order mark (EF BB BF), which PostgreSQL would "
                                  "read as part of the first word", "Save the file as UTF-8 without BOM",
                                  code="byte-order-mark")
    return None


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


def load_declared(cfg: DeployConfig, name: str | None) -> Bundle:
    """The bundle deploy.yaml declares under `name` (its default when empty), read from its folder;
    links out of the folder are allowed only where declared (`allow_symlinks: true`)."""
    name = (name or "").strip() or cfg.default_bundle
    return load_bundle(cfg.bundle_path(name), allow_symlinks=name in cfg.symlink_bundles, name=name)
