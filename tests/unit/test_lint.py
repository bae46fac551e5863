"""Lint: every rule fires on its case and stays quiet on its near miss; suppressions, config, CLI.

`CASES` keeps each rule's cases together: SQL that must fire (with a pattern
pinning the rule's key words: the statement, the table, the lock) and near
misses that must not. A meta-test checks that every registered rule has both.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pglast
import pytest

from pglast import ast

from bench.lint_speed import generate
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.bundle.fastparse import parse_statements
from schema_deploy.bundle.parse import parse_sql
from schema_deploy.cli.main import main
from schema_deploy.config.errors import ConfigError
from schema_deploy.config.settings import load as load_deploy_yaml
from schema_deploy.lint.config import config_from
from schema_deploy.lint.engine import LintConfig, lint_bundle, lint_sql, render
from schema_deploy.lint.registry import RULES, SEVERITIES
from schema_deploy.lint.rules.hygiene import pg_truncate

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
EPIC5 = "20251017120000_epic5_schema_completion"
NAME_63 = "struggle_predictions_userId_predictionStatus_predictedStrug_idx"
LOCKS = "takes an ACCESS EXCLUSIVE lock: blocks reads and writes"

# Prisma splitter cases are files, each proven against the real Prisma CLI in
# tests/integration/test_prisma_splitter.py: fails-* fail `prisma migrate deploy`, deploys-* do not.
SPLITTER_CASES = REPO / "tests" / "prisma" / "splitter_cases"
SPLIT = "`prisma migrate deploy` through a driver adapter will fail here, because it cuts the script at every `;`"


def splitter_case(name: str) -> str:
    return (SPLITTER_CASES / name).read_text()


# rule id -> ([(sql that fires, pattern its message must match)], [near misses])
CASES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    # --- indexes
    "require-concurrent-index": (
        [('CREATE INDEX "be_idx" ON "behavioral_events" ("userId");',
          r'^CREATE INDEX on "behavioral_events" takes a SHARE lock: blocks writes \(INSERT, UPDATE, DELETE\) on '
          r"it for the whole index build, proportional to the table's size$"),
         ("CREATE UNIQUE INDEX t_a_key ON app.t (a);", r'^CREATE UNIQUE INDEX on "app"\."t" takes a SHARE lock')],
        ["CREATE INDEX CONCURRENTLY t_a_idx ON t (a);",
         "CREATE TABLE n (a int);\nCREATE INDEX n_a_idx ON n (a);",
         "CREATE TABLE public.n (a int);\nCREATE INDEX n_a_idx ON n (a);"]),
    "concurrent-index-without-name": (
        [("CREATE INDEX CONCURRENTLY ON t (a);", r'^CREATE INDEX CONCURRENTLY on "t" has no name: .*INVALID')],
        ["CREATE INDEX CONCURRENTLY t_a_idx ON t (a);"]),
    "require-concurrent-index-deletion": (
        [("DROP INDEX t_a_idx;", r'^DROP INDEX "t_a_idx" takes an ACCESS EXCLUSIVE lock on the index\'s table')],
        ["DROP INDEX CONCURRENTLY t_a_idx;",
         "CREATE TABLE n (a int);\nCREATE INDEX n_a_idx ON n (a);\nDROP INDEX n_a_idx;"]),
    "require-concurrent-reindex": (
        [("REINDEX TABLE t;", r'^REINDEX TABLE "t" takes a SHARE lock on the table and ACCESS EXCLUSIVE on each'),
         ("REINDEX INDEX t_a_idx;", r'^REINDEX INDEX "t_a_idx" takes a SHARE lock'),
         # squawk's case: PostgreSQL refuses REINDEX (CONCURRENTLY) SYSTEM, so that is not the advice
         ("REINDEX SYSTEM app;", r'^REINDEX SYSTEM "app" rebuilds every system catalog index')],
        ["REINDEX (CONCURRENTLY) TABLE t;", "REINDEX TABLE CONCURRENTLY t;"]),
    "index-too-many-columns": (
        [("CREATE INDEX CONCURRENTLY t_idx ON t (a, b, c, d);", r'^index "t_idx" on "t" has 4 columns')],
        ["CREATE INDEX CONCURRENTLY t_idx ON t (a, b, c);", "CREATE UNIQUE INDEX CONCURRENTLY t_key ON t (a, b, c, d);"]),
    # --- constraints
    "adding-foreign-key-constraint": (
        [('ALTER TABLE "experiment_assignments" ADD CONSTRAINT "ea_fkey" FOREIGN KEY ("experimentId") '
          'REFERENCES "personalization_experiments"("id") ON DELETE CASCADE;',
          r'^ADD CONSTRAINT "ea_fkey" FOREIGN KEY on "experiment_assignments" takes SHARE ROW EXCLUSIVE locks on it '
          r'and on "personalization_experiments": blocks writes \(INSERT, UPDATE, DELETE\) on both for the whole '
          r'check of its rows'),
         ("ALTER TABLE t ADD COLUMN u_id bigint REFERENCES u (id);",
          r'^ADD COLUMN "u_id" … FOREIGN KEY on "t" takes an ACCESS EXCLUSIVE lock on it')],
        ["ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id) NOT VALID;",
         "CREATE TABLE n (id bigint, u bigint);\nALTER TABLE n ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id);"]),
    "constraint-missing-not-valid": (
        [("ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0);", rf'^ADD CONSTRAINT "pos" CHECK on "t" {LOCKS}')],
        ["ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0) NOT VALID;", "ALTER TABLE t VALIDATE CONSTRAINT pos;"]),
    "validate-constraint-in-same-transaction": (
        [("ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0) NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT pos;",
          r'^VALIDATE CONSTRAINT "pos" runs in the same transaction as its ADD … NOT VALID \(line 1\)'),
         ("CREATE INDEX CONCURRENTLY i ON u (a);\nBEGIN;\nALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u "
          "(id) NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT f;\nCOMMIT;", r'^VALIDATE CONSTRAINT "f" .*\(line 3\)')],
        ["ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0) NOT VALID;\nCREATE INDEX CONCURRENTLY i ON u (a);\n"
         "ALTER TABLE t VALIDATE CONSTRAINT pos;",
         "ALTER TABLE t ADD CONSTRAINT pos CHECK (a > 0) NOT VALID;\nALTER TABLE t VALIDATE CONSTRAINT other;"]),
    "ban-drop-not-null": (
        [("ALTER TABLE t ALTER COLUMN a DROP NOT NULL;", r'^ALTER COLUMN "a" DROP NOT NULL on "t": from now on')],
        ["CREATE TABLE n (a int NOT NULL);\nALTER TABLE n ALTER COLUMN a DROP NOT NULL;",
         "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0;"]),
    "ban-create-domain-with-constraint": (
        [("CREATE DOMAIN positive AS int CHECK (VALUE > 0);", r'^domain "positive" carries a CHECK constraint')],
        ["CREATE DOMAIN email AS text;", "CREATE DOMAIN id AS bigint NOT NULL;"]),
    "ban-alter-domain-with-add-constraint": (
        [("ALTER DOMAIN positive ADD CONSTRAINT pos CHECK (VALUE > 0);",
          r'^ALTER DOMAIN "positive" ADD CONSTRAINT checks every column of every table that uses the domain')],
        ["ALTER DOMAIN positive ADD CONSTRAINT pos CHECK (VALUE > 0) NOT VALID;",
         "ALTER DOMAIN positive VALIDATE CONSTRAINT pos;"]),
    "adding-not-nullable-field": (
        [("ALTER TABLE t ALTER COLUMN a SET NOT NULL;",
          rf'^ALTER COLUMN "a" SET NOT NULL on "t" {LOCKS}.* for the whole scan for NULLs')],
        ["ALTER TABLE t ADD CONSTRAINT a_nn CHECK (a IS NOT NULL) NOT VALID;\n"
         "ALTER TABLE t VALIDATE CONSTRAINT a_nn;\nALTER TABLE t ALTER COLUMN a SET NOT NULL;",
         "CREATE TABLE n (a int);\nALTER TABLE n ALTER COLUMN a SET NOT NULL;"]),
    "disallowed-unique-constraint": (
        [("ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE (a);",
          r'^ADD CONSTRAINT "t_a_key" UNIQUE on "t" builds its unique index under an ACCESS EXCLUSIVE lock'),
         ("ALTER TABLE t ADD COLUMN code text UNIQUE;", r'^ADD COLUMN "code" … UNIQUE on "t" builds')],
        ["ALTER TABLE t ADD CONSTRAINT t_a_key UNIQUE USING INDEX t_a_key;"]),
    "adding-serial-primary-key-field": (
        [("ALTER TABLE t ADD PRIMARY KEY (id);", r'^ADD PRIMARY KEY on "t" builds its unique index under an ACCESS '),
         ("ALTER TABLE t ADD COLUMN id bigserial PRIMARY KEY;", r'^ADD COLUMN "id" … PRIMARY KEY on "t" builds')],
        ["ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_pkey;"]),
    "adding-exclusion-constraint": (
        [("ALTER TABLE t ADD CONSTRAINT no_overlap EXCLUDE USING gist (r WITH &&);",
          rf'^ADD CONSTRAINT "no_overlap" EXCLUDE on "t" {LOCKS}')],
        ["CREATE TABLE n (r tstzrange);\nALTER TABLE n ADD CONSTRAINT x EXCLUDE USING gist (r WITH &&);"]),
    # --- columns
    "adding-field-with-default": (
        [("ALTER TABLE t ADD COLUMN token uuid DEFAULT gen_random_uuid();",
          rf'^ADD COLUMN "token" with the volatile DEFAULT gen_random_uuid\(\) .* on "t" {LOCKS}.* rewrite of the '),
         ("ALTER TABLE t ADD COLUMN n bigserial;", r'^ADD COLUMN "n" with type bigserial'),
         ("ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;", r"AS IDENTITY"),
         ("ALTER TABLE t ADD COLUMN s text GENERATED ALWAYS AS (a || b) STORED;", r"STORED"),
         # squawk's cases: any function not known to be non-volatile counts, user-defined ones included
         ("ALTER TABLE t ADD COLUMN id uuid DEFAULT uuid();", r'^ADD COLUMN "id" with the possibly volatile DEFAULT '
                                                               r"uuid\(\) \(evaluated for every row: lint cannot see its "
                                                               r"volatility"),
         ("ALTER TABLE t ADD COLUMN k text DEFAULT app.new_key(lower('x'));", r"possibly volatile DEFAULT app\.new_key")],
        ["ALTER TABLE t ADD COLUMN created timestamptz NOT NULL DEFAULT now();",
         "ALTER TABLE t ADD COLUMN n int DEFAULT 0;",
         "ALTER TABLE t ADD COLUMN meta jsonb DEFAULT jsonb_build_object('v', 1);",
         "ALTER TABLE t ADD COLUMN d date DEFAULT pg_catalog.date_trunc('day', now());",
         "CREATE TABLE n (a int);\nALTER TABLE n ADD COLUMN token uuid DEFAULT gen_random_uuid();"]),
    "adding-required-field": (
        [("ALTER TABLE t ADD COLUMN n int NOT NULL;",
          r'^ADD COLUMN "n" NOT NULL without a DEFAULT on "t" fails as soon as the table has a row')],
        ["ALTER TABLE t ADD COLUMN n int NOT NULL DEFAULT 0;", "ALTER TABLE t ADD COLUMN n int;",
         "ALTER TABLE t ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY NOT NULL;"]),
    "changing-column-type": (
        [("ALTER TABLE t ALTER COLUMN a TYPE bigint;",
          rf'^ALTER COLUMN "a" TYPE bigint on "t" {LOCKS}.* rewrite of the table and its indexes')],
        ["ALTER TABLE t ALTER COLUMN a SET DEFAULT 0;", "CREATE TABLE n (a int);\nALTER TABLE n ALTER COLUMN a TYPE bigint;"]),
    "require-concurrent-partition-detach": (
        [("ALTER TABLE m DETACH PARTITION m_2024;", rf'^DETACH PARTITION "m_2024" on "m" {LOCKS}')],
        ["ALTER TABLE m DETACH PARTITION m_2024 CONCURRENTLY;"]),
    # --- destructive changes
    "ban-drop-table": (
        [("DROP TABLE old_events;", r'^DROP TABLE "old_events" deletes the table and every row in it for good')],
        ["CREATE TABLE scratch (a int);\nDROP TABLE scratch;", "DROP VIEW v;"]),
    "ban-drop-column": (
        [("ALTER TABLE t DROP COLUMN legacy;", r'^DROP COLUMN "legacy" of "t" deletes its data for good')],
        ["CREATE TABLE n (a int, b int);\nALTER TABLE n DROP COLUMN b;"]),
    "ban-truncate": (
        [("TRUNCATE t CASCADE;", r'^TRUNCATE "t" deletes every row and, with CASCADE, every table that references')],
        ["CREATE TABLE s (a int);\nTRUNCATE s;"]),
    "ban-drop-database": (
        [("DROP DATABASE app;", r'^DROP DATABASE "app" deletes a whole database')],
        ["DROP SCHEMA scratch;"]),
    "renaming-table": (
        [("ALTER TABLE t RENAME TO t2;", r'^RENAME "t" TO "t2" breaks the running application')],
        ["CREATE TABLE n (a int);\nALTER TABLE n RENAME TO n2;", "ALTER INDEX i RENAME TO j;"]),
    "renaming-column": (
        [("ALTER TABLE t RENAME COLUMN a TO b;", r'^RENAME COLUMN "a" of "t" TO "b" breaks the running application')],
        ["CREATE TABLE n (a int);\nALTER TABLE n RENAME COLUMN a TO b;"]),
    # --- rewrites and maintenance
    "ban-vacuum-full": (
        [("VACUUM FULL t;", rf'^VACUUM FULL on "t" {LOCKS}'), ("VACUUM (FULL, ANALYZE) t;", r'^VACUUM FULL on "t"')],
        ["VACUUM (ANALYZE) t;", "VACUUM (FULL false) t;", "VACUUM (FULL off, ANALYZE) t;"]),
    "ban-cluster": (
        [("CLUSTER t USING t_pkey;", rf'^CLUSTER on "t" {LOCKS}')],
        ["ALTER TABLE t CLUSTER ON t_pkey;"]),
    "require-concurrent-refresh": (
        [("REFRESH MATERIALIZED VIEW daily;", r'^REFRESH MATERIALIZED VIEW on "daily" takes an ACCESS EXCLUSIVE lock: '
                                              r"blocks reads of it")],
        ["REFRESH MATERIALIZED VIEW CONCURRENTLY daily;", "REFRESH MATERIALIZED VIEW daily WITH NO DATA;"]),
    # --- transactions and sessions
    "mixed-transaction-modes": (
        [("ALTER TABLE t ADD COLUMN c int;\nCREATE INDEX CONCURRENTLY t_c_idx ON t (c);\nALTER TABLE t ADD COLUMN d int;",
          r"^this migration mixes CREATE INDEX CONCURRENTLY \(line 2\), which cannot run in a transaction, .* in 3 "
          r"steps")],
        ["CREATE INDEX CONCURRENTLY t_c_idx ON t (c);", "ALTER TABLE t ADD COLUMN c int;\nALTER TABLE t ADD COLUMN d int;"]),
    "multiple-access-exclusive-locks": (
        [("ALTER TABLE a ADD COLUMN x int;\nALTER TABLE a ADD COLUMN y int;\nALTER TABLE b ADD COLUMN y int;",
          r'ACCESS EXCLUSIVE locks on 2 tables, in this order: "a" \(line 1\), "b" \(line 3\); .* "a" stays blocked '
          r"for reads and writes")],
        ["ALTER TABLE a ADD COLUMN x int;\nALTER TABLE a ADD COLUMN y int;",
         "CREATE TABLE b (id int);\nALTER TABLE a ADD COLUMN x int;\nALTER TABLE b ADD COLUMN y int;",
         "ALTER TABLE a ADD COLUMN x int;\nCREATE INDEX CONCURRENTLY i ON a (x);\nALTER TABLE b ADD COLUMN y int;"]),
    "backfill-in-ddl-transaction": (
        [("ALTER TABLE t ADD COLUMN c int;\nUPDATE t SET c = 0;",
          r'^UPDATE of "t" runs in the same transaction as the ACCESS EXCLUSIVE lock taken on "t" at line 1')],
        ["UPDATE t SET c = 0;", "UPDATE t SET c = 0;\nALTER TABLE t ADD COLUMN c int;"]),
    "ban-session-set": (
        [("SET lock_timeout = 0;", r"^SET lock_timeout changes the whole session.* overrides the lock_timeout"),
         ("SET search_path TO app;", r"^SET search_path changes the whole session"),
         ("RESET ALL;", r"^RESET ALL changes the whole session")],
        ["SET LOCAL lock_timeout = '5s';", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;"]),
    "adding-enum-value": (
        [("ALTER TYPE \"EventType\" ADD VALUE 'QUIZ_TAKEN';",
          r"^ALTER TYPE \"EventType\" ADD VALUE 'QUIZ_TAKEN' cannot be undone")],
        ["CREATE TYPE mood AS ENUM ('ok');\nALTER TYPE mood ADD VALUE 'great';",
         "ALTER TYPE mood RENAME VALUE 'ok' TO 'fine';"]),
    # --- retry safety, names and types
    "prefer-robust-stmts": (
        [("CREATE INDEX CONCURRENTLY t_a_idx ON t (a);", r"^CREATE INDEX is not retry-safe"),
         ("DROP INDEX CONCURRENTLY t_a_idx;", r"^DROP INDEX is not retry-safe")],
        ["CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON t (a);", "DROP INDEX CONCURRENTLY IF EXISTS t_a_idx;",
         "CREATE TABLE n (a int);\nDROP TABLE n;"]),
    "identifier-too-long": (
        [(f'CREATE INDEX CONCURRENTLY "{NAME_63}x" ON t (a);',
          rf'^identifier "{NAME_63}x" is 64 bytes; PostgreSQL keeps only 63 bytes of a name, so it will be '
          rf'"{NAME_63}"'),
         ("CREATE TABLE " + "Abc" * 22 + " (id bigint);", '^identifier "' + "abc" * 22 + '" is 66 bytes')],
        [f'CREATE INDEX CONCURRENTLY "{NAME_63}" ON t (a);',
         f"SELECT '{'x' * 80}' AS long_string_is_not_a_name;"]),
    "identifier-collision": (
        [(f'CREATE INDEX "{NAME_63}_a" ON t (a);\nCREATE INDEX "{NAME_63}_b" ON t (b);',
          rf'^"{NAME_63}_b" and "{NAME_63}_a" \(<sql>:1\) are both "{NAME_63}" to PostgreSQL, which keeps only '
          r'63 bytes of a name: this one is never created'),
         (f'ALTER TABLE t ADD CONSTRAINT "{NAME_63}1" CHECK (a > 0);\n'
          f'ALTER TABLE t ADD CONSTRAINT "{NAME_63}2" CHECK (b > 0);', rf'^"{NAME_63}2" and "{NAME_63}1"')],
        [f'CREATE INDEX "{NAME_63}_a" ON t (a);\nCREATE INDEX "{NAME_63[:-1]}_b" ON t (b);',
         f'ALTER TABLE t ADD CONSTRAINT "{NAME_63}1" CHECK (a > 0);\n'
         f'ALTER TABLE u ADD CONSTRAINT "{NAME_63}2" CHECK (b > 0);']),
    "prefer-timestamptz": (
        [("CREATE TABLE e (id bigint PRIMARY KEY, at timestamp(3), b timestamp without time zone);",
          r'^columns "at", "b" of "e": timestamp without time zone'),
         ("ALTER TABLE t ADD COLUMN at TIMESTAMP(3);", r'^column "at" of "t": timestamp without time zone')],
        ["CREATE TABLE e (at timestamptz(3), b timestamp with time zone);"]),
    "prefer-bigint-primary-key": (
        [("CREATE TABLE n (id serial PRIMARY KEY);", r'^primary key "id" of "n" is serial'),
         ("CREATE TABLE n (id integer, PRIMARY KEY (id));", r'^primary key "id" of "n" is integer')],
        ["CREATE TABLE n (id bigint PRIMARY KEY, count integer);"]),
    "prefer-text-field": (
        [("CREATE TABLE n (name varchar(100));", r'^column "name" of "n": varchar\(n\)')],
        ["CREATE TABLE n (name varchar, title text);"]),
    "ban-char-field": (
        [("CREATE TABLE n (code char(2));", r'^column "code" of "n": char\(n\) pads values')],
        ["CREATE TABLE n (code text);"]),
    # --- Prisma's statement splitter (file cases: see SPLITTER_CASES)
    "prisma-splitter-semicolon": (
        [(splitter_case("fails-line-comment.sql"),
          rf"^`;` inside a -- comment \(column 30\): {re.escape(SPLIT)} and the rest of the comment line reaches "
          r"PostgreSQL as SQL \(PostgreSQL, and schema-deploy, read this `;` as part of a -- comment\)$"),
         (splitter_case("fails-comment-in-statement.sql"),
          r"^`;` inside a -- comment within a statement \(column 47\): .* receives the statement cut off at the "
          r"comment"),
         (splitter_case("fails-block-comment.sql"), r"^`;` inside a /\* \*/ comment .* an unterminated /\* comment"),
         (splitter_case("fails-string.sql"), r"^`;` inside a string literal .* an unterminated quoted string"),
         (splitter_case("fails-escape-string.sql"), r"^`;` inside an E'…' string .* an unterminated quoted string"),
         (splitter_case("fails-plpgsql-function.sql"),
          r"^`;` inside a dollar-quoted body .* unterminated dollar-quoted string \(every PL/pgSQL function"),
         (splitter_case("fails-do-block.sql"), r"^`;` inside a dollar-quoted body \(column 26\)"),
         (splitter_case("fails-quoted-identifier.sql"),
          r"^`;` inside a quoted identifier .* an unterminated quoted identifier"),
         (splitter_case("fails-atomic-body.sql"),
          r"^`;` inside a BEGIN ATOMIC … END body .* the function cut off after its first statement")],
        [splitter_case("deploys-near-misses.sql"), "SELECT 1;\n-- done;\nSELECT 2;;\n"]),
    # --- suppression comments
    "suppression-without-reason": (
        [("-- schema-deploy: ignore ban-drop-table\nDROP TABLE t;",
          r"^suppression of ban-drop-table has no reason, so it does not take effect")],
        ["-- schema-deploy: ignore ban-drop-table emptied and unused since v42\nDROP TABLE t;"]),
    "suppression-unknown-rule": (
        [("-- schema-deploy: ignore ban-drop-tables gone\nDROP TABLE t;",
          r"^suppression names the rule ban-drop-tables, which does not exist")],
        ["-- schema-deploy: ignore ban-drop-table gone\nDROP TABLE t;"]),
}

FIRES = [pytest.param(rid, sql, pattern, id=f"{rid}-{i}")
         for rid, (fires, _) in CASES.items() for i, (sql, pattern) in enumerate(fires)]
MISSES = [pytest.param(rid, sql, id=f"{rid}-{i}") for rid, (_, misses) in CASES.items() for i, sql in enumerate(misses)]


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI would lint against $DATABASE_URL; these tests are about the files alone."""
    monkeypatch.delenv("DATABASE_URL", raising=False)


