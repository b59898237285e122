"""``run.parallel``: a study's cells in worker processes that stop with the study.

Each worker (a process forked from the fork server, or spawned for CUDA: see
:mod:`sergraph.processes`) prepares once (``setup``, e.g. planning the study), then asks
for one cell at a time; a cell is handed out only when a worker is free, so none is queued in a
worker that could start it after the study stopped. The main process waits on the workers'
pipes and on their process sentinels together, so it notices at once:

- a stop signal (:class:`~sergraph.training.stopping.Stopped` in the main process): every
  worker gets SIGTERM, its running cell stops after Lightning's clean-up (resumable from its last
  end-of-epoch checkpoint), and the worker exits; one that does not within
  :data:`STOP_GRACE_SECONDS` is killed. No cell starts after the signal.
- a worker that died (the kernel's OOM killer, a crash in native code, ``kill -9``): the error
  names the worker and the cell it ran; the other workers are stopped as above.
- a cell that raised: its error is raised in the main process, naming the cell, after the
  other workers are stopped.

Workers ignore SIGINT (a terminal's Ctrl-C reaches every process of the group; the main process
decides) and get SIGTERM if the main process dies (:func:`~sergraph.training.stopping.worker_signals`).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

from sergraph.console import log
from sergraph.processes import adopt_environment, start_context
from sergraph.training.stopping import (
    RESUME_HINT,
    Stopped,
    register_children,
    stopped_from,
    worker_signals,
)

#: Seconds a worker has to finish its clean-up after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 60.0


class WorkerDied(RuntimeError):
    """A worker process ended without being asked to; the message names it and its cell."""


@dataclass
class _Worker:
    process: BaseProcess
    connection: object
    task: int | None = None  # the task it runs
    started: list[int] = field(default_factory=list)
    released: bool = False  # told to exit (or gone): no longer listened to


def _worker_main(connection, parent: int, environment, device, setup, setup_args, work) -> None:
    """A worker: ``state = setup(*setup_args)``, then ``work(state, task)`` for every task sent
    until ``None``; each result (or the error) is sent back."""
    worker_signals(parent)
    adopt_environment(environment)
    if device is not None:  # before anything touches CUDA, which reads it once
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    try:
        try:
            state = setup(*setup_args)
        except Exception as error:  # noqa: BLE001 - sent to the main process, which raises it
            connection.send(("failed", None, _picklable(error)))
            return
        connection.send(("ready", None, None))
        while (task := connection.recv()) is not None:
            try:
                connection.send(("done", task, work(state, task)))
            except Exception as error:  # noqa: BLE001 - sent to the main process, which raises it
                connection.send(("failed", task, _picklable(error)))
                return
    except BaseException as error:  # noqa: BLE001 - a stop, or the main process went away
        if stopped_from(error) is None and not isinstance(error, EOFError | OSError):
            raise
        sys.stderr.flush()
        # os._exit: the worker must not return to anything that could start more work
        os._exit(stopped_from(error).exit_code if stopped_from(error) else 1)


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure: keep the type name and message
        return RuntimeError(f"{type(error).__name__}: {error}")


def _how(exitcode: int | None) -> str:
    if exitcode is None:
        return "is unresponsive"
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"


def run_in_workers(
    tasks: Sequence[int],
    parallel: int,
    setup: Callable,
    setup_args: tuple,
    work: Callable,
    names: Callable[[int], str],
    on_done: Callable[[int, object], None],
    devices: Sequence[str | None] | None = None,
    preload: Sequence[str] = (),
) -> None:
    """Run ``work(state, task)`` for every task in ``parallel`` worker processes.

    Args:
        tasks: what to hand out, in this order, one at a time to whichever worker is free.
        parallel: the number of workers.
        setup: picklable (module-level) function; each worker's ``state = setup(*setup_args)``.
        work: picklable function ``work(state, task) -> result``.
        names: a task's name for messages (e.g. ``lstm_gin seed 0 fold-03``).
        on_done: called in this process with ``(task, result)`` as each task finishes.
        devices: each worker's ``CUDA_VISIBLE_DEVICES`` (``None``: left as it is). Workers
            with a device are spawned; the others are forked from the fork server.
        preload: modules the fork server imports before its first fork (where it has not
            started yet; :func:`sergraph.processes.prestart` starts it early).

    Raises:
        Stopped: a stop signal arrived (the workers are stopped first).
        WorkerDied: a worker process ended while running a task or before asking for one.
        Exception: the error a task raised, after the other workers are stopped.
    """
    devices = list(devices) if devices is not None else [None] * parallel
    context = start_context(preload, cuda=any(device is not None for device in devices))
    environment = dict(os.environ)
    queue = deque(tasks)
    workers: list[_Worker] = []
    finished = False
    try:
        for number in range(parallel):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(
                    theirs,
                    os.getpid(),
                    environment,
                    devices[number],
                    setup,
                    setup_args,
                    work,
                ),
                name=f"sergraph-worker-{number}",
                daemon=True,
            )
            process.start()
            theirs.close()
            workers.append(_Worker(process, ours))
            register_children([w.process for w in workers])
        while queue or any(w.task is not None for w in workers):
            listening = [w for w in workers if not w.released]
            ready = set(
                wait([w.connection for w in listening] + [w.process.sentinel for w in listening])
            )
            for worker in listening:
                if worker.connection in ready:
                    try:
                        kind, task, payload = worker.connection.recv()
                    except EOFError:  # it died; its exit code says how
                        worker.process.join(5)
                        _died(worker, names)
                    if kind == "failed":
                        what = "its start" if task is None else names(task)
                        log(f"{what}: failed in worker process {worker.process.pid}")
                        raise payload
                    if kind == "done":
                        worker.task = None
                        on_done(task, payload)
                    _hand_out(worker, queue)
                elif worker.process.sentinel in ready:
                    worker.process.join(5)
                    _died(worker, names)
        finished = True
    finally:
        _stop(workers, names, finished)


def _hand_out(worker: _Worker, queue: deque) -> None:
    if queue:
        worker.task = queue.popleft()
        worker.started.append(worker.task)
        worker.connection.send(worker.task)
    else:
        worker.connection.send(None)  # nothing left: the worker exits
        worker.released = True


def _died(worker: _Worker, names: Callable[[int], str]) -> None:
    if worker.task is not None:
        what = f"while running {names(worker.task)}"
    elif worker.started:
        what = f"after {names(worker.started[-1])}"
    else:
        what = "before it ran a cell"
    worker.task = None
    worker.released = True
    raise WorkerDied(
        f"worker process {worker.process.pid} {_how(worker.process.exitcode)} {what}; the "
        "other workers were stopped. Causes: running out of memory (the kernel's OOM killer, "
        "see `dmesg`), a crash in native code, a signal sent to the worker. Finished cells are "
        f"kept; {RESUME_HINT}"
    )


def _stop(workers: list[_Worker], names: Callable[[int], str], finished: bool) -> None:
    """Every worker ends. After the last task, the idle ones exit by themselves; otherwise
    (a stop, an error) each gets SIGTERM, and is killed after :data:`STOP_GRACE_SECONDS`."""
    interrupted = [w.task for w in workers if w.task is not None and w.process.exitcode is None]
    for worker in workers:
        if worker.process.exitcode is not None:
            continue
        if finished and not worker.released:  # still starting up when the last task was taken
            try:
                worker.connection.send(None)
            except OSError:
                pass
        elif not finished:
            try:
                os.kill(worker.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            log(
                f"worker process {worker.process.pid} did not stop within "
                f"{STOP_GRACE_SECONDS:.0f} s; killed"
            )
            worker.process.kill()
            worker.process.join()
        worker.connection.close()
    register_children([])
    if interrupted:
        log(f"interrupted: {', '.join(names(task) for task in interrupted)}")


__all__ = ["STOP_GRACE_SECONDS", "Stopped", "WorkerDied", "run_in_workers"]
