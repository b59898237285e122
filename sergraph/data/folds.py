"""Speaker-held-out cross-validation folds and the guard that keeps them honest.

A fold names three disjoint sets of speakers: ``train``, ``val`` and ``test``. Validation
speakers are always drawn from the speakers that are *not* tested in that fold, so the test
speaker(s) never influence training, early stopping, normalisation or checkpoint choice.

Schemes:

- ``loso``: leave one speaker out; one fold per speaker, in sorted speaker order.
- ``loso_session``: leave one session out (IEMOCAP-style corpora with a ``session`` column);
  every speaker of the session is tested together.
- ``groups``: ``n_groups`` speaker-disjoint groups (speakers shuffled with ``seed`` and dealt
  round-robin), each tested once.
- ``predefined``: the folds a corpus declares: a column (``folds.column``, default ``fold``)
  gives each utterance the index of the fold that tests it (0, 1, ...). The speaker guard stays
  on: a speaker with utterances in two folds is refused, naming the speakers and their folds.
  ``allow_speaker_overlap=True`` accepts such benchmark splits; the folds are then split by
  utterance, are marked ``speaker_independent=False``, and every output says so.

Validation speakers rotate: for a fold, they are the next ``val_speakers`` speakers after the
test speaker(s) in the cyclic speaker order, skipping the test speakers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

SCHEMES = ("loso", "loso_session", "groups", "predefined")
NOT_SPEAKER_INDEPENDENT = (
    "NOT speaker-independent: folds.allow_speaker_overlap=true lets speakers of the test fold "
    "appear in training or validation"
)


#: The start of a fold's name, and of its cell folders (``seed-S/fold-XX``).
FOLD_PREFIX = "fold-"


def fold_name(index: int) -> str:
    """The name of fold ``index`` (``fold-03``): its cell folders' name
    (:mod:`sergraph.results.layout` reads it from here) and how messages name it."""
    return f"{FOLD_PREFIX}{int(index):02d}"


class FoldLeakError(RuntimeError):
    """A speaker or a file appears in more than one of train/val/test."""


@dataclass(frozen=True)
class Fold:
    """One speaker-held-out split.

    Args:
        index: position of the fold in the study (0-based).
        train_speakers: speakers whose utterances are used for fitting (and normalisation).
        val_speakers: speakers used only for early stopping and model selection.
        test_speakers: held-out speakers, evaluated once with the selected checkpoint.
        test_utterances: predefined folds: the utterances tested (``None``: every utterance of
            the test speakers).
        speaker_independent: ``False`` only for predefined folds whose speakers overlap.
    """

    index: int
    train_speakers: tuple[str, ...]
    val_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    test_utterances: tuple[str, ...] | None = None
    speaker_independent: bool = True

    @property
    def name(self) -> str:
        return fold_name(self.index)


def _rotate_validation(order: list[str], test: list[str], val_speakers: int) -> list[str]:
    """The ``val_speakers`` speakers following the last test speaker in cyclic order."""
    if val_speakers <= 0:
        return []
    start = max(order.index(s) for s in test) + 1
    candidates = [order[(start + i) % len(order)] for i in range(len(order))]
    candidates = [s for s in candidates if s not in test]
    return candidates[:val_speakers]


def make_folds(
    table: pd.DataFrame,
    scheme: str = "loso",
    val_speakers: int = 1,
    n_groups: int = 5,
    seed: int = 0,
    column: str = "fold",
    allow_speaker_overlap: bool = False,
) -> list[Fold]:
    """Build speaker-held-out folds for a corpus table.

    Args:
        table: corpus table with at least ``speaker`` (and ``session`` for ``loso_session``).
        scheme: one of ``loso``, ``loso_session``, ``groups``.
        val_speakers: number of validation speakers per fold, taken from the training side.
        n_groups: number of speaker groups for ``scheme="groups"``.
        seed: shuffles the speakers before grouping (``groups`` only).
        column: ``predefined``: the column holding each utterance's test fold.
        allow_speaker_overlap: ``predefined``: accept speakers in several folds.

    Returns:
        The folds, each checked by :func:`check_fold`.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"folds.scheme={scheme!r} is not known; choose one of {list(SCHEMES)}")
    speakers = sorted(table["speaker"].astype(str).unique())
    if scheme == "predefined":
        return predefined_folds(table, column, val_speakers, allow_speaker_overlap)
    if scheme == "loso":
        test_sets = [[s] for s in speakers]
    elif scheme == "loso_session":
        if "session" not in table.columns or table["session"].isna().any():
            raise ValueError(
                "folds.scheme='loso_session' needs a 'session' value on every row; "
                "this corpus has none (use scheme='loso' or 'groups')"
            )
        by_session = table.groupby("session")["speaker"].apply(lambda s: sorted(set(map(str, s))))
        test_sets = [by_session[session] for session in sorted(by_session.index)]
    else:
        if n_groups < 2:
            raise ValueError(f"folds.n_groups={n_groups} must be at least 2")
        if n_groups > len(speakers):
            raise ValueError(
                f"folds.n_groups={n_groups} is more than the {len(speakers)} speakers of this "
                "corpus; every group needs at least one speaker"
            )
        shuffled = list(np.random.default_rng(seed).permutation(speakers))
        test_sets = [sorted(shuffled[g::n_groups]) for g in range(n_groups)]

    n_train_min = 1
    if len(speakers) < 1 + val_speakers + n_train_min and scheme == "loso":
        raise ValueError(
            f"{len(speakers)} speakers cannot make speaker-held-out folds with "
            f"{val_speakers} validation speaker(s): need at least {2 + val_speakers}"
        )
    folds = []
    for index, test in enumerate(test_sets):
        val = _rotate_validation(speakers, test, val_speakers)
        train = [s for s in speakers if s not in test and s not in val]
        if not train:
            raise ValueError(
                f"fold {index} (test {test}) has no training speakers left after taking "
                f"{val_speakers} validation speaker(s); lower folds.val_speakers"
            )
        fold = Fold(index, tuple(train), tuple(val), tuple(test))
        check_fold(fold, table)
        folds.append(fold)
    return folds


