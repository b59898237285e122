"""The whole pipeline through the real CLI: synthetic audio -> openSMILE -> folds -> training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.cli import run_cli as sergraph

SMALL = [
    "data.options.n_speakers=4",
    "data.options.n_per_class=4",
    "folds.only=[0,1]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "optim.lr=1e-3",
]


def test_train_two_folds_writes_results_and_skips_on_rerun(env, tmp_path):
    args = ["train", *SMALL, f"run.out_dir={tmp_path}"]
    first = sergraph(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "synthetic" in first.stderr.lower() and "not speech" in first.stderr
    assert "pooled over all test predictions" in first.stdout
    root = tmp_path / "synthetic" / "lstm_gin"
    for fold in ("fold-00", "fold-01"):
        cell = root / "seed-0" / fold
        metrics = json.loads((cell / "metrics.json").read_text())
        predictions = pd.read_csv(cell / "predictions.csv")
        assert (cell / "config.yaml").is_file() and (cell / "checkpoints" / "best.ckpt").is_file()
        # 4 classes x 4 utterances of the single test speaker
        assert len(predictions) == 16 and metrics["n_test"] == 16
        assert set(predictions["speaker"]) == set(metrics["test_speakers"])
        assert not set(metrics["test_speakers"]) & set(
            metrics["train_speakers"] + metrics["val_speakers"]
        )
        probabilities = predictions.filter(like="p_").to_numpy()
        assert probabilities.shape == (16, 4) and abs(probabilities.sum(axis=1) - 1).max() < 1e-4
        # WA recomputed from the predictions file by hand
        assert metrics["wa"] == pytest.approx(
            (predictions["true"] == predictions["predicted"]).mean()
        )
    summary = json.loads((root / "summary.json").read_text())
    assert len(summary["folds"]) == 2 and summary["pooled"]["per_seed"][0]["n"] == 32

    mtime = (root / "seed-0" / "fold-01" / "metrics.json").stat().st_mtime_ns
    second = sergraph(args, env, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "finished earlier, skipped" in second.stderr
    assert (root / "seed-0" / "fold-01" / "metrics.json").stat().st_mtime_ns == mtime


def test_same_seed_gives_same_numbers(env, tmp_path):
    outputs = []
    for name in ("a", "b"):
        # a relative run.out_dir, resolved against the working directory
        result = sergraph(["train", *SMALL, "folds.only=[0]", f"run.out_dir={name}"], env, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(
            pd.read_csv(
                tmp_path
                / name
                / "synthetic"
                / "lstm_gin"
                / "seed-0"
                / "fold-00"
                / "predictions.csv"
            )
        )
    pd.testing.assert_frame_equal(outputs[0], outputs[1])


def test_svm_baseline_through_the_same_folds(env, tmp_path):
    result = sergraph(["train", "model=svm", *SMALL, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(
        (tmp_path / "synthetic" / "svm" / "seed-0" / "fold-00" / "metrics.json").read_text()
    )
    assert metrics["svm_C"] in (1e-4, 1e-3, 1e-2, 1e-1, 1.0) and metrics["n_test"] == 16


def test_changed_config_goes_to_a_folder_of_its_own(env, tmp_path):
    base = ["train", "model=svm", *SMALL, "folds.only=[0]", f"run.out_dir={tmp_path}"]
    assert sergraph(base, env, tmp_path).returncode == 0
    changed = sergraph([*base, "features.functionals=egemaps"], env, tmp_path)
    assert changed.returncode == 0, changed.stderr[-3000:]
    # labelled by the settings that differ from the base (model=svm, SMALL's, the change)
    label = (
        "model=svm,n_per_class=4,n_speakers=4,functionals=egemaps,lr=0.001,accelerator=cpu,"
        "max_epochs=2"
    )
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir() if p.is_dir()) == [
        label,
        "svm",
    ]
    first = json.loads((tmp_path / "synthetic" / "svm/seed-0/fold-00/metrics.json").read_text())
    moved = json.loads((tmp_path / "synthetic" / label / "seed-0/fold-00/metrics.json").read_text())
    assert first["config_id"] != moved["config_id"]


@pytest.mark.slow
def test_changed_config_under_a_given_label_is_refused(env, tmp_path):
    base = ["train", "model=svm", *SMALL, "folds.only=[0]", f"run.out_dir={tmp_path}"]
    named = [*base, "run.label=mine"]
    assert sergraph(named, env, tmp_path).returncode == 0
    refused = sergraph([*named, "features.functionals=egemaps"], env, tmp_path)
    assert refused.returncode == 2 and "different configuration" in refused.stderr
    assert "mine" in refused.stderr


def test_bad_override_fails_before_any_work(env, tmp_path):
    result = sergraph(["train", "graph.k=5", f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 2 and "graph.k=5" in result.stderr
    assert not (tmp_path / "synthetic").exists()


def test_folds_and_cells_commands(env, tmp_path):
    folds = sergraph(["folds", *SMALL[:2]], env, tmp_path)
    assert folds.returncode == 0, folds.stderr[-2000:]
    assert "spk01" in folds.stdout and "fold-03" in folds.stdout
    cells = sergraph(["cells", "experiment=neighbours", *SMALL[:3]], env, tmp_path)
    assert cells.returncode == 0 and len(cells.stdout.strip().splitlines()) == 1 + 4 * 2


def test_study_runs_variants_in_parallel_and_writes_the_report(env, tmp_path):
    args = ["train", "experiment=neighbours", *SMALL, "folds.only=[0]", "trainer.max_epochs=1"]
    result = sergraph([*args, "run.parallel=2", f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = tmp_path / "neighbours"
    for label in ("k2", "k4", "k6", "k8"):
        metrics = json.loads((study / label / "seed-0" / "fold-00" / "metrics.json").read_text())
        assert metrics["n_test"] == 16
    results = pd.read_csv(study / "report" / "results.csv")
    assert sorted(results["label"]) == ["k2", "k4", "k6", "k8"]
    assert (study / "report" / "wa_ua_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = sergraph([*args, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert again.returncode == 0 and again.stderr.count("finished earlier") >= 1