def of_rule(findings, rule_id: str):
    return [f for f in findings if f.rule == rule_id]


# --- every rule: a case that fires and a near miss -----------------------------------------------------

@pytest.mark.parametrize("rule_id, sql, pattern", FIRES)
def test_rule_fires_with_a_message_naming_what_it_blocks(rule_id: str, sql: str, pattern: str) -> None:
    found = of_rule(lint_sql(sql), rule_id)
    assert found, f"{rule_id} did not fire on {sql!r}"
    assert re.search(pattern, found[0].message), found[0].message
    assert found[0].help and found[0].severity == RULES[rule_id].severity and not found[0].suppressed


@pytest.mark.parametrize("rule_id, sql", MISSES)
def test_rule_stays_quiet_on_its_near_miss(rule_id: str, sql: str) -> None:
    assert of_rule(lint_sql(sql), rule_id) == []


def test_every_rule_has_a_firing_case_a_near_miss_and_is_named_after_its_function() -> None:
    assert len(RULES) >= 20
    assert set(CASES) == set(RULES)
    for rid, r in RULES.items():
        assert CASES[rid][0] and CASES[rid][1], rid
        assert r.check.__name__ == rid.replace("-", "_") and r.severity in SEVERITIES and r.summary


def test_online_mode_is_named_in_the_help_of_the_rules_it_fixes() -> None:
    sql = ("CREATE INDEX i ON t (a);\nALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES u (id);\n"
           "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);\nALTER TABLE t ALTER COLUMN a SET NOT NULL;\n"
           "ALTER TABLE t ADD CONSTRAINT k UNIQUE (a);\n")
    helps = {f.rule: f.help for f in lint_sql(sql)}
    assert "schema-deploy's online mode rewrites this to CREATE INDEX CONCURRENTLY" in helps["require-concurrent-index"]
    for rid in ("adding-foreign-key-constraint", "constraint-missing-not-valid", "disallowed-unique-constraint"):
        assert "schema-deploy's online mode rewrites this" in helps[rid]
    assert "online mode does exactly this" in helps["adding-not-nullable-field"]


