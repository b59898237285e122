"""openSMILE extraction of a list of cache misses: in this process, or with N processes.

:class:`Job` is one file to extract and store; :func:`run_opensmile_job` does it in whatever
process it runs in; :func:`run_opensmile_jobs` runs a list of them with ``workers`` processes and
yields each result as it is done. With ``workers = N > 1`` the calling process is one of the N:
it starts ``N - 1`` worker processes and extracts too, from the back of the queue while a thread
hands the front to the workers one file at a time (each has one file running and about one
waiting), so a worker's start-up is never idle time of the whole run.

Start-up is what decided the design (measured on 100 EmoDB files with two workers, where the
whole extraction takes about 2 s of wall time on free cores): a spawned worker spent about 1 s
before its first file (a fresh interpreter, importing pandas and opensmile, and
``opensmile.Smile()``, whose constructor lists every installed distribution). Here:

- workers are started by ``forkserver`` where the platform has it (else ``spawn``): a clean
  server process, started once per parent process and free of its threads (so safe once torch
  runs threads, unlike ``fork``), imports the main script, this module and opensmile once
  (about 0.4 s of CPU), and every worker is a fork of it, ready in milliseconds;
- each worker adopts the parent's ``Smile`` (pickled once per worker through the pool's
  initialiser) instead of constructing its own;
- jobs go one file at a time, so a long file does not hold back a chunk of short ones: the
  pool's cost per file (pickling a job and its array) is about 0.2 ms, against about 45 ms of
  openSMILE for a 2.7 s EmoDB file.

The arrays are those of the serial extraction, byte for byte (``tests/unit/test_features.py``).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sergraph.data.features.config import FeatureConfig, FeatureError
from sergraph.data.features.hashing import atomic_save_npy
from sergraph.data.features.opensmile import (
    adopt_smile,
    extract_functionals_from,
    extract_llds_from,
    smile_for,
)
from sergraph.io import file_sha256
from sergraph.processes import prestart, start_context

__all__ = ["CHANGED", "Job", "run_opensmile_job", "run_opensmile_jobs", "worker_pool"]

CHANGED = "file changed during extraction; run again"

Result = tuple[str, np.ndarray | None, str | None]


@dataclass(frozen=True)
class Job:
    """One extraction (picklable, so it can travel to a worker process)."""

    path: str
    sha256: str
    out_path: str
    kind: str  # "lld", "func", "ssl" or "pre"
    feature_set: str
    deltas: bool
    sample_rate: int | None
    max_seconds: float | None = None

    def levels(self) -> tuple[str, ...]:
        """The openSMILE levels of an openSMILE job (``("func",)`` for functionals)."""
        if self.kind == "func":
            return ("func",)
        return FeatureConfig(self.feature_set, self.deltas, 1, self.sample_rate).levels()


def run_opensmile_job(job: Job) -> Result:
    """Extract one file, store it atomically and return ``(sha256, array, failure reason)``.

    A failure of the file (unreadable, silent, too short) is its reason; a failure to store the
    array (a full cache disk) raises :class:`~sergraph.io.WriteError` and stops the run.
    """
    try:
        if job.max_seconds is None:
            # Hash and decode the same bytes, so the stored array always matches its key even if
            # the file is rewritten while we run.
            data = Path(job.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != job.sha256:
                return job.sha256, None, CHANGED
            source = io.BytesIO(data)
        else:  # only the start is decoded, from the file itself: memory bounded by max_seconds
            source = job.path
        if job.kind == "lld":
            config = FeatureConfig(
                job.feature_set, job.deltas, 1, job.sample_rate, max_seconds=job.max_seconds
            )
            array = extract_llds_from(source, job.path, config)
        else:
            array = extract_functionals_from(
                source, job.path, job.feature_set, job.sample_rate, job.max_seconds
            )
        if job.max_seconds is not None and file_sha256(job.path) != job.sha256:
            return job.sha256, None, CHANGED  # rewritten while it was decoded
    except FeatureError as error:
        return job.sha256, None, "; ".join(reason for _, reason in error.failures)
    except Exception as error:  # report any other per-file failure instead of losing the batch
        return job.sha256, None, f"{type(error).__name__}: {error}"
    atomic_save_npy(Path(job.out_path), array)  # outside the try: a full disk is not bad audio
    return job.sha256, array, None


def _start_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with this module and opensmile among the server's imports
    (:mod:`sergraph.processes`), or ``spawn`` where there is none."""
    return start_context([__name__, "opensmile"])


