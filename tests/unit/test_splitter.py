"""The splitter: psql's cut of a file into statements, every character accounted for.

Property-based tests (hypothesis, fixed seed, bounded examples) build files from statements
with comments, strings, E'' strings, dollar quotes, quoted identifiers, BEGIN ATOMIC bodies,
transaction blocks and non-ASCII text, and check that the split gives back exactly the
statements that went in, that PostgreSQL's own parser (pglast on the whole file) reads the
same statements, and that a NUL byte anywhere is refused at its line and column.
"""
from __future__ import annotations

import re

import pglast
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast.stream import RawStream

from schema_deploy.bundle.errors import ClientOnlyStatement, SqlSyntaxError, UnaccountedBytes
from schema_deploy.bundle.parse import parse_file, parse_sql
from schema_deploy.bundle.splitter import Lines, SplitProblem, account, split

PROPERTY = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- building blocks of generated files ----------------------------------------------------------------

words = st.sampled_from(["a", "b1", "total", "user_id", "é", "naïve", "日本", "x$y"])
text_in_quotes = st.text(alphabet=st.sampled_from(list("ab ;-/*$'\"\\\n\tßé€😀")), max_size=12)


def literal(draw) -> str:
    kind = draw(st.sampled_from(["plain", "escape", "dollar", "tagged", "ident", "number", "bits"]))
    body = draw(text_in_quotes)
    if kind == "plain":
        return "'" + body.replace("'", "''") + "'"
    if kind == "escape":
        return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if kind == "dollar":
        return "$$" + body.replace("$", "") + "$$"
    if kind == "tagged":
        return "$fn$" + body.replace("$", "") + "$fn$"
    if kind == "ident":
        return '"' + (body.replace('"', '""') or "q") + '"'
    if kind == "bits":
        return "B'1010'"
    return str(draw(st.integers(0, 10**6)))


def inline_comment(draw) -> str:
    body = draw(text_in_quotes).replace("*/", "").replace("/*", "").replace("\n", " ")
    if draw(st.booleans()):
        return f"/* {body} /* nested; */ */"
    return f"-- {body}\n"


@st.composite
def select(draw) -> str:
    items = [literal(draw) for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        items[0] = f"{inline_comment(draw)} {items[0]}"
    return f"SELECT {', '.join(items)}"


@st.composite
def insert(draw) -> str:
    values = ", ".join(f"({literal(draw)}, {literal(draw)})" for _ in range(draw(st.integers(1, 3))))
    return f'INSERT INTO "t;{draw(words)}" (a, b) VALUES {values}'


@st.composite
def atomic_function(draw) -> str:
    replace = "OR REPLACE " if draw(st.booleans()) else ""
    kind = draw(st.sampled_from(["FUNCTION", "PROCEDURE"]))
    body = "; ".join(["SELECT 1", f"SELECT CASE WHEN true THEN {literal(draw)} ELSE 'x' END",
                      "INSERT INTO t VALUES (1)"][: draw(st.integers(1, 3))])
    returns = "RETURNS int " if kind == "FUNCTION" else ""
    return f"CREATE {replace}{kind} f{draw(st.integers(0, 9))}() {returns}LANGUAGE sql BEGIN ATOMIC {body}; END"


@st.composite
def plpgsql(draw) -> str:
    return (f"CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $body$\nBEGIN\n  NEW.a := {literal(draw)};\n"
            "  RETURN NEW;\nEND\n$body$")


@st.composite
def ddl(draw) -> str:
    return draw(st.sampled_from([
        "CREATE TABLE t (id int PRIMARY KEY, note text DEFAULT ';')",
        "ALTER TABLE t ADD COLUMN c int",
        'CREATE INDEX "t_c_idx" ON t (c)',
        "DO $$ BEGIN PERFORM 1; END $$",
        "COMMENT ON TABLE t IS 'a; b'",
    ]))


statement = st.one_of(select(), insert(), atomic_function(), plpgsql(), ddl())


@st.composite
def separator(draw) -> str:
    parts = [";"]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(st.sampled_from(["\n", "\r\n", "  ", "\t", "\n\n", ";"])))
        if draw(st.booleans()):
            parts.append(inline_comment(draw).rstrip("\n") + "\n")
    return "".join(parts) + draw(st.sampled_from(["\n", " ", "\r\n"]))


