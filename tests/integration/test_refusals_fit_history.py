"""Refusals that fit the history: a file that cannot be deployed stops the run that deploys it, and only that.

NUL bytes, `COPY … FROM STDIN`, psql meta-commands and links out of the bundle are refused for the
pending migrations of a run, with file:line and the fix; a pending file after `--to` and an applied
file are warnings, so the migrations before it deploy and an existing history never blocks on upgrade.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from engine_support import ledger, table_exists
from prisma_support import prisma_bundle

COPY_STDIN = "CREATE TABLE seed (a int, b text);\nCOPY seed (a, b) FROM stdin;\n1\tone\n2\ttwo\n\\.\n"
M1, M2, M3 = "20240101000000_one", "20240102000000_two", "20240103000000_seed"


def bundle(tmp_path: Path, third: str | bytes = COPY_STDIN) -> Path:
    return prisma_bundle(tmp_path / "m", {M1: "CREATE TABLE one (id int);\n", M2: "CREATE TABLE two (id int);\n",
                                          M3: third})


def applied(url: str) -> list[str]:
    return [r["migration_name"] for r in ledger(url) if r["finished_at"] is not None]


def test_without_to_a_pending_copy_from_stdin_refuses_the_run_naming_the_file_and_the_to_that_goes_on(
        fresh_db: str, tmp_path: Path, cli) -> None:
    root = bundle(tmp_path)
    path = root / M3 / "migration.sql"
    result = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert result.returncode == 2
    assert (f"error: refusing to deploy: migration {M3} cannot be applied as written; nothing was changed:\n"
            f"{path}:2:1: `COPY … FROM STDIN`: the rows would have to come from the client (psql reads them from "
            "the lines after the statement), and a migration runner sends SQL statements only. Write the rows as "
            "INSERT statements (`pg_dump --inserts` writes them), or load a file the database server can read with "
            f"COPY … FROM '/path' (pg_read_server_files).\nTo deploy the migrations before it now, run with --to {M2}."
            ) in result.stderr
    assert "Traceback" not in result.stderr and ledger(fresh_db) == [] and not table_exists(fresh_db, "one")


def test_with_to_an_earlier_migration_the_later_broken_folder_is_a_warning_and_the_earlier_ones_deploy(
        fresh_db: str, tmp_path: Path, cli) -> None:
    root = bundle(tmp_path)
    path = root / M3 / "migration.sql"
    warning = (f"warning: {M3} is pending but not part of this run (--to {M2}), and it cannot be deployed as "
               f"written: {path}:2:1: `COPY … FROM STDIN`")

    planned = cli("plan", "--db", fresh_db, "--migrations", str(root), "--to", M2)
    assert planned.returncode == 0 and warning in planned.stdout
    result = cli("apply", "--db", fresh_db, "--migrations", str(root), "--to", M2)
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr
    assert applied(fresh_db) == [M1, M2]


def test_a_nul_byte_in_a_comment_refuses_the_file_instead_of_dropping_the_statements_after_it(
        fresh_db: str, tmp_path: Path, cli) -> None:
    root = bundle(tmp_path, b"CREATE TABLE before_it (id int);\n-- merged\x00 here\nCREATE TABLE after_it (id int);\n")
    path = root / M3 / "migration.sql"
    result = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert result.returncode == 2
    assert f"{path}:2:10: a NUL byte (0x00). Remove it" in result.stderr
    assert not table_exists(fresh_db, "before_it") and not table_exists(fresh_db, "after_it")
    assert applied(fresh_db) == []

    linted = cli("lint", "--migrations", str(root))
    assert linted.returncode == 1 and f"{path}:2: error[nul-byte] a NUL byte (0x00)" in linted.stdout


def test_an_applied_file_that_would_be_refused_now_never_blocks_an_upgrade(fresh_db: str, tmp_path: Path, cli,
                                                                           stack_env: dict[str, str]) -> None:
    # Applied before this version refused NUL bytes: write its row as Prisma would have, checksum and all.
    history = b"CREATE TABLE legacy (id int);\n-- old\x00 editor junk\n"
    root = prisma_bundle(tmp_path / "m", {M1: history})
    import psycopg

    from schema_deploy.bundle.discover import sha256_hex
    from schema_deploy.state.ledger import ensure_ledger

    with psycopg.connect(fresh_db, autocommit=True) as conn:
        ensure_ledger(conn)
        conn.execute("CREATE TABLE legacy (id int)")
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, applied_steps_count) "
                     "VALUES (%s, %s, now(), %s, 1)", (str(uuid.uuid4()), sha256_hex(history), M1))
    (root / M2).mkdir()
    (root / M2 / "migration.sql").write_text("CREATE TABLE two (id int);\n")

    assert cli("status", "--db", fresh_db, "--migrations", str(root)).returncode == 1  # pending: M2
    result = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert result.returncode == 0, result.stderr
    assert applied(fresh_db) == [M1, M2]


# --- links out of the bundle ---------------------------------------------------------------------------

def linked_bundle(tmp_path: Path, *, file_only: bool = False) -> tuple[Path, Path]:
    """A bundle whose second migration (a folder, or only its migration.sql) is a link to a shared folder."""
    shared = tmp_path / "shared" / M2
    shared.mkdir(parents=True)
    (shared / "migration.sql").write_text("CREATE TABLE two (id int);\n")
    root = prisma_bundle(tmp_path / "m", {M1: "CREATE TABLE one (id int);\n"})
    if file_only:
        (root / M2).mkdir()
        os.symlink(shared / "migration.sql", root / M2 / "migration.sql")
        return root, shared / "migration.sql"
    os.symlink(shared, root / M2)
    return root, shared


def test_a_migration_folder_linked_from_outside_the_bundle_is_refused_with_its_path_and_target(
        fresh_db: str, tmp_path: Path, cli) -> None:
    root, target = linked_bundle(tmp_path)
    result = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert result.returncode == 2
    assert (f"{root / M2}: is a symbolic link to {target.resolve()}, outside the bundle's folder. Copy the migration "
            "into the bundle; or, if the link is deliberate (a shared folder of migrations), allow it with "
            "allow_symlinks: true on the bundle in deploy.yaml, which the release records.") in result.stderr
    assert applied(fresh_db) == []
    linted = cli("lint", "--migrations", str(root))
    assert f"{root / M2}:1: error[symlink-outside-bundle] is a symbolic link to {target.resolve()}" in linted.stdout


def test_a_migration_sql_linked_from_outside_is_refused_too(fresh_db: str, tmp_path: Path, cli) -> None:
    root, target = linked_bundle(tmp_path, file_only=True)
    result = cli("apply", "--db", fresh_db, "--migrations", str(root), "--to", M1)
    assert result.returncode == 0
    assert (f"warning: {M2} is pending but not part of this run (--to {M1}), and it cannot be deployed as written: "
            f"{root / M2 / 'migration.sql'}: is a symbolic link to {target.resolve()}") in result.stderr


@pytest.mark.slow
def test_a_bundle_that_allows_links_deploys_them_and_its_release_records_them(
        fresh_db: str, tmp_path: Path, cli, s3, stack_env: dict[str, str]) -> None:
    root, target = linked_bundle(tmp_path)
    config = tmp_path / "deploy.yaml"
    config.write_text(f"bundles:\n  main: {{path: {root}, allow_symlinks: true}}\n")

    result = cli("apply", "--db", fresh_db, "--migrations", str(root), "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert applied(fresh_db) == [M1, M2]

    created = cli("release", "create", "--migrations", str(root), "--config", str(config), "--json",
                  "--to", f"s3://{stack_env['BACKUP_BUCKET']}/links-{uuid.uuid4().hex[:8]}")
    assert created.returncode == 0, created.stderr
    shown = cli("release", "show", json.loads(created.stdout)["uri"], "--json")
    assert json.loads(shown.stdout)["source"]["symlinks"] == [{"path": M2, "target": str(target.resolve())}]

    # The same history read by a deploy.yaml that no longer allows links: applied, so only a warning.
    (root / "20240103000000_three").mkdir()
    (root / "20240103000000_three" / "migration.sql").write_text("CREATE TABLE three (id int);\n")
    again = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert again.returncode == 0, again.stderr
    assert (f"warning: {M2} is applied; its file would be refused now, which does not stop this run: {root / M2}: "
            f"is a symbolic link to {target.resolve()}") in again.stderr
    assert applied(fresh_db) == [M1, M2, "20240103000000_three"]
