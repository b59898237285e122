"""Corpus loaders: each turns a corpus on disk into one table of utterances.

Every loader is a function ``load(root, **options) -> pandas.DataFrame`` whose rows are sorted by
``utterance`` and whose columns are, in this order:

- ``utterance`` (str): unique id, usually the file stem
- ``path`` (str): absolute path of the audio file
- ``speaker`` (str)
- ``label`` (str): canonical lower-case English emotion name (``neutral``, ``happy``, ...)
- optional, where the corpus knows them: ``session`` (str), ``gender`` (``"m"``/``"f"``),
  ``text`` (str)

Each loader module also defines ``DEFAULT_CLASSES`` (the class list used when a config gives
none) and ``DEFAULT_MERGE`` (label merges applied when a config gives none, e.g. IEMOCAP's
``{"excited": "happy"}``).

Use :func:`load_corpus` to load a corpus by name and apply the class selection in one call, or a
loader followed by :func:`apply_label_map`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import ModuleType

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("utterance", "path", "speaker", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("session", "gender", "text")


def wav_files(folder: Path) -> list[Path]:
    """The visible ``.wav`` files of ``folder``, sorted by name (what the file-name corpora read)."""
    return [
        path
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and path.suffix.lower() == ".wav" and path.is_file()
    ]


def build_table(
    rows: Iterable[Mapping[str, object]], source: str, extra_columns: Iterable[str] = ()
) -> pd.DataFrame:
    """Build a corpus table from row dictionaries, in the column order of the contract.

    Shared by all loaders so that every corpus comes out the same way: required columns first,
    then whichever optional columns the rows carry, string values, rows sorted by utterance.

    Args:
        rows: one mapping per utterance with at least the keys of ``REQUIRED_COLUMNS``; any key
            of ``OPTIONAL_COLUMNS`` must be present in all rows or in none.
        source: what the rows were read from (a folder or file), named in error messages.
        extra_columns: further columns to keep after the contract's ones (e.g. a manifest's
            ``fold`` column or a column naming precomputed feature files), in this order.

    Returns:
        The table, index ``0..n-1``, sorted by ``utterance``.

    Raises:
        ValueError: no rows, a required key missing, an optional key in only some rows, or
            duplicate utterance ids.
    """
    rows = list(rows)
    if not rows:
        raise ValueError(f"no utterances found in {source}")
    present = set().union(*(row.keys() for row in rows))
    missing = [column for column in REQUIRED_COLUMNS if column not in present]
    if missing:
        raise ValueError(f"rows from {source} lack the required column(s) {missing}")
    columns = list(REQUIRED_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in present]
    columns += [c for c in extra_columns if c not in columns]
    for index, row in enumerate(rows):
        absent = [column for column in columns if column not in row]
        if absent:
            raise ValueError(
                f"row {index} from {source} ({row.get('utterance', row.get('path'))!r}) "
                f"lacks {absent}; every row must have the columns {columns}"
            )
    table = pd.DataFrame([{c: str(row[c]) for c in columns} for row in rows], columns=columns)
    duplicated = table["utterance"][table["utterance"].duplicated(keep=False)]
    if len(duplicated):
        names = sorted(set(duplicated))
        raise ValueError(
            f"duplicate utterance ids in {source}: {names[:5]}"
            + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        )
    return table.sort_values("utterance", kind="stable").reset_index(drop=True)


def apply_label_map(
    table: pd.DataFrame,
    classes: Iterable[str] | None = None,
    merge: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Merge labels, then keep only the rows of the chosen classes.

    Args:
        table: a corpus table with a ``label`` column.
        classes: labels to keep, in the order that defines class indices; ``None`` keeps every
            label (after merging), sorted alphabetically.
        merge: ``{old_label: new_label}`` applied first, e.g. ``{"excited": "happy"}``.

    Returns:
        A new table (index reset, row order kept) whose ``attrs["classes"]`` holds the class
        list, so ``attrs["classes"].index(label)`` is a row's class index.

    Raises:
        ValueError: a merge key or a class that no row carries (the message names it and the
            labels present), an empty or duplicated class list.
    """
    merge = dict(merge or {})
    present = sorted(set(table["label"]))
    unknown = sorted(old for old in merge if old not in present)
    if unknown:
        raise ValueError(
            f"merge names label(s) {unknown} not in the table; labels present: {present}"
        )
    labels = table["label"].map(lambda label: merge.get(label, label))
    merged = sorted(set(labels))
    if classes is None:
        classes = merged
    else:
        classes = [str(name) for name in classes]
        if not classes:
            raise ValueError(f"classes is empty; choose from the labels present: {merged}")
        repeated = sorted({name for name in classes if classes.count(name) > 1})
        if repeated:
            raise ValueError(f"classes lists {repeated} more than once: {classes}")
        unknown = [name for name in classes if name not in merged]
        if unknown:
            raise ValueError(
                f"class(es) {unknown} not in the table; labels present"
                + (f" after merging {merge}" if merge else "")
                + f": {merged}"
            )
    result = table.assign(label=labels)
    result = result[result["label"].isin(classes)].reset_index(drop=True)
    result.attrs["classes"] = list(classes)
    return result