def _start_worker(feature_set: str, levels: tuple[str, ...], smile) -> None:
    """Pool initialiser: adopt the parent's ``Smile``."""
    adopt_smile(feature_set, levels, smile)


def worker_pool(job: Job, processes: int) -> ProcessPoolExecutor:
    """``processes`` worker processes ready for openSMILE jobs of ``job``'s setting.

    Started as the module docstring says; each adopts this process's ``Smile`` of that setting
    (made here first if need be).
    """
    context = _start_context()
    # Started now (it returns at once), so that the server loads while this process makes
    # its Smile.
    prestart()
    levels = job.levels()
    smile = smile_for(job.feature_set, levels)
    return ProcessPoolExecutor(
        processes,
        mp_context=context,
        initializer=_start_worker,
        initargs=(job.feature_set, levels, smile),
    )


def run_opensmile_jobs(jobs: Sequence[Job], workers: int) -> Iterator[Result]:
    """Run every job, yielding ``(sha256, array, failure reason)`` as each one finishes.

    Args:
        jobs: openSMILE jobs of one setting (one kind, feature set and levels).
        workers: processes extracting, the calling one included (1: all in this process).

    Raises:
        RuntimeError: a worker process died (its files cannot be told apart).
        WriteError: the cache cannot be written.
    """
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield run_opensmile_job(job)
        return
    children = min(workers, len(jobs)) - 1
    pool = worker_pool(jobs[0], children)
    todo = deque(jobs)  # the submitting thread takes from the front, this process from the back
    results: queue.SimpleQueue[Future] = queue.SimpleQueue()
    # Each worker has one job running and about one waiting, so that this process finds work
    # left until the end (the pool would otherwise queue every job at once).
    slots = threading.Semaphore(2 * children)
    failures: list[BaseException] = []

    def finished_one(future: Future) -> None:  # in the pool's thread
        results.put(future)
        slots.release()

    def submit_all() -> None:
        # In a thread, so that this process extracts while the first submit of a process waits
        # for the fork server to start (about half a second), and so that a long file here does
        # not keep the workers waiting for their next job.
        while slots.acquire() and todo:
            try:
                job = todo.popleft()
            except IndexError:  # this process took the last one
                return
            try:
                future = pool.submit(run_opensmile_job, job)
            except BaseException as error:  # the pool cannot start, or was shut down
                todo.appendleft(job)
                failures.append(error)
                return
            future.add_done_callback(finished_one)

    submitter = threading.Thread(target=submit_all, name="sergraph-extraction", daemon=True)
    submitter.start()
    finished = 0
    try:
        while finished < len(jobs):
            if failures:
                raise failures[0]
            try:
                job = todo.pop()
            except IndexError:
                job = None
            if job is not None:
                result = run_opensmile_job(job)
                finished += 1
                yield result
            while finished < len(jobs):  # what the workers finished meanwhile
                try:
                    future = results.get(block=job is None, timeout=0.5 if job is None else None)
                except queue.Empty:
                    break
                result = future.result()
                finished += 1
                yield result
    except BrokenProcessPool as error:
        _stop(todo, slots, submitter, pool, cancel=False)  # the pool fails what is left itself
        # Not a per-file failure: no way to tell which file (if any) killed it.
        raise RuntimeError(
            f"an openSMILE worker process died after {finished} of {len(jobs)} files "
            "(the finished ones are cached). Causes: a crash in openSMILE, running out of "
            "memory, or a script that starts workers at import time: workers import the main "
            "script, so guard it with `if __name__ == '__main__':`. Run again, or use "
            "workers=1 to find the file."
        ) from error
    except BaseException:
        _stop(todo, slots, submitter, pool, cancel=True)
        raise
    _stop(todo, slots, submitter, pool, cancel=False)


def _stop(
    todo: deque,
    slots: threading.Semaphore,
    submitter: threading.Thread,
    pool: ProcessPoolExecutor,
    cancel: bool,
) -> None:
    """Submit nothing more, wait for the submitting thread and the workers."""
    todo.clear()
    slots.release()  # wakes the submitting thread if it waits for a slot: it finds nothing to do
    submitter.join()
    pool.shutdown(wait=True, cancel_futures=cancel)
