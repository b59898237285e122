"""Export from the run folder alone: what checkpoints carry, old checkpoints, training precision.

Reference values come from independent routes: the test inputs a checkpoint carries are
compared with features extracted again from the audio files; a bundle exported from the
checkpoints alone is compared with one whose statistics were recomputed from the corpus by the
training data module; the verification tolerance is exercised with edited predictions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sergraph.data.features import extract_llds, pool_frames
from sergraph.deploy.bundle import BundleError, load_bundle
from sergraph.deploy.export import (
    REDUCED_PRECISION_TOLERANCE,
    VERIFY_TOLERANCE,
    export_bundle,
    verify_tolerance,
)


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Rewrite a fold's checkpoint as if training had written it so: its metrics.json records
    the new file (result files are verified against what metrics.json recorded)."""
    from sergraph.io import atomic_write_json
    from sergraph.results.layout import file_record, read_json

    torch.save(checkpoint, path)
    cell = path.parents[1]
    metrics = read_json(cell / "metrics.json")
    name = path.relative_to(cell).as_posix()
    if name in metrics.get("files", {}):
        metrics["files"][name] = file_record(path)
        atomic_write_json(cell / "metrics.json", metrics)


@pytest.fixture
def model_dir(bundle_run, tmp_path) -> Path:
    """A copy of the run's model folder, free to edit."""
    target = tmp_path / "runs" / "synthetic" / "lstm_gin"
    shutil.copytree(bundle_run.model_dir, target)
    return target


def best_checkpoint(cell: Path) -> Path:
    return cell / json.loads((cell / "metrics.json").read_text())["checkpoint"]


def shift_probabilities(cell: Path, amount: float) -> None:
    """Move ``amount`` of probability from p_sad to p_angry in every row of predictions.csv."""
    saved = cell / "predictions.csv"
    frame = pd.read_csv(saved)
    frame["p_sad"] -= amount
    frame["p_angry"] += amount
    # Rewritten with the layout's writer, as a training that gave these numbers would have.
    from sergraph.results.layout import read_metrics, write_cell

    metrics = read_metrics(cell)
    write_cell(cell, frame, metrics, metrics["checkpoint"])


# ---------------------------------------------------------------------------------------------
# what a checkpoint carries


def test_checkpoints_carry_the_fold_test_inputs_as_plain_tensors(bundle_run):
    cell = bundle_run.model_dir / "seed-0" / "fold-00"
    checkpoint = torch.load(best_checkpoint(cell), weights_only=True)  # plain data only
    state = checkpoint["FoldDataModule"]["export"]
    assert state["classes"] == ["neutral", "happy", "sad", "angry"]
    assert state["graph"] == {"k": 4, "max_nodes": 120, "pad": True, "normalize": "train"}
    assert state["fold"]["test_speakers"] == ["spk01"]
    assert state["provenance"]["precision"] == "32-true"
    assert (
        state["provenance"]["config_id"]
        == json.loads((cell / "metrics.json").read_text())["config_id"]
    )
    test = state["test"]
    saved = pd.read_csv(cell / "predictions.csv")
    assert test["utterances"] == list(saved["utterance"])  # the test speaker, in test order
    assert test["features"].dtype == torch.float32 and test["features"].shape[1] == 76
    assert int(test["lengths"].sum()) == len(test["features"])
    # Independent route: the same utterances' features extracted again from the audio.
    start = 0
    for utterance, length in zip(test["utterances"], test["lengths"].tolist(), strict=True):
        nodes = pool_frames(extract_llds(bundle_run.audio[utterance]), 5)[:120]
        assert length == len(nodes)
        np.testing.assert_allclose(
            test["features"][start : start + length].numpy(), nodes, rtol=1e-5, atol=1e-5
        )
        start += length


