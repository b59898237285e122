"""A cell interrupted mid-training resumes from its end-of-epoch checkpoint with identical results.

A real ``sergraph train`` killed with SIGKILL (no clean-up at all) after two epochs, then run
again; in this process, an interruption at an epoch boundary whose resumed run must end with
bit-identical weights, and one right after early stopping fired, which must not train again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.cli import run_cli

# Small and quick, with an early stop well before max_epochs (patience 2); dropout makes the
# training depend on the global random state, which the resumed run must continue exactly.
ARGS = [
    "train",
    "model.params.dropout=0.3",
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "folds.only=[0]",
    "trainer.max_epochs=12",
    "trainer.patience=2",
    "trainer.accelerator=cpu",
    "optim.lr=3e-3",
    "optim.batch_size=8",
    "trainer.resume_every_s=0",  # a resume point every epoch: the tests kill at a given one
]
CELL = Path("synthetic", "lstm_gin", "seed-0", "fold-00")


def run(args, env, cwd) -> subprocess.CompletedProcess:
    result = run_cli(args, env, cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_at_epoch(args, env, cwd, last: Path, epoch: int) -> int:
    """Start the CLI, SIGKILL it once ``last`` holds epoch ``epoch`` (0-based) or a later one.

    Returns the epoch of the checkpoint seen (a fast epoch can be rewritten before it is read).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "sergraph.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen, saved, deadline = None, -1, time.monotonic() + 300
    try:
        while saved < epoch:
            assert process.poll() is None, f"finished before saving epoch {epoch}"
            assert time.monotonic() < deadline, f"epoch {epoch} not saved in 300 s"
            try:
                stat = last.stat()
                version = (stat.st_ino, stat.st_mtime_ns)  # each save is a new file, renamed
                if version != seen:
                    seen = version
                    saved = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
            except FileNotFoundError:
                pass
            time.sleep(0.01)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return saved


def results(cell: Path) -> tuple[dict, str]:
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics.pop("seconds")
    metrics.pop("timing")  # wall seconds per phase: how long, not what
    # The checkpoint's bytes hold its own folder's path (best_model_path): its recorded hash
    # differs between two run folders; the predictions file's must not.
    metrics["files"].pop("checkpoints/best.ckpt")
    for clock in ("started", "ended"):  # when a cell ran is provenance, not a result
        metrics["provenance"].pop(clock)
    return metrics, (cell / "predictions.csv").read_text()


