"""openSMILE features: frame-level LLDs and utterance functionals.

Feature sets and their sizes (opensmile-python 2.6.0, checked by ``tests/unit/test_features.py``):

============  =======================================  =====  ============  ============
name          openSMILE config / level                 LLD    LLD + delta   functionals
============  =======================================  =====  ============  ============
``is10``      ``is09-13/IS10_paraling_compat``         38     **76**        1582
``egemaps``   ``egemaps/v02/eGeMAPSv02``               25     25 (no Δ)     88
``compare``   ``compare/ComParE_2016``                 65     130           6373
============  =======================================  =====  ============  ============

* **IS10.** opensmile-python exposes the INTERSPEECH 2010 paralinguistic set as
  ``FeatureSet.IS10`` (the file ``IS10_paraling_compat.conf``, "numerically compatible with the
  original IS10 set except jitter/shimmer"; the package ships no ``IS10_paraling.conf``). Its
  feature levels are ``lld`` (38 columns: loudness, MFCC 0-14, 8 log mel bands, 8 LSP
  frequencies, F0 envelope, voicing probability, F0, jitter local, jitter DDP, shimmer, each
  smoothed), ``lld_de`` (their 38 deltas) and ``func`` (1582 functionals). The default
  ``FeatureConfig()`` gives LLD + deltas = **76** columns. Liu & Wang (Interspeech 2021) report
  78; openSMILE gives 76. The plausible source of the other 2: one public graph-SER codebase
  adds a 2-dim one-hot improvised/scripted flag (an IEMOCAP session attribute, not an acoustic
  feature) to the 76 LLDs. We use what the audio gives.
* **eGeMAPS.** openSMILE defines no delta level for eGeMAPSv02 (opensmile-python refuses
  ``lld_de``), so ``deltas`` is ignored for ``egemaps``. It is left out of the cache key, and
  ``feature_names`` shows the 25 columns.
* **ComParE 2016.** ``lld`` (65) and ``lld_de`` (65 deltas).

LLD and delta come from one openSMILE run. openSMILE writes each level separately, so we write a
small wrapper config (in the temp dir, regenerated when missing) that includes the packaged
config and joins ``lld;lld_de`` with a ``cVectorConcat`` into one output level. This is one run
instead of two, and the rows are aligned by construction. The output matches two separate runs
cut to the shorter one, which the tests check.

Frames: 10 ms hop. IS10 joins 25 ms frames with the 60 ms pitch frames, and the join stops at the
shorter level: ``T = floor((duration - 0.060) / 0.010) + 1`` (95 frames for 1 s).
eGeMAPS and ComParE give about one frame more (96 for 1 s). ComParE's last frame has the same
timestamp as the one before it (opensmile-python clamps the end of the final frame). Its values
carry on from the frames before it, so we keep it.


Speed: docs/benchmarks.md ("Extraction against openSMILE itself") measures this extraction
against the ``opensmile`` package's own ``Smile`` on the same files, side by side.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sergraph.data.features.audio import load_mono
from sergraph.data.features.config import (
    FUNCTIONAL_SETS,
    OPENSMILE_SETS,
    FeatureConfig,
    FeatureError,
    check_feature_set,
    check_positive_int,
)
from sergraph.io import atomic_write_bytes

# Bump when the extraction recipe changes in a way that changes the numbers (invalidates caches).
RECIPE_VERSION = 1

# name -> (opensmile FeatureSet member name, has a delta level)
OPENSMILE_MEMBERS = {
    "is10": ("IS10", True),
    "egemaps": ("eGeMAPSv02", False),
    "compare": ("ComParE_2016", True),
}
_JOINED_LEVEL = "sergraph_lld_all"
_TOO_SHORT_WARNING = "Segment too short"


def opensmile_version() -> str:
    """Version of the installed opensmile-python package (part of every cache key)."""
    import opensmile

    return str(opensmile.__version__)


# --------------------------------------------------------------------------------------------
# openSMILE objects


def _opensmile_config_root() -> Path:
    import opensmile

    return Path(opensmile.__file__).resolve().parent / "core" / "config"


def _joined_config_path(feature_set: str) -> str:
    """Path of the wrapper config that outputs LLD and delta as one level (written if missing)."""
    import opensmile

    member = getattr(opensmile.FeatureSet, OPENSMILE_MEMBERS[feature_set][0])
    packaged = _opensmile_config_root() / f"{member.value}.conf"
    text = (
        f"\\{{{packaged.as_posix()}}}\n\n"
        "[componentInstances:cComponentManager]\n"
        f"instance[{_JOINED_LEVEL}].type=cVectorConcat\n\n"
        f"[{_JOINED_LEVEL}:cVectorConcat]\n"
        "reader.dmLevel = lld;lld_de\n"
        f"writer.dmLevel = {_JOINED_LEVEL}\n"
        "includeSingleElementFields = 1\n"
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    user = os.getuid() if hasattr(os, "getuid") else "user"  # /tmp may be shared by many users
    folder = Path(tempfile.gettempdir()) / f"sergraph-opensmile-{user}-{digest}"
    path = folder / f"{feature_set}.conf"
    # Checked on every call: openSMILE re-reads the file on each run, and temp dirs get cleaned.
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    return str(path)


#: The ``opensmile.Smile`` of each (feature set, levels) made or adopted in this process.
_SMILES: dict[tuple[str, tuple[str, ...]], object] = {}


def smile_for(feature_set: str, levels: tuple[str, ...]):
    """One ``opensmile.Smile`` per process and setting.

    Making the first one in a process costs about 0.4 s (its constructor lists every installed
    distribution); an extraction worker adopts the parent's instead (:func:`adopt_smile`).
    """
    key = (feature_set, tuple(levels))
    if key not in _SMILES:
        import opensmile

        member = getattr(opensmile.FeatureSet, OPENSMILE_MEMBERS[feature_set][0])
        if key[1] == ("lld", "lld_de"):
            _SMILES[key] = opensmile.Smile(_joined_config_path(feature_set), _JOINED_LEVEL)
        else:
            _SMILES[key] = opensmile.Smile(member, levels[0])
    return _SMILES[key]


def adopt_smile(feature_set: str, levels: tuple[str, ...], smile) -> None:
    """Use ``smile`` (unpickled from the parent process) as this process's :func:`smile_for`.

    Unpickling a ``Smile`` restores its settings without running its constructor; it holds no
    running openSMILE (each call starts one), so a copy extracts exactly what the original does.
    """
    _SMILES.setdefault((feature_set, tuple(levels)), smile)


def _run_smile(smile, signal: np.ndarray, sample_rate: int, path: str, what: str) -> np.ndarray:
    """Run openSMILE on a mono signal and check the result; raise FeatureError naming ``path``."""
    if smile.feature_level == _JOINED_LEVEL:
        # The temp-dir wrapper may have been cleaned since the Smile object was made.
        _joined_config_path(Path(smile.feature_set).stem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = smile.process_signal(signal, sample_rate)
    too_short = False
    for caught_warning in caught:
        if _TOO_SHORT_WARNING in str(caught_warning.message):
            too_short = True
        else:
            warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
    if too_short:
        raise FeatureError(
            [
                (
                    path,
                    f"audio too short for {what} ({signal.size} samples = "
                    f"{signal.size / sample_rate:.3f} s at {sample_rate} Hz); "
                    "openSMILE produced no complete frame",
                )
            ]
        )
    values = table.to_numpy(dtype=np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        columns = [str(table.columns[i]) for i in np.nonzero(bad.any(axis=0))[0]]
        raise FeatureError(
            [(path, f"{what} contain {int(bad.sum())} NaN/inf values in columns {columns[:5]}")]
        )
    return values


def extract_llds_from(
    source, name: str, config: FeatureConfig
) -> np.ndarray:  # shared by the public function and the cache workers
    signal, rate = load_mono(source, config.sample_rate, name, config.max_seconds)
    smile = smile_for(config.feature_set, config.levels())
    return _run_smile(smile, signal, rate, name, f"{config.feature_set} LLDs")


#: Seconds of audio per block of :func:`extract_llds_streamed`, and of context read on each
#: side of it.
BLOCK_SECONDS, CONTEXT_SECONDS = 30.0, 10.0
_HOP = 0.010


def extract_llds_streamed(
    path: str,
    name: str,
    config: FeatureConfig,
    block_seconds: float = BLOCK_SECONDS,
    context_seconds: float = CONTEXT_SECONDS,
) -> np.ndarray:
    """The LLDs of a long file, decoded and analysed a block at a time: memory is bounded by a
    block, not by the file (openSMILE alone takes about 240 bytes per sample of the signal it is
    given: 2.3 GB for 10 minutes at 16 kHz).

    Each block is analysed with ``context_seconds`` of the audio before and after it, and only
    its own frames (on the file's 10 ms grid) are kept. openSMILE's smoothing and deltas look a
    few frames around; its F0 envelope holds the last voiced F0 over unvoiced stretches, so a
    block that starts after more than ``context_seconds`` without voicing has a different F0
    envelope until the next voiced frame (2 of IS10's 76 columns); otherwise the frames are
    those of the whole file (speech: identical, which the tests check). Same frame count as
    :func:`extract_llds_from` on the whole file.

    Raises:
        FeatureError: as :func:`~sergraph.data.features.audio.load_mono` (a silent file: every
            block silent), or openSMILE gave no frame.
    """
    import soundfile as sf

    if round(block_seconds / _HOP) * _HOP != block_seconds or context_seconds < 0:
        raise ValueError(f"block_seconds={block_seconds} must be a whole number of 10 ms hops")
    try:
        duration = sf.info(path).duration
    except Exception:  # noqa: BLE001 - unreadable: load_mono names the reason
        return extract_llds_from(path, name, config)
    smile = smile_for(config.feature_set, config.levels())
    context = round(context_seconds / _HOP) * _HOP
    parts, heard = [], False
    start = 0.0
    while start < duration:
        first = max(0.0, start - context)
        signal, rate = load_mono(
            path, config.sample_rate, name, start + block_seconds + context - first, first, True
        )
        heard = heard or bool(np.any(np.abs(signal) >= 1 / 32768))
        frames = _run_smile(smile, signal, rate, name, f"{config.feature_set} LLDs")
        skip = int(round((start - first) / _HOP))
        parts.append(frames[skip : skip + int(round(block_seconds / _HOP))])
        start += block_seconds
    if not heard:  # load_mono's check of a whole file, made block by block
        silent = "silent audio: every sample is 0 at 16-bit resolution, so openSMILE sees none"
        raise FeatureError([(name, silent)])
    return np.concatenate(parts)


def extract_functionals_from(
    source, name: str, feature_set: str, sample_rate: int | None, max_seconds: float | None = None
) -> np.ndarray:
    signal, rate = load_mono(source, sample_rate, name, max_seconds)
    smile = smile_for(feature_set, ("func",))
    return _run_smile(smile, signal, rate, name, f"{feature_set} functionals")[0]


def extract_llds(
    path: str | os.PathLike,
    feature_set: str = "is10",
    *,
    deltas: bool = True,
    sample_rate: int | None = None,
) -> np.ndarray:
    """Frame-level openSMILE LLDs (+ deltas) of one audio file, 10 ms hop, unpooled.

    Args:
        path: audio file (any rate, any channel count; channels are averaged).
        feature_set: one of :data:`FEATURE_SETS`.
        deltas: append the delta level (IS10, ComParE; ignored for eGeMAPS).
        sample_rate: resample to this rate first; ``None`` keeps the file's rate.

    Returns:
        ``[T, F]`` float32; ``F`` as in the module docstring (76 for IS10 with deltas).

    Raises:
        FeatureError: unreadable, empty or too short audio, or NaN/inf features.
    """
    check_feature_set(feature_set, OPENSMILE_SETS, "feature_set")
    config = FeatureConfig(feature_set=feature_set, deltas=deltas, sample_rate=sample_rate)
    return extract_llds_from(path, str(path), config)


def extract_functionals(
    path: str | os.PathLike, feature_set: str = "is10", *, sample_rate: int | None = None
) -> np.ndarray:
    """Utterance-level openSMILE functionals of one file (for the SVM baseline).

    Args:
        path: audio file (any rate, any channel count; channels are averaged).
        feature_set: one of :data:`FUNCTIONAL_SETS` (IS10 1582, eGeMAPSv02 88, ComParE 6373).
        sample_rate: resample to this rate first; ``None`` keeps the file's rate.

    Returns:
        ``[F]`` float32.

    Raises:
        FeatureError: unreadable, empty or too short audio, or NaN/inf features.
    """
    check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
    if sample_rate is not None:
        check_positive_int(sample_rate, "sample_rate")
    return extract_functionals_from(path, str(path), feature_set, sample_rate)


def feature_names(config: FeatureConfig | Mapping | object | None = None) -> list[str]:
    """Column names of the frame-level features of ``config`` (default: IS10 + deltas).

    Args:
        config: a :class:`FeatureConfig` (or anything :meth:`FeatureConfig.from_any` accepts).

    Returns:
        ``F`` openSMILE names, e.g. ``pcm_loudness_sma`` ... ``shimmerLocal_sma_de`` for IS10.
    """
    config = FeatureConfig() if config is None else FeatureConfig.from_any(config)
    check_feature_set(config.feature_set, OPENSMILE_SETS, "feature_set (openSMILE names)")
    return list(smile_for(config.feature_set, config.levels()).feature_names)


def num_features(config: FeatureConfig | Mapping | object | None = None) -> int:
    """Number of frame-level feature columns of ``config`` (76 for the default IS10 + deltas)."""
    return len(feature_names(config))


def functional_names(feature_set: str = "is10") -> list[str]:
    """Names of the utterance-level functionals of ``feature_set`` (one of FUNCTIONAL_SETS)."""
    check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
    return list(smile_for(feature_set, ("func",)).feature_names)