@st.composite
def migration_file(draw) -> tuple[str, list[str]]:
    """A file's text and the statements that went into it (BEGIN/COMMIT included, as written)."""
    head = draw(st.sampled_from(["", "-- header\n", "/* a\n   block */\n", "\n\n"]))
    statements: list[str] = []
    chunks = [head]
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            inner = draw(st.lists(st.one_of(select(), insert(), ddl()), min_size=1, max_size=3))
            group = ["BEGIN", *inner, draw(st.sampled_from(["COMMIT", "END", "commit"]))]
        else:
            group = [draw(statement)]
        for s in group:
            statements.append(s)
            chunks.append(s + draw(separator()))
    if draw(st.booleans()):  # the last statement without its `;`
        chunks[-1] = statements[-1] + draw(st.sampled_from(["", "\n", "\n-- trailing\n"]))
    return "".join(chunks), statements


def deparsed(nodes) -> list[str]:
    return [RawStream()(n) for n in nodes]


# --- properties --------------------------------------------------------------------------------------

@PROPERTY
@given(migration_file())
def test_the_split_gives_back_exactly_the_statements_that_went_in(case: tuple[str, list[str]]) -> None:
    text, statements = case
    cut = split(text)
    account(cut)  # raises if a character is neither a statement, a comment, whitespace nor `;`
    assert [text[p.start:p.end] for p in cut.pieces] == statements
    for piece in cut.pieces:
        assert (piece.line, piece.column) == Lines(text).at(piece.start)


@PROPERTY
@given(migration_file())
def test_postgresql_parsing_the_whole_file_reads_the_same_statements(case: tuple[str, list[str]]) -> None:
    text, _ = case
    whole = [r.stmt for r in pglast.parse_sql(text) if not isinstance(r.stmt, pglast.ast.TransactionStmt)]
    ours = parse_sql(text)
    assert deparsed(s.node for s in ours) == deparsed(whole)


@PROPERTY
@given(migration_file(), st.data())
def test_a_nul_byte_anywhere_is_refused_at_its_line_and_column(case: tuple[str, list[str]], data) -> None:
    text, _ = case
    at = data.draw(st.integers(0, len(text)))
    spoiled = text[:at] + "\x00" + text[at:]
    with pytest.raises(UnaccountedBytes, match=r"a NUL byte \(0x00\)") as info:
        parse_sql(spoiled, path="m.sql")
    assert (info.value.line, info.value.column) == Lines(spoiled).at(at)


# --- cases -------------------------------------------------------------------------------------------

def test_a_nul_byte_in_a_comment_is_refused_instead_of_dropping_the_statements_after_it() -> None:
    text = "CREATE TABLE a (id int);\n-- note\x00 left by a merge\nCREATE TABLE b (id int);\n"
    # What PostgreSQL's C parser does with it: it stops at the NUL, and `b` is gone.
    assert len(pglast.parse_sql(text)) == 1
    with pytest.raises(UnaccountedBytes, match=r"^m\.sql:2:8: a NUL byte \(0x00\)\. Remove it .*silently "
                                               r"dropping everything after it\.$"):
        parse_sql(text, path="m.sql")


def test_a_nul_byte_in_a_statement_is_named_at_its_own_place() -> None:
    with pytest.raises(UnaccountedBytes, match=r"^m\.sql:3:17: a NUL byte"):
        parse_sql("SELECT 1;\n\nSELECT 'abc', 'd\x00ef';\n", path="m.sql")


def test_gap_checking_names_a_character_that_is_not_sql_a_comment_or_whitespace() -> None:
    cut = split("SELECT 1;\nSELECT 2;")
    # Pretend the pass lost a character: the proof of the gaps catches it.
    broken = type(cut)(cut.text.replace("\nSELECT 2", "\n\u00a0"), cut.pieces[:1])
    with pytest.raises(SplitProblem, match=r"2:1: U\+00A0 \(NO-BREAK SPACE; bytes 0xc2 0xa0\) is neither SQL"):
        account(broken)


@pytest.mark.parametrize("text, pieces", [
    ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
    ("SELECT (1;\n2)", ["SELECT (1;\n2)"]),  # psql does not end a statement inside parentheses
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END; "
     "SELECT 3", ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN "
                  "1 END; END", "SELECT 3"]),
    ("BEGIN; SELECT 1; END;", ["BEGIN", "SELECT 1", "END"]),  # a transaction block is not an atomic body
    ("SELECT a$b$c; SELECT $1", ["SELECT a$b$c", "SELECT $1"]),  # `$` inside an identifier is no dollar quote
    ("SELECT e'\\';'; SELECT 'a\\'; SELECT 2", ["SELECT e'\\';'", "SELECT 'a\\'", "SELECT 2"]),
    ("SELECT 1 /* a /* b; */ c; */ -- d;\n; ;;", ["SELECT 1"]),  # trailing comments are not the statement
    ("SELECT 'ü';SELECT \"ü;\"", ["SELECT 'ü'", "SELECT \"ü;\""]),
])
def test_pieces_are_what_psql_sends(text: str, pieces: list[str]) -> None:
    cut = split(text)
    account(cut)
    assert [text[p.start:p.end] for p in cut.pieces] == pieces


