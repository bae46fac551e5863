"""Lint rules for teams that also deploy with Prisma: where `prisma migrate deploy` reads SQL differently.

Prisma 6's schema engine, run through a driver adapter (`@prisma/adapter-pg`, the only
way its WebAssembly engine talks to PostgreSQL), hands each migration to the adapter's
`executeScript`, which is ``script.split(";")``: every `;` ends a statement, wherever it
stands. PostgreSQL's lexical rules (which schema-deploy's splitter follows, as psql does)
say that a `;` inside a comment, a string, a dollar-quoted body or a quoted identifier is
text, and that the `;`s of a `BEGIN ATOMIC … END` body belong to one statement. Each such
`;` is a place where the two readings part (the splitter notes them in its one pass); `tests/integration/test_prisma_splitter.py` proves the
cases against the real CLI.
"""
from __future__ import annotations

from collections.abc import Iterator

from schema_deploy.bundle.splitter import Cut, split
from schema_deploy.lint.registry import Context, Violation, rule

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
# One finding per `;` up to this many per file; then one that counts the rest (a data seed can hold
# a million `;`s in its strings, and a finding each would be noise, and memory).
MAX_CUT_FINDINGS = 20


def prisma_cuts(source: str, statements: int | None = None) -> list[Cut]:
    """Every `;` of `source` that Prisma's splitter cuts at although PostgreSQL reads it as part of a token
    or of a statement, in order (the splitter's pass finds them; `statements` is not needed any more)."""
    return list(split(source).cuts())


@rule("warning")
def prisma_splitter_semicolon(ctx: Context) -> Iterator[Violation]:
    """A `;` that Prisma's driver-adapter deploy splits at but PostgreSQL does not (error with prisma.deploys).

    Inside a -- or /* */ comment, any string literal, a dollar-quoted body, a quoted
    identifier, or between the statements of a BEGIN ATOMIC body. A warning by default;
    `prisma: {deploys: true}` in deploy.yaml makes it an error.
    """
    cut = ctx.split if ctx.split is not None else split(ctx.source)
    statements, i = ctx.statements, 0  # the statement a line belongs to: the last starting on or before it
    shown = 0
    lines: list[int] = []
    for c in cut.cuts():
        while i + 1 < len(statements) and statements[i + 1].line <= c.line:
            i += 1
        if shown == MAX_CUT_FINDINGS:
            lines.append(c.line)
            continue
        shown += 1
        where, consequence, fix = KINDS[c.kind]
        yield Violation(
            f"`;` inside {where} (column {c.column}): {CONSEQUENCE}, because {SPLITTER} and {consequence} "
            f"(PostgreSQL, and schema-deploy, read this `;` as part of {where})",
            fix, statement=statements[i] if statements else None, line=c.line)
    if lines:
        yield Violation(
            f"{len(lines)} more `;` like these (lines {lines[0]}-{lines[-1]}), not listed one by one: {CONSEQUENCE}, "
            f"because {SPLITTER}", "See the findings above for each kind's fix.",
            statement=statements[i] if statements else None, line=lines[0])
