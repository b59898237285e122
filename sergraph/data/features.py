"""openSMILE features: frame-level LLDs, frame pooling, utterance functionals and an on-disk cache.

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

Audio: any format that soundfile reads (int or float samples, any sample rate, any number of
channels). Channels are averaged into mono. The signal is optionally resampled
(``FeatureConfig.sample_rate``, polyphase filter from scipy) and clipped to [-1, 1), because
opensmile-python converts the signal to int16 and would wrap values outside that range. int16
PCM and the same samples stored as float give identical features. The container is recognised
by its header, not its name. :func:`load_mono` refuses, with a reason naming the file: a 0-byte
file, a header that cannot be parsed (non-audio data, a cut-off header), a WAV/AIFF whose audio
stops before the length its header announces, NaN/inf samples and digital silence.

Cache (:class:`FeatureCache`)::

    cache_dir/lld-is10-<key>/manifest.json        what <key> stands for (set, levels, opensmile)
    cache_dir/lld-is10-<key>/<aa>/<sha256>.npy    raw (unpooled) LLDs [T, F] float32 of one file
    cache_dir/func-is10-<key>/<aa>/<sha256>.npy   functionals [F] float32 of one file

``<key>`` is a hash of the extraction settings: feature set, levels, sample rate, opensmile
version and the version of this recipe. ``<sha256>`` is the hash of the file's bytes. Paths and
mtimes are not part of the key, so renaming or touching a file is still a hit, and a file whose
content changed is a miss. Pooling is applied when the arrays are loaded, so a new ``pool`` value
does not re-extract anything. Each finished file is written atomically (temporary file, then
``os.replace``) as soon as it is done, so a killed run resumes where it stopped. Files that fail
(unreadable, empty, truncated, silent, too short, NaN/inf samples or features) are collected: a
single :class:`FeatureError` listing ``file: reason`` for each of them is raised after all the
other files are stored.

Speed, measured on EmoDB (16 kHz, 2.8 s per file on average) on one busy CPU core: IS10 LLD
about 20x realtime, eGeMAPS about 16x, ComParE about 30x. Each file also costs about 15 ms of
openSMILE start-up. Loading a warm cache of 535 files takes about 0.3 s.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from sergraph.io import atomic_write_bytes

FEATURE_SETS = ("is10", "egemaps", "compare")
"""Frame-level (LLD) feature sets accepted by :class:`FeatureConfig`."""

FUNCTIONAL_SETS = ("is10", "egemaps", "compare")
"""Utterance-level functional sets accepted by :func:`extract_functionals`."""

# Bump when the extraction recipe changes in a way that changes the numbers (invalidates caches).
RECIPE_VERSION = 1

# name -> (opensmile FeatureSet member name, has a delta level)
_OPENSMILE_SETS = {
    "is10": ("IS10", True),
    "egemaps": ("eGeMAPSv02", False),
    "compare": ("ComParE_2016", True),
}
_JOINED_LEVEL = "sergraph_lld_all"
_TOO_SHORT_WARNING = "Segment too short"
_MAX_LISTED_FAILURES = 50
# Largest float that opensmile-python's ``(x * 32768).astype(int16)`` maps without wrapping.
_MAX_SAMPLE = 32767 / 32768


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
        shown = self.failures[:_MAX_LISTED_FAILURES]
        lines = [f"  {path}: {reason}" for path, reason in shown]
        if len(self.failures) > len(shown):
            lines.append(f"  ... and {len(self.failures) - len(shown)} more (see .failures)")
        if hint:
            lines.append(hint)
        super().__init__(
            f"feature extraction failed for {len(self.failures)} file(s):\n" + "\n".join(lines)
        )


@dataclass
class FeatureConfig:
    """What frame-level features to extract and how to pool them.

    Args:
        feature_set: one of :data:`FEATURE_SETS` (``"is10"``, ``"egemaps"``, ``"compare"``).
        deltas: append the openSMILE delta level (IS10, ComParE). Ignored for eGeMAPS, for which
            openSMILE defines no delta level.
        pool: average every ``pool`` consecutive 10 ms frames into one (the paper: 5).
        sample_rate: resample every file to this rate (Hz) before extraction; ``None`` keeps each
            file's own rate.
    """

    feature_set: str = "is10"
    deltas: bool = True
    pool: int = 5
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        _check_feature_set(self.feature_set, FEATURE_SETS, "feature_set")
        if not isinstance(self.deltas, bool):
            raise ValueError(f"deltas={self.deltas!r} must be True or False")
        check_positive_int(self.pool, "pool")
        if self.sample_rate is not None:
            check_positive_int(self.sample_rate, "sample_rate")

    @classmethod
    def from_any(cls, config: FeatureConfig | Mapping | object) -> FeatureConfig:
        """Build from a :class:`FeatureConfig`, a mapping or an object with these attributes.

        Keys that are not fields of :class:`FeatureConfig` (for example ``cache_dir`` or
        ``workers`` of the run config's ``features`` node) are ignored. Missing keys take the
        defaults.

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
        return cls(**values)

    def levels(self) -> tuple[str, ...]:
        """The openSMILE feature levels this config extracts, e.g. ``("lld", "lld_de")``."""
        _, has_deltas = _OPENSMILE_SETS[self.feature_set]
        return ("lld", "lld_de") if self.deltas and has_deltas else ("lld",)


def _check_feature_set(name: object, choices: Sequence[str], what: str) -> None:
    if not isinstance(name, str) or name not in choices:
        raise ValueError(
            f"{what}={name!r} is not a known feature set; choose one of {list(choices)}"
        )


def check_positive_int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what}={value!r} must be a positive integer")


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

    member = getattr(opensmile.FeatureSet, _OPENSMILE_SETS[feature_set][0])
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


