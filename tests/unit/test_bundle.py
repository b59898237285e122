"""Model bundles: export from a real (tiny) run, load, predict, ensembles, windows, refusals.

The reference numbers come from the run itself: each fold's ``predictions.csv`` holds the
probabilities that training computed for the held-out speaker through the datamodule. A bundle
must give the same probabilities from the audio files alone (its own route: audio -> cache ->
normalisation -> graph -> model), and an ensemble must give the mean of its fold models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from sergraph.data.features import (
    FeatureCache,
    FeatureConfig,
    FeatureError,
    extract_llds,
    pool_frames,
)
from sergraph.deploy.bundle import (
    BundleError,
    BundleMismatchError,
    export_bundle,
    load_bundle,
)
from sergraph.deploy.ensemble import FORMAT_VERSION
from sergraph.deploy.segments import window_starts
from sergraph.results.layout import read_metrics, write_cell


@pytest.fixture(scope="module")
def run(bundle_run):
    """Two folds of LSTM-GIN and their bundles (tests/unit/conftest.py)."""
    return bundle_run


def predictions_csv(run, fold: int) -> pd.DataFrame:
    return pd.read_csv(run.model_dir / "seed-0" / f"fold-{fold:02d}" / "predictions.csv")


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame.filter(like="p_").to_numpy(dtype=float)


# ---------------------------------------------------------------------------------------------
# the file


def test_bundle_is_one_file_of_plain_data_with_provenance(run):
    payload = torch.load(run.ensemble, weights_only=True)  # no pickled code in a bundle
    assert payload["format"] == "sergraph-bundle" and payload["format_version"] == 1
    assert len(payload["members"]) == 2
    meta = json.loads(payload["meta"])
    assert meta["classes"] == ["neutral", "happy", "sad", "angry"]
    features = meta["features"]
    assert (features["feature_set"], features["pool"], len(features["names"])) == ("is10", 5, 76)
    assert features["opensmile"] == __import__("opensmile").__version__
    assert meta["model"]["name"] == "lstm_gin" and meta["model"]["in_channels"] == 76
    assert meta["graph"] == {"k": 4, "max_nodes": 120, "pad": True, "normalize": "train"}
    for member in meta["members"]:
        metrics = json.loads(
            (run.model_dir / "seed-0" / f"fold-{member['fold']:02d}" / "metrics.json").read_text()
        )
        for split in ("train", "val", "test"):
            assert member[f"{split}_speakers"] == metrics[f"{split}_speakers"]
        assert member["test_ua"] == metrics["ua"]
    assert [m["test_speakers"] for m in meta["members"]] == [["spk01"], ["spk02"]]
    assert meta["source"]["speakers"] == ["spk01", "spk02", "spk03", "spk04"]
    assert meta["verification"]["n"] == 2 * 12  # both folds' test speakers were re-predicted
    assert meta["verification"]["max_abs_diff"] < 1e-4


def test_normalisation_statistics_are_those_of_the_training_speakers(run):
    bundle = load_bundle(run.fold0, map_location="cpu")
    member = bundle.members[0]
    assert member["train_speakers"] == ["spk03", "spk04"]  # spk02 validates fold 0
    train_paths = [p for name, p in run.audio.items() if name.split("_")[0] in ("spk03", "spk04")]
    cache = FeatureCache(run.cache, FeatureConfig())
    frames = np.concatenate(cache.get(train_paths, progress=False)).astype(np.float64)
    np.testing.assert_allclose(
        bundle.normalizers[0].mean, frames.mean(axis=0), rtol=1e-5, atol=1e-5
    )
    expected_std = frames.std(axis=0)
    expected_std[expected_std < 1e-8] = 1.0
    np.testing.assert_allclose(bundle.normalizers[0].std, expected_std, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# prediction


def test_bundle_gives_the_probabilities_training_gave_from_audio_alone(run, tmp_path):
    saved = predictions_csv(run, 0)
    paths = [run.audio[u] for u in saved["utterance"]]
    bundle = load_bundle(run.fold0, map_location="cpu")
    frame = bundle.predict(paths, batch_size=5, cache_dir=tmp_path / "fresh", progress=False)
    assert list(frame["path"]) == paths
    np.testing.assert_allclose(probabilities(frame), probabilities(saved), atol=1e-5)
    assert list(frame["emotion"]) == list(saved["predicted"])
    assert (frame["error"] == "").all() and (frame["segment"] == 0).all()
    # every synthetic file is 1.5-3 s: shorter than the 6 s the graph holds, so all of it is used
    durations = [sf.info(p).duration for p in paths]
    np.testing.assert_allclose(frame["duration"], durations, atol=1e-3)
    assert (frame["end"] <= frame["duration"]).all() and (
        frame["end"] > frame["duration"] - 0.1
    ).all()


def test_ensemble_averages_the_probabilities_of_its_fold_models(run):
    paths = list(run.audio.values())[::5]
    kwargs = {"cache_dir": run.cache, "progress": False}
    ensemble = load_bundle(run.ensemble, map_location="cpu").predict(paths, **kwargs)
    fold0 = load_bundle(run.fold0, map_location="cpu").predict(paths, **kwargs)
    fold1 = load_bundle(run.fold1, map_location="cpu").predict(paths, **kwargs)
    mean = (probabilities(fold0) + probabilities(fold1)) / 2
    np.testing.assert_allclose(probabilities(ensemble), mean, atol=2e-6)
    np.testing.assert_allclose(probabilities(ensemble).sum(axis=1), 1.0, atol=1e-5)
    columns = list(ensemble.columns.drop(["path", "segment", "start", "end", "duration"]))
    assert columns == ["emotion", "p_neutral", "p_happy", "p_sad", "p_angry", "error"]


def test_saving_a_loaded_bundle_round_trips(run, tmp_path):
    bundle = load_bundle(run.ensemble, map_location="cpu")
    copy = load_bundle(bundle.save(tmp_path / "sub" / "copy.sergraph"), map_location="cpu")
    features = FeatureCache(run.cache, FeatureConfig()).get(list(run.audio.values())[:4])
    np.testing.assert_array_equal(
        bundle.predict_features(features), copy.predict_features(features)
    )
    assert copy.meta == bundle.meta


def test_predict_signal_equals_predicting_the_file(run, tmp_path):
    bundle = load_bundle(run.fold0, map_location="cpu")
    path = sorted(run.audio.values())[0]
    samples, rate = sf.read(path)  # int16 file read as floats: the same samples
    stereo = np.stack([samples, samples], axis=1)  # two equal channels average to the same
    from_file = bundle.predict([path], cache_dir=tmp_path / "cache", progress=False)
    for signal in (samples, stereo):
        from_memory = bundle.predict_signal(signal, rate)
        np.testing.assert_allclose(probabilities(from_memory), probabilities(from_file), atol=1e-6)
        assert from_memory["path"].tolist() == ["<signal>"]
        assert from_memory["duration"].iloc[0] == from_file["duration"].iloc[0]
    windows = bundle.predict_signal(samples, rate, window=1.0)
    assert windows["segment"].tolist() == list(range(len(windows))) and len(windows) >= 2


def test_python_api_is_exported_lazily():
    code = (
        "import sys, sergraph; assert 'torch' not in sys.modules; "
        "from sergraph import load_bundle, compose, run_study, write_report, export_bundle; "
        "print(load_bundle.__module__, compose.__module__, run_study.__module__, "
        "write_report.__module__, export_bundle.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "sergraph.deploy.bundle",
        "sergraph.config.composition",
        "sergraph.training.study",
        "sergraph.results.report",
        "sergraph.deploy.export",
    ]


def test_bundle_predicts_with_ieee_rnn_math_and_restores_the_setting(run, monkeypatch):
    """A TF32 cuDNN LSTM moves probabilities by up to 8e-4 on a GPU: the bundle's forward runs
    with IEEE RNN math whatever the process set, and leaves the process's setting as it was."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cudnn.rnn.fp32_precision")
    monkeypatch.setattr(rnn, "fp32_precision", "tf32")
    bundle = load_bundle(run.fold0, map_location="cpu")
    seen = []
    hook = bundle.models[0].register_forward_pre_hook(
        lambda module, args: seen.append(rnn.fp32_precision)
    )
    try:
        bundle.predict(list(run.audio.values())[:3], cache_dir=run.cache, progress=False)
    finally:
        hook.remove()
    assert seen and set(seen) == {"ieee"}
    assert rnn.fp32_precision == "tf32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bundle_on_gpu_matches_cpu(run):
    paths = list(run.audio.values())[:8]
    kwargs = {"cache_dir": run.cache, "progress": False}
    cpu = load_bundle(run.ensemble, map_location="cpu").predict(paths, **kwargs)
    gpu_bundle = load_bundle(run.ensemble)  # auto: CUDA when available
    assert gpu_bundle.device.type == "cuda"
    np.testing.assert_allclose(
        probabilities(gpu_bundle.predict(paths, **kwargs)), probabilities(cpu), atol=1e-4
    )


