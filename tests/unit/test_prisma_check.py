"""prisma_check without a database: when Prisma is not usable it says so once and the check is skipped;
Prisma's diff summary becomes one sentence per difference (the real CLI's output is in the integration suite)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from schema_deploy.plan.prisma_check import find_cli, require_schema_matches, schema_differences, summary_lines

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
SCHEMA = REPO / "prisma" / "schema.prisma"
URL = "postgresql://migrator:secret@127.0.0.1:1/nowhere"  # never reached: the check stops before connecting


def test_without_node_the_check_is_skipped_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    logs: list[str] = []
    assert schema_differences(SCHEMA, MIGRATIONS, URL, logs.append) is None
    assert logs == ["Prisma is not usable on this worker (Node.js is not installed (`node` is not on PATH)): "
                    "the schema.prisma check is skipped"]
    require_schema_matches(SCHEMA, MIGRATIONS, URL, logs.append)  # goes on: no exception
    assert len(logs) == 2 and logs[1] == logs[0]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH to get past the first check")
def test_a_cli_folder_without_an_installed_prisma_is_skipped_with_the_fix(tmp_path: Path) -> None:
    logs: list[str] = []
    assert schema_differences(SCHEMA, MIGRATIONS, URL, logs.append, cli_dir=tmp_path) is None
    assert logs == [f"Prisma is not usable on this worker ({tmp_path}/node_modules/prisma/build/index.js does not "
                    f"exist (run `npm ci` in {tmp_path})): the schema.prisma check is skipped"]
    assert find_cli(tmp_path) == f"{tmp_path}/node_modules/prisma/build/index.js does not exist (run `npm ci` in {tmp_path})"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node on PATH to get past the first check")
def test_a_bundle_in_the_plain_layout_is_skipped(tmp_path: Path) -> None:
    fake_cli = tmp_path / "cli"
    (fake_cli / "node_modules" / "prisma" / "build").mkdir(parents=True)
    (fake_cli / "node_modules" / "prisma" / "build" / "index.js").write_text("")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "20250101000000_a.sql").write_text("SELECT 1;\n")
    logs: list[str] = []
    assert schema_differences(SCHEMA, plain, URL, logs.append, cli_dir=fake_cli) is None
    assert logs == [f"{plain} is not in Prisma's folder layout (<name>/migration.sql): the schema.prisma check is "
                    "skipped"]


def test_a_cli_folder_with_a_driver_adapter_config_gets_its_shadow_database_from_the_environment(
        tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "prisma" / "build").mkdir(parents=True)
    (tmp_path / "node_modules" / "prisma" / "build" / "index.js").write_text("")
    if shutil.which("node") is None:
        pytest.skip("needs node on PATH")
    assert find_cli(tmp_path).adapter is False
    (tmp_path / "prisma.config.ts").write_text("export default defineConfig({ async adapter() {} })\n")
    cli = find_cli(tmp_path)
    assert cli.adapter is True and cli.cwd == tmp_path and cli.argv[0] == "node"


SUMMARY = """
[+] Added tables
  - audit_notes

[-] Removed tables
  - struggle_predictions

[*] Changed the `EventType` enum
  [+] Added variant `LOGGED_OUT`

[*] Changed the `experiment_assignments` table
  [+] Added column `score`
  [-] Removed column `metrics`
  [*] Column `variant` would be dropped and recreated (type changed)
  [-] Removed foreign key on columns (experimentId)

[*] Changed the `personalization_configs` table
  [+] Added index on columns (userId, avgReward)
"""


def test_prismas_summary_becomes_one_sentence_per_difference_about_schema_prisma() -> None:
    assert summary_lines(SUMMARY) == [
        "schema.prisma has a model for table audit_notes that no migration creates",
        "the migrations create table struggle_predictions, which schema.prisma does not declare",
        "schema.prisma has variant LOGGED_OUT on enum EventType that no migration creates",
        "schema.prisma has field experiment_assignments.score that no migration creates",
        "the migrations create column experiment_assignments.metrics, which schema.prisma has no field for",
        "schema.prisma and the migrations disagree on table experiment_assignments: Column variant would be "
        "dropped and recreated (type changed)",
        "the migrations create foreign key on columns (experimentId) on table experiment_assignments, which "
        "schema.prisma does not declare",
        "schema.prisma has index on columns (userId, avgReward) on table personalization_configs that no "
        "migration creates",
    ]


def test_a_summary_line_of_an_unknown_shape_is_kept_verbatim() -> None:
    assert summary_lines("Something new\n") == ["schema.prisma and the migrations differ: Something new"]
