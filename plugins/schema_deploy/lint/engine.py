"""Lint a migration bundle: statements that lock, rewrite, lose data or break the application.

`python -m schema_deploy lint [--migrations DIR] [--db URL] [--json] [--config deploy.yaml]`

Each finding carries a rule id, a severity (error, warning, info), file:line,
a message saying what the statement blocks and for how long, and help with the
fix. The rules are functions named after their ids (`rules/locks.py`,
`rules/hygiene.py`), dispatched by pglast node type. Files are parsed by `parse`
(psql's split, then PostgreSQL's parser one statement at a time through
`fastparse`), so that a bundle of a thousand migrations lints in under two
seconds (`bench/lint_speed.py`) and a 50 MB data seed in time linear in its size
(`bench/big_migration.py`).

Files that cannot be deployed as written. A file that does not parse, or that
holds what a migration cannot run (a NUL byte, `COPY … FROM STDIN`, a psql
meta-command, transaction control with no safe meaning, a link out of the
bundle, bytes that are not UTF-8) is one finding of severity error under the
condition's id (`syntax-error`, `nul-byte`, `copy-from-stdin`, `psql-meta-command`,
`transaction-control`, `symlink-outside-bundle`, `not-utf8`, …), which no
severity setting or suppression changes. It blocks a deployment only if that
deployment runs the file (`plan.planner.unfixed_findings`).

Existing tables. Most rules fire only on tables that already hold data that
someone is using:

* with a database (`--db` or $DATABASE_URL, or `existing_tables=` from the
  caller), a relation is existing when it is in that database (one pg_class
  query for every name the bundle references; its `reltuples` estimate goes
  into the messages; names compare without the `public.` schema);
* without one, every relation is existing unless an earlier statement of the
  *same* migration file created it. A table created by an earlier file is
  existing: in production that file was applied in an earlier deployment, and
  the table has filled up since. (Two pending files applied in one deployment
  are the exception; lint with `--db` to get that right.)

In both cases a table created earlier in the same file is new: nobody can be
using it before the migration commits.

Suppressions. A comment ``-- schema-deploy: ignore <rule-id>[,<rule-id>] <reason>``
on the lines right above a statement (comment lines only, no blank line
between) or at the end of its first line suppresses those rules for that
statement. The reason is mandatory: without one the suppression takes no
effect and is itself an error (`suppression-without-reason`). Suppressed
findings stay in the output, marked with their reason.

Configuration. ``deploy.yaml`` (``--config``; by default ./deploy.yaml when it
exists) may set per-rule severities: ``lint: {severity: {rule-id: error|warning|info|off}}``;
``prisma: {deploys: true}`` (the team also runs `prisma migrate deploy`) makes
prisma-splitter-semicolon an error unless lint.severity says otherwise.

Exit code: 1 when an unsuppressed finding of severity error remains, else 0.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from schema_deploy.bundle.discover import Bundle, Migration
from schema_deploy.bundle.errors import MigrationFileError
from schema_deploy.bundle.parse import ParsedFile, Statement, parse_file, parse_migration_file
from schema_deploy.bundle.splitter import Split
from schema_deploy.config.settings import LINT_OFF, LintConfig
from schema_deploy.lint.config import checked
from schema_deploy.lint.registry import (ANY_STATEMENT, BY_NODE, FILE_RULES, META_RULES, RULES, SEVERITIES,
                                         BundleFacts, Context, Directive, Rule, norm, observe)
from schema_deploy.lint.rules import REGISTERED  # noqa: F401 - importing the rules registers them
from schema_deploy.pg.names import quoted

DIRECTIVE = re.compile(r"--\s*schema-deploy:\s*ignore\b(?P<rest>.*)$")


@dataclass(frozen=True)
class Finding:
    """One rule violation at one place, possibly suppressed with a reason."""

    rule: str
    severity: str
    path: str
    line: int
    message: str
    help: str
    migration: str = ""
    suppressed: bool = False
    reason: str | None = None
    file_problem: bool = False  # the file cannot be deployed as written (no rule ran on it)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def blocking(self) -> bool:
        """Does this finding fail the lint (and stop a deployment at preflight)?"""
        return self.severity == "error" and not self.suppressed

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def render(self) -> str:
        if self.suppressed:
            return (f"{self.where}: suppressed {self.severity}[{self.rule}] {self.message}\n"
                    f"  reason: {self.reason}")
        return f"{self.where}: {self.severity}[{self.rule}] {self.message}\n  help: {self.help}"


# --- linting -------------------------------------------------------------------------------

Parsed = ParsedFile | list[Statement] | MigrationFileError  # what lint is given for one file


def parse_bundle(bundle: Bundle) -> list[tuple[Migration, ParsedFile | MigrationFileError]]:
    """Every migration of the bundle with its parsed file, in order; a file that cannot be parsed comes
    with its error instead (lint reports it as a finding: see `problem_finding`)."""
    files: list[tuple[Migration, ParsedFile | MigrationFileError]] = []
    for m in bundle.migrations:
        try:
            files.append((m, parse_migration_file(m)))
        except MigrationFileError as exc:
            files.append((m, exc))
    return files


def lint_bundle(bundle: Bundle, *, existing_tables: set[str] | None = None, config: LintConfig | None = None,
                row_estimates: dict[str, int] | None = None) -> list[Finding]:
    """Lint every migration of `bundle`, in order (see the module docstring for "existing").

    Each file is parsed, linted and let go before the next, so a bundle's syntax trees are never
    all held at once."""
    run = Run.start(config, existing_tables, row_estimates)
    findings: list[Finding] = []
    for m in bundle.migrations:
        try:
            parsed: Parsed = parse_migration_file(m)
        except MigrationFileError as exc:
            parsed = exc
        findings.extend(run.lint_one(m, parsed))
    return findings


def lint_parsed(files: list[tuple[Migration, Parsed]], *, existing_tables: set[str] | None = None,
                config: LintConfig | None = None, row_estimates: dict[str, int] | None = None) -> list[Finding]:
    """Lint already parsed migrations (what preflight and `plan` hold after parsing them)."""
    run = Run.start(config, existing_tables, row_estimates)
    return [f for migration, parsed in files for f in run.lint_one(migration, parsed)]


def problem_finding(error: MigrationFileError, migration: str = "") -> Finding:
    """A file that cannot be deployed as written, as a finding under its condition's id. It blocks a run
    that deploys that migration (`plan.planner.unfixed_findings`); for an applied one it is history."""
    return Finding(rule=error.code, severity="error", path=str(error.path), line=error.line or 1,
                   message=error.problem, help=error.fix, migration=migration, file_problem=True)


def lint_sql(sql: str, *, path: str = "<sql>", existing_tables: set[str] | None = None,
             config: LintConfig | None = None, row_estimates: dict[str, int] | None = None) -> list[Finding]:
    """Lint one migration file's SQL text."""
    run = Run.start(config, existing_tables, row_estimates)
    try:
        parsed = parse_file(sql, path=path)
    except MigrationFileError as exc:
        return [problem_finding(exc)]
    return run.lint_file(parsed.statements, sql, path=path, migration="", split=parsed.split)


