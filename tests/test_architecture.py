"""The import rules of ARCHITECTURE.md, checked on the source files (nothing is imported).

The graph has one node per module of `hglm` and `flows` and an edge for every import statement
in a module's source, at module level or inside a function. Lazy (function-level) imports
count: a cycle that only closes at call time is still a cycle, and it is exactly the kind that
hides (`fitting` and `lmm` importing each other inside functions). Not counted: imports under
`if TYPE_CHECKING:` (they never run), and the implicit import of a parent package when a
submodule is imported (an `__init__` that re-exports its submodules is not a cycle).
`from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hglm", "flows")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in `module`'s source."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, None, node.lineno) for alias in node.names)
        else:
            source = _absolute(module, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    out.append((f"{source}.{alias.name}", None, node.lineno))
                else:
                    out.append((source, alias.name, node.lineno))
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    """Edges between the modules of `package` (imports of other packages left out)."""
    mine = [m for m in MODULES if m == package or m.startswith(package + ".")]
    return {m: {t for t, _, _ in imports_of(m) if t in mine and t != m} for m in mine}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize(
    "package",
    ["hglm", "flows"],
)
def test_no_import_cycle(package):
    found = cycles(import_graph(package))
    assert not found, f"import cycles in {package} (lazy imports included): {found}"


def test_hglm_never_imports_flows():
    bad = [
        f"{m}:{line} imports {target}"
        for m in MODULES
        if m.split(".")[0] == "hglm"
        for target, _, line in imports_of(m)
        if target.split(".")[0] == "flows"
    ]
    assert not bad, bad


def _hglm_public_names() -> set[str]:
    tree = ast.parse((ROOT / "hglm" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError("hglm/__init__.py declares no __all__")


def test_flows_uses_only_hglms_public_names():
    """`import hglm` or `from hglm import X` with X in hglm.__all__, and `hglm.X` likewise:
    hglm's modules are free to move (issue 18 renames them) without breaking the pipeline."""
    public = _hglm_public_names()
    bad = []
    for m in (m for m in MODULES if m.split(".")[0] == "flows"):
        for target, name, line in imports_of(m):
            if target.split(".")[0] != "hglm":
                continue
            if target != "hglm" or (name is not None and name not in public):
                bad.append(f"{m}:{line} imports {target}{'.' + name if name else ''}")
        tree = ast.parse(MODULES[m].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "hglm"
                and node.attr not in public
            ):
                bad.append(f"{m}:{node.lineno} uses hglm.{node.attr}")
    assert not bad, f"flows reaches past hglm's public API (hglm.__all__): {bad}"


# What may import what inside flows (ARCHITECTURE.md): the parts, each with the parts it may
# import. The entry points (cli, demo, terminal) may import anything; `resources` and `settings`
# nothing of flows. The power study sits on top of the simulator, the warehouse and the
# analysis, so it is its own part although it lives in flows/analysis/.
MAY_IMPORT = {
    "flows": set(),  # the package root: version and BLAS settings only
    "flows.settings": set(),
    "flows.resources": set(),
    "flows.warehouse": {"flows.resources"},
    "flows.analysis": {"flows", "flows.warehouse"},
    "flows.fabsim": {"flows.analysis"},  # the truth is the ranking's own impact definition
    "flows.report": {"flows.analysis", "flows.resources"},
    "flows.orchestration": {
        "flows",
        "flows.settings",
        "flows.warehouse",
        "flows.analysis",
        "flows.report",
    },
    "flows.analysis.power_study": {"flows.fabsim", "flows.warehouse", "flows.analysis"},
}
ENTRY_POINTS = {"flows.cli", "flows.demo", "flows.terminal"}


def _part(module: str) -> str:
    if module in MAY_IMPORT:
        return module
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_flows_parts_import_only_what_the_architecture_allows():
    bad = []
    for m in (m for m in MODULES if m.split(".")[0] == "flows"):
        if m in ENTRY_POINTS:
            continue
        part = _part(m)
        assert part in MAY_IMPORT, f"{m} belongs to no part of ARCHITECTURE.md"
        for target, _, line in imports_of(m):
            if target.split(".")[0] != "flows":
                continue
            other = _part(target)
            if other != part and other not in MAY_IMPORT[part]:
                bad.append(f"{m}:{line} ({part}) imports {target} ({other})")
    assert not bad, bad
