"""Bundle discovery: both layouts, every error (with its path and fix), and Prisma's checksum."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from schema_deploy.bundle.discover import checksum_matches, load_bundle, sha256_hex
from schema_deploy.bundle.errors import BundleError, MigrationFileError, NotUtf8
from schema_deploy.bundle.parse import parse_migration

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
LOCK_TOML = 'provider = "postgresql"\n'


def prisma_bundle(root: Path, migrations: dict[str, bytes | str], lock: str | None = LOCK_TOML) -> Path:
    """Write a Prisma-layout folder: <name>/migration.sql for each entry."""
    root.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        (root / "migration_lock.toml").write_text(lock)
    for name, sql in migrations.items():
        (root / name).mkdir()
        data = sql.encode() if isinstance(sql, str) else sql
        (root / name / "migration.sql").write_bytes(data)
    return root


def error_of(root: Path) -> BundleError:
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    return info.value


# --- the committed bundle and both layouts -------------------------------------------

def test_committed_bundle_loads_in_prisma_layout_in_timestamp_order() -> None:
    bundle = load_bundle(MIGRATIONS)
    assert bundle.layout == "prisma"
    assert [m.name for m in bundle.migrations] == [
        "20250915090000_baseline", "20251017120000_epic5_schema_completion", "20251103090000_event_date_expand",
        "20251103090100_event_date_contract"]
    assert all(m.path.name == "migration.sql" for m in bundle.migrations)
    # Every migration after the baseline has a down migration (for rollback_schema); never part of the checksum.
    assert [m.down_path.name if m.down_path else None for m in bundle.migrations] == [None, *["down.sql"] * 3]
    # The expand migration carries its backfill, which Prisma ignores; the checksum is migration.sql's alone.
    assert [m.name for m in bundle.migrations if m.backfill_raw] == ["20251103090000_event_date_expand"]


def test_plain_layout_of_sql_files_loads_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "20250102000000_second.sql").write_text("CREATE TABLE b (id int);\n")
    (tmp_path / "20250101000000_first.sql").write_text("CREATE TABLE a (id int);\n")
    (tmp_path / "README.md").write_text("not a migration\n")
    bundle = load_bundle(tmp_path)
    assert bundle.layout == "plain"
    assert [m.name for m in bundle.migrations] == ["20250101000000_first", "20250102000000_second"]
    assert bundle.migrations[0].sql == "CREATE TABLE a (id int);\n"
    assert bundle.migrations[0].timestamp == "20250101000000"


def test_prisma_layout_picks_up_an_optional_down_file(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "CREATE TABLE a (id int);\n"})
    (root / "20250101000000_init" / "down.sql").write_text("DROP TABLE a;\n")
    (migration,) = load_bundle(root).migrations
    assert migration.down_path == root / "20250101000000_init" / "down.sql"


def test_prisma_layout_without_lock_file_loads(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"}, lock=None)
    assert load_bundle(root).layout == "prisma"


# --- every bundle error names the path and the fix -------------------------------------

def test_missing_migrations_folder_is_an_error_that_names_the_option(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(BundleError, match=rf"^{re.escape(str(missing))}: migrations folder not found\. "
                                          r"Pass the folder .* with --migrations DIR\.$"):
        load_bundle(missing)


def test_empty_migrations_folder_is_an_error_that_shows_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=rf"^{re.escape(str(tmp_path))}: no migrations found\. "
                                          r"Add <YYYYMMDDHHMMSS>_<name>/migration\.sql folders .* or "
                                          r"<YYYYMMDDHHMMSS>_<name>\.sql files\.$"):
        load_bundle(tmp_path)


def test_migration_folder_without_migration_sql_is_an_error(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"})
    (root / "20250102000000_forgot").mkdir()
    expected = root / "20250102000000_forgot" / "migration.sql"
    with pytest.raises(BundleError, match=rf"^{re.escape(str(expected))}: missing\. "
                                          r"Every migration folder needs a migration\.sql"):
        load_bundle(root)


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n"], ids=["empty", "whitespace-only"])
def test_an_empty_migration_sql_is_its_migrations_problem_raised_when_it_is_parsed(tmp_path: Path,
                                                                                   content: bytes) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": content})
    expected = root / "20250101000000_init" / "migration.sql"
    (migration,) = load_bundle(root).migrations  # read: whether it stops a run depends on the run
    pattern = rf"^{re.escape(str(expected))}: is empty\. Write the migration's SQL into it, or delete the migration\.$"
    assert re.match(pattern, migration.problem.message)
    with pytest.raises(MigrationFileError, match=pattern):
        parse_migration(migration)


@pytest.mark.parametrize("name", [
    "init",                          # no timestamp
    "2025010100000_init",            # 13 digits
    "20250101000000init",            # no underscore
    "20250101000000_",               # no label
    "20250101000000_has space",
    "20250101000000_-leading-dash",
])
def test_badly_named_migration_folder_is_an_error_that_shows_the_pattern(tmp_path: Path, name: str) -> None:
    root = prisma_bundle(tmp_path / "m", {name: "SELECT 1;\n"})
    with pytest.raises(BundleError, match=rf"^{re.escape(str(root / name))}: {re.escape(repr(name))} is not a "
                                          r"migration name\. Name it <YYYYMMDDHHMMSS>_<name> .*e\.g\. "
                                          r"20251017120000_epic5_schema_completion\.$"):
        load_bundle(root)


def test_badly_named_plain_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "add_users.sql").write_text("SELECT 1;\n")
    with pytest.raises(BundleError, match=r"add_users\.sql: 'add_users' is not a migration name"):
        load_bundle(tmp_path)


def test_two_migrations_with_the_same_timestamp_are_an_error_naming_both(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_alpha": "SELECT 1;\n",
                                          "20250101000000_beta": "SELECT 2;\n"})
    with pytest.raises(BundleError, match=rf"^{re.escape(str(root / '20250101000000_beta'))}: has the same "
                                          r"timestamp 20250101000000 as 20250101000000_alpha\. "
                                          r"Give each migration its own timestamp .* rename the newer one\.$"):
        load_bundle(root)


def test_same_timestamp_in_plain_layout_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "20250101000000_a.sql").write_text("SELECT 1;\n")
    (tmp_path / "20250101000000_b.sql").write_text("SELECT 2;\n")
    with pytest.raises(BundleError, match=r"20250101000000_b\.sql: has the same timestamp 20250101000000 as "
                                          r"20250101000000_a\."):
        load_bundle(tmp_path)


def test_non_utf8_bytes_are_an_error_naming_the_line_column_and_byte(tmp_path: Path) -> None:
    latin1 = "-- first line\nSELECT 1;\nSELECT 'café';\n".encode("latin-1")
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": latin1})
    expected = root / "20250101000000_init" / "migration.sql"
    offset = latin1.index(b"\xe9")
    (migration,) = load_bundle(root).migrations
    with pytest.raises(NotUtf8, match=rf"^{re.escape(str(expected))}:3:12: byte 0xe9 \(file offset {offset}\) is "
                                      r"not UTF-8\. Save the file as UTF-8"):
        parse_migration(migration)
    assert migration.problem.code == "not-utf8"


def test_byte_order_mark_is_an_error_instead_of_a_baffling_syntax_error(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": b"\xef\xbb\xbfCREATE TABLE a (id int);\n"})
    (migration,) = load_bundle(root).migrations
    with pytest.raises(MigrationFileError, match=r"migration\.sql:1:1: starts with a byte-order mark \(EF BB BF\).*"
                                                 r"Save the file as UTF-8 without BOM\.$"):
        parse_migration(migration)


@pytest.mark.parametrize("provider", ["mysql", "sqlite", "cockroachdb"])
def test_wrong_provider_in_lock_file_is_an_error(tmp_path: Path, provider: str) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"}, lock=f'provider = "{provider}"\n')
    with pytest.raises(BundleError, match=rf"^{re.escape(str(root / 'migration_lock.toml'))}: provider is "
                                          rf"'{provider}', not 'postgresql'\. .*set provider = \"postgresql\""):
        load_bundle(root)


def test_lock_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"}, lock="provider = postgresql\n")
    with pytest.raises(BundleError, match=r"migration_lock\.toml: not valid TOML .*It should contain one line: "
                                          r"provider = \"postgresql\"\."):
        load_bundle(root)


def test_migration_sql_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    # A directory named migration.sql cannot be read by anyone, root included.
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"})
    (root / "20250102000000_weird" / "migration.sql").mkdir(parents=True)
    expected = root / "20250102000000_weird" / "migration.sql"
    with pytest.raises(BundleError, match=rf"^{re.escape(str(expected))}: cannot be read \(Is a directory\)\. "):
        load_bundle(root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_migration_sql_without_read_permission_is_an_error(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"})
    path = root / "20250101000000_init" / "migration.sql"
    path.chmod(0)
    try:
        with pytest.raises(BundleError, match=rf"^{re.escape(str(path))}: cannot be read \(Permission denied\)\. "
                                              r"Make it a regular file that the user running the deployment can read"):
            load_bundle(root)
    finally:
        path.chmod(0o644)


def test_mixing_folders_and_loose_sql_files_is_an_error(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": "SELECT 1;\n"})
    (root / "20250102000000_loose.sql").write_text("SELECT 2;\n")
    with pytest.raises(BundleError, match=rf"^{re.escape(str(root))}: mixes migration folders and loose \.sql "
                                          r"files\. Use one layout"):
        load_bundle(root)


def test_bundle_error_carries_path_problem_and_fix_as_fields(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope")
    assert error.path == tmp_path / "nope"
    assert error.problem == "migrations folder not found"
    assert "--migrations DIR" in error.fix
    assert error.exit_code == 2


# --- checksum ----------------------------------------------------------------------------

def test_checksum_is_sha256_hex_of_the_raw_bytes() -> None:
    for migration in load_bundle(MIGRATIONS).migrations:
        assert migration.checksum == hashlib.sha256(migration.path.read_bytes()).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", migration.checksum)


def test_checksum_of_a_crlf_file_includes_its_carriage_returns(tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20250101000000_init": b"SELECT 1;\r\nSELECT 2;\r\n"})
    (migration,) = load_bundle(root).migrations
    assert migration.checksum == hashlib.sha256(b"SELECT 1;\r\nSELECT 2;\r\n").hexdigest()
    assert migration.checksum != hashlib.sha256(b"SELECT 1;\nSELECT 2;\n").hexdigest()


LF = b"-- comment\nSELECT 1;\n\nSELECT 2;\n"
CRLF = LF.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("stored_from, file_bytes", [
    (LF, LF),
    (CRLF, CRLF),
    (LF, CRLF),   # applied from LF, checked out with CRLF
    (CRLF, LF),   # applied from CRLF, checked out with LF
], ids=["lf-lf", "crlf-crlf", "lf-applied-crlf-file", "crlf-applied-lf-file"])
def test_checksum_matches_the_same_file_with_either_line_ending(stored_from: bytes, file_bytes: bytes) -> None:
    assert checksum_matches(sha256_hex(stored_from), file_bytes)


def test_checksum_matches_an_uppercase_stored_checksum() -> None:
    assert checksum_matches(sha256_hex(LF).upper(), LF)


@pytest.mark.parametrize("edited", [
    LF.replace(b"SELECT 1", b"SELECT 3"),      # one byte
    LF + b"\n",                                # a trailing newline
    LF.rstrip(b"\n"),                          # a newline removed
    b"-- another comment\n" + LF,              # a comment
    LF.replace(b"\n", b"\r"),                  # lone CRs are not a line-ending variant
], ids=["one-byte", "trailing-newline", "newline-removed", "comment", "lone-cr"])
def test_checksum_does_not_match_an_edited_file(edited: bytes) -> None:
    assert not checksum_matches(sha256_hex(LF), edited)
    assert not checksum_matches(sha256_hex(CRLF), edited)


def test_checksum_line_ending_variants_are_prismas_exactly() -> None:
    # Prisma hashes the raw script, the script with CRLF->LF, and the script with
    # LF->CRLF (prisma-engines schema-connector/src/checksum.rs). A file with mixed
    # endings therefore matches an LF checksum, but not a CRLF one.
    mixed = LF.replace(b"\n", b"\r\n", 1)
    assert checksum_matches(sha256_hex(LF), mixed)
    assert not checksum_matches(sha256_hex(CRLF), mixed)


def test_checksum_matches_the_unpadded_hex_of_old_prisma_versions() -> None:
    # Old schema engines wrote each byte with {:x}, dropping leading zeros
    # (prisma-engines issue 1887); Prisma still accepts those rows.
    data = next(b"SELECT %d;\n" % i for i in range(1000)
                if any(byte < 0x10 for byte in hashlib.sha256(b"SELECT %d;\n" % i).digest()))
    old = "".join(f"{byte:x}" for byte in hashlib.sha256(data).digest())
    assert len(old) < 64
    assert checksum_matches(old, data)
    assert not checksum_matches(old, data + b"\n")