def test_killed_cell_resumes_with_the_results_of_an_uninterrupted_run(tmp_path, tmp_path_factory):
    env = {
        **os.environ,
        # One synthetic corpus and feature cache for the session's tests of this kind.
        "SERGRAPH_CACHE": str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    run([*ARGS, "run.out_dir=straight"], env, tmp_path)
    expected = results(tmp_path / "straight" / CELL)
    epochs = expected[0]["epochs"]
    assert 3 <= epochs < 12, "the settings should stop early, after a few epochs"

    interrupted = [*ARGS, "run.out_dir=interrupted"]
    cell = tmp_path / "interrupted" / CELL
    last = cell / "checkpoints" / "last.ckpt"
    killed = kill_at_epoch(interrupted, env, tmp_path, last, epoch=1)
    assert 1 <= killed < epochs - 1, "the kill should leave epochs to train"
    assert last.is_file() and not (cell / "metrics.json").exists()

    final = run(interrupted, env, tmp_path)
    assert "resuming from checkpoints/last.ckpt" in final.stderr
    assert results(cell) == expected
    # One training log with every epoch once, the ones before the kill included: the same
    # epochs and losses as the uninterrupted run's.
    logs = [
        pd.read_csv(root / "logs" / "metrics.csv").dropna(subset=["train/loss"])
        for root in (tmp_path / "straight" / CELL, cell)
    ]
    assert logs[1]["epoch"].tolist() == logs[0]["epoch"].tolist() == list(range(len(logs[0])))
    assert logs[1]["train/loss"].tolist() == logs[0]["train/loss"].tolist()
    assert not list((cell / "logs").glob("metrics.*.csv"))
    # Finished: the resume checkpoint is gone, the best one stays.
    assert sorted(p.name for p in (cell / "checkpoints").iterdir()) == ["best.ckpt"]


def test_leftover_of_another_configuration_is_not_resumed(tmp_path):
    from sergraph.config import compose, to_yaml
    from sergraph.training.checkpoints import resume_checkpoint

    cfg = compose(ARGS[1:])
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "epoch": 0}, tmp_path / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(cfg, tmp_path) is None  # no config.yaml: unknown origin
    (tmp_path / "config.yaml").write_text(to_yaml(compose([*ARGS[1:], "optim.lr=1e-2"])))
    assert resume_checkpoint(cfg, tmp_path) is None
    (tmp_path / "config.yaml").write_text(to_yaml(compose([*ARGS[1:], "run.name=other"])))
    assert resume_checkpoint(cfg, tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


class Interrupted(Exception):
    """Stands for a kill at the end of an epoch."""


def test_resumed_training_continues_the_uninterrupted_run_exactly(
    tmp_path, tmp_path_factory, monkeypatch
):
    """Weights and optimiser state after the last epoch: bit for bit those of the straight run.

    In this process, so that the final ``last.ckpt`` can be kept and compared (the runner
    removes it when a cell finishes). Dropout and the training shuffle both draw random numbers
    in every epoch, so any random state not carried over by the checkpoint changes the weights.
    """
    import sergraph.training.fit as fit
    import sergraph.training.study as runner

    monkeypatch.setenv(
        "SERGRAPH_CACHE", str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache")
    )
    monkeypatch.setattr(runner, "remove_resume_files", lambda directory: None)
    overrides = [*ARGS[1:], "trainer.max_epochs=5", "trainer.patience=50"]  # no early stop
    runner.run_study([*overrides, f"run.out_dir={tmp_path / 'straight'}"])

    keep_early_stop = fit.keep_early_stop_callback

    class KeepEarlyStopThenInterrupt(type(keep_early_stop())):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:  # after the second epoch and its last.ckpt
                raise Interrupted

    monkeypatch.setattr(fit, "keep_early_stop_callback", KeepEarlyStopThenInterrupt)
    interrupted = [*overrides, f"run.out_dir={tmp_path / 'interrupted'}"]
    with pytest.raises(Interrupted):
        runner.run_study(interrupted)
    cell = tmp_path / "interrupted" / CELL
    last = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 1
    # the resume point leaves the export state (statistics, test inputs) to best.ckpt
    assert "train_generator" in last["FoldDataModule"] and "export" not in last["FoldDataModule"]
    best = torch.load(cell / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["FoldDataModule"]["export"]["test"]["features"].numel() > 0
    monkeypatch.setattr(fit, "keep_early_stop_callback", keep_early_stop)
    runner.run_study(interrupted)

    straight = torch.load(
        tmp_path / "straight" / CELL / "checkpoints" / "last.ckpt", weights_only=False
    )
    resumed = torch.load(cell / "checkpoints" / "last.ckpt", weights_only=False)
    assert straight["epoch"] == resumed["epoch"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(),
        resumed["optimizer_states"][0]["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert results(cell) == results(tmp_path / "straight" / CELL)
    for run in (cell, tmp_path / "straight" / CELL):  # best.ckpt saved after a resume too
        best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
        assert "export" in best["FoldDataModule"]


def test_cell_interrupted_after_early_stopping_does_not_train_again(
    tmp_path, tmp_path_factory, monkeypatch
):
    import sergraph.training.fit as fit
    import sergraph.training.study as runner

    monkeypatch.setenv(
        "SERGRAPH_CACHE", str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache")
    )
    overrides = ARGS[1:]
    runner.run_study([*overrides, f"run.out_dir={tmp_path / 'straight'}"])
    expected = results(tmp_path / "straight" / CELL)
    assert expected[0]["epochs"] < 12, "the settings should stop early"

    keep_early_stop = fit.keep_early_stop_callback
    trained: list[int] = []

    class KeepEarlyStopThenInterrupt(type(keep_early_stop())):
        def on_train_end(self, trainer, pl_module):  # last.ckpt of the final epoch is written
            raise Interrupted

    class KeepEarlyStopCounting(type(keep_early_stop())):
        def on_train_epoch_start(self, trainer, pl_module):
            trained.append(trainer.current_epoch)

    interrupted = [*overrides, f"run.out_dir={tmp_path / 'interrupted'}"]
    monkeypatch.setattr(fit, "keep_early_stop_callback", KeepEarlyStopThenInterrupt)
    with pytest.raises(Interrupted):
        runner.run_study(interrupted)
    monkeypatch.setattr(fit, "keep_early_stop_callback", KeepEarlyStopCounting)
    runner.run_study(interrupted)
    assert trained == []  # early stopping had fired: nothing more to train
    assert results(tmp_path / "interrupted" / CELL) == expected


@pytest.mark.slow  # three 2-process runs
def test_ddp_cell_resumes_every_rank_with_its_own_random_state(tmp_path, tmp_path_factory):
    """2 processes (gloo): the checkpoint holds one random state per rank, and a cell killed
    after an epoch ends with the results of the uninterrupted run.

    True-length graphs with feature noise: each rank draws as many random numbers as its own
    nodes, so the ranks' streams differ (restoring rank 0's state on every rank would change
    rank 1's noise, and with it the weights and the predictions). No validation speaker, so the
    checkpoint tested is the last epoch's, trained after the resume.
    """
    env = {
        **os.environ,
        "SERGRAPH_CACHE": str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    args = [
        *ARGS,
        "graph.pad=false",
        "augment.noise=0.05",
        "folds.val_speakers=0",
        "trainer.early_stopping=false",
        "trainer.max_epochs=4",
        "trainer.patience=50",
        "trainer.devices=2",
        "trainer.strategy=ddp",
    ]
    run([*args, "run.out_dir=straight"], env, tmp_path)
    expected = results(tmp_path / "straight" / CELL)
    assert expected[0]["world_size"] == 2 and expected[0]["epochs"] == 4

    interrupted = [*args, "run.out_dir=interrupted"]
    cell = tmp_path / "interrupted" / CELL
    last = cell / "checkpoints" / "last.ckpt"
    killed = kill_at_epoch(interrupted, env, tmp_path, last, epoch=1)
    assert 1 <= killed < 3, "the kill should leave epochs to train"
    states = torch.load(last, map_location="cpu", weights_only=True)["sergraph_rng"]
    assert len(states) == 2
    assert not torch.equal(states[0]["torch"], states[1]["torch"]), "rank streams should differ"

    final = run(interrupted, env, tmp_path)
    assert "resuming from checkpoints/last.ckpt" in final.stderr
    assert results(cell) == expected
    straight = torch.load(
        tmp_path / "straight" / CELL / "checkpoints" / "best.ckpt", weights_only=False
    )
    resumed = torch.load(cell / "checkpoints" / "best.ckpt", weights_only=False)
    assert straight["epoch"] == resumed["epoch"] == 3
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