def predefined_folds(
    table: pd.DataFrame, column: str, val_speakers: int, allow_speaker_overlap: bool
) -> list[Fold]:
    """The folds a corpus column declares (see the module docstring)."""
    if column not in table.columns:
        raise ValueError(
            f"folds.scheme='predefined' needs a {column!r} column (folds.column) giving each "
            f"utterance's test fold; the corpus has {list(table.columns)}"
        )
    values = table[column].astype(str).str.strip()
    numbers = pd.to_numeric(values, errors="coerce")
    bad = table["utterance"][numbers.isna() | (numbers % 1 != 0) | (numbers < 0)].tolist()
    if bad:
        raise ValueError(
            f"column {column!r}: fold values must be integers 0, 1, ...; utterance(s) "
            f"{bad[:5]} have {values[table['utterance'].isin(bad[:5])].tolist()}"
        )
    fold_of = numbers.astype(int).to_numpy()
    speaker = table["speaker"].astype(str).to_numpy()
    indices = sorted(set(fold_of.tolist()))
    if len(indices) < 2:
        raise ValueError(f"column {column!r} declares {len(indices)} fold(s); need at least 2")
    folds_of_speaker = {s: sorted(set(fold_of[speaker == s].tolist())) for s in set(speaker)}
    shared = {s: f for s, f in sorted(folds_of_speaker.items()) if len(f) > 1}
    if shared and not allow_speaker_overlap:
        listed = "; ".join(f"{s} in folds {f}" for s, f in list(shared.items())[:10])
        raise FoldLeakError(
            f"predefined folds (column {column!r}) put {len(shared)} speaker(s) in more than one "
            f"fold: {listed}{' ...' if len(shared) > 10 else ''}. Their test utterances would "
            "share a speaker with training, so the results would not be speaker-independent. "
            "Fix the fold column, or set folds.allow_speaker_overlap=true to accept it (every "
            "output then says the numbers are not speaker-independent)."
        )
    order = sorted(set(speaker))
    folds = []
    for position, index in enumerate(indices):
        is_test = fold_of == index
        test = sorted(set(speaker[is_test]))
        rest = sorted(set(speaker[~is_test]))
        candidates = [s for s in rest if s not in test] or rest
        val = _rotate_validation(order, test, val_speakers) if val_speakers else []
        val = [s for s in val if s in candidates][:val_speakers]
        if len(val) < val_speakers:
            val += [s for s in candidates if s not in val][: val_speakers - len(val)]
        train = [s for s in rest if s not in val]
        fold = Fold(
            position,
            tuple(train),
            tuple(val),
            tuple(test),
            test_utterances=tuple(table["utterance"][is_test].astype(str)),
            speaker_independent=not shared,
        )
        check_fold(fold, table)
        folds.append(fold)
    return folds


