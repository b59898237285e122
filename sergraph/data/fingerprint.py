"""The data fingerprint: content hashes of what a cell trains and is scored on (one owner).

Every cell's ``metrics.json`` records :func:`cell_fingerprint` under ``data``::

    table            the corpus table as loaded: utterance, path, speaker, label (+ session and
                     the fold column where present), rows sorted by utterance
    inputs           the content keys (SHA-256, the feature cache's keys) of every row's feature
                     input: its audio file, or its precomputed array (``inputs_kind``)
    folds            the fold partition: every fold's number and its train/val/test speakers
    speakers         for each speaker of the cell's fold: ``utterances`` (its utterance ids),
                     ``labels`` (its (utterance, label) rows), ``inputs`` (its rows' content keys)
    scored, n_scored the sorted ids of the utterances the cell scored, and how many
    enrollment, enrollment_seed   under ``eval.protocol=enrollment`` (else null)

``sergraph train`` compares a finished cell's record with the current data before reusing it
(:func:`changes`), and ``report``/``select`` compare the records of the cells they pair
(:func:`differences`). A corpus moved to another folder keeps its ``speakers`` hashes (paths
are in ``table`` only), so it is neither a change nor a difference; its ``table`` hash records
the move.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pandas as pd

from sergraph.data.folds import fold_name

#: Columns of the corpus table that enter the ``table`` hash (where present).
TABLE_COLUMNS = ("utterance", "path", "speaker", "label", "session")


def digest(value) -> str:
    """16 hex characters of the SHA-256 of ``value`` as canonical JSON."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scored_digest(utterances: Sequence) -> str:
    """The hash of a scored set: its utterance ids, sorted (order does not matter)."""
    return digest(sorted(str(u) for u in utterances))


def study_fingerprint(
    table: pd.DataFrame,
    input_keys: Sequence[str],
    folds: Sequence,
    inputs_kind: str = "audio",
    fold_column: str | None = None,
) -> dict:
    """The fingerprint of a study's data, from which :func:`cell_fingerprint` takes a fold's part.

    Args:
        table: the corpus table as the folds were made from it (``utterance``, ``speaker``,
            ``label``, ``path``, ...).
        input_keys: the content key (SHA-256) of each row's feature input, in table order.
        folds: the study's folds (``index``, ``train_speakers``, ``val_speakers``,
            ``test_speakers``).
        inputs_kind: ``audio`` or ``precomputed`` (what the keys are of).
        fold_column: a declared fold column of the table (``folds.scheme=predefined``).
    """
    if len(input_keys) != len(table):
        raise ValueError(f"{len(input_keys)} input keys for {len(table)} rows")
    columns = [c for c in (*TABLE_COLUMNS, fold_column) if c and c in table.columns]
    rows = table[columns].astype(str).assign(_key=list(input_keys))
    rows = rows.sort_values("utterance", kind="stable")
    speakers = {}
    for speaker, part in rows.groupby("speaker", sort=True):
        ids = part["utterance"].tolist()
        speakers[str(speaker)] = {
            "utterances": digest(ids),
            "labels": digest(list(zip(ids, part["label"], strict=True))),
            "inputs": digest(list(zip(ids, part["_key"], strict=True))),
        }
    return {
        "table": digest(rows[columns].to_numpy().tolist()),
        "inputs": digest(list(zip(rows["utterance"], rows["_key"], strict=True))),
        "inputs_kind": inputs_kind,
        "folds": digest(
            [
                [int(f.index), list(f.train_speakers), list(f.val_speakers), list(f.test_speakers)]
                for f in folds
            ]
        ),
        "speakers": speakers,
    }


def fold_speakers(fold) -> list[str]:
    return sorted({*fold.train_speakers, *fold.val_speakers, *fold.test_speakers})


