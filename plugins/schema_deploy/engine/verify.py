"""Verification after a migration: prove the database has what the migrations say.

Three kinds of checks, all read-only towards user data:

* **expectations derived from the migrations' statements**: each created index
  exists on its table and is valid and ready; each added constraint exists and
  is validated (and a foreign key has its ON DELETE action); each added column
  has its declared type and nullability; each SET NOT NULL holds;
* **SQL checks** in `sql/verify/*.sql`, each returning rows of
  `(check, ok, detail)` — the Epic 5 plan's own verification queries, corrected;
* **index usage**: `EXPLAIN` of one representative query per new index
  (`sql/verify/explain/*.sql`, first line `-- expect-index: NAME`) must use it;
  on a table under `criteria.PLANNER_MIN_ROWS` rows the check is *not
  measurable* (a sequential scan is the planner's right choice there), never a
  failure and never a pass.

Also facts for the report: exact row counts, index sizes, query timings.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream
from psycopg import sql

from schema_deploy.bundle.parse import Statement, relname
from schema_deploy.engine.criteria import PLANNER_MIN_ROWS, check_counts
from schema_deploy.pg import db

AT = enums.AlterTableType
CT = enums.ConstrType
FK_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass
class CheckResult:
    """One verification check."""

    name: str
    ok: bool
    detail: str
    source: str  # "migration file:line", "sql/verify/…", "explain/…"
    unmeasured: str = ""  # why it could not be judged at this scale (then `ok`: it is no failure); "" = judged

    @property
    def status(self) -> str:
        """"ok", "FAIL" or "not measurable", as the log and `render` print it."""
        return "not measurable" if self.unmeasured else "ok" if self.ok else "FAIL"

    def line(self) -> str:
        """What was checked, the result, the evidence: one log line."""
        return f"{self.status}: {self.name}: {self.unmeasured or self.detail} ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


@dataclass
class VerifyReport:
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    @property
    def unmeasured(self) -> list[CheckResult]:
        return [c for c in self.checks if c.unmeasured]

    def counts(self) -> str:
        """`42 checks: 40 passed, 2 not measurable` (failures counted when there are any)."""
        passed = len(self.checks) - len(self.failed) - len(self.unmeasured)
        return check_counts(len(self.checks), passed, len(self.failed), len(self.unmeasured))

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [c.as_dict() for c in self.checks]}


def split_name(name: str, default_schema: str = "public") -> tuple[str, str]:
    return tuple(name.split(".", 1)) if "." in name else (default_schema, name)  # type: ignore[return-value]


# --- expectations derived from statements ------------------------------------------

def expectations(statements: list[Statement]) -> list[tuple[str, Statement, dict]]:
    """(kind, statement, details) for everything a statement promises to leave behind."""
    out: list[tuple[str, Statement, dict]] = []
    for st in statements:
        if st.node_type not in (ast.IndexStmt, ast.AlterTableStmt):  # nothing else promises what is checked
            continue
        node = st.node
        if isinstance(node, ast.IndexStmt) and node.idxname:
            schema = node.relation.schemaname or "public"
            out.append(("index", st, {"schema": schema, "name": node.idxname, "table": node.relation.relname}))
        elif isinstance(node, ast.AlterTableStmt):
            schema, table = split_name(relname(node.relation))
            for cmd in node.cmds or ():
                out.extend(alter_expectations(st, schema, table, cmd))
    return later_nullability(out)


def later_nullability(found: list[tuple[str, Statement, dict]]) -> list[tuple[str, Statement, dict]]:
    """A column added NULL that a later statement makes NOT NULL (expand, then contract), or the other
    way round, is expected as the last of them left it."""
    out: list[tuple[str, Statement, dict]] = []
    added: dict[tuple[str, str, str], int] = {}
    for kind, st, d in found:
        key = (d["schema"], d["table"], d.get("column", ""))
        if kind == "column":
            added[key] = len(out)
        elif kind in ("not-null", "drop-not-null") and key in added:
            k, s0, d0 = out[added[key]]
            out[added[key]] = (k, s0, {**d0, "not_null": kind == "not-null"})
        if kind != "drop-not-null":
            out.append((kind, st, d))
    return out


def alter_expectations(st: Statement, schema: str, table: str, cmd: ast.AlterTableCmd) -> list[tuple[str, Statement, dict]]:
    base = {"schema": schema, "table": table}
    if cmd.subtype == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        col = cmd.def_
        not_null = any(isinstance(c, ast.Constraint) and c.contype in (CT.CONSTR_NOTNULL, CT.CONSTR_PRIMARY)
                       for c in col.constraints or ())
        return [("column", st, {**base, "column": col.colname, "type": RawStream()(col.typeName), "not_null": not_null})]
    if cmd.subtype == AT.AT_SetNotNull:
        return [("not-null", st, {**base, "column": cmd.name})]
    if cmd.subtype == AT.AT_DropNotNull:
        return [("drop-not-null", st, {**base, "column": cmd.name})]  # only updates an earlier column's
    if cmd.subtype == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) and cmd.def_.conname:
        c = cmd.def_
        details = {**base, "name": c.conname, "validated": not c.skip_validation}
        if c.contype == CT.CONSTR_FOREIGN:
            details["on_delete"] = FK_ACTIONS.get(c.fk_del_action, "NO ACTION")
        return [("constraint", st, details)]
    return []


def check_expectations(conn: psycopg.Connection, statements: list[Statement]) -> list[CheckResult]:
    results = []
    for kind, st, d in expectations(statements):
        check = {"index": check_index, "column": check_column, "not-null": check_not_null,
                 "constraint": check_constraint}[kind]
        results.append(check(conn, st, d))
    return results


def check_index(conn: psycopg.Connection, st: Statement, d: dict) -> CheckResult:
    row = conn.execute(
        """SELECT t.relname, x.indisvalid, x.indisready, pg_get_indexdef(x.indexrelid)
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
           WHERE i.oid = to_regclass(%s)""",
        (db.quoted(d["schema"], d["name"]),)).fetchone()
    name = f"index {d['name']}"
    if row is None:
        return CheckResult(name, False, "missing", st.where)
    table, valid, ready, definition = row
    ok = table == d["table"] and valid and ready
    state = "" if valid and ready else " (INVALID: an interrupted concurrent build; re-run apply)"
    return CheckResult(name, ok, definition + state, st.where)


def check_column(conn: psycopg.Connection, st: Statement, d: dict) -> CheckResult:
    actual = conn.execute(
        """SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attname = %s
             AND NOT a.attisdropped""", (db.quoted(d["schema"], d["table"]), d["column"])).fetchone()
    name = f"column {d['table']}.{d['column']}"
    if actual is None:
        return CheckResult(name, False, "missing", st.where)
    expected_type = canonical_type(conn, d["type"])
    ok = actual[0] == expected_type and actual[1] == d["not_null"]
    nullability = "NOT NULL" if actual[1] else "NULL"
    return CheckResult(name, ok, f"{actual[0]} {nullability} (expected {expected_type} "
                                 f"{'NOT NULL' if d['not_null'] else 'NULL'})", st.where)


def canonical_type(conn: psycopg.Connection, type_sql: str) -> str:
    """PostgreSQL's own spelling of a declared type, typmod included (timestamp(3) without time zone)."""
    with conn.transaction(force_rollback=True):
        conn.execute(sql.SQL("CREATE TEMP TABLE schema_deploy_type_probe (x {}) ON COMMIT DROP").format(sql.SQL(type_sql)))
        return conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = 'schema_deploy_type_probe'::regclass AND attname = 'x'").fetchone()[0]


