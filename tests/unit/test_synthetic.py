"""The SYNTHETIC corpus: determinism, layout, counts, atomic generation, emotion effects."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sergraph.data.corpora import load_corpus, synthetic

N_PER_CLASS = 1  # 8 speakers x 4 emotions x 1 = 32 files, about a second to generate


def digest(folder: Path) -> str:
    """sha256 over the names and bytes of all wav files."""
    hasher = hashlib.sha256()
    for path in sorted((folder / "wav").glob("*.wav")):
        hasher.update(path.name.encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return root, synthetic.load(root, seed=0, n_per_class=N_PER_CLASS)


def test_table_counts_and_columns(corpus):
    root, table = corpus
    assert list(table.columns) == ["utterance", "path", "speaker", "label", "gender", "text"]
    assert len(table) == 8 * 4 * N_PER_CLASS
    assert list(table["utterance"]) == sorted(table["utterance"])
    assert Counter(table["label"]) == {
        e: 8 * N_PER_CLASS for e in ("neutral", "happy", "sad", "angry")
    }
    per_cell = table.groupby(["speaker", "label"]).size()
    assert len(per_cell) == 8 * 4 and set(per_cell) == {N_PER_CLASS}
    genders = table.groupby("speaker")["gender"].first()
    assert list(genders.index) == [f"spk{i:02d}" for i in range(1, 9)]
    assert Counter(genders) == {"m": 4, "f": 4}
    assert set(table["text"]) == {"synthetic"}
    folder = Path(table["path"].iloc[0]).parents[1]
    assert folder.parent == root.resolve()
    assert folder.name == f"synthetic-{synthetic.corpus_key(0, 8, N_PER_CLASS)}"


def test_files_are_16k_mono_pcm16_of_the_stated_length(corpus):
    _, table = corpus
    for path in table["path"]:
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 1.5 <= info.duration <= 3.0
        audio, _ = soundfile.read(path)
        assert 0.0 < np.max(np.abs(audio)) < 1.0


def test_marker_says_synthetic(corpus):
    _, table = corpus
    folder = Path(table["path"].iloc[0]).parents[1]
    metadata = json.loads((folder / synthetic.MARKER).read_text())
    assert metadata["SYNTHETIC"] is True
    assert "SYNTHETIC" in metadata["note"]
    assert metadata["params"] == {"seed": 0, "n_speakers": 8, "n_per_class": N_PER_CLASS}
    assert len(metadata["utterances"]) == len(table)
    assert "synthetic" in synthetic.__doc__.lower().split()[0]


def test_same_seed_gives_identical_bytes_other_seed_differs(corpus, tmp_path):
    _, table = corpus
    first = Path(table["path"].iloc[0]).parents[1]
    again = synthetic.generate(tmp_path / "again", seed=0, n_per_class=N_PER_CLASS)
    assert again != first
    assert digest(again) == digest(first)
    other = synthetic.generate(tmp_path / "other", seed=1, n_per_class=N_PER_CLASS)
    assert other.name != first.name
    assert digest(other) != digest(first)
    # every file differs, not just one
    for path in (first / "wav").glob("*.wav"):
        assert path.read_bytes() != (other / "wav" / path.name).read_bytes()


def test_existing_corpus_is_reused_not_regenerated(corpus, monkeypatch):
    root, table = corpus

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing corpus")

    monkeypatch.setattr(synthetic, "synthesize", fail)
    again = synthetic.load(root, seed=0, n_per_class=N_PER_CLASS)
    assert again.equals(table)


def test_default_root_is_sergraph_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    table = load_corpus("synthetic", None, n_speakers=2, n_per_class=1)
    assert len(table) == 2 * 4
    assert Path(table["path"].iloc[0]).is_relative_to((tmp_path / "cache").resolve())
    assert table.attrs["classes"] == ["neutral", "happy", "sad", "angry"]


def test_generation_is_atomic(tmp_path, monkeypatch):
    """The final folder never exists while files are written, and a failure leaves nothing."""
    final = tmp_path / f"synthetic-{synthetic.corpus_key(0, 2, 1)}"
    real_write = soundfile.write
    written = []

    def write(path, *args, **kwargs):
        assert not final.exists(), "final folder visible before generation finished"
        written.append(path)
        if len(written) == 5:
            raise OSError("disk full (simulated)")
        real_write(path, *args, **kwargs)

    monkeypatch.setattr(synthetic.soundfile, "write", write)
    with pytest.raises(OSError, match="simulated"):
        synthetic.generate(tmp_path, seed=0, n_speakers=2, n_per_class=1)
    assert len(written) == 5
    assert list(tmp_path.iterdir()) == []  # no final folder, no leftover temporary folder

    written.clear()
    monkeypatch.setattr(synthetic.soundfile, "write", _counting(real_write, final, written))
    folder = synthetic.generate(tmp_path, seed=0, n_speakers=2, n_per_class=1)
    assert folder == final.resolve()
    assert len(written) == 8
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    assert len(list((folder / "wav").glob("*.wav"))) == 8


def _counting(real_write, final, written):
    def write(path, *args, **kwargs):
        assert not final.exists(), "final folder visible before generation finished"
        written.append(path)
        real_write(path, *args, **kwargs)

    return write


def test_folder_without_marker_is_not_used(tmp_path):
    half = tmp_path / f"synthetic-{synthetic.corpus_key(0, 2, 1)}"
    (half / "wav").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no synthetic.json.*delete it"):
        synthetic.load(tmp_path, seed=0, n_speakers=2, n_per_class=1)


def test_invalid_options(tmp_path):
    with pytest.raises(ValueError, match="n_speakers must be at least 2"):
        synthetic.load(tmp_path, n_speakers=1)
    with pytest.raises(ValueError, match="n_per_class must be at least 1"):
        synthetic.load(tmp_path, n_per_class=0)


def test_missing_wav_file_is_reported(tmp_path):
    table = synthetic.load(tmp_path, n_speakers=2, n_per_class=1)
    Path(table["path"].iloc[3]).unlink()
    with pytest.raises(FileNotFoundError, match="1 wav file.*missing"):
        synthetic.load(tmp_path, n_speakers=2, n_per_class=1)


def test_style_interpolation_endpoints():
    assert vars(synthetic._style_for("angry", 0.0)) == pytest.approx(
        vars(synthetic.STYLES["neutral"])
    )
    assert vars(synthetic._style_for("sad", 1.0)) == pytest.approx(vars(synthetic.STYLES["sad"]))
    half = synthetic._style_for("angry", 0.5)
    neutral, angry = synthetic.STYLES["neutral"], synthetic.STYLES["angry"]
    assert half.level_db == pytest.approx((neutral.level_db + angry.level_db) / 2)
    assert half.f0_scale == pytest.approx(np.sqrt(neutral.f0_scale * angry.f0_scale))


def _autocorrelation_f0(audio: np.ndarray, sr: int = 16000) -> float:
    """Median f0 (Hz) over the loudest 30 ms frames, by autocorrelation in 60-500 Hz."""
    frame = int(0.03 * sr)
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    loud = frames[np.argsort(np.sum(frames**2, axis=1))[-len(frames) // 4 :]]
    estimates = []
    for x in loud:
        x = x - x.mean()
        corr = np.correlate(x, x, mode="full")[frame - 1 :]
        low, high = sr // 500, sr // 60
        estimates.append(sr / (low + np.argmax(corr[low:high])))
    return float(np.median(estimates))


def test_emotions_move_loudness_and_pitch_in_the_intended_direction():
    """Averaged over utterances of one speaker: angry louder and higher than neutral, sad
    quieter and lower. Fails if the emotion styles stop reaching the audio."""
    speaker = synthetic.make_speakers(seed=0, n_speakers=1)[0]
    rms, f0 = {}, {}
    for index, emotion in enumerate(synthetic.EMOTIONS):
        level, pitch = [], []
        for take in range(6):
            audio = synthetic.synthesize(np.random.default_rng([7, index, take]), speaker, emotion)
            level.append(20 * np.log10(np.sqrt(np.mean(audio**2))))
            pitch.append(_autocorrelation_f0(audio))
        rms[emotion], f0[emotion] = np.mean(level), np.median(pitch)
    assert rms["angry"] > rms["neutral"] + 2 > rms["sad"] + 4
    assert f0["angry"] > 1.1 * f0["neutral"] > 1.2 * f0["sad"]
    assert f0["happy"] > 1.1 * f0["neutral"]
