"""Grids through the real CLI: ``sergraph train -m`` is one study of labelled variants,
resumable cell by cell, reported against its first point."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.cli import run_cli as sergraph

TINY = [
    "data.options.n_speakers=3",
    "data.options.n_per_class=2",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "folds.only=[0]",
]
LABELS = ["k=2,readout=sum", "k=2,readout=mean", "k=4,readout=sum", "k=4,readout=mean"]


@pytest.mark.slow
def test_grid_is_one_study_resumable_cell_by_cell_and_reported(env, tmp_path):
    grid = ["-m", "graph.k=2,4", "model.params.readout=sum,mean"]
    args = [*TINY, "run.name=grid", f"run.out_dir={tmp_path}"]
    cells = sergraph(["cells", *args, *grid], env, tmp_path)  # -m anywhere after the verb
    assert cells.returncode == 0, cells.stderr[-2000:]
    rows = [line.split("\t") for line in cells.stdout.strip().splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [(str(i), label) for i, label in enumerate(LABELS)]
    # one cell alone, as a SLURM array task runs it
    one = sergraph(["train", *grid, *args, "run.cell=2"], env, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    study = tmp_path / "grid"
    assert [p.name for p in study.glob("*/seed-0/fold-00/metrics.json")] == ["metrics.json"]
    assert (study / "k=4,readout=sum" / "seed-0" / "fold-00" / "metrics.json").is_file()
    full = sergraph(["train", *grid, *args], env, tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "1 cell(s) finished earlier, skipped" in full.stderr
    assert sorted(p.parents[2].name for p in study.glob("*/seed-0/fold-00/metrics.json")) == sorted(
        LABELS
    )
    results = pd.read_csv(study / "report" / "results.csv")
    assert sorted(results["label"]) == sorted(LABELS)
    report = (study / "report" / "report.md").read_text()
    assert "| k=2,readout=sum (reference) |" in report
    assert "Reference: k=2,readout=sum." in report
    # a cell lost to a kill (its folder gone) is the only one computed again
    shutil.rmtree(study / "k=2,readout=mean" / "seed-0" / "fold-00")
    again = sergraph(["train", *grid, *args], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 cell(s) finished earlier, skipped" in again.stderr
    # --reference names another point; the cells' ids do not depend on it
    other = sergraph(["cells", *grid, *args, "--reference", "k=4,readout=mean"], env, tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    bad = sergraph(["cells", *grid, *args, "--reference", "k=6"], env, tmp_path)
    assert bad.returncode == 2 and "reference='k=6' is not a variant" in bad.stderr


def test_slurm_submits_a_grid_as_one_array(tmp_path, monkeypatch):
    """No SLURM needed: the array covers every cell of every point, and each task's command
    line is the grid's own (``-m`` first), so ``run.cell`` indexes the same cells."""
    from sergraph.cli import study_overrides
    from sergraph.cli_parser import build_parser, hoist_study_options
    from sergraph.training.slurm import plan_jobs

    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    argv = ["slurm", "--dry-run", *TINY[:-1], "folds.only=[0,1]", "-m", "graph.k=2,4,6"]
    overrides = study_overrides(build_parser().parse_args(hoist_study_options(argv)))
    assert overrides[0] == "-m"
    jobs, _ = plan_jobs(overrides)
    train = next(job for job in jobs if job.name == "train_array")
    assert train.options == ["--array=0-5"]  # 3 points x 2 folds
    assert train.arguments == overrides and 'sergraph train "$@" run.cell=' in train.script