def check_not_null(conn: psycopg.Connection, st: Statement, d: dict) -> CheckResult:
    row = conn.execute(
        """SELECT a.attnotnull FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attname = %s""",
        (db.quoted(d["schema"], d["table"]), d["column"])).fetchone()
    ok = bool(row and row[0])
    return CheckResult(f"NOT NULL {d['table']}.{d['column']}", ok, "NOT NULL" if ok else "nullable", st.where)


def check_constraint(conn: psycopg.Connection, st: Statement, d: dict) -> CheckResult:
    row = conn.execute(
        """SELECT k.convalidated, k.confdeltype, pg_get_constraintdef(k.oid) FROM pg_constraint k
           WHERE k.conname = %s AND k.conrelid = to_regclass(%s)""",
        (d["name"], db.quoted(d["schema"], d["table"]))).fetchone()
    name = f"constraint {d['name']}"
    if row is None:
        return CheckResult(name, False, "missing", st.where)
    validated, deltype, definition = row
    ok = validated or not d["validated"]
    if "on_delete" in d:
        ok = ok and FK_ACTIONS.get(deltype) == d["on_delete"]
    return CheckResult(name, ok, definition + ("" if validated else " (NOT VALIDATED)"), st.where)


# --- checks from files ------------------------------------------------------------

