"""A bundle predicts at the sample rate its features were computed at, and reads a long file only
as far as it uses it.

The 48 kHz copy is made here with scipy's polyphase filter (x3) and stored as 16-bit PCM, so it
holds the 16 kHz original's content; read back at 16 kHz its openSMILE features, and so the
probabilities, must be the original's within :data:`RATE_TOLERANCE`. The control predicts the
same copy at its own rate (what bundles did before they recorded the rate): its probabilities
move by far more, so the test can tell the two apart.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from sergraph.cli import main
from sergraph.deploy.bundle import load_bundle
from sergraph.deploy.ensemble import CUT_MARGIN_SECONDS
from tests.conftest import emodb_root

#: Largest difference of a class probability between a 48 kHz copy and its 16 kHz original
#: (observed: 0.002 to 0.012 on EmoDB files and synthetic ones; the control moves 0.2 to 0.33).
RATE_TOLERANCE = 0.03


def probabilities(bundle, paths, cache) -> np.ndarray:
    frame = bundle.predict([str(p) for p in paths], progress=False, cache_dir=cache)
    return frame[[f"p_{c}" for c in bundle.classes]].to_numpy()


@pytest.fixture
def original(bundle_run) -> Path:
    """An EmoDB file when EmoDB is here (real speech at 16 kHz), else a synthetic one."""
    root = emodb_root()
    if root is not None:
        return root / "wav" / "03a01Nc.wav"
    return Path(bundle_run.audio[sorted(bundle_run.audio)[0]])


def copy_at(original: Path, factor: int, folder: Path) -> Path:
    samples, rate = sf.read(original)
    assert rate == 16000
    target = folder / f"{original.stem}_{rate * factor}.wav"
    sf.write(target, resample_poly(samples, factor, 1), rate * factor, subtype="PCM_16")
    return target


def test_the_bundle_records_the_rate_its_features_were_computed_at(bundle_run):
    corpus_rate = sf.info(next(iter(bundle_run.audio.values()))).samplerate
    assert corpus_rate == 16000  # the synthetic corpus; trained with features.sample_rate unset
    bundle = load_bundle(bundle_run.ensemble)
    assert bundle.meta["features"]["sample_rate"] == 16000
    assert bundle.feature_config.sample_rate == 16000


def test_a_48k_copy_predicts_as_its_16k_original(bundle_run, original, tmp_path, capsys):
    bundle = load_bundle(bundle_run.ensemble)
    copy = copy_at(original, 3, tmp_path)
    cache = tmp_path / "cache"
    got = probabilities(bundle, [original, copy], cache)
    assert np.abs(got[0] - got[1]).max() <= RATE_TOLERANCE
    # the control: the copy analysed at its own 48 kHz
    native = load_bundle(bundle_run.ensemble)
    native.feature_config = dataclasses.replace(native.feature_config, sample_rate=None)
    moved = np.abs(probabilities(native, [copy], cache)[0] - got[0]).max()
    assert moved > 5 * RATE_TOLERANCE, moved

    assert main(["predict", str(bundle_run.ensemble), str(original), str(copy)]) == 0
    err = capsys.readouterr().err
    assert (
        "note: 1 file(s) resampled to 16000 Hz, the rate this bundle's features were computed "
        "at (found 48000 Hz (1 file(s)))"
    ) in err


def test_a_long_file_is_read_only_as_far_as_the_model_sees(bundle_run, tmp_path):
    bundle = load_bundle(bundle_run.ensemble)
    seconds = 120 * 0.05  # graph.max_nodes=120 nodes of 5 x 10 ms
    assert bundle.input_config().max_seconds == seconds + CUT_MARGIN_SECONDS
    assert bundle.input_config(window=3.0) == bundle.feature_config  # windows need the file
    # a 30 s file: the first 6 s analysed alone give what the whole file gives
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    signal = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t) + 0.05 * rng.normal(size=t.size)
    path = tmp_path / "long.wav"
    sf.write(path, signal, 16000, subtype="PCM_16")
    whole = load_bundle(bundle_run.ensemble)
    whole.input_config = lambda window=None: whole.feature_config
    np.testing.assert_allclose(
        probabilities(bundle, [path], tmp_path / "a"),
        probabilities(whole, [path], tmp_path / "b"),
        atol=1e-6,
    )


def peak_rss_mb(args: list[str], cwd: Path) -> float:
    """Peak resident memory (MB) of ``sergraph ARGS`` in a fresh process."""
    probe = (
        "import resource, subprocess, sys; "
        "done = subprocess.run(sys.argv[1:], capture_output=True); "
        "assert done.returncode == 0, done.stderr.decode()[-2000:]; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "sergraph.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def ten_minutes(folder: Path) -> tuple[Path, Path]:
    rate = 16000
    t = np.arange(600 * rate) / rate
    sf.write(folder / "long.wav", 0.3 * np.sin(2 * np.pi * 220 * t), rate, subtype="PCM_16")
    sf.write(folder / "short.wav", 0.3 * np.sin(2 * np.pi * 220 * t[:rate]), rate)
    return folder / "short.wav", folder / "long.wav"


def test_a_ten_minute_file_predicts_in_the_memory_of_a_short_one(bundle_run, tmp_path):
    # Decoding 10 min at 16 kHz as float64 alone takes 77 MB, and openSMILE about 2.3 GB on it.
    short, long = ten_minutes(tmp_path)
    common = [str(bundle_run.ensemble), "--workers", "1", "--cache-dir", str(tmp_path / "c")]
    base = peak_rss_mb(["predict", *common, str(short)], tmp_path)
    peak = peak_rss_mb(["predict", *common, str(long)], tmp_path)
    assert peak - base < 60, (base, peak)


@pytest.mark.slow  # 10 minutes of audio through openSMILE: about a minute
def test_windows_over_a_ten_minute_file_stay_within_a_few_hundred_mb(bundle_run, tmp_path):
    # a block of 30 s with 2 x 10 s of context at 16 kHz: about 190 MB in openSMILE (3.5 GB whole)
    short, long = ten_minutes(tmp_path)
    common = [str(bundle_run.ensemble), "--workers", "1", "--window", "6", "--cache-dir", "c"]
    base = peak_rss_mb(["predict", *common, str(short)], tmp_path)
    peak = peak_rss_mb(["predict", *common, str(long)], tmp_path)
    assert peak - base < 400, (base, peak)


def long_recording(folder: Path, seconds: float) -> Path:
    """EmoDB utterances one after another (real speech with its pauses) when EmoDB is here,
    else a steady voiced tone with noise."""
    root = emodb_root()
    if root is not None:
        parts, total = [], 0.0
        for path in sorted((root / "wav").glob("*.wav")):
            samples, _ = sf.read(path)
            parts.append(samples)
            total += len(samples) / 16000
            if total >= seconds:
                break
        signal = np.concatenate(parts)
    else:
        t = np.arange(int(seconds * 16000)) / 16000
        noise = 0.05 * np.random.default_rng(0).normal(size=t.size)
        signal = 0.3 * np.sin(2 * np.pi * (180 + 30 * np.sin(0.5 * t)) * t) + noise
    path = folder / "recording.wav"
    sf.write(path, signal, 16000, subtype="PCM_16")
    return path


def test_windows_over_a_long_file_stream_and_give_the_whole_files_frames(tmp_path):
    from sergraph.data.features import FeatureConfig
    from sergraph.data.features.opensmile import extract_llds_from, extract_llds_streamed

    path = long_recording(tmp_path, 75.0)
    config = FeatureConfig(pool=1, sample_rate=16000)
    whole = extract_llds_from(str(path), str(path), config)
    # blocks of 30 s with 10 s of context: three blocks (0-30, 30-60, 60-end)
    streamed = extract_llds_streamed(str(path), str(path), config)
    assert streamed.shape == whole.shape  # floor((d - 0.060) / 0.010) + 1 frames either way
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-4)
    # without context the block starts differ (smoothing, deltas, the F0 envelope): the
    # comparison above can fail
    bare = extract_llds_streamed(str(path), str(path), config, context_seconds=0.0)
    assert np.abs(bare[3000:3003] - whole[3000:3003]).max() > 1e-3


def test_windows_mode_predicts_a_long_file_streamed(bundle_run, tmp_path, monkeypatch):
    import sergraph.deploy.ensemble as ensemble

    path = long_recording(tmp_path, 75.0)
    bundle = load_bundle(bundle_run.ensemble)
    monkeypatch.setattr(ensemble, "STREAM_SECONDS", 60.0)  # 75 s counts as long here
    frame = bundle.predict([str(path)], window=6.0, progress=False, cache_dir=tmp_path / "a")
    assert not list((tmp_path / "a").rglob("*.npy"))  # streamed, not through the cache
    monkeypatch.setattr(ensemble, "STREAM_SECONDS", 1e9)
    reference = bundle.predict([str(path)], window=6.0, progress=False, cache_dir=tmp_path / "b")
    assert len(frame) == len(reference) >= 13  # 6 s windows over 75 s or more
    columns = [f"p_{c}" for c in bundle.classes]
    np.testing.assert_allclose(frame[columns], reference[columns], atol=1e-5)