def cell_fingerprint(
    study: dict,
    fold,
    scored: Sequence,
    protocol: str,
    enrollment: float | None = None,
    enrollment_seed: int | None = None,
) -> dict:
    """What a cell's ``metrics.json`` records under ``data`` (see the module docstring)."""
    enrolled = protocol == "enrollment"
    return {
        "table": study["table"],
        "inputs": study["inputs"],
        "inputs_kind": study["inputs_kind"],
        "folds": study["folds"],
        "speakers": {
            s: study["speakers"][s] for s in fold_speakers(fold) if s in study["speakers"]
        },
        "scored": scored_digest(scored),
        "n_scored": len(scored),
        "enrollment": enrollment if enrolled else None,
        "enrollment_seed": enrollment_seed if enrolled else None,
    }


def _speaker_words(speakers: list[str]) -> str:
    return ", ".join(speakers[:8]) + (f" and {len(speakers) - 8} more" if len(speakers) > 8 else "")


def content_differences(
    old: dict,
    new: dict,
    added: str = "added",
    removed: str = "removed",
    verb: str = "changed for",
) -> list[str]:
    """The speakers' data that differ between two ``data`` records, in words: speakers only
    in one; utterances, labels or (for inputs of one kind) audio of a speaker changed."""
    old_speakers, new_speakers = old.get("speakers") or {}, new.get("speakers") or {}
    out = []
    only_new = sorted(set(new_speakers) - set(old_speakers))
    only_old = sorted(set(old_speakers) - set(new_speakers))
    if only_new:
        out.append(f"speakers {added}: {_speaker_words(only_new)}")
    if only_old:
        out.append(f"speakers {removed}: {_speaker_words(only_old)}")
    shared = sorted(set(old_speakers) & set(new_speakers))
    for key, words in (("utterances", "utterances"), ("labels", "labels"), ("inputs", None)):
        if key == "labels":  # a speaker whose utterances changed is not counted again
            changed = [
                s
                for s in shared
                if old_speakers[s]["labels"] != new_speakers[s]["labels"]
                and old_speakers[s]["utterances"] == new_speakers[s]["utterances"]
            ]
        else:
            changed = [s for s in shared if old_speakers[s][key] != new_speakers[s][key]]
        if key == "inputs":
            if old.get("inputs_kind") != new.get("inputs_kind"):
                continue  # audio vs precomputed arrays: not the same kind of input
            words = "audio" if new.get("inputs_kind", "audio") == "audio" else "feature arrays"
        if changed:
            out.append(f"{words} {verb} speaker(s) {_speaker_words(changed)}")
    return out


def scored_difference(first: dict, second: dict) -> str | None:
    """Why two ``data`` records' scored sets differ, in words (``None`` when they do not)."""
    if first.get("scored") == second.get("scored"):
        return None
    amounts = [(r.get("enrollment"), r.get("enrollment_seed")) for r in (first, second)]
    if amounts[0][0] != amounts[1][0]:
        return f"eval.enrollment {amounts[0][0]} vs {amounts[1][0]}: scored sets differ"
    if amounts[0][1] != amounts[1][1]:
        return f"eval.enrollment_seed {amounts[0][1]} vs {amounts[1][1]}: scored sets differ"
    return f"scored sets differ ({first.get('n_scored')} vs {second.get('n_scored')} utterances)"


def differences(first: dict, second: dict) -> list[str]:
    """What makes two cells of one fold not comparable: their scored sets or their data."""
    out = []
    scored = scored_difference(first, second)
    if scored:
        out.append(scored)
    return out + content_differences(
        first, second, added="only in the second", removed="only in the first", verb="differ for"
    )


def changes(recorded: dict, fold, now: dict | None) -> list[str]:
    """What changed since a cell finished, in words (empty: nothing).

    Args:
        recorded: the cell's ``metrics.json`` (``fold``, ``test_speakers``, ``data``).
        fold: the fold of that number in the current data (``None``: there is none now).
        now: :func:`cell_fingerprint` of the current data for that fold.
    """
    name = fold_name(recorded["fold"])
    if fold is None:
        return [f"{name} no longer exists"]
    out = []
    before, after = sorted(recorded.get("test_speakers") or []), sorted(fold.test_speakers)
    if before != after:
        out.append(
            f"fold numbering shifted: {name} tested {_speaker_words(before)}, now tests "
            f"{_speaker_words(after)}"
        )
    return out + content_differences(recorded["data"], now)