def test_export_needs_only_the_run_folder(bundle_run, model_dir, tmp_path):
    away = tmp_path / "away"
    moved = [(bundle_run.root / "corpus", away / "corpus"), (bundle_run.cache, away / "cache")]
    away.mkdir()
    for source, target in moved:
        shutil.move(source, target)
    try:
        out, bundle = export_bundle(model_dir, tmp_path / "alone.sergraph")
    finally:
        for source, target in moved:
            shutil.move(target, source)
    meta = load_bundle(out, map_location="cpu").meta
    assert meta["verification"]["n"] == 24 and meta["verification"]["max_abs_diff"] < 1e-4
    assert meta["precision"] == "32-true" and meta["verification"]["cause"] is None
    assert meta["source"]["speakers"] == ["spk01", "spk02", "spk03", "spk04"]
    assert meta["source"]["n_utterances"] == 48
    assert len(meta["features"]["names"]) == 76


def test_old_checkpoints_say_what_to_do_and_export_from_the_corpus(bundle_run, model_dir, tmp_path):
    for cell in sorted(model_dir.glob("seed-*/fold-*")):
        path = best_checkpoint(cell)
        checkpoint = torch.load(path, weights_only=False)
        del checkpoint["FoldDataModule"]["export"]  # as written before checkpoints carried it
        save_checkpoint(checkpoint, path)
    with pytest.raises(BundleError, match=r"older sergraph.*Train those folds again.*--data-root"):
        export_bundle(model_dir, tmp_path / "old.sergraph")
    assert not (tmp_path / "old.sergraph").exists()
    corpus = str(bundle_run.root / "corpus")
    out, from_corpus = export_bundle(model_dir, tmp_path / "old.sergraph", data_root=corpus)
    assert from_corpus.meta["verification"]["n"] == 24
    # The corpus route (the training data module) and the checkpoint route agree exactly.
    reference = load_bundle(bundle_run.ensemble, map_location="cpu")
    for mine, theirs in zip(from_corpus.normalizers, reference.normalizers, strict=True):
        np.testing.assert_array_equal(mine.mean, theirs.mean)
        np.testing.assert_array_equal(mine.std, theirs.std)
    assert from_corpus.meta["features"] == reference.meta["features"]


# ---------------------------------------------------------------------------------------------
# verification and precision


def test_verification_catches_a_graph_that_differs_from_training(model_dir, tmp_path):
    # As if graph building had changed since training: the checkpoint's fold 1 says k=2.
    path = best_checkpoint(model_dir / "seed-0" / "fold-01")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["FoldDataModule"]["export"]["graph"]["k"] = 2
    save_checkpoint(checkpoint, path)
    out = tmp_path / "x.sergraph"
    with pytest.raises(BundleError, match=r"fold-01: its checkpoint has graph=.*'k': 2"):
        export_bundle(model_dir, out)
    with pytest.raises(BundleError, match=r"fold-01.*differ from predictions.csv.*graph or model"):
        export_bundle(model_dir / "seed-0" / "fold-01", out)
    assert not out.exists()


def test_verification_tolerance_follows_the_training_precision():
    for precision in (None, 32, "32", "32-true", "64-true"):
        assert verify_tolerance(precision) == VERIFY_TOLERANCE == 1e-3
    for precision in ("bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", 16):
        assert verify_tolerance(precision) == REDUCED_PRECISION_TOLERANCE
    assert VERIFY_TOLERANCE < REDUCED_PRECISION_TOLERANCE < 0.1


def test_float32_run_is_held_to_float32_tolerance(model_dir, tmp_path):
    shift_probabilities(model_dir / "seed-0" / "fold-00", 0.004)  # > 1e-3, < the bf16 bound
    with pytest.raises(BundleError, match=r"fold-00.*up to 0.004.*> 0.001.*precision 32-true"):
        export_bundle(model_dir, tmp_path / "x.sergraph")


