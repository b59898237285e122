"""openSMILE extraction of a list of cache misses: one file at a time, or N processes.

:class:`Job` is one file to extract and store; :func:`run_opensmile_job` does it in whatever
process it runs in; :func:`run_opensmile_jobs` runs a list of them with ``workers`` processes and
yields each result as it is done. With ``workers = N > 1`` the calling process is one of the N:
it starts ``N - 1`` worker processes and extracts too, taking jobs from the back of the queue
that no worker has started, so a worker's start-up is never idle time of the whole run.

Start-up is what decided the design (measured on 100 EmoDB files with two workers, where the
whole extraction takes about 2 s): a spawned worker spent about 1 s before its first file
(a fresh interpreter, importing pandas and opensmile, and ``opensmile.Smile()``, whose
constructor lists every installed distribution). Here:

- workers are started by ``forkserver`` where the platform has it (else ``spawn``): a clean
  server process, started once per parent process and free of its threads (so safe once torch
  runs threads, unlike ``fork``), imports this module and opensmile once, and every worker is a
  fork of it, ready in milliseconds;
- each worker adopts the parent's ``Smile`` (pickled once per worker through the pool's
  initialiser) instead of constructing its own;
- jobs go one file at a time, so a long file does not hold back a chunk of short ones; the
  per-file cost of the pool (pickling a job and its array) is well under a millisecond.

The arrays are those of the serial extraction, byte for byte (``tests/unit/test_features.py``).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import queue
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
    """``forkserver`` with this module and opensmile preloaded, or ``spawn`` where there is none.

    The preload list is the fork server's (one per process); it takes effect when the server
    starts, and ``__main__`` stays in it so that workers need not import the main script again.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__, "opensmile"])
    return context


def _start_worker(feature_set: str, levels: tuple[str, ...], smile) -> None:
    """Pool initialiser: adopt the parent's ``Smile``."""
    adopt_smile(feature_set, levels, smile)


def worker_pool(job: Job, processes: int) -> ProcessPoolExecutor:
    """``processes`` worker processes ready for openSMILE jobs of ``job``'s setting.

    Started as the module docstring says; each adopts this process's ``Smile`` of that setting
    (made here first if need be).
    """
    levels = job.levels()
    smile = smile_for(job.feature_set, levels)
    return ProcessPoolExecutor(
        processes,
        mp_context=_start_context(),
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
    pool = worker_pool(jobs[0], min(workers, len(jobs)) - 1)
    finished = 0
    try:
        done: queue.SimpleQueue[Future] = queue.SimpleQueue()  # filled by the pool's thread
        futures = []
        for job in jobs:
            futures.append(pool.submit(run_opensmile_job, job))
            futures[-1].add_done_callback(done.put)
        by_future = dict(zip(futures, jobs, strict=True))
        # The workers take futures from the front; this process takes from the back the ones
        # no worker has started (cancel() succeeds only for those).
        stealable = list(futures)
        while finished < len(jobs):
            while stealable:
                future = stealable.pop()
                if future.cancel():
                    finished += 1
                    yield run_opensmile_job(by_future[future])
                    break
                stealable.clear()  # the queue is FIFO: every earlier one has started too
            while finished < len(jobs):  # what the workers finished meanwhile
                try:
                    future = done.get(block=not stealable)
                except queue.Empty:
                    break
                if not future.cancelled():
                    finished += 1
                    yield future.result()
    except BrokenProcessPool as error:
        pool.shutdown(wait=True, cancel_futures=True)
        # Not a per-file failure: no way to tell which file (if any) killed it.
        raise RuntimeError(
            f"an openSMILE worker process died after {finished} of {len(jobs)} files "
            "(the finished ones are cached). Causes: a crash in openSMILE, running out of "
            "memory, or a script that starts workers at import time: workers import the main "
            "script, so guard it with `if __name__ == '__main__':`. Run again, or use "
            "workers=1 to find the file."
        ) from error
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
