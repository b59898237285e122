"""mkdocs hook: the reference pages are generated from the code at build time, so they cannot
drift from it.

A page holds a marker comment where generated text goes:

- ``<!-- generated: cli -->``: ``sergraph --help`` and every verb's help, from the argparse
  parser (:func:`sergraph.cli_parser.build_parser`);
- ``<!-- generated: config -->``: every configuration key with its type, default (the schema's,
  as ``configs/default.yaml`` sets it), the choices validation accepts and the schema's comment
  for it (:mod:`sergraph.config.schema`, :mod:`sergraph.config.validation`);
- ``<!-- generated: changelog -->``: ``CHANGELOG.md``;
- ``<!-- generated: report NAME -->``: the tables of ``docs/results/reports/NAME/report.md``, a
  report ``sergraph report --out`` wrote and that is committed with its ``results.csv`` and
  ``folds.csv``, so a results page shows the report's own numbers, never retyped ones
  (:func:`report_tables`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cli_reference() -> str:
    import argparse

    from sergraph.cli_parser import build_parser

    parser = build_parser()
    blocks = ["## sergraph\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    for action in parser._actions:  # argparse keeps its subparsers here, nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                blocks.append(f"## sergraph {name}\n")
                blocks.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    return "\n".join(blocks)


def field_comments(module) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment lines above the field and the one after it."""
    path = Path(module.__file__)
    source = path.read_text().splitlines()
    comments: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse("\n".join(source))):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.AnnAssign) or not isinstance(
                statement.target, ast.Name
            ):
                continue
            line = statement.lineno - 1
            above = []
            index = line - 1
            while index >= 0 and source[index].strip().startswith("#"):
                above.insert(0, source[index].strip().lstrip("#").strip())
                index -= 1
            inline = source[line].split("#", 1)[1].strip() if "#" in source[line] else ""
            text = " ".join([*above, inline]).strip()
            if text:
                comments[(node.name, statement.target.id)] = text
    return comments


def validated_choices() -> dict[str, list]:
    """key -> the choices ``sergraph.config.validation`` checks it against (its ``choice``
    calls)."""
    from sergraph.config import validation

    module_ast = ast.parse(Path(validation.__file__).read_text())
    found: dict[str, list] = {}
    names = dict(vars(validation))  # and what its functions import:
    for node in ast.walk(module_ast):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                try:
                    value = getattr(importlib.import_module(node.module), alias.name)
                except (ImportError, AttributeError):
                    continue
                names[alias.asname or alias.name] = value
    for node in ast.walk(module_ast):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "choice"):
            continue
        key, choices = node.args[0], node.args[2]
        if not isinstance(key, ast.Constant):
            continue
        if isinstance(choices, ast.Tuple):
            found[key.value] = [c.value for c in choices.elts if isinstance(c, ast.Constant)]
        elif isinstance(choices, ast.Name) and names.get(choices.id) is not None:
            found[key.value] = list(names[choices.id])
    return found


def typing_repr(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def config_reference() -> str:
    from omegaconf import OmegaConf

    from sergraph.config import compose, schema
    from sergraph.data.features import config as features_config

    defaults = OmegaConf.to_container(compose([]), resolve=True)
    comments = {**field_comments(schema), **field_comments(features_config)}
    choices = validated_choices()
    choices["eval.protocol"] = list(importlib.import_module("sergraph.data.protocol").PROTOCOLS)
    rows = []

    def walk(cls, prefix: str) -> None:
        for item in dataclasses.fields(cls):
            key = f"{prefix}{item.name}"
            if dataclasses.is_dataclass(item.type) or (
                isinstance(item.type, str)
                and hasattr(schema, item.type)
                and dataclasses.is_dataclass(getattr(schema, item.type))
            ):
                nested = item.type if not isinstance(item.type, str) else getattr(schema, item.type)
                walk(nested, key + ".")
                continue
            default = defaults
            for part in key.split("."):
                default = default.get(part) if isinstance(default, dict) else None
            doc = comments.get((cls.__name__, item.name), "")
            allowed = choices.get(key)
            if allowed:
                doc = (
                    (doc + " " if doc else "")
                    + "Choices: "
                    + ", ".join(f"`{c}`" for c in allowed)
                    + "."
                )
            kind = item.type if isinstance(item.type, str) else typing_repr(item.type)
            kind = kind.replace(" | ", " or ")  # a bar would split the table's cell
            rows.append(f"| `{key}` | `{kind}` | `{default!r}` | {doc.replace('|', '/')} |")

    root = typing.get_type_hints(schema.Config)
    for item in dataclasses.fields(schema.Config):
        cls = root[item.name]
        if dataclasses.is_dataclass(cls):
            rows.append(f"| **{item.name}** | | | |")
            walk(cls, item.name + ".")
        else:
            default = defaults.get(item.name)
            doc = comments.get(("Config", item.name), "")
            rows.append(f"| `{item.name}` | `{typing_repr(cls)}` | `{default!r}` | {doc} |")
    header = "| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
    return header + "\n".join(rows) + "\n"


def changelog() -> str:
    text = (ROOT / "CHANGELOG.md").read_text()
    return text.split("\n", 1)[1] if text.startswith("# ") else text


REPORTS = ROOT / "docs" / "results" / "reports"
FILES_OF_A_REPORT = ("report.md", "results.csv", "folds.csv")


def report_tables(name: str) -> str:
    """A committed report's Markdown for a results page: its title as a bold line, its sections
    two levels deeper, its figures left out (they are not committed). The report is taken as
    ``sergraph report`` wrote it; a report missing or incomplete stops the build."""
    folder = REPORTS / name
    missing = [f for f in FILES_OF_A_REPORT if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: a committed report needs {', '.join(FILES_OF_A_REPORT)}; missing "
            f"{', '.join(missing)} (copy them from `sergraph report --out DIR`)"
        )
    text = (folder / "report.md").read_text()
    text = text.split("\n## Figures", 1)[0].rstrip() + "\n"
    title, _, body = text.partition("\n")
    title = title.removeprefix("# ").strip()
    body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", body, flags=re.M)
    source = f"`docs/results/reports/{name}/` (`report.md`, `results.csv`, `folds.csv`)"
    return f"**{title}** (from {source})\n{body}"


GENERATORS = {"cli": cli_reference, "config": config_reference, "changelog": changelog}
REPORT_MARKER = re.compile(r"<!-- generated: report ([A-Za-z0-9_.-]+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    for name, generate in GENERATORS.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return REPORT_MARKER.sub(lambda match: report_tables(match.group(1)), markdown)