# --- existing tables and row estimates -----------------------------------------------------------------

def test_row_estimates_from_the_database_say_how_much_the_lock_covers() -> None:
    (f,) = of_rule(lint_sql('CREATE INDEX "i" ON "behavioral_events" ("userId");', existing_tables={"behavioral_events"},
                            row_estimates={"behavioral_events": 2_000_000}), "require-concurrent-index")
    assert f.message == ('CREATE INDEX on "behavioral_events" takes a SHARE lock: blocks writes (INSERT, UPDATE, '
                         "DELETE) on it for the whole index build, which reads all ~2,000,000 rows")


def test_with_a_database_a_table_it_does_not_hold_is_new() -> None:
    assert of_rule(lint_sql("CREATE INDEX i ON t (a);", existing_tables={"other"}), "require-concurrent-index") == []
    assert of_rule(lint_sql("CREATE INDEX i ON public.t (a);", existing_tables={"t"}), "require-concurrent-index")


def test_an_enum_type_is_existing_unless_created_earlier_in_the_file_even_with_a_database() -> None:
    sql = "ALTER TYPE \"EventType\" ADD VALUE 'QUIZ_TAKEN';"
    assert of_rule(lint_sql(sql, existing_tables={"behavioral_events"}), "adding-enum-value")


def test_a_table_created_by_an_earlier_file_is_existing_and_one_created_in_the_same_file_is_new(tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "20250101000000_create.sql").write_text("CREATE TABLE a (id bigint);\nCREATE INDEX a_id_idx ON a (id);\n")
    (root / "20250102000000_index.sql").write_text("CREATE INDEX a_id2_idx ON a (id);\n")
    found = of_rule(lint_bundle(load_bundle(root)), "require-concurrent-index")
    assert [(Path(f.path).name, f.line) for f in found] == [("20250102000000_index.sql", 1)]
    assert found[0].migration == "20250102000000_index"


