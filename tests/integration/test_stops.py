"""SIGTERM and Ctrl-C to a real ``sergraph train``: a non-zero status within seconds, one line
saying what finished, no process left behind, no queued cell started, and the same command
resumes to the same predictions (see :mod:`sergraph.training.stopping`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil  # a dependency of torch_geometric
import pytest

from tests.cli import run_cli

pytestmark = pytest.mark.slow  # each test starts the CLI two or three times

ARGS = [
    "train",
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "trainer.max_epochs=3",
    "trainer.accelerator=cpu",
    "features.workers=1",
]
ROOT = Path("synthetic", "lstm_gin", "seed-0")


def start(args, env, cwd: Path) -> tuple[subprocess.Popen, Path]:
    errors = cwd / f"stderr-{time.monotonic_ns()}.txt"
    process = subprocess.Popen(
        [sys.executable, "-m", "sergraph.cli", *args],
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=errors.open("w"),
        start_new_session=True,  # its own process group, as a job started from a terminal
    )
    return process, errors


def wait_for(process: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"finished before {what}"
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.02)


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def workers_of(pid: int) -> list[psutil.Process]:
    """A study's worker processes: the children of its fork server (sergraph.processes)."""
    servers = [c for c in psutil.Process(pid).children() if "forkserver" in " ".join(c.cmdline())]
    return [worker for server in servers for worker in server.children()]


def ended_within(process: subprocess.Popen, seconds: float) -> int:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running {seconds} s after the signal")


def left_behind(processes: list[psutil.Process]) -> list[str]:
    gone, alive = psutil.wait_procs(processes, timeout=5)
    return [f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in alive]


def started_cells(runs: Path) -> set[str]:
    return {p.name for p in (runs / ROOT).glob("fold-*")}


def finished_cells(runs: Path) -> set[str]:
    return {p.parent.name for p in (runs / ROOT).glob("fold-*/metrics.json")}


def test_sigterm_stops_a_sequential_study_with_status_143_and_it_resumes(env, tmp_path):
    runs = tmp_path / "runs"
    args = [*ARGS, "run.parallel=1", f"run.out_dir={runs}"]
    process, errors = start(args, env, tmp_path)
    wait_for(process, lambda: "fold-00 test" in errors.read_text(), "the first cell's line")
    children = descendants(process.pid)
    process.send_signal(signal.SIGTERM)
    assert ended_within(process, 60) == 143  # 128 + SIGTERM, as a shell reports it
    text = errors.read_text()
    stopped = re.search(
        r"stopped by SIGTERM: (\d) of 4 cell\(s\) finished \((\d) in this run\)", text
    )
    assert stopped, text[-2000:]
    done = int(stopped.group(1))
    assert 1 <= done < 4 and stopped.group(2) == str(done)
    assert len(finished_cells(runs)) == done
    assert "run the same command again to resume" in text
    assert f"interrupted: lstm_gin seed 0 fold-{done:02d}" in text
    log = (runs / "synthetic" / "sergraph.log").read_text()
    assert "stopped by SIGTERM" in log  # the log file keeps the line too
    assert left_behind(children) == []
    first = runs / ROOT / "fold-00" / "metrics.json"
    before = (first.stat().st_ino, first.stat().st_mtime_ns)

    again = run_cli(args, {**env, "OMP_NUM_THREADS": "1"}, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{done} cell(s) finished earlier, skipped" in again.stderr
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == before
    assert finished_cells(runs) == {f"fold-{i:02d}" for i in range(4)}


def test_sigterm_stops_a_parallel_study_its_workers_and_resumes_to_the_same_predictions(
    env, tmp_path
):
    runs = tmp_path / "runs"
    args = [*ARGS, "run.parallel=2", f"run.out_dir={runs}"]
    process, errors = start(args, env, tmp_path)
    ckpt = runs / ROOT
    wait_for(process, lambda: any(ckpt.glob("fold-*/checkpoints/last.ckpt")), "a checkpoint")
    children = descendants(process.pid)  # the workers, their fork server and its helpers
    assert len(workers_of(process.pid)) == 2
    before = finished_cells(runs)
    process.send_signal(signal.SIGTERM)  # to the main process only: it must stop the workers
    assert ended_within(process, 60) == 143
    text = errors.read_text()
    assert "stopped by SIGTERM" in text and "interrupted: lstm_gin seed 0 fold-0" in text
    assert left_behind(children) == []
    # no queued cell started: at most the two running ones besides those finished before
    assert len(started_cells(runs)) <= len(before) + 2
    time.sleep(2)
    assert len(started_cells(runs)) <= len(before) + 2  # and nothing runs on in the background

    resumed = run_cli(args, {**env, "OMP_NUM_THREADS": "1"}, tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference_runs = tmp_path / "reference"
    reference = run_cli(
        [*ARGS, f"run.out_dir={reference_runs}"], {**env, "OMP_NUM_THREADS": "1"}, tmp_path
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    for fold in range(4):
        cell = Path(ROOT, f"fold-{fold:02d}")
        got = pd.read_csv(runs / cell / "predictions.csv")
        want = pd.read_csv(reference_runs / cell / "predictions.csv")
        pd.testing.assert_frame_equal(got, want, check_exact=False, atol=1e-6)
        metrics = json.loads((runs / cell / "metrics.json").read_text())
        assert metrics["n_test"] == 12


def test_ctrl_c_twice_stops_a_parallel_study_at_once_without_orphans(env, tmp_path):
    runs = tmp_path / "runs"
    process, errors = start([*ARGS, "run.parallel=2", f"run.out_dir={runs}"], env, tmp_path)
    ckpt = runs / ROOT
    wait_for(process, lambda: any(ckpt.glob("fold-*/checkpoints/last.ckpt")), "a checkpoint")
    children = descendants(process.pid)
    before = finished_cells(runs)
    for _ in range(2):  # a terminal's Ctrl-C reaches the whole process group, twice
        try:
            os.killpg(process.pid, signal.SIGINT)
        except ProcessLookupError:  # already gone after the first one
            break
        time.sleep(0.3)
    # 128 + SIGINT; or ended by SIGINT itself when the second one lands while Python exits
    # (its finalisation resets the handlers): a shell reports both as 130
    code = ended_within(process, 30)
    assert code in (130, -signal.SIGINT), errors.read_text()[-3000:]
    assert "SIGINT" in errors.read_text()
    assert left_behind(children) == []
    assert len(started_cells(runs)) <= len(before) + 2