@pytest.fixture(scope="module", params=["native", "emulated"])
def bf16_run(request, bundle_run, tmp_path_factory) -> Path:
    """One fold of a small LSTM-GIN trained one epoch under bf16-mixed (CPU autocast).

    ``native``: the CPU's own bf16 LSTM kernel (skipped, saying so, where the CPU has none).
    ``emulated``: the LSTM computes in float32 and returns bf16, as under CUDA autocast
    (``tests/emulation.py``), so the rest of the model still runs in bf16 and the export's
    precision tolerance is exercised on every CPU.
    """
    import contextlib

    from sergraph.training.study import run_study
    from tests.conftest import skip_without_cpu_lstm_kernel
    from tests.emulation import cuda_like_recurrent_layers

    if request.param == "native":
        skip_without_cpu_lstm_kernel("bfloat16")
        context = contextlib.nullcontext()
    else:
        context = cuda_like_recurrent_layers()
    root = tmp_path_factory.mktemp(f"bf16-{request.param}")
    with context:
        run_study(
            [
                f"data.root={bundle_run.root / 'corpus'}",  # the same corpus and feature cache
                "data.options.n_speakers=4",
                "data.options.n_per_class=3",
                "folds.only=[0]",
                "trainer.max_epochs=1",
                "trainer.accelerator=cpu",
                "trainer.precision=bf16-mixed",
                "model.params.lstm_hidden=32",
                "model.params.hidden=32",
                "model.params.classifier_hidden=32",
                "model.params.num_layers=2",
                "optim.lr=1e-3",
                "features.workers=1",
                f"features.cache_dir={bundle_run.cache}",
                f"run.out_dir={root / 'runs'}",
                "logger.kind=none",
            ]
        )
    return root / "runs" / "synthetic" / "lstm_gin"


def test_bf16_mixed_run_exports_with_the_precision_tolerance(bf16_run, tmp_path):
    out, bundle = export_bundle(bf16_run, tmp_path / "bf16.sergraph")
    meta = load_bundle(out, map_location="cpu").meta
    assert meta["precision"] == "bf16-mixed"
    verification = meta["verification"]
    assert verification["n"] == 12 and verification["tolerance"] == REDUCED_PRECISION_TOLERANCE
    # predictions.csv came from a bf16 forward pass, the bundle's from a float32 one: they
    # differ by far more than float32 rounding (< 1e-6), and by less than the tolerance.
    assert 1e-4 < verification["max_abs_diff"] <= REDUCED_PRECISION_TOLERANCE
    above_float32 = verification["max_abs_diff"] > VERIFY_TOLERANCE
    assert verification["cause"] == ("precision" if above_float32 else None)


def shifted_copy(run_dir: Path, tmp_path: Path, amount: float) -> Path:
    copy = tmp_path / "runs" / "synthetic" / "lstm_gin"
    shutil.copytree(run_dir, copy)
    shift_probabilities(copy / "seed-0" / "fold-00", amount)
    return copy


def test_bf16_difference_above_float32_tolerance_is_put_down_to_precision(bf16_run, tmp_path):
    # 0.01 more than the bf16 run's own difference: refused for a float32 run (above), within
    # the bf16 tolerance here, and said to come from the training precision.
    _, bundle = export_bundle(shifted_copy(bf16_run, tmp_path, 0.01), tmp_path / "b.sergraph")
    verification = bundle.meta["verification"]
    assert VERIFY_TOLERANCE < verification["max_abs_diff"] < REDUCED_PRECISION_TOLERANCE
    assert verification["cause"] == "precision"
    assert "trained in bf16-mixed, predicting in float32" in bundle.describe()


def test_bf16_mixed_run_still_refuses_a_difference_precision_cannot_explain(bf16_run, tmp_path):
    copy = shifted_copy(bf16_run, tmp_path, 0.2)
    with pytest.raises(BundleError, match=r"> 0.05, the tolerance for training precision bf16"):
        export_bundle(copy, tmp_path / "x.sergraph")


# ---------------------------------------------------------------------------------------------
# dilated edges and the virtual node: the bundle builds the graphs training built


