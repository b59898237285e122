"""Kill a real ``sergraph features`` / ``sergraph train`` with SIGKILL mid-way, run it again.

SIGKILL cannot be caught, so nothing gets a chance to clean up: what survives is exactly what
the atomic writes (temporary file, then rename) left. The re-run must finish the job, every file
on disk must be complete, and what was finished before the kill must not be done again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # each test starts the CLI twice (about a minute on 2 cores)

SMALL = ["data.options.n_speakers=4", "data.options.n_per_class=3"]  # 48 files


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sergraph.cli", *args]


def environment(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SERGRAPH_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }


def kill_when(args, tmp_path, ready, what: str) -> None:
    """Start the CLI in its own process group and SIGKILL the whole group once ``ready()``."""
    process = subprocess.Popen(
        command(args),
        cwd=tmp_path,
        env=environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # feature workers are killed with it
    )
    deadline = time.monotonic() + 300
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"finished before {what}: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"never reached {what}")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def rerun(args, tmp_path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(args),
        cwd=tmp_path,
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def stored(folder: Path) -> dict[Path, tuple[int, int]]:
    """Cached arrays with (inode, mtime): a rewritten file gets a new inode by os.replace."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.npy")}


def test_killed_feature_extraction_resumes_where_it_stopped(tmp_path):
    args = ["features", *SMALL, "features.workers=2"]
    features = tmp_path / "cache" / "features"
    kill_when(args, tmp_path, lambda: len(stored(features)) >= 6, "6 cached files")

    before = stored(features)
    assert 6 <= len(before) < 48, "the kill should land in the middle of extraction"
    for path in before:  # everything that has the final name is complete
        array = np.load(path, allow_pickle=False)
        assert array.ndim == 2 and array.shape[1] == 76 and np.isfinite(array).all()

    result = rerun(args, tmp_path)
    assert result.stdout.startswith("48 files, 76 features per node")
    after = stored(features)
    assert len(after) == 48
    for path, identity in before.items():
        assert after[path] == identity, f"{path.name} was extracted again"


def test_killed_training_resumes_and_keeps_finished_folds(tmp_path):
    runs = tmp_path / "runs"
    args = [
        "train",
        *SMALL,
        "trainer.max_epochs=3",
        "trainer.accelerator=cpu",
        "features.workers=1",
        "run.parallel=1",  # one cell after another: fold 0 is finished when fold 1 starts
        f"run.out_dir={runs}",
    ]
    root = runs / "synthetic" / "lstm_gin" / "seed-0"
    # Kill inside fold 1: its checkpoint exists but its results do not.
    kill_when(
        args,
        tmp_path,
        lambda: (root / "fold-01" / "checkpoints" / "best.ckpt").exists(),
        "a checkpoint of fold 1",
    )
    finished = root / "fold-00" / "metrics.json"
    assert finished.is_file() and not (root / "fold-01" / "metrics.json").exists()
    first = (finished.stat().st_ino, finished.stat().st_mtime_ns)
    first_metrics = json.loads(finished.read_text())

    result = rerun(args, tmp_path)
    assert "1 cell(s) finished earlier, skipped" in result.stderr
    assert (finished.stat().st_ino, finished.stat().st_mtime_ns) == first  # not trained again
    assert json.loads(finished.read_text()) == first_metrics
    for fold in range(4):
        cell = root / f"fold-{fold:02d}"
        metrics = json.loads((cell / "metrics.json").read_text())
        predictions = pd.read_csv(cell / "predictions.csv")
        assert metrics["n_test"] == len(predictions) == 12
        assert metrics["wa"] == pytest.approx(
            (predictions["true"] == predictions["predicted"]).mean()
        )
        assert not list(cell.glob(".*.tmp")), "a half-written file was left behind"
    summary = json.loads((root.parent / "summary.json").read_text())
    assert len(summary["folds"]) == 4 and summary["pooled"]["per_seed"][0]["n"] == 48