def lint_statements(statements: list[Statement], source: str, *, path: str = "<sql>", migration: str = "",
                    existing_tables: set[str] | None = None, config: LintConfig | None = None,
                    row_estimates: dict[str, int] | None = None) -> list[Finding]:
    """Run every enabled rule on one migration file's statements; `source` is the file's text."""
    run = Run.start(config, existing_tables, row_estimates)
    return run.lint_file(statements, source, path=path, migration=migration)


@dataclass
class Run:
    """One lint run: the enabled rules by node type, the database's view, what earlier files taught."""

    config: LintConfig
    by_node: dict[type, tuple[Rule, ...]]
    every_statement: tuple[Rule, ...]
    per_file: tuple[Rule, ...]
    existing: set[str] | None
    rows: dict[str, int]
    facts: BundleFacts = field(default_factory=BundleFacts)

    @classmethod
    def start(cls, config: LintConfig | None, existing_tables: set[str] | None,
              row_estimates: dict[str, int] | None) -> Run:
        config = checked(config or LintConfig())
        on = {rid for rid, r in RULES.items() if config.severity_of(r) != LINT_OFF}
        every = tuple(r for r in ANY_STATEMENT if r.id in on)
        return cls(config=config, every_statement=every,
                   by_node={t: tuple(r for r in rules if r.id in on) + every for t, rules in BY_NODE.items()},
                   per_file=tuple(r for r in FILE_RULES if r.id in on),
                   existing=None if existing_tables is None else {norm(t) for t in existing_tables},
                   rows={norm(t): n for t, n in (row_estimates or {}).items()})

    def lint_one(self, migration: Migration, parsed: Parsed) -> list[Finding]:
        """One migration's findings: its rules', or the one finding that says why it cannot be parsed."""
        if isinstance(parsed, MigrationFileError):
            return [problem_finding(parsed, migration.name)]
        if isinstance(parsed, ParsedFile):
            return self.lint_file(parsed.statements, parsed.split.text, path=str(migration.path),
                                  migration=migration.name, split=parsed.split)
        return self.lint_file(parsed, migration.sql, path=str(migration.path), migration=migration.name)

    def lint_file(self, statements: list[Statement], source: str, *, path: str, migration: str,
                  split: Split | None = None) -> list[Finding]:
        directives = parse_directives(source)
        ctx = Context(statements=statements, existing=self.existing, rows=self.rows, facts=self.facts,
                      directives=list(directives.values()), source=source, split=split)
        found: list[tuple[Rule, Statement | None, int, object]] = []
        for stmt in statements:
            rules = self.by_node.get(stmt.node_type)
            if rules:
                node = stmt.node  # built once for all of its rules (a data statement's tree is not kept)
                for r in rules:
                    for v in r.check(stmt, node, ctx):
                        found.append((r, stmt, v.line or stmt.line, v))
            else:  # rules for every statement read its text, not its tree
                for r in self.every_statement:
                    for v in r.check(stmt, None, ctx):
                        found.append((r, stmt, v.line or stmt.line, v))
            observe(stmt, ctx)
        for r in self.per_file:
            for v in r.check(ctx):
                found.append((r, v.statement, v.line or (v.statement.line if v.statement else 1), v))
        attached = attach_directives(statements, source, directives) if directives else {}
        findings = []
        for r, stmt, line, v in sorted(found, key=lambda f: f[2]):
            reason = suppression_reason(r.id, attached.get(stmt.index, ()) if stmt is not None else ())
            findings.append(Finding(rule=r.id, severity=self.config.severity_of(r), path=path, line=line,
                                    message=v.message, help=v.help, migration=migration,
                                    suppressed=reason is not None, reason=reason))
        return findings


