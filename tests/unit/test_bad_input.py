"""Bad input, one case per test: every message names the file, row or key and what is accepted.

Audio files are generated here with soundfile (libsndfile writes WAV, AIFF, FLAC and OGG), so
the expected results follow from how they were made. openSMILE converts every signal to 16-bit
integers, so the same 16-bit samples stored in any wider container (24/32-bit int, float,
double, FLAC) must give bit-identical features; IS10 gives ``floor((d - 0.060) / 0.010) + 1``
frames for ``d`` seconds (95 for 1 s).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sergraph.config import ConfigError, compose
from sergraph.data.features import (
    FeatureCache,
    FeatureConfig,
    FeatureError,
    extract_llds,
    pool_frames,
)

IS10_FRAMES_1S = 95


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 220.0, seed: int = 0):
    """A sine with a little noise, quantised to 16 bits (so it survives any container)."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    signal = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise
    return np.round(signal * 32768) / 32768


def write(path, signal, rate=16000, **kwargs) -> str:
    sf.write(str(path), signal, rate, **kwargs)
    return str(path)


def failure_of(path) -> str:
    """The reason extract_llds gives for ``path``; checks that the error names the file."""
    with pytest.raises(FeatureError) as caught:
        extract_llds(path)
    assert caught.value.failures[0][0] == str(path)
    assert str(path) in str(caught.value)
    return caught.value.failures[0][1]


# ---------------------------------------------------------------------------------------------
# audio files