# The loaders import build_table from this package, so they are imported after it is defined.
from sergraph.data.corpora import (  # noqa: E402
    audformat,
    emodb,
    iemocap,
    manifest,
    ravdess,
    synthetic,
)

_MODULES: dict[str, ModuleType] = {
    "synthetic": synthetic,
    "emodb": emodb,
    "ravdess": ravdess,
    "iemocap": iemocap,
    "manifest": manifest,
    "audformat": audformat,
}

CORPORA: dict[str, Callable[..., pd.DataFrame]] = {
    name: module.load for name, module in _MODULES.items()
}


def default_classes(name: str) -> list[str] | None:
    """The class list a corpus uses when a config gives none (``None``: every label present)."""
    module = _module(name)
    return None if module.DEFAULT_CLASSES is None else list(module.DEFAULT_CLASSES)


def load_corpus(
    name: str,
    root: str | os.PathLike[str] | None = None,
    classes: Iterable[str] | None = None,
    merge: Mapping[str, str] | None = None,
    **options: object,
) -> pd.DataFrame:
    """Load a corpus by name and select its classes.

    Args:
        name: one of ``CORPORA`` (``synthetic``, ``emodb``, ``ravdess``, ``iemocap``,
            ``manifest``).
        root: where the corpus lives (see each loader; for ``manifest`` the CSV file; for
            ``synthetic`` ``None`` means the cache folder).
        classes: labels to keep in class-index order; ``None`` means the corpus's
            ``DEFAULT_CLASSES``. OmegaConf lists are accepted.
        merge: label merges applied before selecting; ``None`` means the corpus's
            ``DEFAULT_MERGE`` (``{}`` turns the default off). OmegaConf dicts are accepted.
        **options: passed to the loader (e.g. ``seed``, ``n_per_class`` for ``synthetic``).

    Returns:
        The table after :func:`apply_label_map`, with ``attrs["classes"]`` and
        ``attrs["corpus"]`` set.

    Raises:
        ValueError: unknown corpus name or option (the message lists the valid ones), or any
            error of the loader or of :func:`apply_label_map`.
    """
    module = _module(name)
    accepted = [p for p in inspect.signature(module.load).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"corpus {name!r} has no option(s) {unknown}; its options are {accepted}")
    table = module.load(root, **options)
    if classes is None:
        classes = module.DEFAULT_CLASSES
    if merge is None:
        merge = module.DEFAULT_MERGE
    result = apply_label_map(
        table,
        classes=None if classes is None else list(classes),
        merge=dict(merge),
    )
    result.attrs["corpus"] = name
    return result


def _module(name: str) -> ModuleType:
    if name not in _MODULES:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(_MODULES)}")
    return _MODULES[name]


__all__ = [
    "CORPORA",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "apply_label_map",
    "build_table",
    "default_classes",
    "load_corpus",
]