@cache
def _smile(feature_set: str, levels: tuple[str, ...]):
    """One ``opensmile.Smile`` per process and setting (creating one starts openSMILE)."""
    import opensmile

    member = getattr(opensmile.FeatureSet, _OPENSMILE_SETS[feature_set][0])
    if levels == ("lld", "lld_de"):
        return opensmile.Smile(_joined_config_path(feature_set), _JOINED_LEVEL)
    return opensmile.Smile(member, levels[0])


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


# --------------------------------------------------------------------------------------------
# audio


def load_mono(
    source: str | os.PathLike | io.IOBase, sample_rate: int | None = None, name: str | None = None
) -> tuple[np.ndarray, int]:
    """Read an audio file as a mono float32 signal in [-1, 1).

    The container is recognised from the file's header, not its name (an AIFF file called
    ``.wav`` is read as AIFF). Refused, each with its own reason: an empty (0-byte) file, a
    header libsndfile cannot parse (text or other non-audio data, a header cut short), a WAV or
    AIFF file whose audio data stops before the length its header announces (an interrupted copy;
    streaming placeholders such as ``0xFFFFFFFF`` are accepted), no samples, NaN/inf samples
    (float files), and digital silence (every sample rounds to 0 in 16 bits, which is what
    openSMILE sees).

    Args:
        source: path or binary file object of any format soundfile reads (int or float samples).
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's rate.
        name: file name used in error messages (defaults to ``source``).

    Returns:
        ``(signal [n], rate)``: channel average, clipped to the range opensmile-python's int16
        conversion accepts.

    Raises:
        FeatureError: the file cannot be decoded, is truncated, has no samples, has non-finite
            samples or is silent.
    """
    name = str(source) if name is None else name
    if _byte_size(source) == 0:
        raise FeatureError([(name, f"empty file (0 bytes); expected {_READABLE}")])
    try:
        with sf.SoundFile(source) as audio:
            truncated = _truncation(audio.extra_info)
            data = audio.read(dtype="float64", always_2d=True)
            rate = audio.samplerate
    except Exception as error:  # soundfile raises several types for bad files
        # Workers pass the bytes in a BytesIO: name the file, not the object, in the message.
        message = str(error).replace(repr(source), repr(name))
        raise FeatureError(
            [(name, f"unreadable audio ({type(error).__name__}: {message}); expected {_READABLE}")]
        ) from None
    if truncated:
        announced, present = truncated
        raise FeatureError(
            [
                (
                    name,
                    f"truncated file: its header announces {announced} bytes of audio but only "
                    f"{present} are present (an interrupted copy or download?); copy it again",
                )
            ]
        )
    if data.shape[0] == 0:
        raise FeatureError([(name, "empty audio (0 samples)")])
    non_finite = int(np.count_nonzero(~np.isfinite(data)))
    if non_finite:
        raise FeatureError(
            [(name, f"{non_finite} NaN/inf sample(s); audio samples must be finite numbers")]
        )
    signal = data.mean(axis=1)
    if sample_rate is not None and sample_rate != rate:
        from scipy.signal import resample_poly

        common = math.gcd(int(sample_rate), int(rate))
        signal = resample_poly(signal, sample_rate // common, rate // common)
        rate = sample_rate
    signal = np.clip(signal, -1.0, _MAX_SAMPLE).astype(np.float32)
    if not np.any(np.abs(signal) >= _SILENCE):
        channels = f" (average of {data.shape[1]} channels)" if data.shape[1] > 1 else ""
        raise FeatureError(
            [
                (
                    name,
                    f"silent audio{channels}: peak {float(np.abs(signal).max()):.2g}, every "
                    "sample is 0 at 16-bit resolution, so openSMILE would see no signal",
                )
            ]
        )
    return signal, int(rate)


_READABLE = "an audio file libsndfile reads (WAV, AIFF, FLAC, OGG/Vorbis, MP3, ...)"
# opensmile-python converts with (x * 32768).astype(int16): |x| below one step becomes 0.
_SILENCE = 1 / 32768
# Data-chunk sizes that streaming writers put in a header they cannot seek back to fix.
_STREAMING_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def _byte_size(source) -> int | None:
    """Size in bytes of a path or seekable file object (``None`` if it cannot be told)."""
    try:
        if isinstance(source, str | os.PathLike):
            return os.path.getsize(source)
        if isinstance(source, io.BytesIO):
            return source.getbuffer().nbytes
    except OSError:
        return None  # let soundfile report the real problem
    return None


def _truncation(extra_info: str) -> tuple[int, int] | None:
    """``(announced, present)`` bytes when libsndfile found the audio chunk cut short."""
    import re

    for match in re.finditer(
        r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE
    ):
        announced, present = int(match.group(1)), int(match.group(2))
        if announced > present and announced not in _STREAMING_SIZES:
            return announced, present
    return None


# --------------------------------------------------------------------------------------------
# extraction


def _extract_llds_from(
    source, name: str, config: FeatureConfig
) -> np.ndarray:  # shared by the public function and the cache workers
    signal, rate = load_mono(source, config.sample_rate, name)
    smile = _smile(config.feature_set, config.levels())
    return _run_smile(smile, signal, rate, name, f"{config.feature_set} LLDs")


def _extract_functionals_from(
    source, name: str, feature_set: str, sample_rate: int | None
) -> np.ndarray:
    signal, rate = load_mono(source, sample_rate, name)
    smile = _smile(feature_set, ("func",))
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
    config = FeatureConfig(feature_set=feature_set, deltas=deltas, sample_rate=sample_rate)
    return _extract_llds_from(path, str(path), config)


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
    _check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
    if sample_rate is not None:
        check_positive_int(sample_rate, "sample_rate")
    return _extract_functionals_from(path, str(path), feature_set, sample_rate)


def feature_names(config: FeatureConfig | Mapping | object | None = None) -> list[str]:
    """Column names of the frame-level features of ``config`` (default: IS10 + deltas).

    Args:
        config: a :class:`FeatureConfig` (or anything :meth:`FeatureConfig.from_any` accepts).

    Returns:
        ``F`` openSMILE names, e.g. ``pcm_loudness_sma`` ... ``shimmerLocal_sma_de`` for IS10.
    """
    config = FeatureConfig() if config is None else FeatureConfig.from_any(config)
    return list(_smile(config.feature_set, config.levels()).feature_names)


def num_features(config: FeatureConfig | Mapping | object | None = None) -> int:
    """Number of frame-level feature columns of ``config`` (76 for the default IS10 + deltas)."""
    return len(feature_names(config))


def functional_names(feature_set: str = "is10") -> list[str]:
    """Names of the utterance-level functionals of ``feature_set`` (one of FUNCTIONAL_SETS)."""
    _check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
    return list(_smile(feature_set, ("func",)).feature_names)


# --------------------------------------------------------------------------------------------
# pooling and length


def pool_frames(frames: np.ndarray, pool: int) -> np.ndarray:
    """Average every ``pool`` consecutive frames.

    Args:
        frames: ``[T, F]``.
        pool: group size (>= 1). The last group may be shorter; it is averaged over its real
            frames (no zero padding enters the mean).

    Returns:
        ``[ceil(T / pool), F]`` with the dtype of ``frames`` (float64 for integer input).
    """
    check_positive_int(pool, "pool")
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must be 2-D [T, F], got shape {frames.shape}")
    dtype = frames.dtype if np.issubdtype(frames.dtype, np.floating) else np.float64
    num_frames = frames.shape[0]
    if num_frames == 0:
        return np.zeros((0, frames.shape[1]), dtype=dtype)
    starts = np.arange(0, num_frames, pool)
    sums = np.add.reduceat(frames.astype(np.float64), starts, axis=0)
    counts = np.minimum(pool, num_frames - starts)
    return (sums / counts[:, None]).astype(dtype)


# --------------------------------------------------------------------------------------------
# hashing and atomic files

_HASH_CHUNK = 1 << 20
_HASH_MEMO: dict[tuple, str] = {}
# A file modified this recently could change again within one mtime tick without changing its
# (size, mtime_ns): do not memoise its hash (the "racily clean" rule of git).
_RACY_SECONDS = 2.0


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    Memoised in this process by (path, size, mtime_ns, inode) once the file is more than two
    seconds old, so repeated cache look-ups of unchanged files do not read them again.

    Args:
        path: the file.

    Returns:
        64 hex characters.

    Raises:
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    info = os.stat(path)
    memo_key = (os.path.abspath(path), info.st_size, info.st_mtime_ns, info.st_ino)
    digest = _HASH_MEMO.get(memo_key)
    if digest is not None:
        return digest
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    if time.time() - info.st_mtime_ns / 1e9 > _RACY_SECONDS:
        _HASH_MEMO[memo_key] = digest
    return digest


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------------------
# cache


@dataclass
class CacheStats:
    """Counters of a :class:`FeatureCache`, summed over its calls.

    Attributes:
        hits: requested files whose features were already on disk.
        misses: requested files whose features were not on disk.
        extracted: openSMILE runs (files with the same content are extracted once).
        failed: files that raised a :class:`FeatureError`.
    """

    hits: int = 0
    misses: int = 0
    extracted: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Job:
    """One extraction for a worker process (picklable, so spawn-safe)."""

    path: str
    sha256: str
    out_path: str
    kind: str  # "lld" or "func"
    feature_set: str
    deltas: bool
    sample_rate: int | None


def _run_job(job: _Job) -> tuple[str, np.ndarray | None, str | None]:
    """Extract one file, store it atomically and return ``(sha256, array, failure reason)``."""
    try:
        # Hash and decode the same bytes, so the stored array always matches its key even if the
        # file is rewritten while we run.
        data = Path(job.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != job.sha256:
            return job.sha256, None, "file changed during extraction; run again"
        if job.kind == "lld":
            config = FeatureConfig(job.feature_set, job.deltas, 1, job.sample_rate)
            array = _extract_llds_from(io.BytesIO(data), job.path, config)
        else:
            array = _extract_functionals_from(
                io.BytesIO(data), job.path, job.feature_set, job.sample_rate
            )
        _atomic_save_npy(Path(job.out_path), array)
        return job.sha256, array, None
    except FeatureError as error:
        return job.sha256, None, "; ".join(reason for _, reason in error.failures)
    except Exception as error:  # report any other per-file failure instead of losing the batch
        return job.sha256, None, f"{type(error).__name__}: {error}"


class FeatureCache:
    """Content-addressed on-disk cache of openSMILE features (see the module docstring).

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
    """

    def __init__(self, cache_dir: str | os.PathLike, config: FeatureConfig | Mapping | object):
        self.root = Path(cache_dir).expanduser()
        self.config = FeatureConfig.from_any(config)
        self.stats = CacheStats()

    # ---- keys and directories

    def _description(self, kind: str, feature_set: str) -> dict:
        levels = list(self.config.levels()) if kind == "lld" else ["func"]
        return {
            "kind": kind,
            "feature_set": feature_set,
            "opensmile_set": _OPENSMILE_SETS[feature_set][0],
            "levels": levels,
            "sample_rate": self.config.sample_rate,
            "opensmile": opensmile_version(),
            "recipe": RECIPE_VERSION,
        }

    def key_dir(self, kind: str = "lld", feature_set: str | None = None) -> Path:
        """Directory holding the arrays of one extraction setting.

        Args:
            kind: ``"lld"`` (frame-level, this config) or ``"func"`` (functionals).
            feature_set: for ``"func"``: the functional set (default: the config's).

        Returns:
            ``cache_dir/<kind>-<feature_set>-<16 hex of the settings hash>``.
        """
        feature_set = feature_set or self.config.feature_set
        description = self._description(kind, feature_set)
        key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{kind}-{feature_set}-{key}"

    def _ensure_manifest(self, key_dir: Path, description: dict) -> None:
        manifest = key_dir / "manifest.json"
        if manifest.exists():
            return
        key_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(manifest, (json.dumps(description, indent=2) + "\n").encode())

    # ---- public API

    def get(
        self, paths: Sequence[str | os.PathLike], workers: int = 1, progress: bool = True
    ) -> list[np.ndarray]:
        """Pooled frame features of each file, extracting only those not in the cache.

        Args:
            paths: audio files.
            workers: processes for extraction (1 = in this process).
            progress: show a tqdm bar on stderr while extracting.

        Returns:
            ``[ceil(T_i / pool), F]`` float32 arrays in the order of ``paths``.

        Raises:
            FeatureError: listing every file that failed, after all other files are stored.
        """
        arrays = self._lookup(paths, "lld", self.config.feature_set, workers, progress)
        return [pool_frames(array, self.config.pool) for array in arrays]

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
        feature_set = feature_set or self.config.feature_set
        _check_feature_set(feature_set, FUNCTIONAL_SETS, "feature_set")
        arrays = self._lookup(paths, "func", feature_set, workers, progress)
        if not arrays:
            return np.zeros((0, len(functional_names(feature_set))), dtype=np.float32)
        return np.stack(arrays).astype(np.float32, copy=False)

    # ---- machinery

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

        failures: dict[str, str] = {}
        digests: list[str | None] = []
        for path in paths:
            try:
                digests.append(file_sha256(path))
            except OSError as error:
                failures[path] = f"cannot read file ({error.strerror or error})"
                digests.append(None)

        found: dict[str, np.ndarray] = {}
        todo: dict[str, _Job] = {}
        for path, digest in zip(paths, digests, strict=True):
            if digest is None or digest in found or digest in todo:
                continue
            out_path = key_dir / digest[:2] / f"{digest}.npy"
            array = _load_npy(out_path)
            if array is not None:
                found[digest] = array
            else:
                todo[digest] = _Job(
                    path,
                    digest,
                    str(out_path),
                    kind,
                    feature_set,
                    self.config.deltas,
                    self.config.sample_rate,
                )
        misses = sum(1 for d in digests if d is not None and d in todo)
        self.stats.hits += sum(1 for d in digests if d is not None) - misses
        self.stats.misses += misses

        if todo:
            self._ensure_manifest(key_dir, description)
            for digest, array, reason in self._extract(
                list(todo.values()), workers, progress, f"openSMILE {feature_set} {kind}"
            ):
                self.stats.extracted += 1
                if reason is None:
                    found[digest] = array
                else:
                    for path, path_digest in zip(paths, digests, strict=True):
                        if path_digest == digest:
                            failures[path] = reason

        if failures:
            self.stats.failed += len(failures)
            raise FeatureError(sorted(failures.items()))
        return [found[digest] for digest in digests]

    @staticmethod
    def _extract(
        jobs: list[_Job], workers: int, progress: bool, description: str
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
            if workers == 1 or len(jobs) == 1:
                for job in jobs:
                    yield _run_job(job)
                    bar.update()
                return
            # spawn: safe with threads (torch, openSMILE) in the parent and on every platform.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                futures = [pool.submit(_run_job, job) for job in jobs]
                try:
                    for future in as_completed(futures):
                        yield future.result()
                        bar.update()
                except BrokenProcessPool as error:
                    # Not a per-file failure: no way to tell which file (if any) killed it.
                    raise RuntimeError(
                        f"an openSMILE worker process died after {bar.n} of {len(jobs)} files "
                        "(the finished ones are cached). Causes: a crash in openSMILE, running "
                        "out of memory, or a script that starts workers at import time: spawned "
                        "workers re-import the main script, so guard it with "
                        "`if __name__ == '__main__':`. Run again, or use workers=1 to find the "
                        "file."
                    ) from error
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            bar.close()


def _load_npy(path: Path) -> np.ndarray | None:
    """A cached array, or None when it is absent or unreadable (then it is extracted again)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        return None
