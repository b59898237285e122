"""A corpus in audformat (the format of audEERING's tools and of nkululeko's data).

``data=audformat data.root=DB_FOLDER`` reads the database header ``db.yaml`` in that folder with
the ``audformat`` package (installed with opensmile). Options (``data.options.KEY=VALUE``):

- ``table`` (default ``emotion``): the filewise table holding the emotion labels;
- ``emotion`` (default ``emotion``): its column of labels;
- ``speaker`` (default ``speaker``): the column of speaker ids, looked up in ``table`` first,
  then in ``speaker_table`` or else in the first other filewise table that has it (audformat
  databases often keep it in a ``files`` table whose scheme points at a misc table of
  speakers);
- ``speaker_table`` (default: none): the table holding ``speaker``;
- ``session`` (default: none): a column of sessions, for ``folds.scheme=loso_session``;
- ``fold`` (default: none): a column of predefined folds, kept as ``fold`` for
  ``folds.scheme=predefined``.

Labels are lower-cased; rows without a label or a speaker are left out (and counted in a note).
Only filewise tables are read: a segmented table (start/end per row) is refused with a message,
because sergraph classifies whole files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sergraph.console import log
from sergraph.data.corpora import build_table

DEFAULT_CLASSES: list[str] | None = None
DEFAULT_MERGE: dict[str, str] = {}


def _filewise(db, name: str, root: Path) -> pd.DataFrame:
    if name not in db.tables:
        raise ValueError(
            f"audformat database {root} has no table {name!r}; its tables are {sorted(db.tables)}"
        )
    frame = db[name].get()
    if list(frame.index.names) != ["file"]:
        raise ValueError(
            f"table {name!r} of {root} is segmented (index {list(frame.index.names)}); sergraph "
            "reads filewise tables only (one label per file)"
        )
    return frame


def _column(db, root: Path, tables: list[str], column: str, what: str) -> pd.Series:
    for name in tables:
        if name in db.tables and column in db[name].columns:
            return _filewise(db, name, root)[column]
    found = [name for name in db.tables if column in db[name].columns]
    for name in found:
        try:
            return _filewise(db, name, root)[column]
        except ValueError:
            continue
    raise ValueError(
        f"audformat database {root}: no filewise table has a {what} column {column!r} "
        f"(looked in {tables + [n for n in found if n not in tables]}); set "
        f"data.options.{what}=COLUMN (tables and columns: "
        f"{ {name: list(db[name].columns) for name in db.tables} })"
    )


def load(
    root: str | os.PathLike[str] | None,
    table: str = "emotion",
    emotion: str = "emotion",
    speaker: str = "speaker",
    speaker_table: str | None = None,
    session: str | None = None,
    fold: str | None = None,
) -> pd.DataFrame:
    """Load an audformat database as a corpus table.

    Args:
        root: the database folder (holding ``db.yaml``).
        table: the filewise table with the emotion labels.
        emotion: the label column of ``table``.
        speaker: the speaker column (in ``table``, ``speaker_table`` or another filewise table).
        speaker_table: the table holding ``speaker`` (default: searched).
        session: a session column (optional).
        fold: a column of predefined folds (optional), kept as ``fold``.

    Returns:
        Table with utterance (the file path inside the database), path (absolute), speaker,
        label, plus ``session`` and ``fold`` when asked for.

    Raises:
        ValueError: no database there, an unknown table or column (listing those present), a
            segmented table, or no labelled file.
    """
    import audformat

    if root is None:
        raise ValueError("data=audformat needs data.root: the database folder holding db.yaml")
    folder = Path(root).expanduser().resolve()
    if not (folder / "db.yaml").is_file():
        raise FileNotFoundError(f"{folder} holds no audformat database (no db.yaml)")
    db = audformat.Database.load(str(folder))
    labels = _filewise(db, table, folder)
    if emotion not in labels.columns:
        raise ValueError(
            f"table {table!r} of {folder} has no column {emotion!r} (data.options.emotion); "
            f"its columns are {list(labels.columns)}"
        )
    frame = pd.DataFrame({"label": labels[emotion]})
    tables = [table] + ([speaker_table] if speaker_table else [])
    frame["speaker"] = _column(db, folder, tables, speaker, "speaker").reindex(frame.index)
    for name, column in (("session", session), ("fold", fold)):
        if column:
            frame[name] = _column(db, folder, [table], column, name).reindex(frame.index)
    missing = frame[["label", "speaker"]].isna().any(axis=1)
    if missing.any():
        log(f"note: {int(missing.sum())} file(s) of {folder} without a label or speaker left out")
        frame = frame[~missing]
    if frame.empty:
        raise ValueError(f"no file of table {table!r} in {folder} has both a label and a speaker")
    rows = []
    for file, row in frame.iterrows():
        path = Path(file) if os.path.isabs(file) else folder / file
        record = {
            "utterance": str(file),
            "path": str(path),
            "speaker": str(row["speaker"]),
            "label": str(row["label"]).lower(),
        }
        if session:
            record["session"] = str(row["session"])
        if fold:
            record["fold"] = str(row["fold"])
        rows.append(record)
    return build_table(rows, source=str(folder), extra_columns=["fold"] if fold else [])
