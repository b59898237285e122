"""Audio for the feature front ends: decoding, mono mixdown, resampling, duration, checks.

Audio: any format that soundfile reads (int or float samples, any sample rate, any number of
channels). Channels are averaged into mono. The signal is optionally resampled (polyphase filter
from scipy) and clipped to [-1, 1), because opensmile-python converts the signal to int16 and
would wrap values outside that range. int16 PCM and the same samples stored as float give
identical features. The container is recognised by its header, not its name. :func:`load_mono`
refuses, with a reason naming the file: a 0-byte file, a header that cannot be parsed (non-audio
data, a cut-off header), a WAV/AIFF whose audio stops before the length its header announces,
NaN/inf samples and digital silence.
"""

from __future__ import annotations

import io
import math
import os
import re

import numpy as np
import soundfile as sf

from sergraph.data.features.config import FeatureError

# Largest float that opensmile-python's ``(x * 32768).astype(int16)`` maps without wrapping.
MAX_SAMPLE = 32767 / 32768


def load_mono(
    source: str | os.PathLike | io.IOBase,
    sample_rate: int | None = None,
    name: str | None = None,
    max_seconds: float | None = None,
    offset: float = 0.0,
    allow_silence: bool = False,
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
        max_seconds: read only the first this many seconds (the rest is never decoded, so a
            long file costs no more memory than this); ``None`` reads the whole file.
        offset: start reading this many seconds into the file (a block of a long file).
        allow_silence: accept digital silence (a silent block of a file that is not silent).

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
            frames = -1 if max_seconds is None else int(math.ceil(max_seconds * audio.samplerate))
            if offset:
                audio.seek(min(int(round(offset * audio.samplerate)), audio.frames))
            data = audio.read(frames=frames, dtype="float64", always_2d=True)
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
        signal = resample(signal, rate, sample_rate)
        rate = sample_rate
    signal = np.clip(signal, -1.0, MAX_SAMPLE).astype(np.float32)
    if not allow_silence and not np.any(np.abs(signal) >= _SILENCE):
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
    for match in re.finditer(
        r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE
    ):
        announced, present = int(match.group(1)), int(match.group(2))
        if announced > present and announced not in _STREAMING_SIZES:
            return announced, present
    return None


def resample(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``signal`` at ``rate`` Hz resampled to ``target`` Hz (polyphase filter from scipy)."""
    if int(rate) == int(target):
        return signal
    from scipy.signal import resample_poly

    common = math.gcd(int(target), int(rate))
    return resample_poly(signal, int(target) // common, int(rate) // common)


def audio_info(path: str | os.PathLike) -> tuple[float, int] | None:
    """``(duration in seconds, sample rate)`` from a file's header, or ``None`` if unreadable.

    Reads the header only (no samples), so it is cheap for any file length.
    """
    try:
        info = sf.info(os.fspath(path))
    except Exception:  # noqa: BLE001 - unreadable files are reported by load_mono
        return None
    return float(info.frames) / info.samplerate, int(info.samplerate)
