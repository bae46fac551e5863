"""prisma-splitter-semicolon: file:line of every `;` Prisma's driver-adapter deploy cuts at, and its severity.

The rule's firing cases and near misses are in test_lint.py's CASES (read from
tests/prisma/splitter_cases/, which the integration suite deploys with the real
Prisma CLI); here: every case file is covered, the acceptance file, the shipped
bundle, and deploy.yaml's `prisma:` key.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_lint import CASES, MIGRATIONS, SPLITTER_CASES

from schema_deploy.cli.main import main
from schema_deploy.config.errors import ConfigError
from schema_deploy.config.settings import PrismaSettings, load
from schema_deploy.lint.config import config_from
from schema_deploy.lint.engine import lint_sql
from schema_deploy.lint.rules.prisma import prisma_cuts

RULE = "prisma-splitter-semicolon"
MIXED = """\
-- Touch updatedAt on every write: a trigger function.
CREATE FUNCTION "touch"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW."updatedAt" := now();
    RETURN NEW;
END
$$;

-- Separator for exports (default a;b).
ALTER TABLE "recommendations" ADD COLUMN "separator" TEXT NOT NULL DEFAULT ';';
"""


def prisma_findings(sql: str, **kwargs):
    return [f for f in lint_sql(sql, **kwargs) if f.rule == RULE]


def test_every_splitter_case_file_is_in_the_case_table() -> None:
    fires, misses = CASES[RULE]
    texts = {p.read_text(): p.name for p in SPLITTER_CASES.glob("*.sql")}
    used = {texts[sql] for sql, _ in fires if sql in texts} | {texts[sql] for sql in misses if sql in texts}
    assert used == set(texts.values())
    assert {texts[sql] for sql, _ in fires if sql in texts} == {n for n in texts.values() if n.startswith("fails-")}


def test_a_file_with_a_plpgsql_function_a_string_and_a_comment_names_each_hazard_with_file_and_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "migrations"
    (root / "20260101000000_touch").mkdir(parents=True)
    path = root / "20260101000000_touch" / "migration.sql"
    path.write_text(MIXED)
    monkeypatch.chdir(tmp_path)  # no deploy.yaml: the rule is a warning

    assert main(["lint", "--migrations", str(root)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if f"[{RULE}]" in x]
    assert [x.split(": warning")[0] for x in lines] == [f"{path}:4", f"{path}:5", f"{path}:9", f"{path}:10"]
    assert [re.search(r"inside (.*?) \(column", x)[1] for x in lines] == [
        "a dollar-quoted body", "a dollar-quoted body", "a -- comment", "a string literal"]
    assert all("`prisma migrate deploy` through a driver adapter will fail here" in x for x in lines)


def test_the_shipped_bundle_has_one_splitter_hazard_its_trigger_function_and_epic5s_old_header_had_one() -> None:
    expand = "20251103090000_event_date_expand"
    for sql_path in MIGRATIONS.glob("*/migration.sql"):
        if sql_path.parent.name != expand:
            assert prisma_findings(sql_path.read_text()) == [], sql_path
    # The expand migration's PL/pgSQL trigger function: Prisma through a driver adapter cannot deploy it,
    # schema-deploy can (the body's two `;` are reported, the statement ends are not).
    found = prisma_findings((MIGRATIONS / expand / "migration.sql").read_text())
    assert [(f.line, f.message.split(":")[0]) for f in found] == [
        (10, "`;` inside a dollar-quoted body (column 43)"), (11, "`;` inside a dollar-quoted body (column 13)")]
    epic5 = (MIGRATIONS / "20251017120000_epic5_schema_completion" / "migration.sql").read_text()
    (old,) = prisma_findings(epic5.replace("applies it:", "applies it;"))
    assert old.line == 2 and old.message.startswith("`;` inside a -- comment (column 48)")


def test_a_semicolon_ending_a_comment_line_is_harmless_between_statements_and_fatal_inside_one() -> None:
    between = "CREATE TABLE a (id int);\n-- done;\nCREATE TABLE b (id int);\n"
    inside = "CREATE TABLE a (\n  id int -- done;\n);\n"
    assert prisma_cuts(between, 2) == []
    ((cut,),) = [prisma_cuts(inside, 1)]
    assert (cut.offset, cut.kind) == (inside.index("done;") + 4, "line-comment-in-statement")


def test_each_semicolon_of_a_body_is_reported_and_the_statement_ends_are_not() -> None:
    sql = "DO $$ BEGIN PERFORM 1; PERFORM 2; END $$;\nSELECT 1;\n"
    assert [c.offset for c in prisma_cuts(sql, 2)] == [sql.index("1;") + 1, sql.index("2;") + 1]


# --- severity from deploy.yaml -----------------------------------------------------------------------

def test_it_is_a_warning_by_default_and_an_error_when_the_team_also_deploys_with_prisma(tmp_path: Path) -> None:
    sql = (SPLITTER_CASES / "fails-string.sql").read_text()
    (default,) = prisma_findings(sql)
    assert (default.severity, default.blocking) == ("warning", False)

    path = tmp_path / "deploy.yaml"
    path.write_text("prisma:\n  deploys: true\n")
    (strict,) = prisma_findings(sql, config=load(path).lint)
    assert (strict.severity, strict.blocking) == ("error", True)


def test_an_explicit_lint_severity_wins_over_prisma_deploys() -> None:
    config = config_from({"prisma": {"deploys": True}, "lint": {"severity": {RULE: "info"}}}, prisma_deploys=True)
    assert config.severity[RULE] == "info"
    assert config_from({"prisma": {"deploys": False}}).severity == {}


def test_deploy_yaml_prisma_section_is_read_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("prisma: {deploys: true, schema: prisma/schema.prisma, cli: tests/prisma}\n")
    assert load(path).prisma == PrismaSettings(deploys=True, schema=tmp_path / "prisma" / "schema.prisma",
                                               cli=tmp_path / "tests" / "prisma")
    path.write_text("slack: {channel: '#x'}\n")
    assert load(path).prisma == PrismaSettings(deploys=False, schema=None, cli=None)


@pytest.mark.parametrize("text, message", [
    ("prisma: true", r"deploy\.yaml: prisma: expected a mapping \(keys indented under it\), got true\. Indent its keys "
                     r"under it\.$"),
    ("prisma: {deploy: true}", r"prisma\.deploy: unknown key\. Did you mean deploys \(in prisma\)\? Keys there: cli, "
                               r"deploys, schema\.$"),
    ("prisma: {deploys: 'yes'}", r"prisma\.deploys: expected true or false, got the string 'yes'\. Write true or false, "
                                 r"unquoted\.$"),
    ("prisma: {schema: 3}", r"prisma\.schema: expected text, got the number 3\."),
    ("prisma: {cli: ''}", r"prisma\.cli: expected text, got an empty string\. Give it a value, or leave the key out\.$"),
])
def test_a_bad_prisma_section_is_rejected_naming_the_key_and_the_fix(tmp_path: Path, text: str, message: str) -> None:
    from schema_deploy.config.settings import load_lint

    path = tmp_path / "deploy.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as whole:
        load(path)
    with pytest.raises(ConfigError) as lint_only:  # what `lint` reads, without the typed model: the same words
        load_lint(path)
    assert str(lint_only.value) == str(whole.value)


def test_json_output_carries_the_rule_line_and_severity(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "20260101000000_sep.sql").write_text(MIXED)
    (tmp_path / "deploy.yaml").write_text("prisma: {deploys: true}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["lint", "--migrations", str(root), "--json"]) == 1
    found = [(f["line"], f["severity"]) for f in json.loads(capsys.readouterr().out) if f["rule"] == RULE]
    assert found == [(4, "error"), (5, "error"), (9, "error"), (10, "error")]


def test_a_suppression_with_a_reason_above_the_statement_keeps_the_finding_marked() -> None:
    sql = ("-- schema-deploy: ignore prisma-splitter-semicolon only schema-deploy applies this bundle\n"
           "CREATE TABLE t (sep text DEFAULT ';');\n")
    (finding,) = prisma_findings(sql)
    assert finding.suppressed and finding.reason == "only schema-deploy applies this bundle" and finding.line == 2
