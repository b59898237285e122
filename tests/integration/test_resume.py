"""A cell killed mid-training resumes from its end-of-epoch checkpoint with identical results.

SIGKILL (no clean-up at all) first after two epochs, then again right after the epoch in which
early stopping fired (before the test results are written): the third start must neither train
again nor change the epoch count, and every result equals the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

# Small and quick, with an early stop well before max_epochs (patience 2).
ARGS = [
    "train",
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "folds.only=[0]",
    "trainer.max_epochs=12",
    "trainer.patience=2",
    "trainer.accelerator=cpu",
    "optim.lr=3e-3",
    "optim.batch_size=8",
]
CELL = Path("synthetic", "lstm_gin", "seed-0", "fold-00")


def run(args, env, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sergraph.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    return metrics, (cell / "predictions.csv").read_text()


def test_killed_cell_resumes_with_the_results_of_an_uninterrupted_run(tmp_path):
    env = {
        **os.environ,
        "SERGRAPH_CACHE": str(tmp_path / "cache"),
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
    assert 1 <= killed < epochs - 1, "the first kill should leave epochs to train"
    assert last.is_file() and not (cell / "metrics.json").exists()
    # Resumed, then killed again right after the last epoch's checkpoint, in which early
    # stopping fired: the next start must not train another epoch.
    assert kill_at_epoch(interrupted, env, tmp_path, last, epoch=epochs - 1) == epochs - 1
    assert not (cell / "metrics.json").exists()

    final = run(interrupted, env, tmp_path)
    assert "resuming from checkpoints/last.ckpt" in final.stderr
    assert results(cell) == expected
    # Finished: the resume checkpoint is gone, the best one stays.
    assert sorted(p.name for p in (cell / "checkpoints").iterdir()) == ["best.ckpt"]


def test_leftover_of_another_configuration_is_not_resumed(tmp_path):
    from sergraph.config import compose, to_yaml
    from sergraph.runner import resume_checkpoint

    cfg = compose(ARGS[1:])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    assert resume_checkpoint(cfg, tmp_path) is None  # no config.yaml: unknown origin
    (tmp_path / "config.yaml").write_text(to_yaml(compose([*ARGS[1:], "optim.lr=1e-2"])))
    assert resume_checkpoint(cfg, tmp_path) is None
    (tmp_path / "config.yaml").write_text(to_yaml(compose([*ARGS[1:], "run.name=other"])))
    assert resume_checkpoint(cfg, tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
