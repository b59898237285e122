"""The one features configuration (``features:`` of the run config) and the feature errors.

:class:`FeatureConfig` is both the typed schema of the run config's ``features`` node (it is
used by :mod:`sergraph.config` as an OmegaConf structured config) and the settings object the
extractors and the cache take. Fields that only change speed or where files go (``workers``,
``cache_dir``, ``shard``) and what to do with failures (``on_error``) are never part of a cache
key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

OPENSMILE_SETS = ("is10", "egemaps", "compare")
"""openSMILE frame-level (LLD) sets."""

FEATURE_SETS = (*OPENSMILE_SETS, "ssl", "precomputed")
"""Node-feature front ends accepted by :class:`FeatureConfig`."""

FUNCTIONAL_SETS = ("is10", "egemaps", "compare")
"""Utterance-level functional sets accepted by ``extract_functionals``."""

MAX_LISTED_FAILURES = 50


class FeatureError(RuntimeError):
    """Feature extraction failed for one or more files.

    Args:
        failures: ``[(file, reason), ...]``.
        hint: an optional last line of the message (what the caller can do about it).

    Attributes:
        failures: ``[(file, reason), ...]`` for every file that failed.
    """

    def __init__(self, failures: Sequence[tuple[str, str]], hint: str | None = None):
        self.failures = [(str(path), str(reason)) for path, reason in failures]
        shown = self.failures[:MAX_LISTED_FAILURES]
        lines = [f"  {path}: {reason}" for path, reason in shown]
        if len(self.failures) > len(shown):
            lines.append(f"  ... and {len(self.failures) - len(shown)} more (see .failures)")
        if hint:
            lines.append(hint)
        super().__init__(
            f"feature extraction failed for {len(self.failures)} file(s):\n" + "\n".join(lines)
        )


@dataclass
class SSLConfig:
    """Self-supervised frame embeddings (``features.feature_set=ssl``).

    Args:
        model: a local Hugging Face model folder or a hub id (wav2vec2, HuBERT, WavLM, ...).
        layer: which hidden state: an index into ``hidden_states`` (0 = the input of the first
            transformer layer, -1 = the last layer), or a list of indices averaged.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
        batch_size: chunks per forward pass.
        chunk_seconds: long files are cut into chunks of this length (plus ``context_seconds``
            of audio on each side, whose frames are dropped) so memory stays bounded.
        context_seconds: audio given to the model on each side of a chunk.
    """

    model: str | None = None
    layer: Any = -1
    device: str = "auto"
    batch_size: int = 8
    chunk_seconds: float = 20.0
    context_seconds: float = 1.5


@dataclass
class PrecomputedConfig:
    """Arrays made by another front end (``features.feature_set=precomputed``).

    Args:
        root: folder of ``<utterance>.npy`` (or ``.pt``) files, one ``[frames, dims]`` array per
            utterance; relative paths of ``column`` are resolved against it too.
        column: a corpus (manifest) column holding each utterance's array file instead.
        hop_seconds: time between consecutive frames of the arrays (required).
    """

    root: str | None = None
    column: str | None = None
    hop_seconds: float | None = None


@dataclass
class FeatureConfig:
    """What node features to compute, how to pool them into nodes, and how to run extraction.

    Args:
        feature_set: one of :data:`FEATURE_SETS`.
        deltas: append the openSMILE delta level (IS10, ComParE). Ignored for eGeMAPS, for which
            openSMILE defines no delta level.
        pool: openSMILE: average every ``pool`` consecutive 10 ms frames into one node (5).
        sample_rate: openSMILE: resample every file to this rate (Hz) before extraction;
            ``None`` keeps each file's own rate. (SSL models always get their own rate.)
        node_seconds: SSL and precomputed features: length of one node in seconds; frames are
            averaged into nodes by time, so ``graph.max_nodes`` keeps meaning seconds.
        max_seconds: extract only the first this many seconds of each file (bounds memory and
            time for long files); ``None``: whole files.
        functionals: utterance functionals for ``model=svm`` and ``concat_functionals``.
        cache_dir: cache root (default ``$SERGRAPH_CACHE/features``).
        workers: openSMILE extraction processes.
        on_error: files whose features fail: ``stop`` or ``skip``.
        shard: ``i/n``: ``sergraph features`` extracts only shard ``i`` of ``n``.
        concat_functionals: neural models also get the utterance functionals.
        ssl: :class:`SSLConfig`.
        precomputed: :class:`PrecomputedConfig`.
    """

    feature_set: str = "is10"
    deltas: bool = True
    pool: int = 5
    sample_rate: int | None = None
    node_seconds: float = 0.05
    max_seconds: float | None = None
    functionals: str = "is10"
    cache_dir: str | None = None
    workers: int = 2
    # Files whose features fail: "stop" (raise, listing all of them) or "skip" (leave them out
    # of the study and list them in <study dir>/failed_files.csv).
    on_error: str = "stop"
    # "i/n": `sergraph features` extracts only shard i of n (0-based) of the corpus files, so
    # that n SLURM array tasks fill the shared cache together (each file is written atomically).
    shard: str | None = None
    # Neural models: also give the classifier the utterance's functionals (features.functionals,
    # normalised like the node features), concatenated with the graph embedding.
    concat_functionals: bool = False
    ssl: SSLConfig = field(default_factory=SSLConfig)
    precomputed: PrecomputedConfig = field(default_factory=PrecomputedConfig)

    def __post_init__(self) -> None:
        if isinstance(self.ssl, Mapping):
            self.ssl = SSLConfig(**dict(self.ssl))
        if isinstance(self.precomputed, Mapping):
            self.precomputed = PrecomputedConfig(**dict(self.precomputed))
        check_feature_set(self.feature_set, FEATURE_SETS, "feature_set")
        if not isinstance(self.deltas, bool):
            raise ValueError(f"deltas={self.deltas!r} must be True or False")
        check_positive_int(self.pool, "pool")
        if self.sample_rate is not None:
            check_positive_int(self.sample_rate, "sample_rate")
        check_positive_number(self.node_seconds, "node_seconds")
        if self.max_seconds is not None:
            check_positive_number(self.max_seconds, "max_seconds")
        if self.feature_set == "ssl":
            check_ssl(self.ssl)
        if self.feature_set == "precomputed":
            check_precomputed(self.precomputed)

    @classmethod
    def from_any(cls, config: FeatureConfig | Mapping | object) -> FeatureConfig:
        """Build from a :class:`FeatureConfig`, a mapping or an object with these attributes.

        Keys that are not fields of :class:`FeatureConfig` are ignored; missing keys take the
        defaults. An OmegaConf ``features`` node (a mapping) is accepted.

        Args:
            config: the source.

        Returns:
            A validated :class:`FeatureConfig`.
        """
        if isinstance(config, FeatureConfig):
            cls(**asdict(config))  # re-validate: a dataclass can be mutated after creation
            return config
        names = [f.name for f in fields(cls)]
        if isinstance(config, Mapping):
            values = {name: config[name] for name in names if name in config}
        else:
            values = {name: getattr(config, name) for name in names if hasattr(config, name)}
        for name in ("ssl", "precomputed"):
            if name in values and isinstance(values[name], Mapping):
                values[name] = _plain(values[name])
        return cls(**values)

    def levels(self) -> tuple[str, ...]:
        """The openSMILE feature levels this config extracts, e.g. ``("lld", "lld_de")``."""
        has_deltas = self.feature_set in ("is10", "compare")
        return ("lld", "lld_de") if self.deltas and has_deltas else ("lld",)

    @property
    def is_opensmile(self) -> bool:
        return self.feature_set in OPENSMILE_SETS

    def layers(self) -> list[int] | str:
        """The SSL hidden-state indices of ``ssl.layer`` as a list, or ``"all"``."""
        return layer_list(self.ssl.layer)


def _plain(mapping: Mapping) -> dict:
    """A plain dict of a mapping (OmegaConf nodes included), lists as lists."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(mapping, DictConfig):
            return OmegaConf.to_container(mapping, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return dict(mapping)


def layer_list(layer: object) -> list[int] | str:
    """``ssl.layer`` as a list of ints, or ``"all"``; raise naming the accepted forms."""
    if layer == "all":
        return "all"
    if isinstance(layer, str):
        values = None
    elif isinstance(layer, list | tuple) or hasattr(layer, "__iter__"):
        values = list(layer)
    else:
        values = [layer]
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) for v in values
    ):
        raise ValueError(
            f"features.ssl.layer={layer!r} is not valid; give a hidden-state index (e.g. -1 for "
            "the last layer, 0 for the transformer input), a list of indices to average, e.g. "
            "[6, 7, 8], or all (every layer stacked, mixed by a learned weighted sum)"
        )
    return [int(v) for v in values]