# --- suppression comments ------------------------------------------------------------------

def parse_directives(source: str) -> dict[int, Directive]:
    """Every `-- schema-deploy: ignore …` comment of a file, by line number."""
    if "schema-deploy:" not in source:
        return {}
    found = {}
    for number, text in enumerate(source.split("\n"), start=1):  # lines as parse counts them
        m = DIRECTIVE.search(text)
        if m:
            ids, _, reason = m["rest"].strip().partition(" ")
            found[number] = Directive(line=number, rules=tuple(i for i in ids.split(",") if i),
                                      reason=reason.strip() or None)
    return found


def attach_directives(statements: list[Statement], source: str,
                      directives: dict[int, Directive]) -> dict[int, list[Directive]]:
    """Statement index -> the directives on its first line and the comment lines right above it."""
    lines = source.split("\n")
    attached: dict[int, list[Directive]] = {}
    for stmt in statements:
        mine = [directives[stmt.line]] if stmt.line in directives else []
        above = stmt.line - 1
        while above >= 1 and lines[above - 1].lstrip().startswith("--"):
            if above in directives:
                mine.append(directives[above])
            above -= 1
        if mine:
            attached[stmt.index] = mine
    return attached


def suppression_reason(rule_id: str, directives: list[Directive] | tuple) -> str | None:
    """The reason a directive gives for suppressing `rule_id` (a directive without one does not count)."""
    if rule_id in META_RULES:
        return None
    for d in directives:
        if rule_id in d.rules and d.reason:
            return d.reason
    return None


# --- the database's view -------------------------------------------------------------------

def referenced_relations(files: list[tuple[Migration, Parsed]]) -> list[str]:
    """Every table, index or view name that the statements lock or create."""
    names: set[str] = set()
    for _, parsed in files:
        if isinstance(parsed, MigrationFileError):
            continue
        for s in parsed.statements if isinstance(parsed, ParsedFile) else parsed:
            names.update(s.locks)
            names.update(s.creates)
    return sorted(names)


def relation_facts(conn: Any, names: list[str]) -> tuple[set[str], dict[str, int]]:
    """Which of `names` exist in the database, and their row estimates (one query).

    A table that was never analyzed has no estimate (reltuples = -1) and is left out of the estimates.
    """
    rows = conn.execute(
        "SELECT u.i, c.reltuples::bigint FROM unnest(%s::text[]) WITH ORDINALITY AS u(name, i) "
        "JOIN pg_class c ON c.oid = to_regclass(u.name)", ([quoted(n) for n in names],)).fetchall()
    existing = {names[i - 1] for i, _ in rows}
    estimates = {names[i - 1]: int(n) for i, n in rows if n is not None and n >= 0}
    return existing, estimates


# --- output --------------------------------------------------------------------------------

def render(findings: list[Finding], migrations: int) -> str:
    """Findings grouped by file (in bundle order), then a one-line summary."""
    blocks: list[str] = []
    current = None
    for f in findings:
        if f.path != current and current is not None:
            blocks.append("")
        current = f.path
        blocks.append(f.render())
    active = [f for f in findings if not f.suppressed]
    counts = {s: sum(1 for f in active if f.severity == s) for s in SEVERITIES}
    summary = (f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info "
               f"in {migrations} migration(s)")
    suppressed = len(findings) - len(active)
    if suppressed:
        summary += f"; {suppressed} suppressed"
    return "\n".join(blocks + ([""] if blocks else []) + [summary])


def rule_table() -> list[dict[str, str]]:
    """Every rule's id, default severity and one-line summary (for docs and --list-rules)."""
    return [{"id": r.id, "severity": r.severity, "summary": r.summary} for r in RULES.values()]
