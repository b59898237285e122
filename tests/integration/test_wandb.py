"""Real W&B in offline mode: what lands in the offline run files."""

from __future__ import annotations

import json
import os

import pytest

from sergraph.config import compose
from sergraph.data.folds import Fold
from sergraph.training.tracking import cell_loggers
from tests.cli import run_cli
from tests.wandb_records import run_contents

pytest.importorskip("wandb")


def offline_runs(root):
    return sorted(root.rglob("offline-run-*/run-*.wandb"))


def test_train_logs_cells_and_summary_to_offline_wandb(tmp_path):
    env = {**os.environ, "SERGRAPH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    args = [
        "train",
        "model=svm",
        "data.options.n_speakers=4",
        "data.options.n_per_class=4",
        "folds.only=[0,1]",
        "logger.kind=wandb",
        "logger.offline=true",
        "logger.group=ci-study",
        "logger.tags=[test]",
        f"run.out_dir={tmp_path / 'runs'}",
    ]
    result = run_cli(args, env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # W&B's own lines (run links, sync notes, the run summary) are in the log file only
    assert "wandb:" not in result.stderr
    assert "wandb:" in (tmp_path / "runs" / "synthetic" / "sergraph.log").read_text()
    runs = [run_contents(path) for path in offline_runs(tmp_path / "runs")]
    assert len(runs) == 4  # two cells, the variant and the study summary
    assert all(run["exit_code"] == 0 and run["run"]["group"] == "ci-study" for run in runs)
    cells = {run["config"]["fold"]: run for run in runs if run["config"].get("run_kind") == "cell"}
    assert sorted(cells) == [0, 1]
    assert all(run["run"]["job_type"] == "svm" for run in cells.values())
    for fold, run in cells.items():
        metrics = json.loads(
            (
                tmp_path
                / "runs"
                / "synthetic"
                / "svm"
                / "seed-0"
                / f"fold-{fold:02d}"
                / "metrics.json"
            ).read_text()
        )
        assert run["config"]["label"] == "svm" and run["config"]["seed"] == 0
        assert run["config"]["model.name"] == "svm"  # flat, as a sweep names its keys
        assert run["config"]["test_speakers"] == ",".join(metrics["test_speakers"])
        assert run["run"]["tags"] == ["test", "protocol:inductive"]
        assert run["run"]["name"] == f"svm/seed-0/fold-{fold:02d}"
        assert run["config"]["protocol"] == metrics["protocol"]["name"] == "inductive"
        assert run["summary"]["protocol_note"] == metrics["protocol"]["note"]
        assert run["summary"]["test/ua"] == pytest.approx(metrics["ua"])
        assert run["summary"]["test/wa"] == pytest.approx(metrics["wa"])
        assert run["summary"]["test/f1"] == pytest.approx(metrics["f1"])
        assert run["summary"]["test/confusion/nrows"] == 16  # 4 x 4 (true, predicted) rows
    (summary_run,) = [run for run in runs if run["run"]["job_type"] == "summary"]
    summary = json.loads((tmp_path / "runs" / "synthetic" / "svm" / "summary.json").read_text())
    pooled = summary["pooled"]
    (variant,) = [run for run in runs if run["config"].get("run_kind") == "variant"]
    assert variant["run"]["name"] == variant["run"]["job_type"] == "svm"
    assert variant["summary"]["test/ua_pooled"] == pytest.approx(pooled["ua"])
    assert variant["summary"]["test/wa_pooled"] == pytest.approx(pooled["wa"])
    assert variant["summary"]["test/f1_pooled"] == pytest.approx(pooled["f1"])
    assert variant["summary"]["test/f1_mean"] == pytest.approx(summary["fold_mean"]["f1"])
    assert variant["summary"]["cells"] == 2
    assert summary_run["summary"]["svm/ua_pooled"] == pytest.approx(pooled["ua"])
    assert summary_run["summary"]["svm/f1_pooled"] == pytest.approx(pooled["f1"])
    assert summary_run["summary"]["study/results/nrows"] == 1


def test_wandb_finish_is_reached_when_a_cell_fails(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose(["logger.kind=wandb", "logger.offline=true"])
    fold = Fold(0, ("a",), ("b",), ("c",))
    with pytest.raises(RuntimeError, match="boom"):
        with cell_loggers(cfg, tmp_path, "lstm_gin", 0, fold) as loggers:
            loggers[-1].experiment.log({"x": 1})
            raise RuntimeError("boom")
    assert wandb.run is None
    # finish() hands the records to W&B's service process, which writes the offline file on
    # its own time; a CLI run's exit tears the service down, here teardown() does (and waits)
    wandb.teardown()
    (path,) = offline_runs(tmp_path)
    run = run_contents(path)
    assert run["exit_code"] == 1 and run["config"]["label"] == "lstm_gin"
    assert "x" in run["history_keys"]


@pytest.mark.slow
def test_shipped_sweep_command_lines_run_by_hand_make_one_study(tmp_path):
    """Two grid points of configs/sweep_neighbours_readout.yaml, their command lines as a W&B
    agent runs them (``${args_no_hyphens}`` filled in), W&B offline: both exit 0 into variant
    folders of one study, one W&B group, the swept keys in every run's config."""
    import yaml

    from sergraph.config import config_dir
    from tests.unit.test_experiments import sweep_argv

    sweep = yaml.safe_load((config_dir() / "sweep_neighbours_readout.yaml").read_text())
    assert sweep["metric"] == {"name": "val/ua", "goal": "maximize"}
    env = {**os.environ, "SERGRAPH_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    tiny = [  # appended to make it fast; the one-point grid labels them too
        "data.options.n_speakers=3",
        "data.options.n_per_class=2",
        "trainer.max_epochs=1",
        "folds.only=[0]",
        f"run.out_dir={tmp_path / 'runs'}",
    ]
    points = [
        {"graph.k": 2, "model.params.readout": "sum"},
        {"graph.k": 4, "model.params.readout": "mean"},
    ]
    for point in points:
        result = run_cli([*sweep_argv(sweep, point), *tiny], env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "wandb:" not in result.stderr
    study = tmp_path / "runs" / "sweep_neighbours_readout"
    labels = sorted(p.parents[2].name for p in study.glob("*/seed-0/fold-00/metrics.json"))
    settings = "n_per_class=2,n_speakers=3,k={},readout={},max_epochs=1"  # by full key
    assert labels == [settings.format(2, "sum"), settings.format(4, "mean")]
    runs = [run_contents(path) for path in offline_runs(study)]
    assert {run["run"]["group"] for run in runs} == {"sweep_neighbours_readout"}
    assert all(run["exit_code"] == 0 for run in runs)
    for point, label in zip(points, labels, strict=True):
        mine = [run for run in runs if run["config"].get("label") == label]
        kinds = sorted(run["config"]["run_kind"] for run in mine)
        assert kinds == ["cell", "variant"]
        for run in mine:
            assert run["run"]["job_type"] == label
            assert run["config"]["graph.k"] == point["graph.k"]
            assert run["config"]["model.params.readout"] == point["model.params.readout"]
        (variant,) = [run for run in mine if run["config"]["run_kind"] == "variant"]
        metrics = json.loads((study / label / "seed-0" / "fold-00" / "metrics.json").read_text())
        pooled = json.loads((study / label / "summary.json").read_text())["pooled"]
        # one cell: the mean best validation UA is that cell's, the pooled test UA its UA
        assert variant["summary"]["val/ua"] == pytest.approx(metrics["best_val_ua"])
        assert variant["summary"]["test/ua_pooled"] == pytest.approx(pooled["ua"])
        assert variant["summary"]["test/wa_pooled"] == pytest.approx(pooled["wa"])
        (cell,) = [run for run in mine if run["config"]["run_kind"] == "cell"]
        assert cell["summary"]["val/ua"] == pytest.approx(metrics["best_val_ua"])  # best epoch
