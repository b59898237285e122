"""The on-disk feature cache of every front end (openSMILE, SSL, precomputed).

Layout::

    cache_dir/lld-is10-<key>/manifest.json        what <key> stands for (set, levels, opensmile)
    cache_dir/lld-is10-<key>/<aa>/<sha256>.npy    raw (unpooled) LLDs [T, F] float32 of one file
    cache_dir/func-is10-<key>/<aa>/<sha256>.npy   functionals [F] float32 of one file
    cache_dir/ssl-<model>-<key>/<aa>/<sha256>.npy frame embeddings [T, H] float32 of one file
    cache_dir/pre-<key>/<aa>/<sha256>.npy         a validated precomputed array [T, D] float32

``<key>`` is a hash of the extraction settings (for openSMILE: feature set, levels, sample rate,
opensmile version and the recipe version; for SSL: the hash of the model's files, the layer
choice, chunking and the transformers version). ``<sha256>`` is the hash of the input file's
bytes. Paths and mtimes are not part of the key, so renaming or touching a file is still a hit,
and a file whose content changed is a miss. Pooling into nodes is applied when the arrays are
loaded, so a new ``pool``/``node_seconds`` does not re-extract anything. Each finished file is
written atomically as soon as it is done, so a killed run resumes where it stopped. A cached
array of the wrong shape or dtype (written by another version, or damaged) is named in a note,
extracted again and replaced. Files that fail are collected: a single :class:`FeatureError`
listing ``file: reason`` for each of them is raised after all the other files are stored.

How a list of openSMILE misses is extracted (one process or several) is
:mod:`sergraph.data.features.extraction`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sergraph.console import log
from sergraph.data.features import precomputed, ssl
from sergraph.data.features.config import (
    FUNCTIONAL_SETS,
    FeatureConfig,
    FeatureError,
    check_feature_set,
    check_positive_int,
)
from sergraph.data.features.extraction import Job, run_opensmile_jobs
from sergraph.data.features.hashing import save_to_cache
from sergraph.data.features.opensmile import (
    OPENSMILE_MEMBERS,
    RECIPE_VERSION,
    functional_names,
    num_features,
    opensmile_version,
)
from sergraph.data.features.pooling import frames_for_seconds, pool_by_time, pool_frames
from sergraph.io import file_sha256

__all__ = ["CacheStats", "FeatureCache", "file_sha256"]


@dataclass
class CacheStats:
    """Counters of a :class:`FeatureCache`, summed over its calls.

    Attributes:
        hits: requested files whose features were already on disk.
        misses: requested files whose features were not on disk (or had a wrong shape).
        extracted: extractions run (files with the same content are extracted once).
        failed: files that raised a :class:`FeatureError`.
        replaced: cached arrays of a wrong shape or dtype that were extracted again.
    """

    hits: int = 0
    misses: int = 0
    extracted: int = 0
    failed: int = 0
    replaced: int = 0


class FeatureCache:
    """Content-addressed on-disk cache of node features (see the module docstring).

    Args:
        cache_dir: root directory (created when the first file is stored).
        config: a :class:`FeatureConfig` or anything :meth:`FeatureConfig.from_any` accepts.

    Attributes:
        root: the cache directory.
        config: the :class:`FeatureConfig`.
        stats: :class:`CacheStats`, summed over calls.

    Example::

        cache = FeatureCache("~/.cache/sergraph/features", FeatureConfig("is10", pool=5))
        arrays = cache.get(table["path"].tolist(), workers=8)  # list of [T_i, 76] float32

    For ``feature_set=precomputed`` the paths given to :meth:`get` are the array files (see
    :func:`sergraph.data.features.precomputed.array_paths`).
    """

    def __init__(self, cache_dir: str | os.PathLike, config: FeatureConfig | Mapping | object):
        self.root = Path(cache_dir).expanduser()
        self.config = FeatureConfig.from_any(config)
        self.stats = CacheStats()
        self._front_end = None

    # ---- keys and directories

    def _description(self, kind: str, feature_set: str) -> dict:
        if kind == "ssl":
            return self.ssl_front_end().description()
        if kind == "pre":
            return {"kind": "pre", "recipe": precomputed.RECIPE_VERSION}
        levels = list(self.config.levels()) if kind == "lld" else ["func"]
        description = {
            "kind": kind,
            "feature_set": feature_set,
            "opensmile_set": OPENSMILE_MEMBERS[feature_set][0],
            "levels": levels,
            "sample_rate": self.config.sample_rate,
            "opensmile": opensmile_version(),
            "recipe": RECIPE_VERSION,
        }
        if self.config.max_seconds is not None:  # absent at the default: old keys still hit
            description["max_seconds"] = self.config.max_seconds
        return description

    def _node_kind(self) -> str:
        return {"ssl": "ssl", "precomputed": "pre"}.get(self.config.feature_set, "lld")

    def key_dir(self, kind: str | None = None, feature_set: str | None = None) -> Path:
        """Directory holding the arrays of one extraction setting.

        Args:
            kind: ``"lld"`` (openSMILE frames), ``"func"`` (functionals), ``"ssl"`` or
                ``"pre"``; default: the node features of this config.
            feature_set: for ``"func"``: the functional set (default: the config's).

        Returns:
            ``cache_dir/<kind>-<name>-<16 hex of the settings hash>``.
        """
        kind = kind or self._node_kind()
        feature_set = feature_set or self.config.feature_set
        description = self._description(kind, feature_set)
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
        if kind == "ssl":
            return self.root / f"ssl-{description['name']}-{key}"
        if kind == "pre":
            return self.root / f"pre-{key}"
        return self.root / f"{kind}-{feature_set}-{key}"

    def _ensure_manifest(self, key_dir: Path, description: dict) -> None:
        manifest = key_dir / "manifest.json"
        if manifest.exists():
            return
        save_to_cache(manifest, (json.dumps(description, indent=2) + "\n").encode())

    def ssl_front_end(self) -> ssl.SSLFrontEnd:
        """The SSL model of this config (loaded once, on first use)."""
        if self._front_end is None:
            self._front_end = ssl.SSLFrontEnd(self.config)
        return self._front_end

    # ---- public API

    def frame_hop(self) -> float:
        """Seconds between two cached frames of the node features of this config."""
        if self.config.feature_set == "ssl":
            return self.ssl_front_end().hop_seconds
        if self.config.feature_set == "precomputed":
            return float(self.config.precomputed.hop_seconds)
        return 0.010

    def node_seconds(self) -> float:
        """Seconds of audio per node (openSMILE: ``pool`` x 10 ms)."""
        if self.config.is_opensmile:
            return self.config.pool * 0.010
        return float(self.config.node_seconds)

    def get(
        self, paths: Sequence[str | os.PathLike], workers: int = 1, progress: bool = True
    ) -> list[np.ndarray]:
        """Node features of each file, extracting only those not in the cache.

        Args:
            paths: audio files (array files for ``precomputed``).
            workers: processes for openSMILE extraction (1 = in this process).
            progress: show a tqdm bar on stderr while extracting.

        Returns:
            ``[N_i, F]`` float32 arrays in the order of ``paths``: openSMILE frames averaged
            ``pool`` at a time, SSL and precomputed frames averaged into ``node_seconds`` nodes.

        Raises:
            FeatureError: listing every file that failed, after all other files are stored.
        """
        kind = self._node_kind()
        if kind == "lld":
            arrays = self._lookup(paths, "lld", self.config.feature_set, workers, progress)
            return [pool_frames(array, self.config.pool) for array in arrays]
        arrays = self._lookup(paths, kind, self.config.feature_set, workers, progress)
        hop = self.frame_hop()
        if kind == "pre" and self.config.max_seconds is not None:
            keep = frames_for_seconds(self.config.max_seconds, hop)
            arrays = [array[:keep] for array in arrays]
        return [
            pool_by_time(array, hop, self.config.node_seconds).astype(np.float32, copy=False)
            for array in arrays
        ]

    def functionals(
        self,
        paths: Sequence[str | os.PathLike],
        workers: int = 1,
        progress: bool = True,
        feature_set: str | None = None,
    ) -> np.ndarray:
        """Utterance-level functionals of each file, cached like :meth:`get`.

        Args:
            paths: audio files.
            workers: processes for extraction (1 = in this process).
            progress: show a tqdm bar on stderr while extracting.
            feature_set: one of :data:`FUNCTIONAL_SETS`; default: the config's feature set.

        Returns:
            ``[N, F]`` float32, rows in the order of ``paths``.

        Raises:
            FeatureError: listing every file that failed, after all other files are stored.
        """
        if feature_set is None:
            config = self.config
            feature_set = config.feature_set if config.is_opensmile else config.functionals
        check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
        arrays = self._lookup(paths, "func", feature_set, workers, progress)
        if not arrays:
            return np.zeros((0, len(functional_names(feature_set))), dtype=np.float32)
        return np.stack(arrays).astype(np.float32, copy=False)

    # ---- machinery

    def _shape_check(self, kind: str, feature_set: str) -> Callable[[np.ndarray], str | None]:
        """A function giving the reason a cached array cannot be used, or None."""
        width: list[int] = []

        def expected_width() -> int | None:
            if not width:
                if kind == "lld":
                    width.append(num_features(self.config))
                elif kind == "func":
                    width.append(len(functional_names(feature_set)))
                elif kind == "ssl":
                    width.append(self.ssl_front_end().hidden_size)
                else:
                    width.append(-1)  # precomputed: any width (checked across files later)
            return width[0] if width[0] >= 0 else None

        def check(array: np.ndarray) -> str | None:
            ndim = 1 if kind == "func" else 2
            if array.dtype != np.float32 or array.ndim != ndim:
                return f"{array.dtype} array of shape {array.shape}, expected {ndim}-D float32"
            wanted = expected_width()
            if wanted is not None and array.shape[-1] != wanted:
                shape = "[F]" if kind == "func" else "[T, F]"
                return f"shape {array.shape}, expected {shape} with F = {wanted}"
            if kind != "func" and array.shape[0] == 0:
                return "no frames"
            return None

        return check

    def _lookup(
        self,
        paths: Sequence[str | os.PathLike],
        kind: str,
        feature_set: str,
        workers: int,
        progress: bool,
    ) -> list[np.ndarray]:
        if isinstance(paths, str | bytes | os.PathLike):
            raise TypeError(f"paths must be a list of files, not a single path: {paths!r}")
        check_positive_int(workers, "workers")
        paths = [os.fspath(p) for p in paths]
        description = self._description(kind, feature_set)
        key_dir = self.key_dir(kind, feature_set)
        check = self._shape_check(kind, feature_set)

        failures: dict[str, str] = {}
        digests: list[str | None] = []
        for path in paths:
            try:
                digests.append(file_sha256(path))
            except OSError as error:
                failures[path] = f"cannot read file ({error.strerror or error})"
                digests.append(None)

        found: dict[str, np.ndarray] = {}
        todo: dict[str, Job] = {}
        for path, digest in zip(paths, digests, strict=True):
            if digest is None or digest in found or digest in todo:
                continue
            out_path = key_dir / digest[:2] / f"{digest}.npy"
            array = load_npy(out_path)
            reason = None if array is None else check(array)
            if reason is not None:
                log(
                    f"note: cached features {out_path} of {path} are unusable ({reason}); "
                    "extracting them again"
                )
                self.stats.replaced += 1
                array = None
            if array is not None:
                found[digest] = array
            else:
                todo[digest] = Job(
                    path,
                    digest,
                    str(out_path),
                    kind,
                    feature_set,
                    self.config.deltas,
                    self.config.sample_rate,
                    self.config.max_seconds,
                )
        misses = sum(1 for d in digests if d is not None and d in todo)
        self.stats.hits += sum(1 for d in digests if d is not None) - misses
        self.stats.misses += misses

        if todo:
            self._ensure_manifest(key_dir, description)
            for digest, array, reason in self._extract(
                list(todo.values()), kind, workers, progress, self._bar_text(kind, feature_set)
            ):
                self.stats.extracted += 1
                if reason is None:
                    found[digest] = array
                else:
                    for path, path_digest in zip(paths, digests, strict=True):
                        if path_digest == digest:
                            failures[path] = reason

        if kind == "pre":
            failures.update(precomputed.width_failures(paths, digests, found))
        if failures:
            self.stats.failed += len(failures)
            raise FeatureError(sorted(failures.items()))
        return [found[digest] for digest in digests]

    def _bar_text(self, kind: str, feature_set: str) -> str:
        if kind == "ssl":
            return f"SSL {self.ssl_front_end().name}"
        if kind == "pre":
            return "precomputed arrays"
        return f"openSMILE {feature_set} {kind}"

    def _extract(
        self, jobs: list[Job], kind: str, workers: int, progress: bool, description: str
    ) -> Iterable[tuple[str, np.ndarray | None, str | None]]:
        from tqdm import tqdm

        bar = tqdm(
            total=len(jobs),
            desc=description,
            unit="file",
            disable=None if progress else True,  # None: shown on a terminal only
            file=sys.stderr,
        )
        try:
            if kind == "ssl":
                for result in self.ssl_front_end().extract(jobs):
                    yield result
                    bar.update()
                return
            if kind == "pre":
                for job in jobs:
                    yield precomputed.run_job(job)
                    bar.update()
                return
            for result in run_opensmile_jobs(jobs, workers):
                yield result
                bar.update()
        finally:
            bar.close()


def load_npy(path: Path) -> np.ndarray | None:
    """A cached array, or None when it is absent or unreadable (then it is extracted again)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        return None
