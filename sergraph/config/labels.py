"""Variant labels made of settings (``k=2,readout=sum``) and the grids they label.

A grid (``sergraph train -m graph.k=2,4 model.params.readout=sum,mean``, or ``grid:`` in an
experiment file) is the cross product of its keys' values; each point is one variant of one
study, labelled by its settings. A standalone run that meets another configuration in its
folder is labelled the same way, from the overrides that differ from its base
(:func:`settings_label`).

A label is

- readable: ``key=value`` pairs joined by ``,``, each key by its last dotted part (``k``,
  ``readout``), a group choice as ``model=gcn``;
- stable: a function of the settings alone, keys in sorted order, whatever the order on the
  command line;
- collision-free: two different settings never give one label (a key's full dotted path is
  used where two keys share their last part; ``/`` and ``%`` in values are escaped, so a label
  is one folder name; a label longer than :data:`MAX_LABEL` keeps its head and ends in a hash
  of the whole).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

from sergraph.config.run_id import RUNTIME_KEYS
from sergraph.config.schema import GROUPS, ConfigError

#: ``sergraph train -m``: the marker, first in an overrides list, of a multirun (grid) study.
MULTIRUN = "-m"
#: Longest label written in full (a folder name; most file systems allow 255 bytes).
MAX_LABEL = 120
#: Keys never part of a label, nor swept by a grid: they change no result, or name the study.
UNLABELLED_PREFIXES = ("run.", "logger.", "slurm.")
#: Keys whose value is a label (commas and all), never a grid's list of values.
LABEL_KEYS = ("reference", "run.label")
UNLABELLED_KEYS = (
    *RUNTIME_KEYS,
    "experiment",
    "variants",
    "reference",
    "controls",
    "grid",
    # where the data lies, not a setting of a variant
    "data.root",
    "features.precomputed.root",
)


def labelled(key: str) -> bool:
    """Whether an override's key can be part of a label (it may change a result)."""
    return key not in UNLABELLED_KEYS and not key.startswith(UNLABELLED_PREFIXES)


def split_values(text: str) -> list[str]:
    """A multirun override's values: ``2,4`` -> ``["2", "4"]``; commas inside brackets or
    quotes do not split (``folds.only=[0,1]`` is one value)."""
    values, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    values.append(current)
    return values


def format_value(value: Any) -> str:
    """A setting's value as a label writes it (YAML spelling for booleans and null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("/", "%2F")


def settings_label(settings: dict[str, Any]) -> str:
    """The label of a variant with these settings (dotted key or group -> value).

    >>> settings_label({"model.params.readout": "sum", "graph.k": 2})
    'k=2,readout=sum'
    >>> settings_label({"model": "gcn", "optim.lr": 0.0003})
    'model=gcn,lr=0.0003'
    """
    if not settings:
        raise ValueError("a label needs at least one setting")
    keys = sorted(settings, key=lambda key: (key not in GROUPS, key))
    last = [key.rsplit(".", 1)[-1] for key in keys]
    shown = [key if last.count(short) > 1 else short for key, short in zip(keys, last, strict=True)]
    label = ",".join(
        f"{name}={_escape(format_value(settings[key]))}"
        for name, key in zip(shown, keys, strict=True)
    )
    if len(label) > MAX_LABEL:
        digest = hashlib.sha256(label.encode()).hexdigest()[:10]
        label = f"{label[: MAX_LABEL - 11]}~{digest}"
    return label


def split_multirun(overrides) -> tuple[bool, list[str]]:
    """(whether the overrides are a multirun, the overrides without the marker)."""
    overrides = list(overrides)
    if overrides and overrides[0] == MULTIRUN:
        return True, overrides[1:]
    return False, overrides


def grid_of(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """A multirun's fixed overrides and its grid (key -> value texts, command-line order).

    Every override with a comma outside brackets (``graph.k=2,4``) is a grid key; the others
    apply to every point. Where no key lists several values, the grid is one point and every
    setting that may label a variant is its key (``sergraph train -m ${args_no_hyphens}``, a
    W&B agent's run: each run one point of the sweep, labelled by all its settings).

    Raises:
        ConfigError: a grid over a key that changes no result or names the study (``run.*``,
            ``logger.*``, ``folds.only``, ...), over ``experiment`` or ``data``, a repeated
            key or an empty value.
    """
    fixed, grid = [], {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        values = split_values(text)
        if len(values) == 1 or key in LABEL_KEYS:
            fixed.append(item)
            continue
        if key in ("experiment", "data") or not labelled(key):
            raise ConfigError(
                f"-m {item}: {key} cannot be a grid key (it changes no result, or names the "
                "study: one grid is one study); sweep model, trainer or result keys such as "
                "graph.k=2,4, model.params.readout=sum,mean, optim.lr=1e-4,3e-4"
            )
        if key in grid:
            raise ConfigError(f"-m: {key} is given twice; list all its values once: {key}=a,b")
        if any(value.strip() == "" for value in values) or len(set(values)) < len(values):
            raise ConfigError(
                f"-m {item}: each value must be given once and be non-empty (e.g. {key}=2,4)"
            )
        grid[key] = values
    if not grid:  # one point: every setting labels it (a W&B agent's run, one point each)
        for item in list(fixed):
            key, text = item.split("=", 1)
            if labelled(key) and key not in ("experiment", "data"):  # the last one wins
                grid[key] = [text]
                fixed.remove(item)
    return fixed, grid


def grid_variants(grid: dict[str, list]) -> dict[str, list[str]]:
    """Label -> overrides of every point of a grid (key -> values), in grid order (the first
    key's values change slowest).

    A point is labelled by the keys that take several values; a grid of one point (every key
    one value: a W&B agent's run, ``sergraph train -m ${args_no_hyphens}``) by all its keys.
    """
    if not grid:
        return {}
    texts = {key: [format_value(value) for value in values] for key, values in grid.items()}
    for key, values in texts.items():
        if not values:
            raise ConfigError(f"grid: {key} has no values; give a list, e.g. {key}: [2, 4]")
        if not labelled(key) or key in ("experiment", "data"):
            raise ConfigError(
                f"grid: {key} cannot be a grid key (it changes no result or names the study)"
            )
    swept = [key for key, values in texts.items() if len(values) > 1] or list(texts)
    out: dict[str, list[str]] = {}
    for point in itertools.product(*texts.values()):
        setting = dict(zip(texts, point, strict=True))
        out[settings_label({key: setting[key] for key in swept})] = [
            f"{key}={value}" for key, value in setting.items()
        ]
    return out
