"""Honest stops: SIGTERM and SIGINT (Ctrl-C) end a study with a non-zero status.

Left to themselves, Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` without
a code, so the shell sees status 0) and Ctrl-C into ``sys.exit(1)`` with SIGINT ignored for the
rest of the process. :func:`stop_on_signals` instead raises :class:`Stopped` in the main thread
at the first SIGTERM or SIGINT, wherever the study is (extracting features, training, writing
results); Lightning passes it on after its own clean-up (it calls the handler that was there
before it), the cell lock is released, and ``sergraph train`` says what finished and exits with
``128 + signal`` (143 for SIGTERM, 130 for SIGINT), as a shell does for a process ended by a
signal. Whatever was finished is kept (writes are atomic) and the same command resumes.

A second signal while stopping ends the process at once, after killing the worker processes
registered with :func:`register_children` (``run.parallel``), so that an impatient second Ctrl-C
never hangs and never leaves a process behind.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: The signals that stop a study.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESUME_HINT = (
    "run the same command again to resume (finished cells are skipped, an interrupted cell "
    "resumes from its last end-of-epoch checkpoint)"
)

_state: dict = {"stopping": None, "children": []}


class Stopped(BaseException):
    """A study stopped by a signal (a ``BaseException``, like ``KeyboardInterrupt``, so that no
    ``except Exception`` takes it for an error of one file or one cell)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal: 128 + its number."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"stopped by {self.name}"


def stopped_from(error: BaseException) -> Stopped | None:
    """The :class:`Stopped` an exception stands for: itself, or Lightning's
    ``SIGTERMException`` (raised where our handler was not installed); else ``None``."""
    if isinstance(error, Stopped):
        return error
    if type(error).__name__ == "SIGTERMException" and isinstance(error, SystemExit):
        return Stopped(signal.SIGTERM)
    return None


def _handle(signum: int, frame) -> None:
    if _state["stopping"] is None:
        _state["stopping"] = signum
        raise Stopped(signum)
    # A second signal while the first one's clean-up runs: stop now, and take the workers along.
    kill_children(signal.SIGKILL)
    print(
        f"{signal.Signals(signum).name} again while stopping: stopped at once; {RESUME_HINT}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Stopped` in the main thread (the
    first one; a second one ends the process at once). The handlers before are restored after,
    unless the block was stopped: the process is then on its way out, and a further signal
    (an impatient second Ctrl-C) still ends it at once with ``128 + signal``, not with a
    traceback of Python's default handler.
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _state["stopping"] = None
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        if _state["stopping"] is None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def restore_signals(handlers: dict) -> None:
    """Put back ``handlers`` (signal -> handler) and forget a stop (tests that stop in-process)."""
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    _state["stopping"] = None


def stopping() -> bool:
    """Whether a stop signal arrived in this process (inside :func:`stop_on_signals`)."""
    return _state["stopping"] is not None


def register_children(processes: list) -> None:
    """Worker processes (``multiprocessing.Process``) that a second signal kills before exiting."""
    _state["children"] = list(processes)


def kill_children(signum: int = signal.SIGKILL) -> None:
    for process in _state["children"]:
        if process.pid is not None and process.exitcode is None:
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                pass


def worker_signals(parent: int) -> None:
    """In a worker process of the main one: SIGINT is ignored (a terminal's Ctrl-C reaches
    every process of the group; the main process decides and stops the workers), SIGTERM raises
    :class:`Stopped`, and on Linux the worker gets SIGTERM when the main process dies, even by
    SIGKILL, so that no worker outlives it (``parent``: the main process's id)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _handle)
    _state["stopping"] = None
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no prctl: the main process still stops its workers
            pass
    # The main process died before the line above? (A fork-server worker's parent is the
    # server, which exits when the main process does: the signal then comes through it.)
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        os._exit(128 + signal.SIGTERM)