def test_a_not_null_check_validated_in_an_earlier_file_lets_set_not_null_through(tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "20250101000000_check.sql").write_text(
        "ALTER TABLE t ADD CONSTRAINT t_a_nn CHECK (a IS NOT NULL) NOT VALID;\n")
    (root / "20250102000000_validate.sql").write_text("ALTER TABLE t VALIDATE CONSTRAINT t_a_nn;\n")
    (root / "20250103000000_set.sql").write_text("ALTER TABLE t ALTER COLUMN a SET NOT NULL;\n"
                                                  "ALTER TABLE t ALTER COLUMN b SET NOT NULL;\n")
    found = of_rule(lint_bundle(load_bundle(root)), "adding-not-nullable-field")
    assert [f.message.split(" on ")[0] for f in found] == ['ALTER COLUMN "b" SET NOT NULL']


# --- identifiers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kept", [
    ("a" * 63, "a" * 63),
    ("a" * 64, "a" * 63),
    ("é" * 32, "é" * 31),  # 64 bytes: the 32nd two-byte character would straddle byte 63
    ("a" + "é" * 31, "a" + "é" * 31),  # exactly 63 bytes
    ("ab" + "€" * 21, "ab" + "€" * 20),  # 65 bytes; a three-byte character is cut off whole
    ("😀" * 16, "😀" * 15),  # 64 bytes of four-byte characters
])
def test_names_are_truncated_like_postgresql_at_63_bytes_on_a_character_boundary(name: str, kept: str) -> None:
    assert pg_truncate(name) == kept and len(kept.encode()) <= 63


