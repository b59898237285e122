"""Bundles of runs trained with eval.protocol=enrollment: a held-out speaker's scored utterances,
predicted from audio through the bundle with that speaker's enrollment audio, give the run's
own predictions.csv; a speaker without enrollment audio is said to be normalised with the
training statistics; transductive runs are refused."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from sergraph.data.protocol import enrollment_rows
from sergraph.deploy.bundle import BundleError, export_bundle, load_bundle
from sergraph.deploy.enroll import NO_ENROLLMENT, parse_enroll
from sergraph.deploy.predict import expand_inputs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fold of LSTM-GIN, one epoch, 4 synthetic speakers x 4 classes x 3 utterances, with
    3 enrollment utterances per held-out speaker."""
    from sergraph.data.prepared import load_table
    from sergraph.training.study import run_study

    root = tmp_path_factory.mktemp("enrolled")
    overrides = [
        f"data.root={root / 'corpus'}",
        "data.options.n_speakers=4",
        "data.options.n_per_class=3",
        "eval.protocol=enrollment",
        "eval.enrollment=3",
        "folds.only=[0]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "optim.lr=1e-3",
        "features.workers=1",
        f"features.cache_dir={root / 'features'}",
        f"run.out_dir={root / 'runs'}",
        "logger.kind=none",
    ]
    run_study(overrides)
    model_dir = root / "runs" / "synthetic" / "lstm_gin"
    path, bundle = export_bundle(model_dir, root / "enrolled.sergraph")
    from sergraph.config import compose

    table, _ = load_table(compose(overrides))
    enrolled = table.iloc[enrollment_rows(table, ["spk01"], 3)]
    return SimpleNamespace(
        root=root,
        model_dir=model_dir,
        bundle=path,
        meta=bundle.meta,
        table=table,
        enrollment=enrolled["path"].tolist(),
        enrolled_ids=set(enrolled["utterance"]),
    )


def test_bundle_reproduces_the_runs_predictions_with_enrollment_audio(run):
    saved = pd.read_csv(run.model_dir / "seed-0" / "fold-00" / "predictions.csv")
    assert set(saved["speaker"]) == {"spk01"} and len(saved) == 12 - 3
    assert not set(saved["utterance"]) & run.enrolled_ids
    assert run.meta["protocol"]["name"] == "enrollment"
    assert run.meta["verification"]["n"] == 9 and run.meta["verification"]["max_abs_diff"] < 1e-4
    path_of = dict(zip(run.table["utterance"], run.table["path"], strict=True))
    paths = [path_of[u] for u in saved["utterance"]]
    bundle = load_bundle(run.bundle, map_location="cpu")
    frame = bundle.predict(
        paths,
        workers=1,
        cache_dir=run.root / "features",
        progress=False,
        speakers=["spk01"] * len(paths),
        enrollment={"spk01": run.enrollment},
    )
    np.testing.assert_allclose(
        frame.filter(like="p_").to_numpy(float),
        saved.filter(like="p_").to_numpy(float),
        atol=1e-4,
    )
    assert frame["emotion"].tolist() == saved["predicted"].tolist()
    assert set(frame["normalised_with"]) == {"enrollment audio of spk01 (3 file(s))"}

    # no enrollment audio: training statistics, said in words
    bare = bundle.predict(paths[:2], workers=1, cache_dir=run.root / "features", progress=False)
    assert set(bare["normalised_with"]) == {NO_ENROLLMENT}


def test_cli_predict_with_enroll(run, tmp_path, monkeypatch, capsys):
    from sergraph import cli

    monkeypatch.setenv("SERGRAPH_CACHE", str(run.root))  # features/ below it
    saved = pd.read_csv(run.model_dir / "seed-0" / "fold-00" / "predictions.csv")
    path_of = dict(zip(run.table["utterance"], run.table["path"], strict=True))
    manifest = tmp_path / "enroll.csv"
    pd.DataFrame({"path": run.enrollment, "speaker": "spk01"}).to_csv(manifest, index=False)
    assert parse_enroll([str(manifest)], expand_inputs) == {"spk01": run.enrollment}
    joined = "spk01=" + ",".join(run.enrollment)
    assert parse_enroll([joined], expand_inputs) == {"spk01": run.enrollment}
    out = tmp_path / "out.csv"
    paths = [path_of[u] for u in saved["utterance"]]
    args = ["predict", str(run.bundle), *paths, "--speaker", "spk01", "--workers", "1", "-q"]
    assert cli.main([*args, "--enroll", str(manifest), "-o", str(out)]) == 0
    written = pd.read_csv(out)
    np.testing.assert_allclose(
        written.filter(like="p_").to_numpy(float),
        saved.filter(like="p_").to_numpy(float),
        atol=1e-4,
    )
    capsys.readouterr()
    assert cli.main([*args, "-o", str(out)]) == 0
    assert "no enrollment audio" in capsys.readouterr().err


