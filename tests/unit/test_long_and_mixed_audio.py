"""Long files and corpora that mix sample rates (issue: bounded memory, notes in ``train``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import soundfile as sf

from sergraph.config import compose
from sergraph.data.features import FeatureCache, FeatureConfig, extract_llds
from sergraph.data.features.opensmile import extract_llds_from
from sergraph.data.prepared import audio_notes


def tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(t.size)
    return 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * noise


def test_max_seconds_extracts_only_the_start_of_a_long_file(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(40.0), 16000, subtype="PCM_16")
    whole = extract_llds(str(path))
    cut = extract_llds_from(str(path), str(path), FeatureConfig(max_seconds=6.0))
    assert whole.shape == (3995, 76)  # (40 - 0.060) / 0.010 + 1
    assert cut.shape == (595, 76)  # (6 - 0.060) / 0.010 + 1: what a 6 s file gives
    # Far from the cut the frames are those of the whole file (smoothing and deltas only look
    # a few frames ahead).
    np.testing.assert_allclose(cut[:580], whole[:580], rtol=1e-5, atol=1e-5)
    # max_seconds is part of the cache key only when set: default keys are unchanged.
    default = FeatureCache(tmp_path, FeatureConfig()).key_dir()
    assert FeatureCache(tmp_path, FeatureConfig(max_seconds=6.0)).key_dir() != default


def test_train_notes_long_files_and_mixed_sample_rates(tmp_path):
    rows = []
    for name, seconds, rate in (("a", 1.0, 16000), ("b", 1.0, 8000), ("c", 9.5, 16000)):
        path = tmp_path / f"{name}.wav"
        sf.write(path, tone(seconds, rate), rate)
        rows.append({"utterance": name, "path": str(path), "speaker": name, "label": "x"})
    table = pd.DataFrame(rows)
    notes = audio_notes(compose([]), table)
    assert notes[0] == (
        "note: the corpus mixes sample rates: 8000 Hz (1 files), 16000 Hz (2 files); openSMILE "
        "features depend on the rate, so features.sample_rate=16000 (or the lowest rate) makes "
        "them comparable"
    )
    # 120 nodes of 5 x 10 ms = 6 s; c.wav (9.5 s) is longer
    assert notes[1].startswith("note: 1 file(s) are longer than the 6 s the graph uses")
    assert "longest 9.5 s" in notes[1] and "features.max_seconds=6" in notes[1]
    resampled = audio_notes(compose(["features.sample_rate=8000", "features.max_seconds=6"]), table)
    assert "every file is resampled to features.sample_rate=8000" in resampled[0]
    assert "features.max_seconds" not in resampled[1]
    assert audio_notes(compose(["graph.max_nodes=200"]), table)[1:] == []  # 10 s: all used
