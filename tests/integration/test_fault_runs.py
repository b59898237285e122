"""Faults through the real command line: a diverging model, damaged result files, a corrupt
resume checkpoint and two ``sergraph train`` processes on one study.

Each case is a run of the real CLI on a tiny synthetic study (4 speakers, 1-2 folds, 1-2 epochs).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.cli import run_cli as sergraph

pytestmark = pytest.mark.slow  # each test starts the CLI two or three times

SMALL = [
    "data.options.n_speakers=4",
    "data.options.n_per_class=4",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "optim.lr=1e-3",
]
CELL = "synthetic/lstm_gin/seed-0"


def test_diverging_model_stops_its_cell_naming_the_learning_rate(env, tmp_path):
    """The issue's reproduction: optim.lr=1e9 used to report WA 25 with every loss nan."""
    args = ["train", *SMALL, "optim.lr=1e9", "run.name=hugelr", "folds.only=[0]"]
    result = sergraph([*args, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("sergraph train: error:") and "fold-00" in error
    assert "loss is nan at epoch 0" in error and "optim.lr=1e+09" in error
    assert "Traceback" not in result.stderr
    cell = tmp_path / "hugelr" / "lstm_gin" / "seed-0" / "fold-00"
    assert not (cell / "metrics.json").exists() and not (cell / "predictions.csv").exists()
    assert not (tmp_path / "hugelr" / "lstm_gin" / "summary.json").exists()

    # Without validation speakers (said explicitly) the training loss is the one caught.
    no_val = [*args, "folds.val_speakers=0", "trainer.early_stopping=false", "run.name=noval"]
    result = sergraph([*no_val, f"run.out_dir={tmp_path}"], env, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "the training loss is nan at epoch 0" in result.stderr
    assert not list((tmp_path / "noval").rglob("metrics.json"))


def test_damaged_results_and_corrupt_resume_checkpoint(env, tmp_path):
    args = ["train", *SMALL, "folds.only=[0]", f"run.out_dir={tmp_path}"]
    first = sergraph(args, env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cell = tmp_path / CELL / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["files"]["predictions.csv"]["rows"] == 16
    assert "checkpoints/best.ckpt" in metrics["files"]

    # predictions cut to 3 rows: train no longer skips the cell as finished, it stops
    predictions = cell / "predictions.csv"
    original = predictions.read_bytes()
    pd.read_csv(predictions).iloc[:3].to_csv(predictions, index=False)
    cut = sergraph(args, env, tmp_path)
    assert cut.returncode == 2 and "finished earlier" not in cut.stderr
    assert f"{predictions}: changed since metrics.json was written" in cut.stderr
    assert "3 rows instead of 16" in cut.stderr and "delete the cell folder" in cut.stderr
    predictions.write_bytes(original)  # restored: accepted again
    again = sergraph(args, env, tmp_path)
    assert again.returncode == 0 and "finished earlier, skipped" in again.stderr

    # an interrupted attempt whose last.ckpt was cut short: moved aside, the cell starts afresh
    (cell / "metrics.json").unlink()
    last = cell / "checkpoints" / "last.ckpt"
    last.write_bytes((cell / "checkpoints" / "best.ckpt").read_bytes()[:1000])
    resumed = sergraph(args, env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"NOTE: {last} cannot be read" in resumed.stderr and "moved aside" in resumed.stderr
    assert (tmp_path / CELL / "corrupt-fold-00-last-1.ckpt").is_file()
    assert json.loads((cell / "metrics.json").read_text())["wa"] == metrics["wa"]


def test_two_processes_share_the_cells_of_one_study(env, tmp_path):
    """Both finish without error; each cell is trained once; the results equal one process's."""
    args = ["train", *SMALL, "folds.only=[0,1]"]
    command = [sys.executable, "-m", "sergraph.cli", *args, f"run.out_dir={tmp_path / 'two'}"]
    processes = [
        subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    errors = "".join(err for _, err in outputs)
    trained = [line for line in errors.splitlines() if " UA " in line and "epochs" in line]
    assert len(trained) == 2, errors[-3000:]  # every cell once, by one process or the other
    assert "is being run by process" in errors  # one of them met a cell the other had claimed
    root = tmp_path / "two" / "synthetic" / "lstm_gin"
    summary = json.loads((root / "summary.json").read_text())
    assert len(summary["folds"]) == 2
    assert not list(root.rglob("*.lock"))  # every lock released

    single = sergraph([*args, f"run.out_dir={tmp_path / 'one'}"], env, tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    for fold in ("fold-00", "fold-01"):
        ours = pd.read_csv(root / "seed-0" / fold / "predictions.csv")
        theirs = pd.read_csv(tmp_path / "one" / CELL / fold / "predictions.csv")
        pd.testing.assert_frame_equal(ours, theirs)


def test_unwritable_runs_folder_is_named(env, tmp_path):
    """/sys: a folder no process can write to on Linux, root included."""
    args = ["train", *SMALL, "folds.only=[0]", "run.out_dir=/sys/sergraph-test"]
    result = sergraph(args, env, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "folder /sys is not writable" in result.stderr.strip().splitlines()[-1]