def test_a_long_multibyte_identifier_is_reported_with_its_byte_length_and_line() -> None:
    (f,) = of_rule(lint_sql('SELECT 1;\nCREATE TABLE t (\n  "' + "é" * 32 + '" int\n);'), "identifier-too-long")
    assert f.line == 3
    assert f.message.startswith(f'identifier "{"é" * 32}" is 64 bytes') and f'will be "{"é" * 31}"' in f.message


# --- suppressions -----------------------------------------------------------------------------------

def test_a_suppression_with_a_reason_on_the_line_above_keeps_the_finding_marked_suppressed() -> None:
    sql = ("-- Drop the table nobody reads\n-- schema-deploy: ignore ban-drop-table emptied and unused since v42\n"
           "DROP TABLE t;\nDROP TABLE u;\n")
    by_line = {f.line: f for f in of_rule(lint_sql(sql), "ban-drop-table")}
    assert by_line[3].suppressed and by_line[3].reason == "emptied and unused since v42" and not by_line[3].blocking
    assert not by_line[4].suppressed and by_line[4].blocking
    assert "suppressed error[ban-drop-table]" in by_line[3].render()
    assert "reason: emptied and unused since v42" in by_line[3].render()


def test_a_suppression_at_the_end_of_the_first_line_covers_that_statement_and_may_list_rules() -> None:
    sql = ("CREATE INDEX i ON t (a); -- schema-deploy: ignore require-concurrent-index,prefer-robust-stmts "
           "table holds 20 rows\n")
    (f,) = of_rule(lint_sql(sql), "require-concurrent-index")
    assert f.suppressed and f.reason == "table holds 20 rows"