def run_sql_checks(conn: psycopg.Connection, folder: Path) -> list[CheckResult]:
    """Every `folder/*.sql` check; each returns rows of (check, ok, detail)."""
    results = []
    for path in sorted(folder.glob("*.sql")):
        source = f"{folder.name}/{path.name}"
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                rows = conn.execute(path.read_text()).fetchall()
        except psycopg.Error as exc:
            results.append(CheckResult(path.stem, False, f"the check failed to run: {exc.diag.message_primary}", source))
            continue
        if not rows:
            results.append(CheckResult(path.stem, False, "returned no rows", source))
        results.extend(CheckResult(str(r[0]), bool(r[1]), str(r[2]), source) for r in rows)
    return results


def explain_queries(folder: Path) -> list[tuple[str, str, Path]]:
    """(expected index, query, file) for each representative query."""
    out = []
    for path in sorted(folder.glob("*.sql")):
        lines = path.read_text().splitlines()
        if lines and lines[0].startswith("-- expect-index:"):
            out.append((lines[0].split(":", 1)[1].strip(), "\n".join(lines[1:]).strip().rstrip(";"), path))
    return out


def run_explain_checks(conn: psycopg.Connection, folder: Path,
                       min_rows: int = PLANNER_MIN_ROWS) -> list[CheckResult]:
    """EXPLAIN each representative query; the plan must use its index. On a table of fewer than
    `min_rows` rows the check is not measurable: a sequential scan is the planner's right choice there."""
    results = []
    for index, query, path in explain_queries(folder):
        name, source = f"planner uses {index}", f"explain/{path.name}"
        table, rows = table_of_index(conn, index, min_rows)
        if table is not None and rows < min_rows:
            results.append(CheckResult(name, True, f"{table} has {rows:,} rows", source, unmeasured=(
                f"{table} has {rows:,} rows, fewer than {min_rows:,}: too small for the planner to choose {index}")))
            continue
        plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(query))).fetchone()[0]
        used = sorted(set(indexes_in_plan(plan)))
        results.append(CheckResult(name, index in used, f"plan uses: {', '.join(used) or 'no index'}", source))
    return results


def table_of_index(conn: psycopg.Connection, index: str, up_to: int) -> tuple[str | None, int]:
    """The table of `index` (found on the search path) and its exact row count, counted up to `up_to`
    (a deterministic answer to "is it that big", without counting a large table to the end)."""
    row = conn.execute("SELECT x.indrelid::regclass::text FROM pg_index x WHERE x.indexrelid = to_regclass(%s)",
                       (db.quoted(index, split=False),)).fetchone()
    if row is None:
        return None, 0
    table = row[0]
    count = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(sql.SQL(table)),
                         (up_to,)).fetchone()[0]
    return table, int(count)


def indexes_in_plan(node: object) -> list[str]:
    if isinstance(node, list):
        return [i for n in node for i in indexes_in_plan(n)]
    if isinstance(node, dict):
        found = [node["Index Name"]] if "Index Name" in node else []
        for key in ("Plan", "Plans"):
            if key in node:
                found += indexes_in_plan(node[key])
        return found
    return []