# ---------------------------------------------------------------------------------------------
# long recordings


def test_window_starts_by_hand():
    assert window_starts(10, 4, 3) == [0, 3, 6]  # the last window ends at node 10
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # one more so the tail is not lost
    assert window_starts(3, 4, 2) == [0]  # shorter than a window: one segment
    assert window_starts(8, 4, 4) == [0, 4]


def test_sliding_window_over_a_long_recording(run, tmp_path):
    pieces = [sf.read(p)[0] for p in list(run.audio.values())[:4]]
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(pieces), 16000)
    nodes = pool_frames(extract_llds(long), 5)  # the features the bundle sees, by another route
    bundle = load_bundle(run.ensemble, map_location="cpu")
    frame = bundle.predict([long], window=2.0, hop=1.0, cache_dir=tmp_path / "c", progress=False)
    starts = window_starts(len(nodes), 40, 20)  # 2 s = 40 nodes of 50 ms, hop 20 nodes
    assert len(frame) == len(starts) > 3
    assert list(frame["segment"]) == list(range(len(starts)))
    np.testing.assert_allclose(frame["start"], [0.05 * s for s in starts], atol=1e-9)
    duration = sum(len(p) for p in pieces) / 16000
    assert frame["end"].iloc[0] == pytest.approx(2.0)
    assert frame["end"].iloc[-1] == pytest.approx(min(0.05 * len(nodes), duration), abs=1e-3)
    expected = bundle.predict_features([nodes[s : s + 40] for s in starts])
    np.testing.assert_allclose(probabilities(frame), expected, atol=1e-5)
    # without a window, the file is one prediction of its first 120 nodes (6 s)
    whole = bundle.predict([long], cache_dir=tmp_path / "c", progress=False)
    assert len(whole) == 1 and whole["end"].iloc[0] == pytest.approx(6.0)
    np.testing.assert_allclose(probabilities(whole), bundle.predict_features([nodes]), atol=1e-5)


