"""Precomputed features: one ``[frames, dims]`` array per utterance, made by any front end.

``features.feature_set=precomputed`` with

- ``features.precomputed.root``: a folder of ``<utterance>.npy`` or ``<utterance>.pt`` files
  (the corpus's ``utterance`` ids), or
- ``features.precomputed.column``: a corpus (manifest) column naming each utterance's array
  file (relative paths are resolved against ``precomputed.root`` when given, else against the
  manifest's folder);
- ``features.precomputed.hop_seconds``: the time between two frames (required), so the frames
  are averaged into ``features.node_seconds`` nodes like every other front end.

Each array is validated when first read: a 2-D real numeric array (``.npy`` without pickles, or
a ``.pt`` file holding one tensor, loaded with ``weights_only=True``), at least one frame, no
NaN/inf, and the same number of dims in every file. Failures name the file and what would be
accepted. Valid arrays are cached by the content of their file (as float32), so a changed file
is read again.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sergraph.data.features.config import FeatureConfig, FeatureError
from sergraph.data.features.hashing import atomic_save_npy

RECIPE_VERSION = 1
SUFFIXES = (".npy", ".pt")
_ACCEPTED = "a 2-D [frames, dims] array of real numbers (.npy, or .pt holding one tensor)"


def array_paths(table, config: FeatureConfig, manifest_dir: str | os.PathLike | None) -> list[str]:
    """The array file of each row of a corpus table, in row order.

    Raises:
        FeatureError: files that do not exist, each named with its utterance.
        ValueError: ``precomputed.column`` is not a column of the table.
    """
    settings = config.precomputed
    root = Path(settings.root).expanduser() if settings.root else None
    paths: list[str] = []
    missing: list[tuple[str, str]] = []
    if settings.column:
        if settings.column not in table.columns:
            raise ValueError(
                f"features.precomputed.column={settings.column!r} is not a column of the corpus "
                f"table; its columns are {list(table.columns)} (manifest corpora keep every "
                "column of the CSV)"
            )
        base = root or (Path(manifest_dir) if manifest_dir else Path.cwd())
        for utterance, value in zip(table["utterance"], table[settings.column], strict=True):
            path = (base / Path(str(value)).expanduser()).resolve()
            paths.append(str(path))
            if not path.is_file():
                missing.append((str(path), f"array of utterance {utterance!r} does not exist"))
    else:
        for utterance in table["utterance"]:
            candidates = [root / f"{utterance}{suffix}" for suffix in SUFFIXES]
            found = [path for path in candidates if path.is_file()]
            paths.append(str(found[0] if found else candidates[0]))
            if not found:
                missing.append(
                    (
                        str(candidates[0]),
                        f"no array for utterance {utterance!r} in {root} "
                        f"(looked for {utterance}.npy and {utterance}.pt)",
                    )
                )
    if missing:
        raise FeatureError(missing, hint="Every utterance of the corpus needs its array file.")
    return paths


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Read and validate one array file; raise FeatureError naming it."""
    path = os.fspath(path)
    try:
        if path.endswith(".pt"):
            import torch

            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise FeatureError(
                    [(path, f"holds a {type(value).__name__}; expected {_ACCEPTED}")]
                )
            array = value.detach().float().numpy() if value.is_floating_point() else value.numpy()
        else:
            array = np.load(path, allow_pickle=False)
    except FeatureError:
        raise
    except Exception as error:  # noqa: BLE001 - every reader error, named with the file
        raise FeatureError(
            [(path, f"unreadable ({type(error).__name__}: {error}); expected {_ACCEPTED}")]
        ) from None
    if not isinstance(array, np.ndarray):
        raise FeatureError([(path, f"holds no single array; expected {_ACCEPTED}")])
    if array.dtype.kind not in "fiu":
        raise FeatureError([(path, f"dtype {array.dtype}; expected {_ACCEPTED}")])
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise FeatureError([(path, f"shape {array.shape}; expected {_ACCEPTED}, non-empty")])
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise FeatureError(
            [(path, f"{int(bad.sum())} NaN/inf value(s), first in frame {int(rows[0])}")]
        )
    return array


def run_job(job) -> tuple[str, np.ndarray | None, str | None]:
    """Validate one array file and cache it: ``(sha256, array, failure reason)``."""
    try:
        data = Path(job.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != job.sha256:
            return job.sha256, None, "file changed while it was read; run again"
        array = load_array(job.path)
    except FeatureError as error:
        return job.sha256, None, "; ".join(reason for _, reason in error.failures)
    except OSError as error:
        return job.sha256, None, f"cannot read file ({error.strerror or error})"
    atomic_save_npy(Path(job.out_path), array)  # a full cache disk stops the run (WriteError)
    return job.sha256, array, None


def width_failures(
    paths: Sequence[str], digests: Sequence[str | None], found: dict[str, np.ndarray]
) -> dict[str, str]:
    """Files whose number of dims differs from the most common one."""
    widths = {
        path: found[digest].shape[1]
        for path, digest in zip(paths, digests, strict=True)
        if digest in found
    }
    if len(set(widths.values())) <= 1:
        return {}
    common = Counter(widths.values()).most_common(1)[0][0]
    return {
        path: f"{width} dims, while {common} dims are the most common in this corpus; every "
        "array must have the same number of dims"
        for path, width in widths.items()
        if width != common
    }
