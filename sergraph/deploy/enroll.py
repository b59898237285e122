"""Enrollment audio for bundles trained with ``eval.protocol=enrollment``.

Such a bundle normalises each speaker with statistics of that speaker's own unlabelled
enrollment recordings, as in training (where a held-aside, never-scored part of each held-out
speaker played that role): the node features, and for bundles of
``features.concat_functionals`` runs also the utterance functionals (one vector per enrollment
file). A speaker without enrollment audio is normalised with the training
speakers' statistics instead, and the predictions say so (column ``normalised_with``).

Command line: ``sergraph predict BUNDLE AUDIO... --enroll SPEAKER=DIR_OR_FILES`` (repeatable;
files separated by commas) or ``--enroll manifest.csv`` (columns ``path`` and ``speaker``). The
speaker of each file to predict comes from a manifest's ``speaker`` column or ``--speaker``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: ``normalised_with`` of a file whose speaker had no enrollment audio.
NO_ENROLLMENT = "training statistics (no enrollment audio for this speaker)"


def enrollment_note(speaker: str, n_files: int) -> str:
    return f"enrollment audio of {speaker} ({n_files} file(s))"


def parse_enroll(items: Sequence[str], expand: Callable) -> dict[str, list[str]]:
    """``SPEAKER=DIR_OR_FILES`` items (files comma-separated, folders searched for audio) or
    manifest CSVs with ``path`` and ``speaker`` columns -> speaker -> audio files.

    Args:
        items: the ``--enroll`` values.
        expand: turns files and folders into audio files
            (:func:`sergraph.deploy.predict.expand_inputs`).

    Raises:
        ValueError: an item of neither form, a manifest without a ``speaker`` column.
        FileNotFoundError: a named file or folder that does not exist.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        if "=" in item:
            speaker, _, files = item.partition("=")
            if not speaker.strip() or not files.strip():
                raise ValueError(f"--enroll {item!r}: write SPEAKER=DIR_OR_FILES")
            parts = [part.strip() for part in files.split(",") if part.strip()]
            out.setdefault(speaker.strip(), []).extend(expand(parts))
        elif item.lower().endswith(".csv"):
            for speaker, paths in manifest_speakers(Path(item)).items():
                out.setdefault(speaker, []).extend(paths)
        else:
            raise ValueError(
                f"--enroll {item!r}: write SPEAKER=DIR_OR_FILES or give a manifest CSV with "
                "'path' and 'speaker' columns"
            )
    return out


def manifest_speakers(csv_path: Path) -> dict[str, list[str]]:
    """speaker -> files (resolved against the CSV's folder) of a manifest with ``path`` and
    ``speaker`` columns."""
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [c for c in ("path", "speaker") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"manifest {csv_path} has no {missing} column(s) (it has {list(frame.columns)}); "
            "enrollment needs one row per file with 'path' and 'speaker'"
        )
    out: dict[str, list[str]] = {}
    for number, row in enumerate(frame.itertuples(), start=1):
        path = (csv_path.parent / Path(row.path.strip()).expanduser()).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"manifest {csv_path} row {number}: {path} does not exist")
        out.setdefault(row.speaker.strip(), []).append(str(path))
    return out


def input_speakers(items: Sequence[str], paths: Sequence[str], default: str | None) -> list:
    """The speaker of each file to predict: a manifest's ``speaker`` column where the file came
    from one that has it, else ``default`` (``--speaker``; ``None``: unknown)."""
    known: dict[str, str] = {}
    for item in items:
        if str(item).lower().endswith(".csv") and Path(item).is_file():
            frame = pd.read_csv(item, dtype=str, nrows=0, encoding="utf-8-sig")
            if "speaker" in [str(c).strip() for c in frame.columns]:
                for speaker, files in manifest_speakers(Path(item)).items():
                    known |= {file: speaker for file in files}
    return [known.get(os.fspath(p), default) for p in paths]


