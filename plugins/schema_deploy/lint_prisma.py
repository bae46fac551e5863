"""Lint rules for teams that also deploy with Prisma: where `prisma migrate deploy` reads SQL differently.

Prisma 6's schema engine, run through a driver adapter (`@prisma/adapter-pg`, the only
way its WebAssembly engine talks to PostgreSQL), hands each migration to the adapter's
`executeScript`, which is ``script.split(";")``: every `;` ends a statement, wherever it
stands. PostgreSQL's own lexer (which schema-deploy uses, through pglast) knows that a
`;` inside a comment, a string, a dollar-quoted body or a quoted identifier is text, and
that the `;`s of a `BEGIN ATOMIC … END` body belong to one statement. Each such `;` is a
place where the two readings part; `tests/integration/test_prisma_splitter.py` proves the
cases against the real CLI.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pglast.parser import scan, split

from schema_deploy.lint_rules import Context, Violation, rule
from schema_deploy.parse import Statement, line_col

CONSEQUENCE = "`prisma migrate deploy` through a driver adapter will fail here"
SPLITTER = "it cuts the script at every `;`"

# What each kind of token does to the piece Prisma sends, and how to write it without a `;`.
KINDS: dict[str, tuple[str, str]] = {
    "line-comment": (
        "a -- comment",
        "the rest of the comment line reaches PostgreSQL as SQL",
        "Reword the comment without `;` (a `:` or `,` reads the same)."),
    "line-comment-in-statement": (
        "a -- comment within a statement",
        "PostgreSQL receives the statement cut off at the comment",
        "Reword the comment without `;`, or move it above the statement."),
    "block-comment": (
        "a /* */ comment",
        "PostgreSQL receives an unterminated /* comment",
        "Reword the comment without `;`, or make it a -- comment with nothing after the `;`."),
    "string": (
        "a string literal",
        "PostgreSQL receives an unterminated quoted string",
        "Build the value without a literal `;`, e.g. 'x' || chr(59) || 'y'."),
    "escape-string": (
        "an E'…' string",
        "PostgreSQL receives an unterminated quoted string",
        "Write the `;` as an escape, E'x\\073y' (octal 073 is `;`)."),
    "dollar-quoted": (
        "a dollar-quoted body",
        "PostgreSQL receives an unterminated dollar-quoted string (every PL/pgSQL function or DO block "
        "with more than one statement has this)",
        "Prisma cannot deploy this through a driver adapter: keep such bodies in migrations applied by "
        "schema-deploy (which sends PostgreSQL one whole statement at a time), or for a SQL function use "
        "a single-statement body without `;`."),
    "quoted-identifier": (
        "a quoted identifier",
        "PostgreSQL receives an unterminated quoted identifier",
        "Rename it without `;`."),
    "atomic-body": (
        "a BEGIN ATOMIC … END body",
        "PostgreSQL receives the function cut off after its first statement",
        "Prisma cannot deploy this through a driver adapter: apply it with schema-deploy, or write the "
        "function with a single-statement body."),
}
QUOTED = {"SCONST", "IDENT", "USCONST", "UIDENT", "SQL_COMMENT", "C_COMMENT"}


@dataclass(frozen=True)
class Cut:
    """A `;` at a character offset that Prisma's splitter ends a statement at and PostgreSQL does not."""

    offset: int
    kind: str


def token_kind(text: str, name: str) -> str | None:
    """Which `KINDS` entry a token holding a `;` is (None: a kind that cannot hold one)."""
    if name == "SQL_COMMENT":
        return "line-comment"
    if name == "C_COMMENT":
        return "block-comment"
    if name in ("IDENT", "UIDENT"):
        return "quoted-identifier" if text[:1] == '"' or text[:3].upper() == 'U&"' else None
    if text[:1] == "$":
        return "dollar-quoted"
    if text[:1] in "eE":
        return "escape-string"
    return "string"


def blank_after(comment: str, at: int) -> bool:
    """Does nothing but blanks (or another -- comment) follow the `;` at `at` of a -- comment, up to its next
    `;` or the end of the line? Then the piece Prisma sends next starts with nothing of this comment."""
    rest = comment[at + 1:].split(";", 1)[0].strip()
    return rest == "" or rest.startswith("--")


def prisma_cuts(source: str, statements: int) -> list[Cut]:
    """Every `;` of `source` (a file that parses, with `statements` statements) that Prisma's splitter cuts
    at although PostgreSQL reads it as part of a token or of a statement, in order."""
    if ";" not in source:
        return []
    cuts: list[Cut] = []
    separators: list[int] = []
    maybe: list[int] = []  # `;` ending a -- comment line: harmless between statements, fatal inside one
    for token in scan(source):
        if token.name == "ASCII_59":
            separators.append(token.start)
            continue
        if token.name not in QUOTED:
            continue
        text = source[token.start: token.end + 1]
        if ";" not in text:
            continue
        kind = token_kind(text, token.name)
        if kind is None:
            continue
        for i, ch in enumerate(text):
            if ch != ";":
                continue
            if kind == "line-comment" and blank_after(text, i):
                maybe.append(token.start + i)
            else:
                cuts.append(Cut(token.start + i, kind))
    if maybe or len(separators) > statements:
        # The parser's statement slices (comments between statements excluded) tell a `;` inside a
        # statement from one between statements; more `;` tokens than statements means some end a
        # statement of a BEGIN ATOMIC body (or an empty statement, which both readings skip).
        slices = split(source, with_parser=True, only_slices=True)

        def inside(at: int) -> bool:
            return any(s.start <= at < s.stop for s in slices)

        cuts.extend(Cut(at, "line-comment-in-statement") for at in maybe if inside(at))
        cuts.extend(Cut(at, "atomic-body") for at in separators if inside(at))
    return sorted(cuts, key=lambda c: c.offset)


def statement_at(statements: list[Statement], line: int) -> Statement | None:
    """The statement a line belongs to for suppressions: the last one starting on or before it, else the
    first (a header comment belongs to the statement below it)."""
    before = [s for s in statements if s.line <= line]
    return before[-1] if before else (statements[0] if statements else None)


@rule("warning")
def prisma_splitter_semicolon(ctx: Context) -> Iterator[Violation]:
    """A `;` that Prisma's driver-adapter deploy splits at but PostgreSQL does not (error with prisma.deploys).

    Inside a -- or /* */ comment, any string literal, a dollar-quoted body, a quoted
    identifier, or between the statements of a BEGIN ATOMIC body. A warning by default;
    `prisma: {deploys: true}` in deploy.yaml makes it an error.
    """
    for cut in prisma_cuts(ctx.source, len(ctx.statements)):
        line, column = line_col(ctx.source, cut.offset)
        where, consequence, fix = KINDS[cut.kind]
        yield Violation(
            f"`;` inside {where} (column {column}): {CONSEQUENCE}, because {SPLITTER} and {consequence} "
            f"(PostgreSQL, and schema-deploy, read this `;` as part of {where})",
            fix, statement=statement_at(ctx.statements, line), line=line)