def test_lines_and_columns_count_characters_across_crlf_and_non_ascii() -> None:
    text = "-- é\r\nSELECT 'ü';  SELECT 2;\r\n\r\n  SELECT 3;"
    assert [(p.line, p.column) for p in split(text).pieces] == [(2, 1), (2, 14), (4, 3)]


def test_a_psql_meta_command_is_refused_after_the_statements_before_it() -> None:
    with pytest.raises(ClientOnlyStatement, match=r"^m\.sql:3:1: psql meta-command `\\copy`\. Meta-commands are read "
                                                  r"by psql, not by PostgreSQL"):
        parse_sql("SELECT 1;\nSELECT 2;\n\\copy t FROM 'rows.csv'\n", path="m.sql")


def test_copy_from_stdin_is_refused_at_its_statement_before_its_data_lines() -> None:
    text = "CREATE TABLE t (a int, b text);\nCOPY t (a, b) FROM stdin;\n1\tone\n2\ttwo\n\\.\n"
    with pytest.raises(ClientOnlyStatement, match=r"^m\.sql:2:1: `COPY … FROM STDIN`: the rows would have to come "
                                                  r"from the client .* Write the rows as INSERT statements") as info:
        parse_sql(text, path="m.sql")
    assert info.value.code == "copy-from-stdin"


def test_copy_from_a_server_file_is_a_statement_like_any_other() -> None:
    (stmt,) = parse_sql("COPY t FROM '/srv/rows.csv' WITH (FORMAT csv);")
    assert stmt.node_type is pglast.ast.CopyStmt and stmt.locks == {"t": "ROW EXCLUSIVE"}


@pytest.mark.parametrize("text, where, message", [
    ("SELECT 1;\nSELECT 'abc", "2:8", "unterminated quoted string"),
    ("SELECT 1;\nSELECT $$abc", "2:8", "unterminated dollar-quoted string"),
    ("SELECT 1;\n/* open", "2:1", "unterminated /\\* comment"),
])
def test_an_unterminated_token_is_the_parsers_error_at_its_start(text: str, where: str, message: str) -> None:
    with pytest.raises(SqlSyntaxError, match=rf"^m\.sql:{where}: syntax error: {message}"):
        parse_sql(text, path="m.sql")


def test_a_data_seed_keeps_no_syntax_tree_and_rebuilds_one_when_asked() -> None:
    text = "".join(f"INSERT INTO seed VALUES ({i}, 'Zoë {i}');\n" for i in range(500)) + "CREATE INDEX i ON seed (a);"
    statements = parse_file(text).statements
    assert all(s.tree is None for s in statements[:500]) and statements[500].tree is not None
    assert isinstance(statements[7].node, pglast.ast.InsertStmt)  # rebuilt from the text
    assert statements[7].locks == {"seed": "ROW EXCLUSIVE"}


def test_a_five_megabyte_non_ascii_seed_parses_in_time_linear_in_its_size() -> None:
    """Not a speed target (bench/big_migration.py measures those): a guard against the quadratic
    position arithmetic that took minutes here, with a bound forty times what it takes."""
    import time

    row = "INSERT INTO seed (id, name, note) VALUES ({i}, 'Zoë Ünïcode {i}', '" + "lorem ipsum; " * 20 + "');\n"
    text = "".join(row.format(i=i) for i in range(15_000))
    assert len(text.encode()) > 5_000_000
    started = time.monotonic()
    statements = parse_sql(text)
    assert len(statements) == 15_000 and statements[-1].line == 15_000
    assert time.monotonic() - started < 60


def test_lines_reads_each_character_once_for_increasing_offsets() -> None:
    text = "a\nbc\n\ndef\n"
    lines = Lines(text)
    assert [lines.at(i) for i in (0, 2, 3, 5, 6, 9)] == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1), (4, 4)]
    assert lines.at(1) == (1, 2)  # going back starts over, and is still right


def test_every_semicolon_prisma_would_cut_at_is_noted_once_with_its_kind() -> None:
    text = ("SELECT ';', E'\\;', $$;$$, \"a;\" /* ; */ -- ;x\n;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n-- done;\n")
    kinds = [(text[c.offset], c.kind) for c in split(text).cuts()]
    assert kinds == [(";", "string"), (";", "escape-string"), (";", "dollar-quoted"), (";", "quoted-identifier"),
                     (";", "block-comment"), (";", "line-comment"), (";", "atomic-body")]
    assert re.fullmatch(r"[;]", text[split(text).cuts().__next__().offset])