def speaker_normalizers(cache, enrollment: dict[str, Sequence[str]], workers: int = 1) -> dict:
    """speaker -> :class:`~sergraph.data.graphs.Normalizer` fitted on the speaker's enrollment
    audio (features from ``cache``, a :class:`~sergraph.data.features.FeatureCache`)."""
    from sergraph.data.graphs import Normalizer

    out = {}
    for speaker, files in enrollment.items():
        if not files:
            continue
        arrays = cache.get([os.fspath(f) for f in files], workers=workers, progress=False)
        out[speaker] = Normalizer.fit([np.asarray(a) for a in arrays])
    return out


def speaker_functionals_normalizers(
    cache, enrollment: dict[str, Sequence[str]], feature_set: str, workers: int = 1
) -> dict:
    """speaker -> :class:`~sergraph.data.graphs.Normalizer` of the utterance functionals of
    the speaker's enrollment audio (one vector per file, from ``cache``, a
    :class:`~sergraph.data.features.FeatureCache` of the bundle's functionals configuration),
    fitted as training fitted a held-out speaker's (``FoldDataModule.setup``)."""
    from sergraph.data.graphs import Normalizer

    out = {}
    for speaker, files in enrollment.items():
        if not files:
            continue
        vectors = cache.functionals(
            [os.fspath(f) for f in files], workers=workers, progress=False, feature_set=feature_set
        )
        out[speaker] = Normalizer.fit([row[None, :] for row in vectors])
    return out


def enrollment_plan(
    meta: dict,
    cache,
    paths: Sequence[str],
    speakers: Sequence[str | None] | None,
    enrollment: dict[str, Sequence[str | os.PathLike]] | None,
    workers: int = 1,
    functionals_cache=None,
) -> dict | None:
    """How a bundle normalises each file: path -> (speaker, Normalizer of the speaker's
    enrollment audio or ``None`` for the training statistics, ``normalised_with`` in words,
    Normalizer of the utterance functionals of the speaker's enrollment audio or ``None``) for
    bundles trained with per-speaker normalisation (``meta["graph"]["normalize"]``); ``None``
    for the others. The last is ``None`` too for bundles without utterance functionals
    (``meta["functionals"]``); for those with them ``functionals_cache`` (a
    :class:`~sergraph.data.features.FeatureCache` of
    :meth:`~sergraph.deploy.ensemble.Bundle.functionals_config`) computes them.

    Raises:
        BundleError: ``speakers`` not one per file, or enrollment audio given to a bundle that
            normalises with its training speakers' statistics.
    """
    from sergraph.deploy.pipeline import BundleError

    if speakers is not None and len(speakers) != len(paths):
        raise BundleError(f"{len(speakers)} speakers given for {len(paths)} files")
    normalize = meta["graph"]["normalize"]
    if normalize != "speaker":
        if enrollment:
            raise BundleError(
                "this bundle normalises with its training speakers' statistics (it was "
                "trained under eval.protocol=inductive"
                + (", graph.normalize=none" if normalize == "none" else "")
                + "); it takes no enrollment audio. A bundle that does comes from a run "
                "trained with eval.protocol=enrollment"
            )
        return None
    enrollment = enrollment or {}
    fitted = speaker_normalizers(cache, enrollment, workers)
    functionals: dict = {}
    if meta.get("functionals"):
        if functionals_cache is None:
            raise BundleError(
                "this bundle's models also take the utterance functionals: give "
                "functionals_cache to fit them on each speaker's enrollment audio"
            )
        feature_set = meta["functionals"]["feature_set"]
        functionals = speaker_functionals_normalizers(
            functionals_cache, enrollment, feature_set, workers
        )
    speakers = list(speakers) if speakers is not None else [None] * len(paths)
    out = {}
    for path, speaker in zip(paths, speakers, strict=True):
        if speaker in fitted:
            out[path] = (
                speaker,
                fitted[speaker],
                enrollment_note(speaker, len(enrollment[speaker])),
                functionals.get(speaker),
            )
        else:
            out[path] = (speaker or "", None, NO_ENROLLMENT, None)
    return out