# --- facts for the report -----------------------------------------------------------

def row_counts(conn: psycopg.Connection, tables: list[str]) -> dict[str, int]:
    """Exact row counts (count(*)) of existing tables."""
    counts = {}
    for table in tables:
        schema, name = split_name(table)
        if db.relation_exists(conn, schema, name):
            counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(db.ident(schema, name))).fetchone()[0]
    return counts


def index_sizes(conn: psycopg.Connection, names: list[str]) -> dict[str, int]:
    sizes = {}
    for name in names:
        schema, idx = split_name(name)
        row = conn.execute("SELECT pg_relation_size(to_regclass(%s))", (db.quoted(schema, idx),)).fetchone()
        if row and row[0] is not None:
            sizes[name] = int(row[0])
    return sizes


def query_timings(conn: psycopg.Connection, folder: Path, runs: int = 5) -> dict[str, float | None]:
    """Median execution time (ms, EXPLAIN ANALYZE) of each representative query.

    A query that cannot run yet (before the migration adds its column) times as None.
    """
    timings: dict[str, float | None] = {}
    for index, query, _ in explain_queries(folder):
        samples = []
        try:
            with conn.transaction():
                for _ in range(runs):
                    out = conn.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(sql.SQL(query))).fetchone()[0]
                    samples.append(float(out[0]["Execution Time"]))
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject):
            timings[index] = None
            continue
        timings[index] = round(statistics.median(samples), 3)
    return timings


def performance_facts(index_bytes: dict[str, int], before_ms: dict[str, float | None],
                      after_ms: dict[str, float | None], expect_mb: tuple[float, float],
                      expect_speedup_pct: tuple[float, float]) -> dict[str, object]:
    """New index storage and query timings against the plan's expectations, as facts (never a failure)."""
    total_mb = sum(index_bytes.values()) / 1e6
    lo, hi = expect_mb
    storage = "within" if lo <= total_mb <= hi else ("below" if total_mb < lo else "above")
    lines = [f"new index storage {total_mb:.1f} MB for {len(index_bytes)} indexes: {storage} the plan's "
             f"expected {lo:g}-{hi:g} MB"]
    speedups = {}
    for name in sorted(after_ms):
        b, a = before_ms.get(name), after_ms[name]
        if b is None or a is None:
            lines.append(f"{name}: {a if a is not None else '?'} ms after; no before timing (the query needs the "
                         "migration's columns)")
            continue
        pct = (b - a) / b * 100 if b > 0 else 0.0
        speedups[name] = round(pct, 1)
        verdict = ("within" if expect_speedup_pct[0] <= pct <= expect_speedup_pct[1]
                   else "above" if pct > expect_speedup_pct[1] else "below")
        change = f"{pct:.0f}% faster" if pct >= 0 else f"{-pct:.0f}% slower"
        lines.append(f"{name}: {b:.3f} ms -> {a:.3f} ms ({change}; {verdict} the plan's "
                     f"{expect_speedup_pct[0]:g}-{expect_speedup_pct[1]:g}% improvement)")
    met = [p for p in speedups.values() if p >= expect_speedup_pct[0]]
    return {"lines": lines, "storage_mb": round(total_mb, 2), "storage": storage, "speedup_pct": speedups,
            "speedups_meeting_plan": len(met)}


def verify(conn: psycopg.Connection, statements: list[Statement], verify_dir: Path | None) -> VerifyReport:
    """Every check: expectations from `statements`, then the folder's SQL and EXPLAIN checks."""
    report = VerifyReport(check_expectations(conn, statements))
    if verify_dir is not None and verify_dir.is_dir():
        report.checks += run_sql_checks(conn, verify_dir)
        if (verify_dir / "explain").is_dir():
            report.checks += run_explain_checks(conn, verify_dir / "explain")
    return report


def render(report: VerifyReport) -> str:
    lines = [f"{c.status:<5} {c.name:<72} {(c.unmeasured or c.detail)[:110]}"
             for c in report.checks]
    lines.append(report.counts())
    return "\n".join(lines)

