"""Bundles of ``features.concat_functionals`` runs (the recommended model): the utterance
functionals of new audio are computed, normalised per member and fed as in training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sergraph.deploy.bundle import load_bundle
from sergraph.deploy.pipeline import BundleError

#: Largest |difference| allowed between the bundle's probabilities for the corpus's own test
#: files and the cell's predictions.csv: both are float32 forward passes of the same weights on
#: the same inputs, so only the rounding of predictions.csv (6 decimals) separates them.
TOLERANCE = 1e-5


def _parts(run):
    """(cell, audio, root, exported bundle) of the recommended model's one-fold run
    (``functionals_run`` of tests/unit/conftest.py)."""
    return run.cell, run.audio, run.root, run.exported


def test_bundle_of_a_functionals_run_reproduces_its_predictions_from_audio(
    functionals_run, tmp_path
):
    cell, audio, root, exported = _parts(functionals_run)
    path = root / "recommended.sergraph"
    assert exported.meta["verification"]["max_abs_diff"] <= 1e-3
    assert torch.load(path, weights_only=True)["format_version"] == 3
    bundle = load_bundle(path, map_location="cpu")
    recorded = bundle.meta["functionals"]
    assert recorded["feature_set"] == "is10" and len(recorded["names"]) == 1582
    assert bundle.meta["model"]["global_channels"] == 1582
    assert "functionals" in bundle.describe()
    saved = pd.read_csv(cell / "predictions.csv")
    paths = [audio[u] for u in saved["utterance"]]
    # a fresh cache: the functionals are computed anew from the audio, not read from training's
    frame = bundle.predict(paths, batch_size=4, cache_dir=tmp_path / "fresh", progress=False)
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    got = frame.filter(like="p_").to_numpy(dtype=float)
    assert np.abs(got - expected).max() <= TOLERANCE
    # the functionals matter: without the member's statistics the answer moves
    own = bundle.global_normalizers[0]
    bundle.global_normalizers[0] = type(own)(own.mean * 0, own.std * 0 + 1)
    other = bundle.predict(paths, batch_size=4, cache_dir=tmp_path / "fresh", progress=False)
    assert np.abs(other.filter(like="p_").to_numpy(dtype=float) - expected).max() > 1e-4


def test_functionals_bundles_refuse_windows_and_missing_vectors(functionals_run):
    _, audio, root, _ = _parts(functionals_run)
    bundle = load_bundle(root / "recommended.sergraph", map_location="cpu")
    path = next(iter(audio.values()))
    with pytest.raises(BundleError, match="whole files only"):
        bundle.predict([path], window=1.0, progress=False, cache_dir=root / "features")
    with pytest.raises(BundleError, match="give functionals"):
        bundle.predict_features([np.zeros((5, bundle.meta["model"]["in_channels"]), np.float32)])


def test_enrollment_bundle_with_functionals_reproduces_the_cell_from_audio(
    functionals_enrollment_run, tmp_path
):
    """eval.protocol=enrollment: a held-out speaker's scored files, predicted from audio (a
    fresh cache) with the speaker's enrollment audio, give the cell's predictions.csv; the
    functionals statistics of that audio are the enrollment files' own (computed here through
    extract_functionals, not the cache); without enrollment audio the training statistics."""
    from sergraph.data.features import FeatureCache, extract_functionals
    from sergraph.data.protocol import enrollment_rows
    from sergraph.deploy.enroll import NO_ENROLLMENT, enrollment_plan

    run = functionals_enrollment_run
    saved = pd.read_csv(run.cell / "predictions.csv")
    (speaker,) = set(saved["speaker"].astype(str))
    table = run.table
    enrolled = table.iloc[enrollment_rows(table, [speaker], 3)]
    assert len(enrolled) == 3 and not set(saved["utterance"]) & set(enrolled["utterance"])
    bundle = load_bundle(run.bundle, map_location="cpu")
    assert bundle.meta["protocol"]["name"] == "enrollment"
    assert bundle.meta["verification"]["max_abs_diff"] <= TOLERANCE
    path_of = dict(zip(table["utterance"], table["path"], strict=True))
    paths = [path_of[u] for u in saved["utterance"]]
    enrollment = {speaker: enrolled["path"].tolist()}
    frame = bundle.predict(
        paths,
        cache_dir=tmp_path / "fresh",
        progress=False,
        speakers=[speaker] * len(paths),
        enrollment=enrollment,
    )
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    assert np.abs(frame.filter(like="p_").to_numpy(dtype=float) - expected).max() <= TOLERANCE
    assert frame["emotion"].tolist() == saved["predicted"].tolist()
    assert set(frame["normalised_with"]) == {f"enrollment audio of {speaker} (3 file(s))"}

    # the speaker's functionals statistics: mean and std of its enrollment files' vectors
    vectors = np.stack(
        [extract_functionals(p, "is10", sample_rate=16000) for p in enrollment[speaker]]
    )
    cache = FeatureCache(tmp_path / "fresh", bundle.feature_config)
    functionals_cache = FeatureCache(tmp_path / "fresh", bundle.functionals_config())
    plan = enrollment_plan(
        bundle.meta, cache, paths[:1], [speaker], enrollment, 1, functionals_cache
    )
    fitted = plan[paths[0]][3]
    np.testing.assert_allclose(fitted.mean, vectors.astype(np.float64).mean(axis=0), rtol=1e-6)
    std = vectors.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(fitted.std, np.where(std < 1e-8, 1.0, std), rtol=1e-5)

    # no enrollment audio: the training speakers' statistics, said, and another answer
    bare = bundle.predict(paths, cache_dir=tmp_path / "fresh", progress=False)
    assert set(bare["normalised_with"]) == {NO_ENROLLMENT}
    assert np.abs(bare.filter(like="p_").to_numpy(dtype=float) - expected).max() > 1e-4


def test_enrollment_bundle_takes_the_enrollment_functionals_statistics(
    functionals_enrollment_run, tmp_path
):
    """With the node features' enrollment statistics but the training speakers' functionals
    statistics, the cell's predictions are not reproduced: the functionals' own enrollment
    statistics are what makes the bundle agree."""
    from sergraph.data.features import FeatureCache
    from sergraph.data.protocol import enrollment_rows
    from sergraph.deploy.enroll import enrollment_plan
    from sergraph.deploy.segments import chunk_rows

    run = functionals_enrollment_run
    saved = pd.read_csv(run.cell / "predictions.csv")
    (speaker,) = set(saved["speaker"].astype(str))
    table = run.table
    enrolled = table.iloc[enrollment_rows(table, [speaker], 3)]
    path_of = dict(zip(table["utterance"], table["path"], strict=True))
    paths = [path_of[u] for u in saved["utterance"]]
    bundle = load_bundle(run.bundle, map_location="cpu")
    cache = FeatureCache(tmp_path / "c", bundle.feature_config)
    functionals_cache = FeatureCache(tmp_path / "c", bundle.functionals_config())
    plan = enrollment_plan(
        bundle.meta,
        cache,
        paths,
        [speaker] * len(paths),
        {speaker: enrolled["path"].tolist()},
        1,
        functionals_cache,
    )
    arrays = FeatureCache(tmp_path / "c", bundle.input_config()).get(paths, progress=False)
    vectors, _ = bundle._file_functionals(functionals_cache, paths, 1)
    expected = saved.filter(like="p_").to_numpy(dtype=float)

    def probabilities(chosen_plan):
        rows = chunk_rows(bundle, paths, paths, arrays, {}, None, None, 8, chosen_plan, vectors)
        return pd.DataFrame(rows).filter(like="p_").to_numpy(dtype=float)

    assert np.abs(probabilities(plan) - expected).max() <= TOLERANCE
    training_functionals = {path: (*entry[:3], None) for path, entry in plan.items()}
    assert np.abs(probabilities(training_functionals) - expected).max() > 1e-4


def test_a_signal_in_memory_gets_the_file_s_functionals(functionals_run, tmp_path):
    import soundfile as sf

    _, audio, root, _ = _parts(functionals_run)
    bundle = load_bundle(root / "recommended.sergraph", map_location="cpu")
    path = next(iter(audio.values()))
    from_file = bundle.predict([path], cache_dir=tmp_path / "c", progress=False)
    samples, rate = sf.read(path, dtype="float32")
    from_memory = bundle.predict_signal(samples, rate)
    np.testing.assert_allclose(
        from_memory.filter(like="p_").to_numpy(dtype=float),
        from_file.filter(like="p_").to_numpy(dtype=float),
        atol=TOLERANCE,
    )


def test_enrollment_functionals_statistics_come_from_the_checkpoint_or_the_corpus(
    functionals_enrollment_run, functionals_run, tmp_path
):
    """A member's own functionals statistics are the training speakers' vectors (computed here
    from the audio); a checkpoint written before the functionals' training and enrollment
    statistics were stored needs the corpus (refused by name without it), which gives the
    same."""
    import json
    import shutil

    from sergraph.data.features import FeatureCache
    from sergraph.deploy.bundle import export_bundle
    from tests.checkpoints import drop_export_state

    run, root = functionals_enrollment_run, functionals_run.root
    model_dir = run.cell.parents[1]
    copy = tmp_path / "runs" / model_dir.relative_to(root / "runs-enrollment")
    shutil.copytree(model_dir, copy)
    bundle = load_bundle(run.bundle, map_location="cpu")
    cell = copy / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    training = run.table[run.table["speaker"].isin(metrics["train_speakers"])]
    vectors = FeatureCache(root / "features", bundle.functionals_config()).functionals(
        training["path"].tolist(), progress=False, feature_set="is10"
    )
    own = bundle.global_normalizers[0]
    np.testing.assert_allclose(own.mean, vectors.astype(np.float64).mean(axis=0), rtol=1e-6)
    std = vectors.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(own.std, np.where(std < 1e-8, 1.0, std), rtol=1e-5)

    drop_export_state(cell, "training_global_normalizer", "enrollment_global_normalizers")
    with pytest.raises(BundleError, match=r"older sergraph.*--data-root"):
        export_bundle(copy, tmp_path / "old.sergraph")
    _, from_corpus = export_bundle(copy, tmp_path / "old.sergraph", data_root=str(root / "corpus"))
    assert from_corpus.meta["verification"]["max_abs_diff"] <= TOLERANCE
    np.testing.assert_array_equal(from_corpus.global_normalizers[0].mean, own.mean)
    np.testing.assert_array_equal(from_corpus.global_normalizers[0].std, own.std)


@pytest.fixture(scope="module")
def start_run(functionals_run, tmp_path_factory):
    """The recommended recipe trained with features.max_seconds=1.5 (the synthetic files are
    1.5-3 s long, so training computed each file's functionals from its first 1.5 s) and
    graph.max_nodes=10 (10 nodes of 50 ms plus 1 s: the bundle's node features read the same
    1.5 s), exported; ``head`` is the functionals vector of the first 1.5 s of ``paths[0]``,
    computed here from a cut copy of the file, without the cache."""
    import soundfile as sf

    from sergraph.data.features import extract_functionals
    from sergraph.deploy.bundle import export_bundle
    from tests.unit.conftest import _functionals_cell

    root, audio = functionals_run.root, functionals_run.audio
    out = tmp_path_factory.mktemp("start")
    cell = _functionals_cell(root, out / "runs", ["features.max_seconds=1.5", "graph.max_nodes=10"])
    export_bundle(cell.parents[1], out / "start.sergraph")
    saved = pd.read_csv(cell / "predictions.csv")
    paths = [audio[u] for u in saved["utterance"]]
    assert min(sf.info(p).duration for p in paths) > 1.5  # each file was cut in training
    samples, rate = sf.read(paths[0], dtype="float32")
    sf.write(out / "head.wav", samples[: int(1.5 * rate)], rate, subtype="FLOAT")
    head = extract_functionals(out / "head.wav", "is10", sample_rate=16000)
    whole = extract_functionals(paths[0], "is10", sample_rate=16000)
    assert np.abs(whole - head).max() > 1e-3  # the part matters
    return SimpleNamespace(
        bundle=load_bundle(out / "start.sergraph", map_location="cpu"),
        saved=saved,
        paths=paths,
        head=head,
        out=out,
    )


def test_a_run_trained_on_the_start_of_each_file_gets_the_start_s_functionals(start_run, tmp_path):
    """The bundle computes the functionals of new audio from the part training read, so it
    reproduces the cell's predictions from audio, from files and from a signal in memory."""
    import soundfile as sf

    from sergraph.data.features import FeatureCache

    bundle, saved, paths = start_run.bundle, start_run.saved, start_run.paths
    assert bundle.functionals["max_seconds"] == 1.5
    cache = FeatureCache(tmp_path / "fresh", bundle.functionals_config())
    row = cache.functionals(paths[:1], progress=False, feature_set="is10")[0]
    np.testing.assert_allclose(row, start_run.head, rtol=1e-5, atol=1e-6)
    frame = bundle.predict(paths, cache_dir=tmp_path / "fresh", progress=False)
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    got = frame.filter(like="p_").to_numpy(dtype=float)
    assert np.abs(got - expected).max() <= TOLERANCE
    samples, rate = sf.read(paths[0], dtype="float32")
    from_memory = bundle.predict_signal(samples, rate).filter(like="p_").to_numpy(dtype=float)
    np.testing.assert_allclose(from_memory, got[:1], atol=TOLERANCE)


def test_the_onnx_export_of_such_a_run_reads_the_same_part(start_run):
    """Its model.json says which part, and the audonnx transform gives the cache's vector."""
    import json

    import soundfile as sf

    pytest.importorskip("audonnx", reason="audonnx comes with pip install 'sergraph[onnx]'")
    from sergraph.deploy.onnx import audonnx_transforms, export_onnx

    bundle = start_run.bundle
    _, sidecar = export_onnx(bundle, start_run.out / "onnx")
    recorded = json.loads((start_run.out / "onnx" / "model.json").read_text())
    assert recorded["functionals"]["max_seconds"] == 1.5
    assert "first 1.5 s" in sidecar["audonnx"]["transform"]
    transforms, _ = audonnx_transforms(bundle)
    samples, rate = sf.read(start_run.paths[0], dtype="float32")
    np.testing.assert_allclose(
        transforms["functionals"](samples, rate)[0], start_run.head, rtol=1e-5, atol=1e-6
    )


def test_a_run_trained_on_less_than_its_graph_window_gets_the_same_nodes(functionals_run, tmp_path):
    """features.max_seconds=1.0 below the graph's window (40 nodes of 50 ms, plus 1 s read):
    training saw at most the nodes of each file's first second, and so does the bundle, which
    then reproduces the cell's predictions from audio (from files and from a signal in
    memory); reading the window instead gives the model more nodes and another answer."""
    import dataclasses

    import soundfile as sf

    from sergraph.deploy.bundle import export_bundle
    from tests.unit.conftest import _functionals_cell

    root, audio = functionals_run.root, functionals_run.audio
    overrides = ["features.max_seconds=1.0", "graph.max_nodes=40"]
    cell = _functionals_cell(root, tmp_path / "runs", overrides)
    export_bundle(cell.parents[1], tmp_path / "short.sergraph")
    bundle = load_bundle(tmp_path / "short.sergraph", map_location="cpu")
    assert bundle.input_config().max_seconds == 1.0
    saved = pd.read_csv(cell / "predictions.csv")
    paths = [audio[u] for u in saved["utterance"]]
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    frame = bundle.predict(paths, cache_dir=tmp_path / "fresh", progress=False)
    got = frame.filter(like="p_").to_numpy(dtype=float)
    assert np.abs(got - expected).max() <= TOLERANCE
    samples, rate = sf.read(paths[0], dtype="float32")
    from_memory = bundle.predict_signal(samples, rate).filter(like="p_").to_numpy(dtype=float)
    np.testing.assert_allclose(from_memory, got[:1], atol=TOLERANCE)
    # the control: the window's 3 s read
    window = bundle.input_config(window=None)
    wide = dataclasses.replace(window, max_seconds=40 * 0.05 + 1.0)
    bundle.input_config = lambda window=None: wide
    other = bundle.predict(paths, cache_dir=tmp_path / "fresh", progress=False)
    assert np.abs(other.filter(like="p_").to_numpy(dtype=float) - expected).max() > 1e-4
