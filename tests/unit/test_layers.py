"""The package's layers, as its docstring writes them: no upward import, no cycle, no Airflow.

The order is read from `schema_deploy/__init__.py`'s docstring (the indented table, lowest layer
first), so the rule a newcomer reads is the rule this test enforces. Imports under
`if TYPE_CHECKING:` are not runtime imports and are left out; imports inside functions are in.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "plugins" / "schema_deploy"
MAX_TOP_LEVEL_MODULES = 12


def layer_order(package: Path) -> list[str]:
    """The layer names of the package docstring's table: one indented `name   what it owns` per line."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()), clean=False) or ""
    table = doc.split("::", 1)[1] if "::" in doc else ""
    return [m[1] for m in re.finditer(r"^ {4}(\w+) {2,}\S", table, re.M)]


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name relative to it (`engine.apply`, `pipeline.fleet`)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def runtime_imports(path: Path, name: str, package: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for each import that runs: of the package's own modules and of Airflow."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int]] = []

    def target(dotted: str) -> str | None:
        if dotted == "airflow" or dotted.startswith("airflow."):
            return "airflow"
        if not (dotted == package or dotted.startswith(package + ".")):
            return None
        inner = dotted[len(package) + 1:]
        while inner and inner not in known:
            inner = inner.rpartition(".")[0]
        return inner

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if (t := target(alias.name)) is not None:
                    out.append((t, node.lineno))

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                here = here[:len(here) - node.level + 1]
                base = ".".join([package, *here, *([node.module] if node.module else [])])
            for alias in node.names:
                if (t := target(f"{base}.{alias.name}")) is not None:
                    out.append((t, node.lineno))

    Visitor().visit(tree)
    return [(t, line) for t, line in out if t != name]


def violations(package: Path) -> list[str]:
    """What breaks the rule, one line each: file:line, the import and why."""
    order = layer_order(package)
    mods = modules(package)
    known = set(mods) - {""}
    problems = []
    tops = {m.split(".")[0] for m in known} - {"__main__"}
    problems += [f"{package.name}/{t}: not in the layer table of {package.name}/__init__.py" for t in sorted(tops - set(order))]
    graph: dict[str, set[str]] = {m: set() for m in known}
    for name in sorted(known):
        path = mods[name]
        where = path.relative_to(package.parent)
        for imported, line in runtime_imports(path, name, package.name, known):
            if imported == "airflow":
                problems.append(f"{where}:{line}: imports Airflow; the package runs without it (Airflow glue "
                                "lives in schema_deploy_airflow)")
                continue
            if not imported:
                continue
            graph[name].add(imported)
            mine, theirs = name.split(".")[0], imported.split(".")[0]
            if mine in order and theirs in order and order.index(theirs) > order.index(mine):
                problems.append(f"{where}:{line}: {mine} imports {imported}, a higher layer ({theirs} comes after "
                                f"{mine} in {package.name}/__init__.py)")
    problems += [f"import cycle: {' → '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path per cycle found by a depth-first walk (enough to name it)."""
    found, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def test_the_package_docstring_lists_every_layer_lowest_first() -> None:
    order = layer_order(PACKAGE)
    assert order[:3] == ["redact", "errors", "config"] and order[-2:] == ["views", "cli"]
    assert len(order) == len(set(order))


def test_no_module_imports_a_higher_layer_airflow_or_itself_in_a_cycle() -> None:
    assert violations(PACKAGE) == []


def may_import(doc: str, order: list[str], layer: str) -> tuple[set[str], bool]:
    """What a subpackage's docstring says it may import, and whether it says it as an exact list:
    "every layer", "every layer up to `X`", or the names in backquotes up to the sentence's end
    (a name's part in parentheses, like "for type hints only", is not a runtime import)."""
    said = " ".join(doc.split("May import:", 1)[1].split())
    below = order[:order.index(layer)]
    if said.startswith("every layer up to"):
        upto = re.match(r"every layer up to `(\w+)`", said)[1]
        return set(order[:order.index(upto) + 1]), False
    if said.startswith("every layer"):
        return set(below), False
    sentence = re.split(r"\.(?:\s|$)", said, maxsplit=1)[0]
    sentence = re.sub(r"\([^)]*\)", "", sentence)
    return set(re.findall(r"`([\w.]+)`", sentence)), True


def test_each_subpackage_says_what_it_owns_and_what_it_may_import_and_imports_no_more() -> None:
    order, mods = layer_order(PACKAGE), modules(PACKAGE)
    known = set(mods) - {""}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        layer = init.parent.name
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns" in doc and "May import:" in doc, \
            f"{init}: the docstring must say what the subpackage owns and may import"
        allowed, exact = may_import(doc, order, layer)
        assert allowed <= set(order[:order.index(layer)]) | {a for a in allowed if "." in a}, \
            f"{init}: may import only layers below {layer}"
        used = set()
        for name in known:
            if name.split(".")[0] == layer:
                for imported, _ in runtime_imports(mods[name], name, "schema_deploy", known):
                    if imported and imported.split(".")[0] != layer:
                        used.add(imported if imported in allowed else imported.split(".")[0])
        assert used <= allowed, f"{init}: imports {sorted(used - allowed)}, which its docstring does not allow"
        if exact:
            assert allowed == used, f"{init}: says it may import {sorted(allowed - used)}, which it does not"


def test_no_more_than_twelve_modules_sit_directly_in_the_package() -> None:
    direct = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(direct) <= MAX_TOP_LEVEL_MODULES, direct


def test_errors_imports_nothing_of_the_package_but_redact() -> None:
    mods = modules(PACKAGE)
    imported = {m for m, _ in runtime_imports(mods["errors"], "errors", "schema_deploy", set(mods))}
    assert imported == {"redact"}
    assert runtime_imports(mods["redact"], "redact", "schema_deploy", set(mods)) == []


# --- the checker itself fails where it must -------------------------------------------------

def make_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for rel, text in files.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


DOC = '"""Layers::\n\n    low    the bottom\n    high   the top\n"""\n'


@pytest.mark.parametrize("files, expected", [
    ({"low/a.py": "from pkg.high import b\n", "high/b.py": ""},
     r"pkg/low/a\.py:1: low imports high\.b, a higher layer \(high comes after low in pkg/__init__\.py\)"),
    ({"low/a.py": "def f():\n    from pkg.high.b import x\n", "high/b.py": "x = 1\n"},
     r"pkg/low/a\.py:2: low imports high\.b, a higher layer"),
    ({"low/a.py": "import airflow.sdk\n"}, r"pkg/low/a\.py:1: imports Airflow"),
    ({"low/a.py": "from pkg.low import b\n", "low/b.py": "from pkg.low import a\n"},
     r"import cycle: low\.a → low\.b → low\.a"),
    ({"middle/a.py": ""}, r"pkg/middle: not in the layer table"),
])
def test_the_checker_reports_upward_imports_airflow_cycles_and_unlisted_layers(
        tmp_path: Path, files: dict[str, str], expected: str) -> None:
    package = make_package(tmp_path, {"__init__.py": DOC, "low/__init__.py": "", "high/__init__.py": "", **files})
    found = violations(package)
    assert any(re.search(expected, line) for line in found), found


def test_the_checker_leaves_type_checking_imports_and_downward_imports_alone(tmp_path: Path) -> None:
    package = make_package(tmp_path, {
        "__init__.py": DOC, "low/__init__.py": "", "high/__init__.py": "",
        "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high.b import x\n",
        "high/b.py": "from pkg.low import a\nx = 1\n"})
    assert violations(package) == []
