"""The ``run.parallel`` worker pool and stop signals, with real processes and real signals.

The tasks here are tiny functions of this module (sleep, write a marker, kill oneself), so each
test takes a second or two: what is checked is the pool's behaviour, not training (the real
``sergraph train`` cases are in ``tests/integration/test_stops.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from sergraph.training.parallel import WorkerDied, run_in_workers
from sergraph.training.stopping import Stopped, restore_signals, stop_on_signals, stopped_from


def setup(folder: str) -> Path:
    if folder == "bad":
        raise FileNotFoundError("corpus bad: no such folder")
    return Path(folder)


def work(folder: Path, task: int) -> str:
    """Mark the task started (with this worker's pid), then behave as the task number says."""
    (folder / f"started-{task}").write_text(str(os.getpid()))
    if task == 99:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker that dies (OOM killer, native crash)
    if task == 98:
        raise ValueError("task 98 is bad: value 'x' is not accepted; give 'y'")
    if task >= 50:
        time.sleep(60)  # a long cell
    return f"task {task} by {os.getpid()} sees {os.environ.get('CUDA_VISIBLE_DEVICES')}"


def names(task: int) -> str:
    return f"cell {task}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too (our children are reaped by join, so this is belt and braces)
    status = Path(f"/proc/{pid}/stat")
    return status.exists() and status.read_text().split(") ")[-1][:1] != "Z"


def started(folder: Path) -> dict[int, int]:
    return {int(p.name.split("-")[1]): int(p.read_text()) for p in folder.glob("started-*")}


def test_every_task_runs_once_with_its_workers_device(tmp_path):
    done = {}
    run_in_workers(
        [0, 1, 2, 3, 4],
        2,
        setup,
        (str(tmp_path),),
        work,
        names,
        lambda task, line: done.setdefault(task, line),
        devices=["7", "GPU-ab"],
    )
    assert sorted(done) == [0, 1, 2, 3, 4]
    device_of = {}  # each worker process keeps the device it was given
    for task, line in done.items():
        pid, device = started(tmp_path)[task], line.rsplit(" ", 1)[1]
        assert device_of.setdefault(pid, device) == device
    assert len(device_of) <= 2 and set(device_of.values()) <= {"7", "GPU-ab"}
    assert len(set(device_of.values())) == len(device_of)  # two workers, two devices
    assert not any(alive(pid) for pid in device_of)


def environment_of(folder: Path, task: int) -> str:
    return f"{os.getpid()} {os.getppid()} {os.environ.get('SERGRAPH_POOL_TEST')}"


def test_cpu_workers_are_forked_from_one_server_and_see_the_parents_environment_of_now(
    tmp_path, monkeypatch
):
    """CPU workers come from the fork server (sergraph.processes), which keeps the environment
    it started with; each worker takes the parent's environment of the moment it starts."""
    from multiprocessing import forkserver

    from sergraph.processes import prestart

    monkeypatch.setenv("SERGRAPH_POOL_TEST", "before")
    prestart()  # a no-op where the server already runs; then it has an older environment
    forkserver.ensure_running()
    server = psutil.Process(forkserver._forkserver._forkserver_pid)
    monkeypatch.setenv("SERGRAPH_POOL_TEST", "after")
    done = {}
    run_in_workers(
        [0, 1, 2],
        2,
        setup,
        (str(tmp_path),),
        environment_of,
        names,
        lambda task, line: done.setdefault(task, line),
    )
    assert sorted(done) == [0, 1, 2]
    assert {line.split()[2] for line in done.values()} == {"after"}
    assert {int(line.split()[1]) for line in done.values()} == {server.pid}  # forked by it
    assert server.is_running()
    assert server.environ().get("SERGRAPH_POOL_TEST") != "after"


def test_a_dead_worker_is_named_with_its_cell_and_the_others_stop(tmp_path):
    with pytest.raises(WorkerDied) as caught:
        run_in_workers([50, 99, 1, 2], 2, setup, (str(tmp_path),), work, names, lambda *a: None)
    tasks = started(tmp_path)
    dead = tasks[99]
    message = str(caught.value)
    assert f"worker process {dead} was killed by SIGKILL while running cell 99" in message
    assert "run the same command again to resume" in message
    assert not alive(tasks[50])  # the other worker's long task was stopped, not waited for
    assert set(tasks) == {50, 99}  # nothing queued started after the death


def test_a_failing_cell_raises_its_own_error_in_the_main_process(tmp_path):
    with pytest.raises(ValueError, match="task 98 is bad: value 'x' is not accepted"):
        run_in_workers([50, 98, 3], 2, setup, (str(tmp_path),), work, names, lambda *a: None)
    tasks = started(tmp_path)
    assert set(tasks) == {50, 98} and not any(alive(pid) for pid in tasks.values())


def test_a_worker_that_cannot_start_raises_its_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus bad: no such folder"):
        run_in_workers([1, 2], 2, setup, ("bad",), work, names, lambda *a: None)


def signal_after(path: Path, signum: int, count: int = 1) -> threading.Thread:
    """Send ``signum`` to this process once ``path`` exists (``count`` times, 0.2 s apart)."""

    def send():
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(count):
            os.kill(os.getpid(), signum)
            time.sleep(0.2)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def handlers():
    """This process's SIGTERM/SIGINT handlers, put back after the test (a stopped block keeps
    its own, so that a further signal still ends the process at once)."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield before
    restore_signals(before)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_workers_and_starts_no_queued_cell(tmp_path, signum, handlers):
    begin = time.monotonic()
    signal_after(tmp_path / "started-51", signum)
    with pytest.raises(Stopped) as caught, stop_on_signals():
        run_in_workers([50, 51, 52, 53], 2, setup, (str(tmp_path),), work, names, lambda *a: None)
    assert caught.value.signum == signum and caught.value.exit_code == 128 + signum
    assert time.monotonic() - begin < 30  # not the 60 s of a task
    tasks = started(tmp_path)
    assert set(tasks) == {50, 51}  # 52 and 53 never started
    assert not any(alive(pid) for pid in tasks.values())
    # still stopping: a further signal would end the process at once, not raise again
    assert signal.getsignal(signum) is not handlers[signum]


def test_handlers_are_restored_after_a_block_that_was_not_stopped(handlers):
    with stop_on_signals():
        assert signal.getsignal(signal.SIGINT) is not handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is handlers[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is handlers[signal.SIGTERM]


def test_lightnings_sigterm_exception_counts_as_a_stop():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    stop = stopped_from(SIGTERMException())
    assert stop is not None and stop.exit_code == 143 and str(stop) == "stopped by SIGTERM"
    assert stopped_from(SystemExit(0)) is None and stopped_from(ValueError("x")) is None
