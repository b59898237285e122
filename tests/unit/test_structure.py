"""The package's structure: imports point down the data flow, no cycles, no private imports;
one owner per fact for the names of a cell's files and folders and for the file hash.

Every import of every module is read with ``ast`` (imports inside functions too, since a cycle
hidden in a function is still a cycle), resolved to the sergraph module it names. The strings
of the code are read with ``ast`` too (docstrings and comments are prose, not code).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sergraph

PACKAGE_ROOT = Path(sergraph.__file__).parent

# Lower layers never import higher ones (the data flow of the README's Layout section).
LAYERS = [
    {
        "sergraph.version",
        "sergraph.io",
        "sergraph.console",
        "sergraph.metrics",
        "sergraph.processes",
    },
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


# ---------------------------------------------------------------------------------------------
# one owner per fact: the names of a cell's files and folders, the file hash

#: Where each spelling may appear: the run layout owns every name of a cell; a fold's name
#: (``fold-XX``, also its cell folder's) is the fold's own, in the data layer below it.
LAYOUT = "sergraph/results/layout.py"
NAME_OWNERS = {"fold": {LAYOUT, "sergraph/data/folds.py"}}
#: Files of a cell: flagged as a whole string or as part of a path built from a value.
CELL_FILES = (
    "config.yaml",
    "metrics.json",
    "predictions.csv",
    "best.ckpt",
    "last.ckpt",
    "metrics.csv",
    "metrics.before-resume.csv",
)
#: Folders of a cell: flagged as a whole string only (as words they are prose).
CELL_FOLDERS = ("checkpoints", "logs", "hpc")
VALUE = "{}"  # what a formatted value of an f-string reads as


def strings(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string of the code: constants and f-strings (each formatted value
    read as ``{}``); docstrings and other strings that are statements of their own left out."""
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr)
    }
    found = []
    inner = set()  # the pieces of an f-string, read with it
    for node in ast.walk(tree):  # breadth first: an f-string before the format specs in it
        if isinstance(node, ast.JoinedStr) and id(node) not in inner:
            text = ""
            for part in node.values:
                if isinstance(part, ast.Constant):
                    inner.add(id(part))
                    text += str(part.value)
                else:  # f"{x:02d}": its format spec is a JoinedStr, not a string of the code
                    inner.update(id(sub) for sub in ast.walk(part.format_spec or ast.Pass()))
                    text += VALUE
            if id(node) not in prose:
                found.append((node.lineno, text))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in inner
            and id(node) not in prose
        ):
            found.append((node.lineno, node.value))
    return found


def spellings(text: str) -> list[tuple[str, str]]:
    """(kind, spelling) of each name of a cell that ``text`` spells as code would: a whole
    string, or a word of a path built from a value (prose words are left alone)."""
    whole = len(text.split()) == 1
    found = []
    for word in text.split():
        built = whole or VALUE in word
        for part in word.split("/"):
            part = part.strip("()[]'\"`,;:").rstrip(".")
            if built and part in CELL_FILES:
                found.append(("file", part))
            if whole and part in CELL_FOLDERS:
                found.append(("folder", part))
            if built and part.endswith(".lock"):
                found.append(("lock", part))
            for prefix, kind in (("fold-", "fold"), ("seed-", "seed")):
                # f"fold-{i:02d}", or a whole "fold-", "fold-*" or "fold-03"
                rest = part.removeprefix(prefix) if part.startswith(prefix) else None
                by_hand = whole and rest is not None and (rest in ("", "*") or rest.isdigit())
                if f"{prefix}{VALUE}" in part or by_hand:
                    found.append((kind, part))
    return found


def misspelled_names(source: str, path: str) -> list[str]:
    """Names of a cell spelled in ``source`` (the file ``path``) outside their owner, and
    checkpoint names given to Lightning (``filename="best"``) instead of read from the layout."""
    tree = ast.parse(source)
    out = [
        f"{path}:{line}: {kind} name {spelled!r} in {text!r}"
        for line, text in strings(tree)
        for kind, spelled in spellings(text)
        if path not in NAME_OWNERS.get(kind, {LAYOUT})
    ]
    if path != LAYOUT:
        out += [
            f"{path}:{node.value.lineno}: checkpoint name filename={node.value.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.keyword)
            and node.arg == "filename"
            and isinstance(node.value, ast.Constant)
        ]
    return out


def test_name_finder_finds_hand_made_spellings():
    bad = {
        'directory / "metrics.json"': "metrics.json",
        'Path(cell, "checkpoints", "last.ckpt")': "last.ckpt",
        'csv = "logs/metrics.csv"': "metrics.csv",
        'x = "checkpoints"': "checkpoints",
        'raise OSError(f"{cell}/predictions.csv is bad")': "predictions.csv",
        'name = f"fold-{index:02d}"': "fold-{}",
        'name = f"{label} seed-{seed}"': "seed-{}",
        'lock = cell.parent / f".{cell.name}.lock"': ".{}.lock",
        'cells = root.glob("seed-*/fold-*")': "fold-*",
        'cell = root / "seed-0" / "fold-00"': "fold-00",
        'ModelCheckpoint(dirpath=d, filename="best")': "filename='best'",
    }
    for source, spelled in bad.items():
        found = misspelled_names(source, "sergraph/training/fit.py")
        assert any(spelled in line for line in found), (source, found)
    fine = [
        '"""Writes seed-0/fold-00/metrics.json and checkpoints/best.ckpt."""',
        'raise ValueError(f"{cell}: no metrics.json was written (the fold diverged)")',
        'log("expected RUN_DIR/seed-S/fold-XX/metrics.json")',
        'x = "the checkpoints are kept"',
        "path = paths.metrics  # metrics.json",
    ]
    for source in fine:
        assert misspelled_names(source, "sergraph/training/fit.py") == [], source
    # the owners spell them
    assert misspelled_names('METRICS_FILE = "metrics.json"', LAYOUT) == []
    assert misspelled_names('FOLD_PREFIX = "fold-"', "sergraph/data/folds.py") == []
    assert misspelled_names('FOLD_PREFIX = "fold-"', "sergraph/data/fingerprint.py") != []


def test_cell_names_are_spelled_only_in_the_run_layout():
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        relative = path.relative_to(PACKAGE_ROOT.parent).as_posix()
        found += misspelled_names(path.read_text(), relative)
    assert found == [], "read these names from sergraph.results.layout (CellPaths, cell_dir)"


def test_one_file_hash_helper():
    # sergraph.config and sergraph.data.features still export it, imported from sergraph.io
    defined = [
        name
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "file_sha256"
    ]
    assert defined == ["sergraph.io"]