@pytest.mark.parametrize(
    ("window", "hop", "message"),
    [
        (10.0, None, r"window=10.0 s is longer than the 6 s \(120 nodes"),
        (None, 1.0, "hop needs window"),
        (-1.0, None, "window=-1.0 must be a positive number"),
        (2.0, 0, "hop=0 must be a positive number"),
    ],
)
def test_bad_window_settings_are_refused(run, window, hop, message):
    bundle = load_bundle(run.fold0, map_location="cpu")
    with pytest.raises(BundleError, match=message):
        bundle.predict(list(run.audio.values())[:1], window=window, hop=hop, progress=False)


# ---------------------------------------------------------------------------------------------
# bad files during prediction


def test_failed_files_stop_by_default_and_are_listed_with_skip(run, tmp_path):
    good = list(run.audio.values())[:2]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "text.wav"
    text.write_text("not audio\n" * 20)
    paths = [good[0], str(empty), good[1], str(text)]
    bundle = load_bundle(run.fold0, map_location="cpu")
    cache = tmp_path / "cache"
    with pytest.raises(FeatureError) as caught:
        bundle.predict(paths, cache_dir=cache, progress=False)
    assert sorted(dict(caught.value.failures)) == sorted([str(empty), str(text)])
    assert "--on-error skip" in str(caught.value)
    assert len(list(cache.rglob("*.npy"))) == 2  # the good files' features were kept

    paths.append(good[0])  # listed twice: predicted twice
    frame = bundle.predict(paths, on_error="skip", cache_dir=cache, progress=False)
    assert list(frame["path"]) == paths  # every input has its row, in order
    assert list(frame["error"] != "") == [False, True, False, True, False]
    pd.testing.assert_series_equal(frame.iloc[0], frame.iloc[4], check_names=False)
    assert "empty file (0 bytes)" in frame["error"][1] and "unreadable" in frame["error"][3]
    assert frame.loc[[1, 3], "p_sad"].isna().all() and (frame["emotion"][[1, 3]] == "").all()
    assert frame.loc[[0, 2], "p_sad"].notna().all()
    with pytest.raises(BundleError, match=r"on_error='ignore'; choose one of \['stop', 'skip'\]"):
        bundle.predict(paths, on_error="ignore")