def test_empty_file_says_zero_bytes_and_what_is_accepted(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    reason = failure_of(empty)
    assert "empty file (0 bytes)" in reason and "WAV, AIFF, FLAC" in reason


def test_header_cut_short_is_unreadable(tmp_path):
    good = write(tmp_path / "good.wav", tone())
    cut = tmp_path / "cut.wav"
    cut.write_bytes(open(good, "rb").read()[:30])  # inside the 44-byte WAV header
    reason = failure_of(cut)
    assert "unreadable audio" in reason and "expected an audio file" in reason


def test_audio_data_cut_short_is_a_truncated_file(tmp_path):
    good = write(tmp_path / "good.wav", tone(), subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(open(good, "rb").read()[: 44 + 20000])  # header + 10000 of 16000 samples
    reason = failure_of(cut)
    assert "truncated file" in reason and "32000" in reason and "20000" in reason


def test_streaming_wav_with_placeholder_length_is_accepted(tmp_path):
    """Writers that cannot seek (pipes) leave 0xFFFFFFFF as length: that is not truncation."""
    good = write(tmp_path / "good.wav", tone(), subtype="PCM_16")
    data = bytearray(open(good, "rb").read())
    data[4:8] = data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    np.testing.assert_array_equal(extract_llds(streamed), extract_llds(good))


def test_non_audio_file_named_wav(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("speaker,label\nspk1,angry\n" * 50)
    reason = failure_of(text)
    assert "unreadable audio" in reason and "Format not recognised" in reason
    assert "WAV, AIFF, FLAC, OGG" in reason  # what would be accepted


def test_aiff_named_wav_is_read_as_aiff(tmp_path):
    signal = tone()
    wav = write(tmp_path / "real.wav", signal, subtype="PCM_16")
    aiff = write(tmp_path / "aiff.wav", signal, format="AIFF", subtype="PCM_16")
    assert sf.info(aiff).format == "AIFF"
    np.testing.assert_array_equal(extract_llds(aiff), extract_llds(wav))


def test_digital_silence_is_refused(tmp_path):
    silent = write(tmp_path / "silent.wav", np.zeros(16000))
    assert "silent audio" in failure_of(silent)
    # below one 16-bit step is silence to openSMILE too; the channel average counts
    tiny = write(tmp_path / "tiny.wav", np.full(16000, 1e-6), subtype="FLOAT")
    assert "silent audio" in failure_of(tiny)
    opposite = write(tmp_path / "opposite.wav", np.stack([tone(), -tone()], 1), subtype="FLOAT")
    assert "average of 2 channels" in failure_of(opposite)
    # quiet but not silent: accepted
    quiet = write(tmp_path / "quiet.wav", tone() / 100)
    assert extract_llds(quiet).shape == (IS10_FRAMES_1S, 76)


def test_shorter_than_one_analysis_frame(tmp_path):
    short = write(tmp_path / "short.wav", tone(0.04))  # 40 ms < the 60 ms pitch frame
    reason = failure_of(short)
    assert "too short" in reason and "640 samples" in reason


def test_very_long_file_is_cut_to_the_graph_length(tmp_path):
    from sergraph.data.graphs import build_graph

    long = write(tmp_path / "long.wav", tone(40.0))
    frames = extract_llds(long)
    assert frames.shape == (3995, 76)  # (40 - 0.060) / 0.010 + 1
    nodes = pool_frames(frames, 5)
    assert len(nodes) == 799  # ceil(3995 / 5)
    graph = build_graph(nodes, 4, 120, True, 0, "long", "s")
    assert graph.num_nodes == 120 and int(graph.n_valid) == 120


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_equals_its_mono_mixdown(tmp_path, channels):
    stack = np.stack([tone(seed=c, freq=150 + 40 * c) for c in range(channels)], 1)
    multi = write(tmp_path / "multi.wav", stack, subtype="DOUBLE")
    mono = write(tmp_path / "mono.wav", stack.mean(axis=1), subtype="DOUBLE")
    np.testing.assert_array_equal(extract_llds(multi), extract_llds(mono))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_sample_rates(tmp_path, rate):
    frames = extract_llds(write(tmp_path / f"r{rate}.wav", tone(rate=rate), rate))
    # The 10 ms hop is rounded to whole samples (220.5 -> 221 at 22.05 kHz): one frame less.
    assert frames.shape[1] == 76 and abs(frames.shape[0] - IS10_FRAMES_1S) <= 1
    assert np.isfinite(frames).all()


@pytest.mark.parametrize(
    ("subtype", "fmt"),
    [("PCM_24", "WAV"), ("PCM_32", "WAV"), ("FLOAT", "WAV"), ("DOUBLE", "WAV"), ("PCM_16", "FLAC")],
)
def test_sixteen_bit_samples_in_any_container_give_identical_features(tmp_path, subtype, fmt):
    signal = tone()
    reference = extract_llds(write(tmp_path / "ref.wav", signal, subtype="PCM_16"))
    suffix = ".flac" if fmt == "FLAC" else ".wav"
    other = write(tmp_path / f"other{suffix}", signal, format=fmt, subtype=subtype)
    np.testing.assert_array_equal(extract_llds(other), reference)


@pytest.mark.parametrize(("subtype", "fmt"), [("PCM_U8", "WAV"), ("PCM_S8", "AIFF")])
def test_eight_bit_audio(tmp_path, subtype, fmt):
    frames = extract_llds(write(tmp_path / "eight.wav", tone(), format=fmt, subtype=subtype))
    assert frames.shape == (IS10_FRAMES_1S, 76) and np.isfinite(frames).all()


def test_ogg_vorbis_input(tmp_path):
    lossy = write(tmp_path / "a.ogg", tone(), format="OGG", subtype="VORBIS")
    frames = extract_llds(lossy)
    assert abs(frames.shape[0] - IS10_FRAMES_1S) <= 1 and np.isfinite(frames).all()


def test_nan_or_inf_samples_are_refused(tmp_path):
    signal = tone()
    signal[100:110] = np.nan
    signal[200] = np.inf
    bad = write(tmp_path / "nan.wav", signal, subtype="FLOAT")
    assert "11 NaN/inf sample(s)" in failure_of(bad)


def test_nan_or_inf_features_are_refused(tmp_path, monkeypatch):
    class NaNSmile:
        feature_level = "lld"

        def process_signal(self, signal, rate):
            return pd.DataFrame({"pcm_loudness_sma": [1.0, np.nan], "F0_sma": [np.inf, 0.0]})

    from sergraph.data.features import opensmile

    monkeypatch.setattr(opensmile, "smile_for", lambda *args: NaNSmile())
    reason = failure_of(write(tmp_path / "a.wav", tone()))
    assert "2 NaN/inf values" in reason and "pcm_loudness_sma" in reason and "F0_sma" in reason


def test_a_corpus_reports_every_failed_file_together_and_keeps_the_good_ones(tmp_path):
    good = [write(tmp_path / f"g{i}.wav", tone(seed=i)) for i in range(2)]
    bad = {
        write(tmp_path / "silent.wav", np.zeros(16000)): "silent audio",
        write(tmp_path / "short.wav", tone(0.02)): "too short",
        str(tmp_path / "gone.wav"): "cannot read file",
    }
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    with pytest.raises(FeatureError) as caught:
        cache.get([good[0], *bad, good[1]], progress=False)
    reasons = dict(caught.value.failures)
    assert sorted(reasons) == sorted(bad)
    for path, reason in bad.items():
        assert reason in reasons[path]
    again = FeatureCache(tmp_path / "cache", FeatureConfig())
    again.get(good, progress=False)
    assert (again.stats.hits, again.stats.extracted) == (2, 0)  # finished work kept


# ---------------------------------------------------------------------------------------------
# the failure policy of a study (features.on_error)


def make_manifest(folder, rows) -> str:
    """A manifest corpus of distinct 1 s tones; rows are (name, speaker, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,speaker,label"]
    for index, (name, speaker, label) in enumerate(rows):
        write(folder / name, tone(seed=index, freq=120 + 7 * index))
        lines.append(f"{name},{speaker},{label}")
    (folder / "corpus.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "corpus.csv")


@pytest.fixture
def corpus_with_bad_files(tmp_path):
    rows = [
        (f"{s}_{label}{i}.wav", s, label)
        for s in ("s1", "s2", "s3", "s4")
        for label in ("angry", "sad")
        for i in range(2)
    ]
    csv = make_manifest(tmp_path / "corpus", rows)
    # s4 loses all of its files: it must vanish from the folds as well.
    folder = tmp_path / "corpus"
    (folder / "s4_angry0.wav").write_bytes(b"not audio")
    sf.write(folder / "s4_angry1.wav", np.zeros(16000), 16000)
    sf.write(folder / "s4_sad0.wav", tone(0.03), 16000)
    (folder / "s4_sad1.wav").write_bytes((folder / "s4_sad1.wav").read_bytes()[:3000])
    (folder / "s1_sad0.wav").write_bytes(b"")
    return csv


def study_overrides(csv, tmp_path, policy):
    return [
        "data=manifest",
        f"data.root={csv}",
        f"features.cache_dir={tmp_path / 'cache'}",
        "features.workers=1",
        f"features.on_error={policy}",
        f"run.out_dir={tmp_path / 'runs'}",
        "run.name=bad",
    ]


def test_stop_policy_lists_all_failures_and_names_the_skip_option(corpus_with_bad_files, tmp_path):
    from sergraph.data.prepared import prepare

    cfg = compose(study_overrides(corpus_with_bad_files, tmp_path, "stop"))
    with pytest.raises(FeatureError) as caught:
        prepare(cfg)
    assert len(caught.value.failures) == 5
    message = str(caught.value)
    for name in ("s1_sad0", "s4_angry0", "s4_angry1", "s4_sad0", "s4_sad1"):
        assert f"{name}.wav: " in message
    assert "features.on_error=skip" in message
    assert not (tmp_path / "runs").exists()


def test_skip_policy_drops_failed_files_before_the_folds_and_lists_them(
    corpus_with_bad_files, tmp_path, capsys
):
    from sergraph.training.study import study_data

    cfg = compose(study_overrides(corpus_with_bad_files, tmp_path, "skip"))
    study = study_data(cfg, need_features=False)  # skip needs the features to know the folds
    assert len(study.table) == 16 - 5 and len(study.features) == 11
    assert "s4" not in set(study.table["speaker"])
    assert [fold.test_speakers for fold in study.folds] == [("s1",), ("s2",), ("s3",)]
    listing = pd.read_csv(tmp_path / "runs" / "bad" / "failed_files.csv")
    reasons = dict(zip(listing["utterance"], listing["reason"], strict=True))
    assert sorted(reasons) == ["s1_sad0", "s4_angry0", "s4_angry1", "s4_sad0", "s4_sad1"]
    assert "empty file" in reasons["s1_sad0"] and "silent" in reasons["s4_angry1"]
    assert "unreadable audio" in reasons["s4_angry0"] and "too short" in reasons["s4_sad0"]
    assert "truncated file" in reasons["s4_sad1"]
    assert {"path", "speaker", "label"} <= set(listing.columns)
    err = capsys.readouterr().err
    assert "left out 5 of 16 file(s)" in err and "failed_files.csv" in err
    # features of the kept rows line up with the table
    again = FeatureCache(tmp_path / "cache", FeatureConfig())
    np.testing.assert_array_equal(study.features[5], again.get([study.table["path"][5]])[0])


def test_skip_policy_without_failures_writes_an_empty_list(tmp_path):
    from sergraph.training.study import study_data

    rows = [(f"{s}_{c}.wav", s, c) for s in ("s1", "s2", "s3") for c in ("angry", "sad")]
    csv = make_manifest(tmp_path / "corpus", rows)
    study_data(compose(study_overrides(csv, tmp_path, "skip")))
    listing = pd.read_csv(tmp_path / "runs" / "bad" / "failed_files.csv")
    assert len(listing) == 0 and "reason" in listing.columns


# ---------------------------------------------------------------------------------------------
# corpus tables


def load_manifest(csv):
    from sergraph.data.corpora import load_corpus

    return load_corpus("manifest", csv)


def test_missing_files_are_listed_with_their_rows(tmp_path):
    csv = make_manifest(tmp_path, [("a.wav", "s1", "sad"), ("b.wav", "s2", "sad")])
    with open(csv, "a") as handle:
        handle.write("gone1.wav,s1,angry\nsub/gone2.wav,s2,angry\n")
    with pytest.raises(FileNotFoundError, match=r"2 audio file\(s\) missing.*row 3: .*gone1.wav"):
        load_manifest(csv)


def test_the_same_path_twice_is_refused_naming_the_rows(tmp_path):
    csv = make_manifest(tmp_path, [("a.wav", "s1", "sad"), ("b.wav", "s2", "sad")])
    with open(csv, "a") as handle:
        handle.write("./a.wav,s3,angry\n")
    with pytest.raises(ValueError, match=r"more than once.*a\.wav in rows 1, 3"):
        load_manifest(csv)


def test_the_same_content_under_two_names_is_refused_naming_the_rows(tmp_path):
    csv = make_manifest(
        tmp_path, [("a.wav", "s1", "sad"), ("b.wav", "s2", "sad"), ("c.wav", "s3", "angry")]
    )
    (tmp_path / "copy_of_a.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    with open(csv, "a") as handle:
        handle.write("copy_of_a.wav,s2,angry\n")
    with pytest.raises(ValueError, match="identical content") as caught:
        load_manifest(csv)
    message = str(caught.value)
    assert "row 1" in message and "row 4" in message and "copy_of_a.wav" in message
    assert "row 2" not in message  # b.wav has its own content (and the same size)


@pytest.mark.parametrize("column", ["speaker", "label"])
def test_row_without_speaker_or_label_is_named(tmp_path, column):
    csv = make_manifest(tmp_path, [("a.wav", "s1", "sad"), ("b.wav", "s2", "angry")])
    text = (
        open(csv)
        .read()
        .replace("b.wav,s2,angry", "b.wav,,angry" if column == "speaker" else "b.wav,s2,")
    )
    open(csv, "w").write(text)
    with pytest.raises(ValueError, match=rf"empty '{column}' in row 2"):
        load_manifest(csv)


def test_unknown_label_in_the_class_list_names_the_labels_present(tmp_path):
    from sergraph.data.corpora import load_corpus

    csv = make_manifest(tmp_path, [("a.wav", "s1", "sad"), ("b.wav", "s2", "angry")])
    with pytest.raises(ValueError, match=r"\['happy'\] not in the table.*\['angry', 'sad'\]"):
        load_corpus("manifest", csv, classes=["sad", "happy"])
    with pytest.raises(ValueError, match=r"merge names label\(s\) \['excited'\]"):
        load_corpus("manifest", csv, merge={"excited": "happy"})


def test_speaker_with_only_one_class(toy_table, toy_features):
    from sergraph.data.datamodule import FoldDataModule
    from sergraph.data.folds import fold_table, make_folds

    # s4 has only "sad" utterances: its fold is fine (UA over the one class it has) ...
    table = toy_table[(toy_table["speaker"] != "s4") | (toy_table["label"] == "sad")]
    kept = [toy_features[i] for i in table.index]
    table = table.reset_index(drop=True)
    folds = make_folds(table)
    counts = fold_table(table, folds, ["angry", "neutral", "sad"])
    s4_test = counts[(counts["fold"] == "fold-03") & (counts["split"] == "test")].iloc[0]
    assert (s4_test["angry"], s4_test["neutral"], s4_test["sad"]) == (0, 0, 2)
    FoldDataModule(table, kept, folds[3], ["angry", "neutral", "sad"]).setup()
    # ... but a class that only one speaker has cannot be learnt when that speaker is tested
    only = table[(table["speaker"] == "s1") | (table["label"] != "angry")]
    only_features = [kept[i] for i in only.index]
    only = only.reset_index(drop=True)
    with pytest.raises(
        ValueError, match=r"fold-00: training speakers have no utterances of \['angry'\]"
    ):
        FoldDataModule(
            only, only_features, make_folds(only)[0], ["angry", "neutral", "sad"]
        ).setup()


def test_ua_of_a_test_speaker_without_some_class_is_defined():
    from sergraph.metrics import scores_from_labels

    # classes 0..2; the held-out speaker has no class-2 utterances, one is wrongly predicted 2
    scores = scores_from_labels([0, 0, 0, 1], [0, 0, 2, 1], 3)
    # recall 0 = 2/3, recall 1 = 1, class 2 undefined and left out: UA = (2/3 + 1) / 2
    assert scores["ua"] == pytest.approx(5 / 6) and scores["wa"] == pytest.approx(3 / 4)
    assert np.isnan(scores["recall"][2])


@pytest.mark.parametrize(
    ("speakers", "overrides", "message"),
    [
        (2, [], "2 speakers cannot make speaker-held-out folds with 1 validation speaker"),
        (3, ["folds.val_speakers=2"], "3 speakers cannot make speaker-held-out folds"),
        (3, ["folds.scheme=groups", "folds.n_groups=5"], "n_groups=5 is more than the 3 speakers"),
    ],
)
def test_fewer_speakers_than_folds_stops_before_feature_extraction(
    tmp_path, capsys, speakers, overrides, message
):
    from sergraph.cli import main

    names = [f"s{i}" for i in range(1, speakers + 1)]
    rows = [(f"{s}_{c}.wav", s, c) for s in names for c in ("angry", "sad")]
    csv = make_manifest(tmp_path / "corpus", rows)
    cache = tmp_path / "cache"
    code = main(
        ["train", "data=manifest", f"data.root={csv}", f"features.cache_dir={cache}", *overrides]
    )
    assert code == 2 and message in capsys.readouterr().err
    assert not cache.exists()  # no feature was extracted


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("graph.neighbours=4", r"unknown config key 'graph.neighbours'.*'k'"),
        ("training.lr=1", r"unknown config key 'training.lr'.*'optim'"),
        ("graph.pad=maybe", "graph.pad"),
        ("graph.k=two", "graph.k"),
        ("graph.k=5", "even number"),
        ("graph.k=120", "smaller than graph.max_nodes=120"),
        ("graph.max_nodes=0", "graph.max_nodes=0 must be > 0"),
        ("features.pool=0", "features.pool=0 must be > 0"),
        ("optim.lr=-0.001", "optim.lr=-0.001 must be > 0"),
        ("optim.lr=0", "optim.lr=0.0 must be > 0"),
        ("folds.val_speakers=-1", "folds.val_speakers=-1 must be >= 0"),
        ("features.on_error=ignore", r"features.on_error='ignore'.*\['skip', 'stop'\]"),
        ("model=lstm_gim", r"model='lstm_gim' is not known.*lstm_gin"),
        ("data=emodbb", r"data='emodbb' is not known.*emodb"),
        ("model.name=gcnn", r"model.name='gcnn'.*gcn"),
        ("data.name=crema", r"data.name='crema'.*synthetic"),
    ],
)
def test_bad_config_is_rejected_naming_key_and_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([override])


def test_bad_config_stops_the_cli_before_any_work(tmp_path, capsys):
    from sergraph.cli import main

    code = main(["train", "optim.lr=-1", f"run.out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "optim.lr=-1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_on_error_default_keeps_existing_run_identities():
    from omegaconf import OmegaConf

    from sergraph.config import identity

    # Runs made before features.on_error existed keep their id (their results stay usable).
    cfg = compose([])
    older = OmegaConf.create(OmegaConf.to_container(cfg))
    del older.features["on_error"]
    assert identity(cfg) == identity(older)
    assert identity(compose(["features.on_error=skip"])) != identity(cfg)
