"""The design's import rules (../shared/DESIGN.md "Packages"), read from the source with `ast`:
no import cycles anywhere (module-level, inside functions or under TYPE_CHECKING); `fedmed.fl.site`
never imports `fedmed.fl.server` nor the reverse, and `fedmed.fl.wire` imports neither; only
`fedmed.fl` imports flwr; `secure_agg`, `policies` and `audit` import neither torch nor flwr; no
function-level imports inside `fedmed.fl`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedmed", "secure_agg", "policies", "audit")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, ast.AST]]:
    """(imported module, node) of every import in the file: module-level, in functions, anywhere."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from package import submodule` imports the submodule
                out.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node))
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {target for target, _ in imports(path, name, known) if target in known and target != name}
            for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return out


def test_the_walker_sees_a_cycle_hidden_in_a_function():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def _imports_of(prefix: str) -> list[tuple[str, str]]:
    found = modules()
    return [(name, target) for name, path in found.items() if name == prefix or name.startswith(prefix + ".")
            for target, _ in imports(path, name, set(found))]


@pytest.mark.parametrize(("side", "forbidden"), [
    ("fedmed.fl.site", ("fedmed.fl.server",)),
    ("fedmed.fl.server", ("fedmed.fl.site",)),
    ("fedmed.fl.wire", ("fedmed.fl.site", "fedmed.fl.server", "fedmed.fl.launch")),
    ("secure_agg", ("torch", "flwr", "fedmed")),
    ("policies", ("torch", "flwr", "fedmed")),
    ("audit", ("torch", "flwr", "fedmed")),
])
def test_a_side_never_imports_what_it_must_not(side, forbidden):
    bad = [(name, target) for name, target in _imports_of(side)
           if any(target == f or target.startswith(f + ".") for f in forbidden)]
    assert bad == []


def test_only_fedmed_fl_imports_flwr():
    outside = [(name, target) for name, target in _imports_of("fedmed")
               if (target == "flwr" or target.startswith("flwr.")) and not name.startswith("fedmed.fl")]
    assert outside == []


def test_no_function_level_imports_in_fedmed_fl():
    found = modules()
    late = []
    for name, path in found.items():
        if not name.startswith("fedmed.fl"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            late += [f"{name}:{node.lineno}" for node in ast.walk(function)
                     if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert late == []


def test_policies_name_the_methods_of_the_registry():
    """`policies` cannot import torch, so it keeps its own list of method names: the registry's."""
    from fedmed.models import METHODS
    from policies import METHODS as POLICY_METHODS
    from policies.schema import Method

    assert POLICY_METHODS == tuple(METHODS) and Method.__args__ == tuple(METHODS)


def test_policies_name_the_recipes_of_the_registry():
    """`policies` keeps its own list of recipe names too: the registry's."""
    from fedmed.recipes import RECIPES
    from policies import RECIPES as POLICY_RECIPES
    from policies.schema import RecipeName

    assert POLICY_RECIPES == tuple(RECIPES) and RecipeName.__args__ == tuple(RECIPES)
