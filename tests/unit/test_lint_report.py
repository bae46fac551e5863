"""Lint output where code review reads it: SARIF 2.1.0 (validated against its schema) and GitHub annotations."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from schema_deploy.cli.main import main

SCHEMA = json.loads((Path(__file__).parent / "sarif" / "sarif-2.1.0-rtm.5.json").read_text())
FILE = """\
CREATE INDEX "t_a_idx" ON "t" ("a");
-- schema-deploy: ignore ban-drop-column replaced by b_new in release 41, unused since
ALTER TABLE "t" DROP COLUMN "b";
ALTER TABLE "t" ALTER COLUMN "c" DROP NOT NULL;
ALTER TABLE "t" ADD COLUMN "at" TIMESTAMP(3);
"""


@pytest.fixture
def migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "prisma" / "migrations" / "20260101000000_change" / "migration.sql"
    path.parent.mkdir(parents=True)
    path.write_text(FILE)
    monkeypatch.chdir(tmp_path)  # no deploy.yaml here: default severities; paths come out relative to it
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["lint", *args])
    return code, capsys.readouterr().out


def test_sarif_output_is_a_valid_sarif_2_1_0_log_with_one_result_per_finding(migration: Path, capsys) -> None:
    code, out = run(capsys, str(migration), "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft4Validator(SCHEMA).validate(log)  # raises on anything SARIF 2.1.0 does not allow
    (run_,) = log["runs"]
    results = {r["ruleId"]: r for r in run_["results"]}
    assert code == 1 and log["version"] == "2.1.0" and run_["tool"]["driver"]["name"] == "schema-deploy"
    assert set(results) == {"require-concurrent-index", "ban-drop-column", "ban-drop-not-null", "prefer-timestamptz"}
    index = results["require-concurrent-index"]
    assert index["level"] == "error" and index["message"]["text"].startswith('CREATE INDEX on "t" takes a SHARE lock')
    assert index["locations"] == [{"physicalLocation": {
        "artifactLocation": {"uri": "prisma/migrations/20260101000000_change/migration.sql"}, "region": {"startLine": 1}}}]
    assert index["properties"]["help"].startswith("Use CREATE INDEX CONCURRENTLY")
    assert results["ban-drop-not-null"]["level"] == "warning" and results["prefer-timestamptz"]["level"] == "note"
    assert results["ban-drop-column"]["suppressions"] == [
        {"kind": "inSource", "justification": "replaced by b_new in release 41, unused since"}]
    rules = run_["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == sorted(results) and all(
        run_["tool"]["driver"]["rules"][r["ruleIndex"]]["id"] == r["ruleId"] for r in run_["results"])


def test_a_file_that_cannot_be_parsed_is_a_sarif_result_too(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "20260101000000_bad.sql"
    path.write_text("SELECT 1;\nCOPY t FROM STDIN;\n")
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, str(path), "--format", "sarif")
    log = json.loads(out)
    jsonschema.Draft4Validator(SCHEMA).validate(log)
    (result,) = log["runs"][0]["results"]
    assert code == 1 and result["ruleId"] == "copy-from-stdin" and result["level"] == "error"
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": 2}


def test_github_output_annotates_each_unsuppressed_finding_with_file_line_and_escaped_text(migration: Path,
                                                                                          capsys) -> None:
    code, out = run(capsys, str(migration), "--format", "github")
    lines = out.splitlines()
    path = "prisma/migrations/20260101000000_change/migration.sql"
    assert code == 1 and len(lines) == 3  # the suppressed DROP COLUMN is not annotated
    assert lines[0].startswith(f"::error file={path},line=1,title=schema-deploy require-concurrent-index::"
                               'CREATE INDEX on "t" takes a SHARE lock')
    assert any(x.startswith(f"::warning file={path},line=4,title=schema-deploy ban-drop-not-null::") for x in lines)
    assert any(x.startswith("::notice ") for x in lines)  # info findings
    assert all("\n" not in x and "%0A" not in x.split("::", 2)[1] for x in lines)


def test_github_escapes_what_would_end_or_split_a_workflow_command() -> None:
    from schema_deploy.lint.engine import Finding
    from schema_deploy.lint.report import github

    f = Finding(rule="r", severity="error", path="a,b:c.sql", line=3, message="50% done\nsecond line", help="x")
    assert github([f]) == "::error file=a%2Cb%3Ac.sql,line=3,title=schema-deploy r::50%25 done%0Asecond line. Fix: x"


def test_files_and_a_migrations_folder_together_are_refused(migration: Path, capsys) -> None:
    assert main(["lint", str(migration), "--migrations", str(migration.parent.parent)]) == 2
    assert "lint takes files or --migrations DIR, not both" in capsys.readouterr().err


def test_the_hook_definition_runs_our_lint_on_the_files_a_commit_changes() -> None:
    import re

    import yaml

    repo = Path(__file__).resolve().parents[2]
    (hook,) = yaml.safe_load((repo / ".pre-commit-hooks.yaml").read_text())
    assert (hook["id"], hook["entry"], hook["language"]) == ("schema-deploy-lint", "schema-deploy lint", "python")
    pyproject = (repo / "pyproject.toml").read_text()
    assert 'schema-deploy = "schema_deploy.cli.main:main"' in pyproject  # the entry's command
    files = re.compile(hook["files"])
    assert files.search("prisma/migrations/20260101000000_x/migration.sql")
    assert files.search("db/migrations/20260101000000_x.sql")
    assert not files.search("prisma/schema.prisma") and not files.search("sql/verify/checks.sql")


def test_every_verb_of_the_command_line_is_one_main_knows_to_build_alone() -> None:
    from schema_deploy.cli.main import VERBS, parser

    (sub,) = [a for a in parser()._actions if a.dest == "verb"]
    assert set(sub.choices) == set(VERBS)  # a verb missing from VERBS would still work, with every parser built
