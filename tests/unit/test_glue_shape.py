"""The Airflow glue stays glue: short task bodies, data along the DAG's edges, task ids in one place.

Read from the source with `ast` (no Airflow import): a "task body" is a function a DAG file
decorates with `@task…`, the glue function that task delegates to (`steps.apply_to(…)`), a
`@fail_fast` step, and an operator's `execute`/`execute_complete`. Each is at most
`MAX_BODY_LINES` lines (its docstring aside): a longer one holds a rule that belongs in
`schema_deploy.pipeline`, where it is tested without Airflow.

No task body pulls another task's XCom by id. The exceptions, by their job, are named below:
the functions that read a whole run (the audit composer and the records), the failure callback's
Slack thread, and a deferrable task reading its own progress.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GLUE = REPO / "plugins" / "schema_deploy_airflow"
DAGS = REPO / "dags"
MAX_BODY_LINES = 10

# module.function (or module.Class.method) -> why it may read other tasks' XComs by id.
RUN_READERS = {
    "steps.run_results": "the audit composer's and the records' read of every task of the run",
    "steps.run_preflight": "the run's first Slack message, for the callbacks and records that thread under it",
    "steps.compose_audit": "the audit composer: the approval's decision, pushed under its own key",
    "rollback_steps.approval": "rollback_schema's record: the group's approval answer",
    "rollback_steps.approval_results": "rollback_schema's record: the approval's error, under its own key",
    "operators.WaitForWindowOperator.execute_complete": "its own progress across the deferral (self.task_id)",
    "fleet_steps.run_outcomes": "the fleet record: every part's outcomes, failed tasks' included",
    "fleet_steps.windowed_progress": "windowed's own progress across its deferrals",
    "steps.health_deferral": "a production phase's own progress across its health-gate deferrals (ti.task_id)",
}


def functions(tree: ast.Module, module: str):
    """(qualified name, node) of every function and method of a module."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{module}.{node.name}", node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{module}.{node.name}.{item.name}", item


def body_lines(node: ast.FunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def decorator_names(node: ast.FunctionDef) -> list[str]:
    names = []
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        names.append(ast.unparse(target))
    return names


@functools.cache
def glue_modules() -> dict[str, ast.Module]:
    """Each glue module's tree, parsed once for the whole file (the trees are only read)."""
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(GLUE.glob("*.py"))}


def dag_tasks() -> list[tuple[str, ast.FunctionDef]]:
    """Every @task-decorated function of the DAG files, nested in the @dag function."""
    found = []
    for path in sorted(DAGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(n == "task" or n.startswith("task.")
                                                         for n in decorator_names(node)):
                found.append((f"{path.stem}.{node.name}", node))
    return found


def delegated(task: ast.FunctionDef) -> set[str]:
    """The glue functions a DAG task calls (`steps.apply_to(…)` -> "steps.apply_to")."""
    return {ast.unparse(call.func) for call in ast.walk(task) if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and (GLUE / f"{call.func.value.id}.py").exists()}


@functools.cache
def task_bodies() -> dict[str, ast.FunctionDef]:
    """Every task body of the glue, by qualified name (found once: each parametrized case reads it)."""
    modules = glue_modules()
    every = {name: node for module, tree in modules.items() for name, node in functions(tree, module)}
    bodies = dict(dag_tasks())
    for _, task in dag_tasks():
        bodies.update({name: every[name] for name in delegated(task) if name in every})
    for name, node in every.items():
        if "fail_fast" in decorator_names(node) or name.rsplit(".", 1)[-1] in ("execute", "execute_complete"):
            bodies[name] = node
    return bodies


def test_the_rule_sees_every_dags_tasks_and_the_steps_they_delegate_to() -> None:
    bodies = task_bodies()
    for expected in ("deploy_schema.apply_staging", "steps.apply_to", "steps.verify_production",
                     "operators.ApplyProductionOperator.execute", "operators.ApplyProductionOperator.execute_complete",
                     "rollback_schema.safety_backup", "rollback_steps.run_rollback", "deploy_fleet.canary",
                     "operators.ProductionApprovalOperator.execute", "operators.WaitForWindowOperator.execute"):
        assert expected in bodies, expected
    assert len(bodies) > 40


@pytest.mark.parametrize("name", sorted(task_bodies()))
def test_a_task_body_is_at_most_ten_lines(name: str) -> None:
    node = task_bodies()[name]
    assert body_lines(node) <= MAX_BODY_LINES, (
        f"{name} (line {node.lineno}) has {body_lines(node)} lines: move its rules into schema_deploy.pipeline "
        "and keep the glue to reading inputs, calling one step and returning its result")


def test_body_lines_counts_statements_not_the_docstring() -> None:
    node = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n\n    return a\n').body[0]
    assert body_lines(node) == 3


def xcom_reads(tree: ast.AST) -> list[ast.AST]:
    """Calls of `.xcom_pull(…)` and template strings that call it."""
    return [node for node in ast.walk(tree)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "xcom_pull")
            or (isinstance(node, ast.Constant) and isinstance(node.value, str) and "xcom_pull(" in node.value)]


def docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            ids.add(id(node.body[0].value))
    return ids


def test_only_the_named_run_readers_pull_another_tasks_xcom_by_id() -> None:
    offenders = []
    for module, tree in glue_modules().items():
        docs = docstrings(tree)
        inside = {id(n): name for name, fn in functions(tree, module) for n in ast.walk(fn)}
        for node in xcom_reads(tree):
            if id(node) in docs:
                continue
            where = inside.get(id(node), module)
            if where not in RUN_READERS:
                offenders.append(f"{where} (plugins/schema_deploy_airflow/{module}.py:{node.lineno})")
    for path in sorted(DAGS.glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = docstrings(tree)
        offenders += [f"dags/{path.name}:{n.lineno}" for n in xcom_reads(tree) if id(n) not in docs]
    assert offenders == [], "XCom pulled by task id outside the run readers: pass the upstream task's value " \
                            "(its XComArg) to the task instead"


def test_the_readers_of_their_own_progress_read_only_their_own_task() -> None:
    modules = glue_modules()
    for name, why in RUN_READERS.items():
        if "own progress" not in why:
            continue
        module, _, rest = name.partition(".")
        node = dict(functions(modules[module], module)).get(name)
        assert node is not None, f"{name} is named as a reader but does not exist"
        for call in (c for c in ast.walk(node) if isinstance(c, ast.Call) and getattr(c.func, "attr", "") == "xcom_pull"):
            ids = [k.value for k in call.keywords if k.arg == "task_ids"]
            assert ids and ast.unparse(ids[0]) in ("self.task_id", "ti.task_id"), ast.unparse(call)


def test_every_named_reader_exists() -> None:
    every = {name for module, tree in glue_modules().items() for name, _ in functions(tree, module)}
    assert sorted(set(RUN_READERS) - every) == []


def test_task_ids_are_constants_of_one_module_not_literals_in_the_dags() -> None:
    literal = []
    for path in sorted(DAGS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "task_id" and isinstance(node.value, ast.Constant):
                literal.append(f"dags/{path.name}:{node.value.lineno} task_id={node.value.value!r}")
    assert literal == [], "name task ids by schema_deploy_airflow.task_ids' constants"
