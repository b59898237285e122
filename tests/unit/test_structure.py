"""The package's structure: imports point down the data flow, no cycles, no private imports.

Every import of every module is read with ``ast`` (imports inside functions too, since a cycle
hidden in a function is still a cycle), resolved to the sergraph module it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sergraph

PACKAGE_ROOT = Path(sergraph.__file__).parent

# Lower layers never import higher ones (the data flow of the README's Layout section).
LAYERS = [
    {"sergraph.version", "sergraph.io", "sergraph.console", "sergraph.metrics"},
    {"sergraph.optim"},  # optimisers and schedules: validated by config, built by training
    {"sergraph.data"},
    {"sergraph.models"},
    {"sergraph.config"},
    {"sergraph.results"},
    {"sergraph.training"},
    {"sergraph.deploy"},
    {"sergraph.cli", "sergraph.cli_parser", "sergraph"},
]


def module_name(path: Path) -> str:
    parts = ["sergraph", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        if "configs" in path.relative_to(PACKAGE_ROOT).parts:
            continue
        found[module_name(path)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported sergraph module, imported names) of every import statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("sergraph")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("sergraph"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in known]
            found += [(sub, []) for sub in submodules]
            rest = [name for name in names if f"{target}.{name}" not in known]
            if rest or not submodules:
                found.append((target, rest))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports_of(path, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            # A package's __init__ importing its own submodules to fill a registry is not a
            # dependency of the package on itself.
            if target != name and not (path.name == "__init__.py" and target.startswith(name)):
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> int:
    for number, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names - {"sergraph"}):
            return number
    if module == "sergraph":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in this test")


def test_cycle_finder_finds_a_known_cycle():
    # The finder itself, on a hand-made graph: a -> b -> c -> a is one cycle, d hangs off it.
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_point_down_the_data_flow():
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_no_module_imports_private_names_of_another():
    known = modules()
    offending = []
    for name, path in known.items():
        for target, names in imports_of(path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                offending.append(f"{name} imports {private} from {target}")
    assert offending == []


@pytest.mark.parametrize("package", ["data", "models", "training", "results", "deploy"])
def test_every_package_states_its_responsibility(package):
    doc = ast.get_docstring(ast.parse((PACKAGE_ROOT / package / "__init__.py").read_text()))
    assert doc and len(doc.splitlines()[0]) > 20, f"sergraph/{package}/__init__.py has no summary"