def test_transductive_runs_are_not_exported(run, tmp_path):
    copy = tmp_path / "study" / "lstm_gin"
    shutil.copytree(run.model_dir, copy)
    config_path = copy / "seed-0" / "fold-00" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["eval"]["protocol"] = "transductive"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(BundleError, match="eval.protocol=transductive"):
        export_bundle(copy, tmp_path / "x.sergraph", verify=False)


def test_export_reads_the_statistics_from_the_checkpoint(run, tmp_path):
    """The statistics come from the checkpoint alone (corpus and feature cache moved away); the
    member's own statistics are the training speakers' pooled frames (computed here from the
    audio); checkpoints written before they were stored need the corpus, which gives the same."""
    import json

    from sergraph.data.features import FeatureCache
    from tests.checkpoints import drop_export_state

    copy = tmp_path / "runs" / "synthetic" / "lstm_gin"
    shutil.copytree(run.model_dir, copy)
    away = tmp_path / "away"
    away.mkdir()
    for name in ("corpus", "features"):
        shutil.move(run.root / name, away / name)
    try:
        _, alone = export_bundle(copy, tmp_path / "alone.sergraph")
    finally:
        for name in ("corpus", "features"):
            shutil.move(away / name, run.root / name)
    assert (
        alone.meta["verification"]["n"] == 9 and alone.meta["verification"]["max_abs_diff"] < 1e-4
    )
    assert "protocol: enrollment: 3 utterance(s)" in alone.describe()

    cell = copy / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    training = run.table[run.table["speaker"].isin(metrics["train_speakers"])]
    cache = FeatureCache(run.root / "features", alone.feature_config)
    frames = np.concatenate(cache.get(training["path"].tolist(), workers=1, progress=False))
    np.testing.assert_allclose(alone.normalizers[0].mean, frames.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(alone.normalizers[0].std, frames.std(axis=0), rtol=1e-4, atol=1e-4)

    # a checkpoint of an enrollment run written before these statistics were stored
    drop_export_state(cell, "training_normalizer", "enrollment_normalizers")
    with pytest.raises(BundleError, match=r"older sergraph.*--data-root"):
        export_bundle(copy, tmp_path / "old.sergraph")
    _, from_corpus = export_bundle(
        copy, tmp_path / "old.sergraph", data_root=str(run.root / "corpus")
    )
    assert from_corpus.meta["verification"]["max_abs_diff"] < 1e-4
    np.testing.assert_array_equal(from_corpus.normalizers[0].mean, alone.normalizers[0].mean)
    np.testing.assert_array_equal(from_corpus.normalizers[0].std, alone.normalizers[0].std)


def test_enrollment_audio_is_refused_by_bundles_without_per_speaker_statistics(run):
    import copy

    from sergraph.deploy.bundle import Bundle

    enrolled = load_bundle(run.bundle, map_location="cpu")
    meta = copy.deepcopy(enrolled.meta)
    meta["graph"]["normalize"] = "train"  # the same weights, as a training-statistics bundle
    members = [
        {"state_dict": model.state_dict(), "mean": norm.mean, "std": norm.std}
        for model, norm in zip(enrolled.models, enrolled.normalizers, strict=True)
    ]
    bundle = Bundle(meta, members)
    paths = run.table["path"].tolist()[:2]
    cache = run.root / "features"
    with pytest.raises(BundleError, match="takes no enrollment audio"):
        bundle.predict(paths, progress=False, cache_dir=cache, enrollment={"x": paths})
    with pytest.raises(BundleError, match="1 speakers given for 2 files"):
        enrolled.predict(paths, progress=False, cache_dir=cache, speakers=["x"])
    plain = bundle.predict(paths, progress=False, cache_dir=cache)
    assert "normalised_with" not in plain.columns
    # without enrollment audio the per-speaker bundle is the training-statistics bundle
    fallback = enrolled.predict(paths, progress=False, cache_dir=cache)
    np.testing.assert_array_equal(
        fallback.filter(like="p_").to_numpy(float), plain.filter(like="p_").to_numpy(float)
    )


def test_enrollment_audio_is_resampled_to_the_training_rate(run, tmp_path, capsys):
    import soundfile as sf
    from scipy.signal import resample_poly

    from sergraph import cli
    from tests.unit.test_predict_rate import RATE_TOLERANCE

    copies = []
    for path in run.enrollment:  # 48 kHz copies of the 16 kHz enrollment files
        samples, rate = sf.read(path)
        copy = tmp_path / f"{len(copies)}_48k.wav"
        sf.write(copy, resample_poly(samples, 3, 1), 3 * rate, subtype="PCM_16")
        copies.append(str(copy))
    path_of = dict(zip(run.table["utterance"], run.table["path"], strict=True))
    saved = pd.read_csv(run.model_dir / "seed-0" / "fold-00" / "predictions.csv")
    paths = [path_of[u] for u in saved["utterance"]]
    bundle = load_bundle(run.bundle, map_location="cpu")
    options = {"workers": 1, "cache_dir": tmp_path / "cache", "progress": False}
    speakers = ["spk01"] * len(paths)
    original = bundle.predict(
        paths, speakers=speakers, enrollment={"spk01": run.enrollment}, **options
    )
    resampled = bundle.predict(paths, speakers=speakers, enrollment={"spk01": copies}, **options)
    difference = np.abs(
        original.filter(like="p_").to_numpy(float) - resampled.filter(like="p_").to_numpy(float)
    )
    assert difference.max() <= RATE_TOLERANCE

    enroll = "spk01=" + ",".join(copies)
    args = ["predict", str(run.bundle), *paths[:2], "--workers", "1", "--enroll", enroll]
    assert cli.main([*args, "--speaker", "spk01"]) == 0
    assert "note: 3 file(s) resampled to 16000 Hz" in capsys.readouterr().err
    # without --speaker no file to predict is spk01's: the enrollment audio would be unused
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--enroll gives enrollment audio of speaker(s) ['spk01']" in err and "--speaker" in err


def test_evaluate_holds_each_new_speakers_enrollment_audio_aside(run, tmp_path):
    """``sergraph evaluate`` under the bundle's protocol: 3 utterances of each speaker of the
    other corpus normalise that speaker and are never scored."""
    from sergraph.config import compose
    from sergraph.data.prepared import load_table
    from sergraph.deploy.evaluate import evaluate_bundle

    corpus = [
        f"data.root={tmp_path / 'other'}",
        "data.options.seed=7",
        "data.options.n_speakers=2",
        "data.options.n_per_class=2",
    ]
    cell, metrics = evaluate_bundle(
        run.bundle, corpus, out_dir=tmp_path / "runs", cache_dir=run.root / "features"
    )
    predictions = pd.read_csv(cell / "predictions.csv")
    table, _ = load_table(compose(corpus))
    assert len(table) == 16
    assert metrics["n_test"] == len(predictions) == 16 - 2 * 3
    assert metrics["evaluation"]["n_enrollment"] == 2 * 3
    assert metrics["protocol"]["name"] == "enrollment"
    assert metrics["data"]["enrollment"] == 3
    held = table[~table["utterance"].isin(predictions["utterance"])]
    assert held.groupby("speaker").size().to_dict() == {"spk01": 3, "spk02": 3}
    # the held-aside audio is what normalised each speaker: predicting the scored files with it
    # gives the written probabilities, without it other ones
    bundle = load_bundle(run.bundle, map_location="cpu")
    scored = table.set_index("utterance").loc[predictions["utterance"]]
    enrollment = {s: part["path"].tolist() for s, part in held.groupby("speaker")}
    columns = [f"p_{c}" for c in bundle.classes]
    kwargs = dict(cache_dir=run.root / "features", progress=False)
    with_audio = bundle.predict(
        scored["path"].tolist(),
        speakers=scored["speaker"].tolist(),
        enrollment=enrollment,
        **kwargs,
    )
    np.testing.assert_allclose(
        predictions[columns].to_numpy(), with_audio[columns].to_numpy(), atol=1e-6
    )
    without = bundle.predict(scored["path"].tolist(), **kwargs)
    assert np.abs(without[columns].to_numpy() - with_audio[columns].to_numpy()).max() > 1e-4