def check_ssl(ssl: SSLConfig) -> None:
    if not ssl.model:
        raise ValueError(
            "features.feature_set=ssl needs features.ssl.model: a local Hugging Face model "
            "folder or a hub id such as microsoft/wavlm-large"
        )
    layer_list(ssl.layer)
    check_positive_int(ssl.batch_size, "ssl.batch_size")
    check_positive_number(ssl.chunk_seconds, "ssl.chunk_seconds")
    if not isinstance(ssl.context_seconds, int | float) or ssl.context_seconds < 0:
        raise ValueError(f"ssl.context_seconds={ssl.context_seconds!r} must be >= 0")


def check_precomputed(precomputed: PrecomputedConfig) -> None:
    if precomputed.root is None and precomputed.column is None:
        raise ValueError(
            "features.feature_set=precomputed needs features.precomputed.root (a folder of "
            "<utterance>.npy or .pt files) or features.precomputed.column (a manifest column "
            "naming each utterance's array file)"
        )
    if precomputed.hop_seconds is None:
        raise ValueError(
            "features.feature_set=precomputed needs features.precomputed.hop_seconds: the time "
            "between two frames of the arrays, e.g. 0.02"
        )
    check_positive_number(precomputed.hop_seconds, "precomputed.hop_seconds")


def check_feature_set(name: object, choices: Sequence[str], what: str) -> None:
    if not isinstance(name, str) or name not in choices:
        raise ValueError(
            f"{what}={name!r} is not a known feature set; choose one of {list(choices)}"
        )


def check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what}={value!r} must be a positive integer")


def check_positive_number(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or value <= 0:
        raise ValueError(f"{what}={value!r} must be a positive number")