@pytest.fixture(scope="module")
def dilated_run(tmp_path_factory):
    """One fold of GIN with dilated temporal edges and a virtual node, one epoch."""
    from sergraph.training.study import run_study

    root = tmp_path_factory.mktemp("dilated")
    run_study(
        [
            f"data.root={root / 'corpus'}",
            "data.options.n_speakers=4",
            "data.options.n_per_class=3",
            "folds.only=[0]",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "optim.lr=1e-3",
            "graph.dilations=[1,3,7]",
            "model=gin",
            "model.params.num_layers=2",
            "model.params.hidden=16",
            "model.params.virtual_node=true",
            "features.workers=1",
            f"features.cache_dir={root / 'features'}",
            f"run.out_dir={root / 'runs'}",
            "logger.kind=none",
        ]
    )
    model_dir = root / "runs" / "synthetic" / "gin"
    corpus = next((root / "corpus").glob("synthetic-*"))
    audio = {p.stem: str(p) for p in sorted((corpus / "wav").glob("*.wav"))}
    return model_dir, audio, root


def test_bundle_of_a_dilated_virtual_node_run_reproduces_its_predictions(dilated_run, tmp_path):
    model_dir, audio, root = dilated_run
    cell = model_dir / "seed-0" / "fold-00"
    state = torch.load(best_checkpoint(cell), weights_only=True)["FoldDataModule"]["export"]
    assert state["graph"]["dilations"] == [1, 3, 7] and state["format"] == 3
    path, _ = export_bundle(model_dir, root / "dilated.sergraph")
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2  # older sergraph versions refuse it
    bundle = load_bundle(path, map_location="cpu")
    assert bundle.meta["graph"]["dilations"] == [1, 3, 7]
    assert bundle.meta["model"]["params"]["virtual_node"] is True
    saved = pd.read_csv(cell / "predictions.csv")
    paths = [audio[u] for u in saved["utterance"]]
    frame = bundle.predict(paths, batch_size=5, cache_dir=tmp_path / "fresh", progress=False)
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    np.testing.assert_allclose(frame.filter(like="p_").to_numpy(dtype=float), expected, atol=1e-5)
    # the same weights on the k band give other probabilities: the edges matter and were carried
    del bundle.meta["graph"]["dilations"]
    other = bundle.predict(paths, batch_size=5, cache_dir=tmp_path / "fresh", progress=False)
    assert np.abs(other.filter(like="p_").to_numpy(dtype=float) - expected).max() > 1e-4


# ---------------------------------------------------------------------------------------------
# unfinished studies


def test_a_study_with_an_unfinished_fold_is_refused_unless_partial(model_dir, tmp_path, capsys):
    from sergraph.cli import main

    # as a study stopped during fold 1: its folder exists, its results do not
    (model_dir / "seed-0" / "fold-01" / "metrics.json").unlink()
    out = tmp_path / "partial.sergraph"
    with pytest.raises(BundleError, match=r"seed 0: fold\(s\) \[1\] have no results") as caught:
        export_bundle(model_dir, out)
    assert "unfinished cell folder(s) seed-0/fold-01" in str(caught.value)
    assert "--partial" in str(caught.value) and not out.exists()
    assert main(["export", str(model_dir), "-o", str(out)]) == 2
    assert "is not finished" in capsys.readouterr().err and not out.exists()

    assert main(["export", str(model_dir), "-o", str(out), "--partial"]) == 0
    assert "PARTIAL: exported from an unfinished study" in capsys.readouterr().out
    bundle = load_bundle(out)
    assert [m["fold"] for m in bundle.meta["members"]] == [0]
    assert "fold(s) [1] have no results" in bundle.meta["partial"]
    # a chosen fold is a choice, not a partial study
    _, chosen = export_bundle(model_dir, tmp_path / "fold0.sergraph", folds=[0])
    assert "partial" not in chosen.meta


def test_without_folds_only_every_speaker_must_have_been_tested(model_dir):
    # the same two finished folds, but the study was all folds of the corpus (folds.only unset):
    # its four speakers spk01..spk04 were each the test speaker of one fold; spk03 and spk04
    # never were
    for cell in model_dir.glob("seed-*/fold-*"):
        config = cell / "config.yaml"
        config.write_text(config.read_text().replace("  only:\n  - 0\n  - 1\n", "  only: null\n"))
        assert "only: null" in config.read_text()
    with pytest.raises(BundleError) as caught:
        export_bundle(model_dir, verify=False)
    assert "seed 0: speaker(s) spk03, spk04 were never tested" in str(caught.value)
    assert "2 fold(s) finished" in str(caught.value)