# ---------------------------------------------------------------------------------------------
# refusals


def rewrite(source: Path, target: Path, change) -> Path:
    payload = torch.load(source, weights_only=True)
    meta = json.loads(payload["meta"])
    change(payload, meta)
    payload["meta"] = json.dumps(meta)
    torch.save(payload, target)
    return target


def test_bundle_from_another_opensmile_version_is_refused(run, tmp_path):
    def older(payload, meta):
        meta["features"]["opensmile"] = "2.4.1"

    path = rewrite(run.fold0, tmp_path / "old.sergraph", older)
    with pytest.raises(BundleMismatchError) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "openSMILE 2.4.1" in message and __import__("opensmile").__version__ in message
    assert "pip install opensmile==2.4.1" in message


def test_bundle_from_another_feature_recipe_or_feature_names_is_refused(run, tmp_path):
    def recipe(payload, meta):
        meta["features"]["recipe"] = 99

    with pytest.raises(BundleMismatchError, match="recipe 99"):
        load_bundle(rewrite(run.fold0, tmp_path / "recipe.sergraph", recipe))

    def names(payload, meta):
        meta["features"]["names"][3] = "mfcc_sma[99]"

    with pytest.raises(BundleMismatchError, match=r"column 3: 'mfcc_sma\[99\]'"):
        load_bundle(rewrite(run.fold0, tmp_path / "names.sergraph", names))


def test_pipeline_with_other_feature_settings_is_refused(run):
    bundle = load_bundle(run.fold0, map_location="cpu")
    bundle.check_pipeline(FeatureConfig("is10", deltas=True, pool=5))  # the same: accepted
    with pytest.raises(BundleMismatchError, match=r"feature_set='egemaps' \(bundle: 'is10'\)"):
        bundle.check_pipeline(FeatureConfig("egemaps"))
    with pytest.raises(BundleMismatchError, match=r"pool=3 \(bundle: 5\)"):
        bundle.check_pipeline({"feature_set": "is10", "pool": 3, "workers": 4})
    with pytest.raises(BundleMismatchError, match=r"sample_rate=8000"):
        bundle.check_pipeline(FeatureConfig(sample_rate=8000))


def test_files_that_are_not_bundles_are_refused(run, tmp_path):
    checkpoint = run.model_dir / "seed-0" / "fold-00" / "checkpoints" / "best.ckpt"
    with pytest.raises(BundleError, match="not a sergraph bundle.*sergraph export"):
        load_bundle(checkpoint)
    text = tmp_path / "notes.sergraph"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a sergraph bundle"):
        load_bundle(text)
    with pytest.raises(FileNotFoundError, match="sergraph export"):
        load_bundle(tmp_path / "absent.sergraph")

    def newer(payload, meta):
        payload["format_version"] = FORMAT_VERSION + 1

    with pytest.raises(BundleError, match=f"format {FORMAT_VERSION + 1}.*upgrade sergraph"):
        load_bundle(rewrite(run.fold0, tmp_path / "new.sergraph", newer))


def copy_run(run, tmp_path) -> Path:
    target = tmp_path / "runs" / "synthetic" / "lstm_gin"
    shutil.copytree(run.model_dir, target)
    return target


def edit_config(cell: Path, change) -> None:
    config = yaml.safe_load((cell / "config.yaml").read_text())
    change(config)
    (cell / "config.yaml").write_text(yaml.safe_dump(config))


