"""Any corpus described by a CSV manifest.

The CSV has a header row with the columns ``path``, ``speaker``, ``label`` and optionally
``utterance`` (default: the file stem), ``session``, ``gender`` (``m``/``f``, also
``male``/``female``) and ``text``. Other columns are kept as they are (text), after these: a
``fold`` column for ``folds.scheme=predefined``, or a column naming precomputed feature files
(``features.precomputed.column``). Relative paths are resolved against
the CSV's folder, so a corpus folder with its manifest can be moved as a whole. Labels are
lower-cased; choose classes with ``classes``/``merge`` (by default every label is kept).

Example::

    path,speaker,label
    wav/spk1_0001.wav,spk1,neutral
    wav/spk1_0002.wav,spk1,angry
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from sergraph.data.corpora import OPTIONAL_COLUMNS, build_table

MANIFEST_REQUIRED = ("path", "speaker", "label")
MANIFEST_OPTIONAL = ("utterance", *OPTIONAL_COLUMNS)
GENDERS = {"m": "m", "f": "f", "male": "m", "female": "f"}

# None: a manifest can hold any labels, so by default all of them are kept (sorted).
DEFAULT_CLASSES: list[str] | None = None
DEFAULT_MERGE: dict[str, str] = {}

_SHOW = 5  # how many offending rows an error message lists


def read_manifest_csv(csv_path: Path) -> pd.DataFrame:
    """The manifest's cells as stripped strings; an empty or unparsable file is named."""
    example = "a header row path,speaker,label and one row per audio file"
    if csv_path.stat().st_size == 0:
        raise ValueError(f"manifest {csv_path} is empty (0 bytes); expected {example}")
    try:
        frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise ValueError(f"manifest {csv_path} holds no CSV header; expected {example}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[-1]
        raise ValueError(f"manifest {csv_path} is not a readable CSV file ({reason})") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame


def _rows(numbers: list[int]) -> str:
    """'rows 2, 5, 9 and 3 more' for 1-based data row numbers."""
    shown = ", ".join(str(n) for n in numbers[:_SHOW])
    more = f" and {len(numbers) - _SHOW} more" if len(numbers) > _SHOW else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _check_duplicate_content(csv_path: Path, paths: list[str], numbers: list[int]) -> None:
    """Raise if two rows name different files with the same bytes.

    The same recording under two names would be two utterances to the folds, and if the rows
    name different speakers, a copy of a test file could sit in training. Only files that share
    their size with another one are hashed, so this costs little.
    """
    from sergraph.io import file_sha256

    by_size: dict[int, list[int]] = {}
    for index, path in enumerate(paths):
        by_size.setdefault(os.path.getsize(path), []).append(index)
    by_digest: dict[str, list[int]] = {}
    for indices in by_size.values():
        if len(indices) > 1:
            for index in indices:
                by_digest.setdefault(file_sha256(paths[index]), []).append(index)
    groups = [indices for indices in by_digest.values() if len(indices) > 1]
    if groups:
        listed = "; ".join(
            " = ".join(f"row {numbers[i]} ({paths[i]})" for i in indices) for indices in groups[:3]
        )
        raise ValueError(
            f"manifest {csv_path}: {len(groups)} group(s) of rows name files with identical "
            f"content: {listed}"
            + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")
            + "; keep one row per recording (a copy under another speaker would leak test "
            "audio into training)"
        )


def load(root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """Load a corpus from a CSV manifest.

    Row numbers in error messages count data rows from 1 (the header is row 0, so row ``n`` is
    line ``n + 1`` of the file).

    Args:
        root: path of the CSV file.

    Returns:
        Table with columns utterance, path (absolute), speaker, label, plus whichever of
        session, gender, text the CSV has, sorted by utterance.

    Raises:
        FileNotFoundError: the CSV does not exist, or audio files it lists are missing (the
            message counts them and lists the first few with their rows).
        ValueError: a required column is missing (the message names the file, the columns
            present and those required), a cell of a used column is empty, a gender is not
            m/f, or paths, file contents or utterance ids repeat (naming the rows).
    """
    if root is None:
        raise ValueError("the manifest corpus needs root: the path of the CSV file")
    csv_path = Path(root).expanduser().resolve()
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest {csv_path} does not exist or is not a file")
    frame = read_manifest_csv(csv_path)
    missing_columns = [column for column in MANIFEST_REQUIRED if column not in frame.columns]
    if missing_columns:
        raise ValueError(
            f"manifest {csv_path} lacks column(s) {missing_columns}; it has {list(frame.columns)}; "
            f"required: {list(MANIFEST_REQUIRED)}, optional: {list(MANIFEST_OPTIONAL)}"
        )
    if frame.empty:
        raise ValueError(f"manifest {csv_path} has a header but no rows")
    used = [c for c in (*MANIFEST_REQUIRED, *MANIFEST_OPTIONAL) if c in frame.columns]
    extra = [c for c in frame.columns if c not in used]
    frame = frame[used + extra].apply(lambda column: column.str.strip())
    row_numbers = pd.Series(range(1, len(frame) + 1), index=frame.index)

    for column in used:
        empty = row_numbers[frame[column] == ""].tolist()
        if empty:
            raise ValueError(
                f"manifest {csv_path}: empty {column!r} in {_rows(empty)}; every used column "
                "must be filled (leave an optional column out if it is unknown)"
            )

    frame["label"] = frame["label"].str.lower()
    if "gender" in frame.columns:
        genders = frame["gender"].str.lower()
        bad = row_numbers[~genders.isin(list(GENDERS))].tolist()
        if bad:
            raise ValueError(
                f"manifest {csv_path}: gender {frame['gender'][bad[0] - 1]!r} in {_rows(bad)}; "
                f"accepted: {sorted(GENDERS)}"
            )
        frame["gender"] = genders.map(GENDERS)

    frame["path"] = [str((csv_path.parent / Path(p).expanduser()).resolve()) for p in frame["path"]]
    duplicates = frame["path"][frame["path"].duplicated(keep=False)]
    if len(duplicates):
        first = duplicates.iloc[0]
        rows = row_numbers[frame["path"] == first].tolist()
        raise ValueError(
            f"manifest {csv_path}: {duplicates.nunique()} audio file(s) listed more than once, "
            f"e.g. {first} in {_rows(rows)}"
        )
    absent = [
        (number, path)
        for number, path in zip(row_numbers, frame["path"], strict=True)
        if not os.path.isfile(path)
    ]
    if absent:
        listed = "; ".join(f"row {number}: {path}" for number, path in absent[:_SHOW])
        raise FileNotFoundError(
            f"manifest {csv_path}: {len(absent)} audio file(s) missing "
            f"(relative paths are resolved against {csv_path.parent}): {listed}"
            + (f" and {len(absent) - _SHOW} more" if len(absent) > _SHOW else "")
        )
    _check_duplicate_content(csv_path, frame["path"].tolist(), row_numbers.tolist())

    if "utterance" not in frame.columns:
        frame["utterance"] = [Path(path).stem for path in frame["path"]]
        clashing = frame["utterance"][frame["utterance"].duplicated(keep=False)]
        if len(clashing):
            rows = row_numbers[frame["utterance"] == clashing.iloc[0]].tolist()
            raise ValueError(
                f"manifest {csv_path}: file name {clashing.iloc[0]!r} repeats in {_rows(rows)}, "
                "so it cannot serve as utterance id; add an 'utterance' column with unique ids"
            )
    else:
        repeated = frame["utterance"][frame["utterance"].duplicated(keep=False)]
        if len(repeated):
            rows = row_numbers[frame["utterance"] == repeated.iloc[0]].tolist()
            raise ValueError(
                f"manifest {csv_path}: utterance id {repeated.iloc[0]!r} repeats in {_rows(rows)}"
            )
    return build_table(frame.to_dict("records"), source=str(csv_path), extra_columns=extra)
