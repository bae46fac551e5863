"""Parsing migration SQL: located syntax errors, statement positions, and each statement's locks."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.bundle.errors import SqlSyntaxError, TransactionControlError
from schema_deploy.bundle.parse import parse_migration, parse_sql

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
EPIC5 = "20251017120000_epic5_schema_completion"

AE, EX, SRE, SH, SUE, RE = (
    "ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE ROW EXCLUSIVE", "SHARE", "SHARE UPDATE EXCLUSIVE", "ROW EXCLUSIVE")


def only(sql: str):
    (statement,) = parse_sql(sql)
    return statement


# --- syntax errors -------------------------------------------------------------------------

def test_syntax_error_reports_file_line_column_the_line_and_postgres_message(tmp_path: Path) -> None:
    path = tmp_path / "20250101000000_broken.sql"
    path.write_text("-- adds a table\nCREATE TABLE a (id int);\n\nCREATE TABEL b (id int);\n")
    (migration,) = load_bundle(tmp_path).migrations
    with pytest.raises(SqlSyntaxError) as info:
        parse_migration(migration)
    error = info.value
    assert (error.path, error.line, error.column) == (path, 4, 8)
    assert error.pg_message == 'syntax error at or near "TABEL"'
    assert str(error) == (
        f'{path}:4:8: syntax error: syntax error at or near "TABEL"\n'
        "    CREATE TABEL b (id int);\n"
        "           ^\n"
        "Fix the SQL at that position; the file was not applied anywhere."
    )


def test_syntax_error_column_counts_characters_not_bytes() -> None:
    with pytest.raises(SqlSyntaxError, match=r"^<sql>:2:19: syntax error: syntax error at or near \"oops\""):
        parse_sql("SELECT 1;\nSELECT 'ééé' AS x oops;\n")


def test_syntax_error_at_end_of_input_points_after_the_last_line() -> None:
    with pytest.raises(SqlSyntaxError, match=r"^m\.sql:2:13: syntax error: syntax error at end of input\n"
                                             r"    CREATE TABLE\n"):
        parse_sql("SELECT 1;\nCREATE TABLE\n\n", path="m.sql")


def test_syntax_error_in_a_crlf_file_shows_the_line_without_its_carriage_return() -> None:
    with pytest.raises(SqlSyntaxError, match=r"^<sql>:2:1: syntax error: syntax error at or near \"SELEC\"\n"
                                             r"    SELEC 2;\n    \^\n"):
        parse_sql("SELECT 1;\r\nSELEC 2;\r\n")


@pytest.mark.parametrize("sql, statement, line, problem", [
    ("CREATE TABLE a (id int);\n\ncommit;\n", "commit", 3, r"closes no BEGIN: PostgreSQL only warns.*Remove it, "
     r"or add BEGIN; where the transaction should start\.$"),
    ("CREATE TABLE a (id int);\nEND;\n", "END", 2, r"closes no BEGIN"),
    ("BEGIN;\nCREATE TABLE a (id int);\nROLLBACK;\n", "ROLLBACK", 3, r"would silently discard what ran before it"),
    ("CREATE TABLE a (id int);\nROLLBACK;\n", "ROLLBACK", 2, r"would silently discard what ran before it in its "
     r"transaction \(outside a block PostgreSQL only warns\)\. Remove it"),
    ("-- comment\nSTART TRANSACTION;\nSELECT 1;\n", "START TRANSACTION", 2, r"is never closed: PostgreSQL would "
     r"roll the block back when the session ends\. Add COMMIT; after the block's last statement\.$"),
    ("BEGIN;\nCREATE TABLE a (id int);\nSAVEPOINT s;\nCOMMIT;\n", "SAVEPOINT s", 3,
     r"has no safe meaning in a migration.*Remove the savepoint"),
    ("BEGIN;\nSELECT 1;\nRELEASE SAVEPOINT s;\nCOMMIT;\n", "RELEASE SAVEPOINT s", 3, r"has no safe meaning"),
    ("BEGIN;\nSELECT 1;\nROLLBACK TO s;\nCOMMIT;\n", "ROLLBACK TO s", 3, r"would silently discard part"),
    ("BEGIN;\nSELECT 1;\nBEGIN;\nSELECT 2;\nCOMMIT;\nCOMMIT;\n", "BEGIN", 3, r"inside the BEGIN block opened at "
     r"line 1: PostgreSQL ignores a nested BEGIN with a warning, so the first COMMIT would end the outer block early"),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE;\nSELECT 1;\nCOMMIT;\n", "BEGIN ISOLATION LEVEL SERIALIZABLE", 1,
     r"with transaction options\. Write the block as plain BEGIN;"),
    ("BEGIN;\nSELECT 1;\nCOMMIT AND CHAIN;\nSELECT 2;\nCOMMIT;\n", "COMMIT AND CHAIN", 3, r"AND CHAIN has no safe "
     r"meaning"),
    ("BEGIN;\nSELECT 1;\nPREPARE TRANSACTION 'x';\n", "PREPARE TRANSACTION 'x'", 3, r"two-phase commit"),
    ("BEGIN;\nCREATE INDEX CONCURRENTLY i ON t (a);\nCOMMIT;\n", "CREATE INDEX CONCURRENTLY i ON t (a)", 2,
     r"inside the BEGIN … COMMIT block of lines 1-3: PostgreSQL refuses it there \(\"cannot run inside a transaction "
     r"block\"\)\. Move it after the block's COMMIT\.$"),
])
def test_transaction_control_with_no_safe_meaning_is_refused_at_its_line(sql: str, statement: str, line: int,
                                                                         problem: str) -> None:
    with pytest.raises(TransactionControlError, match=rf"^m\.sql:{line}: `{re.escape(statement)}` {problem}") as info:
        parse_sql(sql, path="m.sql")
    assert (info.value.line, info.value.code) == (line, "transaction-control")


def test_a_begin_commit_block_is_taken_apart_into_statements_that_carry_the_block() -> None:
    sql = ("-- AlterEnum\nBEGIN;\nCREATE TYPE \"S_new\" AS ENUM ('a');\nALTER TYPE \"S\" ADD VALUE 'b';\nCOMMIT;\n"
           "\nCREATE TABLE t (id int);\nstart transaction;\nSELECT 1;\nEND;\n")
    statements = parse_sql(sql)
    assert [(s.index, s.line, s.sql) for s in statements] == [
        (1, 3, "CREATE TYPE \"S_new\" AS ENUM ('a')"), (2, 4, "ALTER TYPE \"S\" ADD VALUE 'b'"),
        (3, 7, "CREATE TABLE t (id int)"), (4, 9, "SELECT 1")]
    first, second = statements[0].block, statements[3].block
    assert (first.number, first.begin_line, first.end_line) == (1, 2, 5)
    assert (second.number, second.begin_line, second.end_line) == (2, 8, 10)
    assert statements[1].block is first and statements[2].block is None
    # ADD VALUE runs in its own autocommit step when it stands alone; inside a block, as written, in the block.
    assert statements[1].transactional and not parse_sql("ALTER TYPE s ADD VALUE 'b';")[0].transactional


def test_an_empty_block_is_harmless() -> None:
    assert parse_sql("BEGIN;\nCOMMIT;\n") == []


# --- where statements start ----------------------------------------------------------------

def test_statement_lines_and_columns_skip_comments_and_blank_lines() -> None:
    sql = (
        "-- header comment\n"                     # 1
        "\n"                                      # 2
        "/* a block\n"                            # 3
        "   comment */\n"                         # 4
        "CREATE TABLE a (id int);\n"              # 5
        "\n"                                      # 6
        "-- é non-ASCII in a comment\n"           # 7
        "   -- indented comment\n"                # 8
        "   ALTER TABLE a ADD COLUMN b int;  CREATE INDEX i ON a (b);\n"  # 9
        "\n"                                      # 10
        "DROP TABLE a;\n"                         # 11
    )
    statements = parse_sql(sql)
    assert [(s.index, s.line, s.column) for s in statements] == [(1, 5, 1), (2, 9, 4), (3, 9, 37), (4, 11, 1)]
    assert [s.sql for s in statements] == [
        "CREATE TABLE a (id int)", "ALTER TABLE a ADD COLUMN b int", "CREATE INDEX i ON a (b)", "DROP TABLE a"]
    assert [s.kind for s in statements] == ["CREATE TABLE", "ALTER TABLE", "CREATE INDEX", "DROP TABLE"]


def test_statement_where_is_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "20250101000000_x.sql"
    path.write_text("\n\nCREATE TABLE a (id int);\n")
    (migration,) = load_bundle(tmp_path).migrations
    (statement,) = parse_migration(migration)
    assert statement.where == f"{path}:3"
    assert statement.migration == "20250101000000_x"


def test_comment_only_file_has_no_statements() -> None:
    assert parse_sql("-- nothing to do\n/* really */\n") == []


# --- classification ------------------------------------------------------------------------

# sql, transactional, locks, rewrites, scans, creates
CASES = [
    ("CREATE INDEX i ON t (a)", True, {"t": SH}, set(), {"t"}, set()),
    ("CREATE UNIQUE INDEX i ON s.t (a)", True, {"s.t": SH}, set(), {"s.t"}, set()),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", False, {"t": SUE}, set(), {"t"}, set()),
    ("ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (b_id) REFERENCES b (id)", True, {"a": SRE, "b": SRE}, set(), {"a"},
     set()),
    ("ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (b_id) REFERENCES b (id) NOT VALID", True, {"a": SRE, "b": SRE},
     set(), set(), set()),
    ("ALTER TABLE a VALIDATE CONSTRAINT f", True, {"a": SUE}, set(), {"a"}, set()),
    ("ALTER TABLE a ADD COLUMN m JSONB", True, {"a": AE}, set(), set(), set()),
    ("ALTER TABLE a ADD COLUMN m int DEFAULT 0", True, {"a": AE}, set(), set(), set()),
    ("ALTER TABLE a ADD COLUMN m timestamptz DEFAULT now()", True, {"a": AE}, set(), set(), set()),
    ("ALTER TABLE a ADD COLUMN m float DEFAULT random()", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ADD COLUMN m uuid DEFAULT gen_random_uuid()", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ADD COLUMN m bigserial", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ADD COLUMN m bigint GENERATED ALWAYS AS IDENTITY", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ADD COLUMN m int GENERATED ALWAYS AS (b * 2) STORED", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ADD COLUMN b_id int REFERENCES b (id)", True, {"a": AE, "b": SRE}, set(), set(), set()),
    ("ALTER TABLE a ALTER COLUMN m TYPE bigint", True, {"a": AE}, {"a"}, set(), set()),
    ("ALTER TABLE a ALTER COLUMN m SET NOT NULL", True, {"a": AE}, set(), {"a"}, set()),
    ("ALTER TABLE a ADD CONSTRAINT c CHECK (m > 0)", True, {"a": AE}, set(), {"a"}, set()),
    ("ALTER TABLE a ADD CONSTRAINT c CHECK (m > 0) NOT VALID", True, {"a": AE}, set(), set(), set()),
    ("ALTER TABLE a ADD CONSTRAINT u UNIQUE USING INDEX u_idx", True, {"a": AE}, set(), set(), set()),
    ("ALTER TABLE a SET (fillfactor = 70)", True, {"a": SUE}, set(), set(), set()),
    ("DROP TABLE a, b", True, {"a": AE, "b": AE}, set(), set(), set()),
    ("TRUNCATE a", True, {"a": AE}, set(), set(), set()),
    ("DROP INDEX CONCURRENTLY i", False, {"i": SUE}, set(), set(), set()),
    ("VACUUM a", False, {"a": SUE}, set(), {"a"}, set()),
    ("VACUUM FULL a", False, {"a": AE}, {"a"}, set(), set()),
    ("VACUUM (FULL, ANALYZE) a", False, {"a": AE}, {"a"}, set(), set()),
    ("ANALYZE a", True, {"a": SUE}, set(), {"a"}, set()),
    ("ALTER TYPE e ADD VALUE 'x'", False, {}, set(), set(), set()),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY mv", True, {"mv": EX}, {"mv"}, set(), set()),
    ("REFRESH MATERIALIZED VIEW mv", True, {"mv": AE}, {"mv"}, set(), set()),
    ("CREATE TABLE c (id int PRIMARY KEY, b_id int REFERENCES b (id))", True, {"b": SRE}, set(), set(), {"c"}),
    ("CREATE TABLE c (b_id int, CONSTRAINT f FOREIGN KEY (b_id) REFERENCES s.b (id))", True, {"s.b": SRE}, set(),
     set(), {"c"}),
    ("REINDEX INDEX CONCURRENTLY i", False, {"i": SUE}, set(), set(), set()),
    ("CLUSTER a USING i", True, {"a": AE}, {"a"}, set(), set()),
    ("LOCK TABLE a IN SHARE MODE", True, {"a": SH}, set(), set(), set()),
    ("LOCK TABLE a", True, {"a": AE}, set(), set(), set()),
    ("INSERT INTO a VALUES (1)", True, {"a": RE}, set(), set(), set()),
    ("CREATE TRIGGER tr AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION f()", True, {"a": SRE}, set(), set(),
     set()),
    ("CREATE DATABASE d", False, {}, set(), set(), set()),
]


@pytest.mark.parametrize("sql, transactional, locks, rewrites, scans, creates", CASES,
                         ids=[c[0][:60] for c in CASES])
def test_statement_is_classified_by_transaction_lock_rewrite_and_scan(
        sql: str, transactional: bool, locks: dict[str, str], rewrites: set[str], scans: set[str],
        creates: set[str]) -> None:
    statement = only(sql)
    assert statement.transactional is transactional
    assert statement.locks == locks
    assert statement.rewrites == rewrites
    assert statement.scans == scans
    assert statement.creates == creates


def test_strongest_lock_of_a_statement_on_several_tables() -> None:
    assert only("ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES b (id)").strongest_lock() == SRE
    assert only("SELECT 1").strongest_lock() is None
    assert only("CREATE TABLE c (b_id int REFERENCES b (id))").tables == ["b", "c"]


def test_one_alter_table_with_several_subcommands_keeps_the_strongest_lock() -> None:
    statement = only("ALTER TABLE a SET (fillfactor = 70), ALTER COLUMN m TYPE bigint")
    assert statement.locks == {"a": AE}
    assert statement.rewrites == {"a"}


EPIC5_EXPECTED = [
    # line, locks, scans
    (6, {"experiment_assignments": AE}, set()),
    (10, {"experiment_assignments": SRE, "personalization_experiments": SRE}, {"experiment_assignments"}),
    (17, {"study_schedule_recommendations": AE}, set()),
    (21, {"study_schedule_recommendations": SH}, {"study_schedule_recommendations"}),
    (25, {"behavioral_events": SH}, {"behavioral_events"}),
    (27, {"behavioral_events": SH}, {"behavioral_events"}),
    (29, {"behavioral_events": SH}, {"behavioral_events"}),
    (33, {"behavioral_patterns": SH}, {"behavioral_patterns"}),
    (35, {"behavioral_patterns": SH}, {"behavioral_patterns"}),
    (39, {"struggle_predictions": SH}, {"struggle_predictions"}),
    (41, {"struggle_predictions": SH}, {"struggle_predictions"}),
    (45, {"recommendations": SH}, {"recommendations"}),
    (47, {"recommendations": SH}, {"recommendations"}),
    (51, {"personalization_configs": SH}, {"personalization_configs"}),
    (53, {"personalization_configs": SH}, {"personalization_configs"}),
]


def test_epic5_file_has_fifteen_statements_classified_as_expected() -> None:
    migration = load_bundle(MIGRATIONS).by_name()[EPIC5]
    statements = parse_migration(migration)
    assert len(statements) == 15
    got = [(s.line, s.locks, s.scans) for s in statements]
    assert got == EPIC5_EXPECTED
    assert all(s.transactional and not s.rewrites and not s.creates for s in statements)
    assert [s.kind for s in statements] == ["ALTER TABLE"] * 3 + ["CREATE INDEX"] * 12
    assert statements[1].sql.startswith('ALTER TABLE "experiment_assignments"\n  ADD CONSTRAINT')
    assert re.search(r"ON DELETE CASCADE$", statements[1].sql)


def test_baseline_file_parses_and_creates_its_tables() -> None:
    migration = load_bundle(MIGRATIONS).by_name()["20250915090000_baseline"]
    statements = parse_migration(migration)
    created = set().union(*(s.creates for s in statements))
    assert created == {"personalization_experiments", "experiment_assignments", "study_schedule_recommendations",
                       "behavioral_events", "behavioral_patterns", "struggle_predictions", "recommendations",
                       "personalization_configs"}
    assert all(s.transactional for s in statements)


@pytest.mark.parametrize("sql", [
    "INSERT INTO t (a) VALUES (1)",
    "INSERT INTO s.t SELECT * FROM u",
    'UPDATE "User" SET "url" = \'x\' WHERE "url" IS NULL',
    "DELETE FROM s.t WHERE a = 1",
    "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
    "SELECT 1",
    "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DO NOTHING",
    "COPY t FROM '/srv/x.csv'",
])
def test_data_statements_classified_from_json_match_the_classification_of_their_tree(sql: str) -> None:
    from schema_deploy.bundle.parse import Statement, classify

    (fast,) = parse_sql(sql)  # classified from the parser's JSON, no tree built
    assert fast.tree is None
    full = Statement(migration="", path=Path("m.sql"), index=1, line=1, column=1, sql=sql, tree=fast.node,
                     node_type=fast.node_type, kind=fast.kind)
    classify(full)
    assert (fast.locks, fast.rewrites, fast.scans, fast.creates, fast.transactional) == (
        full.locks, full.rewrites, full.scans, full.creates, full.transactional)