def test_export_refuses_svm_and_per_speaker_normalisation(run, tmp_path):
    model_dir = copy_run(run, tmp_path)
    cell = model_dir / "seed-0" / "fold-00"
    edit_config(cell, lambda c: c["eval"].update(protocol="transductive"))
    with pytest.raises(BundleError, match="eval.protocol=transductive.*eval.protocol=inductive"):
        export_bundle(cell)
    edit_config(cell, lambda c: c["graph"].update(normalize="speaker"))  # an older release's
    edit_config(cell, lambda c: c["eval"].update(protocol=None))  # spelling of transductive
    with pytest.raises(BundleError, match="eval.protocol=transductive.*eval.protocol=inductive"):
        export_bundle(cell)
    edit_config(cell, lambda c: c["model"].update(name="svm", params={}))
    with pytest.raises(BundleError, match="model 'svm' cannot be exported"):
        export_bundle(cell)


def test_export_names_what_it_needs(run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished folds.*seed-S/fold-XX"):
        export_bundle(tmp_path)
    for label in ("lstm_gin", "gin"):
        shutil.copytree(run.model_dir, tmp_path / "study" / label)
    with pytest.raises(BundleError, match=r"holds several models.*study/gin.*study/lstm_gin"):
        export_bundle(tmp_path / "study")
    with pytest.raises(BundleError, match=r"finished \(seed, fold\): \[\(0, 0\), \(0, 1\)\]"):
        export_bundle(run.model_dir, tmp_path / "x.sergraph", folds=[7])


def test_export_verification_catches_a_changed_pipeline(run, tmp_path):
    model_dir = copy_run(run, tmp_path)
    cell = model_dir / "seed-0" / "fold-01"
    frame = pd.read_csv(cell / "predictions.csv")
    frame["p_sad"], frame["p_angry"] = frame["p_angry"], frame["p_sad"]
    # Rewritten with the layout's writer (as a changed pipeline would): the file record matches.
    metrics = read_metrics(cell)
    write_cell(cell, frame, metrics, metrics["checkpoint"])
    out = tmp_path / "bundle.sergraph"
    with pytest.raises(BundleError, match="fold-01.*differ from predictions.csv"):
        export_bundle(model_dir, out)
    assert not out.exists()  # nothing written
    export_bundle(model_dir, out, verify=False)
    assert "verification" not in load_bundle(out, map_location="cpu").meta


# ---------------------------------------------------------------------------------------------
# faults (see also tests/unit/test_faults.py)


def predict_args(bundle, audio, **changes) -> SimpleNamespace:
    """The arguments `sergraph predict` gives run_predict: CSV on stdout, CPU, one worker."""
    args = {
        "bundle": str(bundle),
        "audio": audio,
        "output": None,
        "format": "csv",
        "batch_size": 8,
        "workers": 1,
        "window": None,
        "hop": None,
        "on_error": "stop",
        "device": "cpu",
    }
    return SimpleNamespace(**args, **changes)


def test_non_finite_probabilities_give_no_emotion_but_an_error(run, tmp_path, capsys):
    from sergraph.deploy.bundle import NON_FINITE_ERROR, Bundle
    from sergraph.deploy.predict import run_predict

    bundle = load_bundle(run.fold0, map_location="cpu")
    for parameter in bundle.models[0].parameters():
        parameter.data.fill_(float("nan"))  # a diverged model
    members = [
        {"state_dict": model.state_dict(), "mean": norm.mean, "std": norm.std}
        for model, norm in zip(bundle.models, bundle.normalizers, strict=True)
    ]
    broken = Bundle(bundle.meta, members).save(tmp_path / "broken.sergraph")
    paths = list(run.audio.values())[:2]
    frame = load_bundle(broken, map_location="cpu").predict(paths, progress=False)
    assert (frame["emotion"] == "").all() and (frame["error"] == NON_FINITE_ERROR).all()
    args = predict_args(broken, paths, cache_dir=None, quiet=True)
    assert run_predict(args) == 2
    assert "2 prediction(s)" in capsys.readouterr().err


def test_quiet_predict_prints_no_notes(run, tmp_path, capsys):
    from sergraph.deploy.predict import run_predict

    pieces = [sf.read(p)[0] for p in list(run.audio.values())[:4]]
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate(pieces), 16000)  # longer than the 6 s the model sees
    args = predict_args(run.fold0, [str(long)], cache_dir=str(tmp_path / "c"), quiet=False)
    assert run_predict(args) == 0
    assert "longer than the 6 s" in capsys.readouterr().err
    args.quiet = True
    assert run_predict(args) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and str(long) in captured.out