def test_a_suppression_separated_by_a_blank_line_does_not_apply() -> None:
    (f,) = of_rule(lint_sql("-- schema-deploy: ignore ban-drop-table gone\n\nDROP TABLE t;\n"), "ban-drop-table")
    assert not f.suppressed


def test_a_suppression_without_reason_is_an_error_and_suppresses_nothing() -> None:
    findings = lint_sql("-- schema-deploy: ignore ban-drop-table\nDROP TABLE t;\n")
    (drop,) = of_rule(findings, "ban-drop-table")
    (meta,) = of_rule(findings, "suppression-without-reason")
    assert not drop.suppressed and drop.blocking
    assert (meta.severity, meta.line, meta.blocking) == ("error", 1, True)


# --- configuration ----------------------------------------------------------------------------------

def test_severity_overrides_from_deploy_yaml_change_and_turn_off_rules(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("lint:\n  severity:\n    require-concurrent-index: warning\n"
                    "    ban-drop-table: off\n")
    config = load_deploy_yaml(path).lint
    findings = lint_sql("CREATE INDEX i ON t (a);\nDROP TABLE t;\n", config=config)
    (index,) = of_rule(findings, "require-concurrent-index")
    assert index.severity == "warning" and not index.blocking
    assert of_rule(findings, "ban-drop-table") == []


def test_an_unknown_rule_id_in_config_is_an_error_listing_the_valid_ids(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("lint:\n  severity:\n    require-concurrent-indexes: warning\n")
    config = load_deploy_yaml(path).lint  # config checks the form; the rule ids are lint's to check
    with pytest.raises(ConfigError, match=r"unknown rule id 'require-concurrent-indexes' \(did you mean "
                                          r"require-concurrent-index\?\)\. Valid rule ids: .*ban-drop-table, ") as info:
        lint_sql("CREATE TABLE t (a int);\n", config=config)
    assert info.value.exit_code == 2 and all(rid in str(info.value) for rid in RULES)


@pytest.mark.parametrize("data, problem", [
    ({"lint": {"severity": {"ban-drop-table": "fatal"}}}, r"lint\.severity\.ban-drop-table: expected 'error', "
                                                          r"'warning', 'info' or 'off', got the string 'fatal'"),
    ({"lint": {"severities": {}}}, r"lint\.severities: unknown key\. Did you mean severity \(in lint\)\?"),
    ({"lint": {"severity": ["ban-drop-table"]}}, r"lint\.severity: expected a mapping \(keys indented under it\), "
                                                 r"got a list"),
    (["lint"], r"expected a mapping of settings at the top level, got a list"),
])
def test_malformed_lint_config_is_rejected_with_the_fix(data: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config_from(data, "deploy.yaml")


def test_no_config_file_means_default_severities(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_deploy_yaml(tmp_path / "absent.yaml").lint == LintConfig()
    with pytest.raises(ConfigError, match=r"missing\.yaml: not found\. Pass an existing file with --config"):
        load_deploy_yaml(tmp_path / "missing.yaml", must_exist=True)


# --- the Epic 5 bundle and the CLI ------------------------------------------------------------------

def test_epic5_bundle_reports_twelve_blocking_indexes_and_the_foreign_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # no deploy.yaml here
    code = main(["lint", "--migrations", str(MIGRATIONS), "--json"])
    findings = json.loads(capsys.readouterr().out)
    assert code == 1
    epic5 = [f for f in findings if f["migration"] == EPIC5 and not f["suppressed"]]
    indexes = [f for f in epic5 if f["rule"] == "require-concurrent-index"]
    assert len(indexes) == 12 and all(f["severity"] == "error" for f in indexes)
    assert {re.match(r'CREATE INDEX on "(\w+)"', f["message"])[1] for f in indexes} == {
        "study_schedule_recommendations", "behavioral_events", "behavioral_patterns", "struggle_predictions",
        "recommendations", "personalization_configs"}
    (fk,) = [f for f in epic5 if f["rule"] == "adding-foreign-key-constraint"]
    assert fk["line"] == 10 and '"experiment_assignments_experimentId_fkey"' in fk["message"]
    assert not [f for f in findings if f["rule"] == "identifier-too-long"]  # the 63-byte name is allowed
    # The example contract after it: Prisma's SET NOT NULL and CREATE INDEX, both fixed by the online plan.
    contract = sorted((f["rule"], f["line"]) for f in findings if f["migration"] == "20251103090100_event_date_contract"
                      and f["severity"] == "error")
    assert contract == [("adding-not-nullable-field", 4), ("require-concurrent-index", 6)]
    assert not [f for f in findings if f["migration"] not in (EPIC5, "20251103090100_event_date_contract")
                and f["severity"] == "error"]


def test_a_64_byte_index_name_in_epic5_is_reported_with_the_name_postgresql_keeps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root)
    sql = root / EPIC5 / "migration.sql"
    sql.write_text(sql.read_text().replace(NAME_63, NAME_63[:-4] + "x_idx"))
    monkeypatch.chdir(tmp_path)
    assert main(["lint", "--migrations", str(root)]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "warning[identifier-too-long]" in x]
    assert line.startswith(f"{sql}:39: warning[identifier-too-long] identifier \"{NAME_63[:-4]}x_idx\" is 64 bytes")
    assert f'will be "{NAME_63[:-4]}x_id"' in line


def test_text_output_groups_findings_by_file_with_help_and_a_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    main(["lint", "--migrations", str(MIGRATIONS)])
    lines = capsys.readouterr().out.splitlines()
    first = lines.index(next(x for x in lines if "error[require-concurrent-index]" in x))
    assert re.match(rf"^{re.escape(str(MIGRATIONS))}/{EPIC5}/migration\.sql:21: error\[require-concurrent-index\] "
                    r'CREATE INDEX on "study_schedule_recommendations" takes a SHARE lock', lines[first])
    assert lines[first + 1].startswith("  help: Use CREATE INDEX CONCURRENTLY")
    assert "" in lines and re.match(r"^15 error\(s\), \d+ warning\(s\), \d+ info in 4 migration\(s\)$", lines[-1])


def test_a_clean_bundle_exits_zero_and_config_errors_exit_two(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "20250101000000_ok.sql").write_text("CREATE TABLE a (id bigint PRIMARY KEY);\n")
    monkeypatch.chdir(tmp_path)
    assert main(["lint", "--migrations", str(root)]) == 0
    (tmp_path / "deploy.yaml").write_text("lint: {severity: {no-such-rule: off}}\n")
    assert main(["lint", "--migrations", str(root)]) == 2
    assert "unknown rule id 'no-such-rule'" in capsys.readouterr().err


def test_suppressed_errors_do_not_fail_the_lint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "migrations"
    root.mkdir()
    (root / "20250101000000_drop.sql").write_text(
        "-- schema-deploy: ignore ban-drop-table replaced by events_v2 in release 42\nDROP TABLE IF EXISTS events;\n")
    monkeypatch.chdir(tmp_path)
    assert main(["lint", "--migrations", str(root)]) == 0
    out = capsys.readouterr().out
    assert "suppressed error[ban-drop-table]" in out and "reason: replaced by events_v2 in release 42" in out
    assert out.rstrip().endswith("0 error(s), 0 warning(s), 0 info in 1 migration(s); 1 suppressed")


def test_python_m_schema_deploy_lint_runs_on_the_real_bundle(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "schema_deploy", "lint", "--migrations", str(MIGRATIONS)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "plugins"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.count("error[require-concurrent-index]") == 13  # Epic 5's 12, the example contract's 1
    assert proc.stdout.count("error[adding-foreign-key-constraint]") == 1


def test_render_of_no_findings_is_just_the_summary() -> None:
    assert render([], 3) == "0 error(s), 0 warning(s), 0 info in 3 migration(s)"


# --- fastparse: the same statements as parse.parse_sql, faster ------------------------------------------

TRICKY = [
    "SELECT 0, '', 1.5, true, null, B'1', x'ff', -3, ARRAY[1,2], (1,2), $$a$$;",
    "INSERT INTO t VALUES (1, 'é'), (2, '€');  -- ü\nSELECT 'ÿ' FROM \"é\" WHERE a IN (1, 2);",
    "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;",
    "WITH x AS (SELECT * FROM t ORDER BY a DESC NULLS LAST LIMIT 3) UPDATE t SET a = x.a FROM x;",
    "CREATE MATERIALIZED VIEW mv AS SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM t "
    "GROUP BY ROLLUP (a, b);",
    "GRANT SELECT ON t TO r; COMMENT ON TABLE t IS 'x'; CREATE EXTENSION IF NOT EXISTS pgcrypto; DO $$ BEGIN END $$;",
    "CREATE TABLE p (a int, b text COLLATE \"C\") PARTITION BY RANGE (a);\n"
    "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (10);",
    "SELECT a::text, CAST(b AS numeric(10,2)), c IS DISTINCT FROM d, e BETWEEN 1 AND 2, f LIKE 'x%', "
    "CASE WHEN g THEN 1 ELSE 2 END, COALESCE(h, 0), i[1], j->>'k' FROM t",
]


def differences(a: object, b: object, where: str = "stmt") -> list[str]:
    """Attribute-by-attribute differences of two ASTs, locations included (pglast's == ignores them)."""
    if type(a) is not type(b):
        return [f"{where}: {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, ast.Node):
        return [d for attr in a for d in differences(getattr(a, attr), getattr(b, attr), f"{where}.{attr}")]
    if isinstance(a, tuple):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def corpus(tmp_path: Path) -> list[str]:
    generate(tmp_path / "generated", 30)
    bundles = [load_bundle(MIGRATIONS), load_bundle(tmp_path / "generated")]
    cases = [sql for fires, misses in CASES.values() for sql in [s for s, _ in fires] + misses]
    return [m.sql for b in bundles for m in b.migrations] + cases + TRICKY


def test_fastparse_builds_exactly_the_ast_pglast_builds_for_every_statement(tmp_path: Path) -> None:
    for text in corpus(tmp_path):
        for stmt in parse_sql(text, path="m.sql", migration="m"):
            (expected,) = [r.stmt for r in pglast.parse_sql(stmt.sql)]
            ((built, start, end),) = parse_statements(stmt.sql)
            assert (start, end) == (0, len(stmt.sql)), stmt.sql
            assert differences(expected, built) == [], stmt.sql


def test_fastparse_reports_syntax_errors_where_pglast_does() -> None:
    for text in ["SELECT 'ééé' AS x oops", "CREATE TABLE"]:
        with pytest.raises(pglast.parser.ParseError) as slow:
            pglast.parse_sql(text)
        with pytest.raises(pglast.parser.ParseError) as fast:
            parse_statements(text)
        assert fast.value.args == slow.value.args