def split_indices(
    table: pd.DataFrame, fold: Fold, enrolled: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Row positions of the table in each split of the fold (rows of unused speakers dropped).

    Args:
        enrolled: row positions held aside for enrollment (``eval.protocol=enrollment``, see
            :func:`sergraph.data.protocol.enrollment_rows`): they are left out of ``val`` and
            ``test``, which then hold only the scored rows. Enrollment rows of training speakers
            are refused.
    """
    speaker = table["speaker"].astype(str).to_numpy()
    if fold.test_utterances is not None:  # predefined folds: the test utterances are declared
        is_test = table["utterance"].astype(str).isin(list(fold.test_utterances)).to_numpy()
        is_val = ~is_test & np.isin(speaker, list(fold.val_speakers))
        is_train = ~is_test & ~is_val & np.isin(speaker, list(fold.train_speakers))
        rows = {
            "train": np.flatnonzero(is_train),
            "val": np.flatnonzero(is_val),
            "test": np.flatnonzero(is_test),
        }
    else:
        rows = {
            split: np.flatnonzero(np.isin(speaker, list(getattr(fold, f"{split}_speakers"))))
            for split in ("train", "val", "test")
        }
    if enrolled is None:
        return rows
    enrolled = np.asarray(enrolled, dtype=np.int64)
    trained = np.intersect1d(rows["train"], enrolled)
    if len(trained):
        raise FoldLeakError(
            f"{fold.name}: enrollment rows of training speakers {sorted(set(speaker[trained]))}; "
            "only validation and test speakers have enrollment utterances"
        )
    for split in ("val", "test"):
        rows[split] = np.setdiff1d(rows[split], enrolled)
    return rows


def check_fold(fold: Fold, table: pd.DataFrame) -> None:
    """Raise :class:`FoldLeakError` if a speaker or a file is in two splits, or a split is empty.

    Files are compared by ``utterance`` id and by ``path``, so the same audio listed twice under
    two speakers cannot cross from test into training.
    """
    sets = {
        "train": set(fold.train_speakers),
        "val": set(fold.val_speakers),
        "test": set(fold.test_speakers),
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sets[a] & sets[b]
        if shared and fold.speaker_independent:
            raise FoldLeakError(f"{fold.name}: speaker(s) {sorted(shared)} in both {a} and {b}")
    if not sets["train"] or not sets["test"]:
        raise FoldLeakError(f"{fold.name}: empty train or test speaker set")
    rows = split_indices(table, fold)
    for column in ("utterance", "path"):
        if column not in table.columns:
            continue
        values = {split: set(table[column].iloc[idx]) for split, idx in rows.items()}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = values[a] & values[b]
            if shared:
                example = sorted(map(str, shared))[:3]
                raise FoldLeakError(
                    f"{fold.name}: {len(shared)} {column}(s) in both {a} and {b}, e.g. {example}"
                )
    for split in ("train", "test") + (("val",) if fold.val_speakers else ()):
        if len(rows[split]) == 0:
            raise FoldLeakError(f"{fold.name}: the {split} split has no utterances")


def similar_speaker_ids(speakers) -> list[list[str]]:
    """Groups of distinct speaker ids that are one id after normalising case, whitespace and
    leading zeros of numbers (``"03"``, ``"3"``, ``" 3"``; ``"Spk03"``, ``"spk3"``)."""

    def key(speaker: str) -> str:
        text = " ".join(str(speaker).split()).casefold()
        return re.sub(r"\d+", lambda number: str(int(number.group())), text)

    groups: dict[str, set[str]] = {}
    for speaker in {str(s) for s in speakers}:
        groups.setdefault(key(speaker), set()).add(speaker)
    return sorted(sorted(group) for group in groups.values() if len(group) > 1)


#: What changes the classes of a fold's training side, as :func:`check_training_classes` says.
TRAINING_CLASSES_REMEDY = (
    "merge or drop that class (data.merge=..., data.classes=[...]), or choose the folds "
    "(folds.scheme, folds.val_speakers)"
)


def check_training_classes(
    table: pd.DataFrame,
    folds: list[Fold],
    classes: list[str],
    remedy: str = TRAINING_CLASSES_REMEDY,
) -> None:
    """Refuse, for every fold at once and before any work, a class that a fold's training
    speakers never say (only its validation or test speakers do): no model learns it there.

    ``remedy``: the keys that would change it, in words (a cross-corpus study's are others).

    Raises:
        ValueError: naming each such fold, its test speakers and the classes missing.
    """
    problems = []
    for fold in folds:
        present = set(table["label"].iloc[split_indices(table, fold)["train"]].astype(str))
        missing = [c for c in classes if c not in present]
        if missing:
            problems.append(f"{fold.name} (test {', '.join(fold.test_speakers)}): {missing}")
    if problems:
        raise ValueError(
            f"in {len(problems)} of {len(folds)} fold(s) the training speakers have no "
            f"utterances of some class: {'; '.join(problems)}. A model cannot learn a class its "
            f"training side never has; {remedy}"
        )


def fold_table(
    table: pd.DataFrame, folds: list[Fold], classes: list[str], enroll=None
) -> pd.DataFrame:
    """One row per fold and split: speakers and utterance counts per class (for ``sergraph folds``).

    Args:
        enroll: under ``eval.protocol=enrollment``, a function ``fold -> enrolled row
            positions``; the counts are then of the scored rows and column ``enrollment`` gives
            the rows held aside in each split.
    """
    records = []
    for fold in folds:
        enrolled = None if enroll is None else enroll(fold)
        for split, idx in split_indices(table, fold, enrolled).items():
            counts = table["label"].iloc[idx].value_counts()
            record = {
                "fold": fold.name + ("" if fold.speaker_independent else " (speakers overlap)"),
                "split": split,
                "speakers": ",".join(getattr(fold, f"{split}_speakers")),
                "n": len(idx),
            }
            if enrolled is not None:
                speakers = getattr(fold, f"{split}_speakers")
                held = table["speaker"].astype(str).iloc[enrolled].isin(speakers)
                record["enrollment"] = int(held.sum())
            record.update({c: int(counts.get(c, 0)) for c in classes})
            records.append(record)
    return pd.DataFrame.from_records(records)
