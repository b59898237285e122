"""Cell locks: two processes running one study share its cells instead of colliding.

Before a process runs a cell it creates ``seed-S/.fold-XX.lock`` beside the cell folder (so the
cleaning of an interrupted attempt's folder leaves it alone) with ``O_EXCL``, holding its host
name and PID; the lock is removed when the cell ends, however it ends. A lock whose process is
gone (same host, PID no longer running) or of an earlier attempt of the same SLURM job (a
requeued job keeps its id and counts its restarts) is stale and is taken over with a note. A
lock of another host cannot be checked for its PID; instead its owner touches it every
:data:`HEARTBEAT_SECONDS`, and one not touched for :data:`STALE_AFTER_SECONDS` (a job killed at
its time limit on another node, then resubmitted) is stale as well. The message of a live lock
names the file to delete if that run is known to be dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sergraph.console import log
from sergraph.io import ensure_folder
from sergraph.results.layout import CellPaths, cell_of_lock

#: How often the owner of a lock touches it.
HEARTBEAT_SECONDS = 60.0
#: A lock of another host not touched for this long is stale (generous: clocks of cluster nodes
#: and file servers differ, and a stalled file system delays the heartbeat).
STALE_AFTER_SECONDS = 15 * 60.0


class CellLocked(RuntimeError):
    """The cell is being run by another live process."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        super().__init__(
            f"{cell_of_lock(path)} is being run by process {owner.get('pid')} on "
            f"{owner.get('host')} (since {owner.get('since', '?')}); if that run is dead, delete "
            f"{path}"
        )


def lock_path(directory: Path) -> Path:
    return CellPaths(directory).lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> dict | None:
    """The lock's owner, ``{}`` for an unreadable lock, ``None`` when there is no lock."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _slurm_attempt() -> dict:
    """This SLURM job's id and restart count (a requeued job keeps its id), or nothing."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return {}
    return {"slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def is_stale(owner: dict, age: float = 0.0) -> bool:
    """The owner is a process of this host that no longer runs, an earlier attempt of this
    SLURM job (requeued after preemption or a time limit, possibly on another node), or a
    process of another host whose lock (``age`` seconds since last touched) has no heartbeat."""
    mine = _slurm_attempt()
    if mine and owner.get("slurm_job") == mine["slurm_job"]:
        if int(owner.get("slurm_restart", 0)) < mine["slurm_restart"]:
            return True
    if owner.get("host") != socket.gethostname():
        return age > STALE_AFTER_SECONDS
    pid = owner.get("pid")
    return not (isinstance(pid, int) and _alive(pid))


def acquire(directory: Path) -> Path:
    """Create the cell's lock; raises :class:`CellLocked` when a live process holds it."""
    path = lock_path(directory)
    ensure_folder(path.parent)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%F %T")}
    me |= _slurm_attempt()
    # Written in full under a private name, then linked to the lock's name: the link fails when
    # the lock exists (as O_EXCL would), and a reader never sees a half-written lock.
    mine = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    mine.write_text(json.dumps(me))
    try:
        for _ in range(10):
            try:
                os.link(mine, path)
            except FileExistsError:
                owner = read_owner(path)
                if owner is None:
                    continue  # released meanwhile: try again
                if owner and not is_stale(owner, _age(path)):
                    raise CellLocked(path, owner) from None
                _break(path, owner)
                continue
            return path
    finally:
        mine.unlink(missing_ok=True)
    raise CellLocked(path, read_owner(path) or {})


def _break(path: Path, owner: dict) -> None:
    """Remove a stale lock, unless another process replaced it since it was read."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return  # another process broke it first
    if read_owner(aside) != owner and owner != {}:
        # A fresh lock of a live process was taken away between reading and renaming: put it
        # back (link fails if a third process created one meanwhile, which then wins).
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    else:
        log(
            f"NOTE: {path}: process {owner.get('pid', '?')} on {owner.get('host', '?')} held "
            "this cell but is gone; the cell is taken over"
        )
    aside.unlink(missing_ok=True)


def release(path: Path) -> None:
    owner = read_owner(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def cell_lock(directory: Path) -> Iterator[Path]:
    """Hold the cell's lock for the ``with`` block (released however it ends)."""
    path = acquire(directory)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(path)

    beating = threading.Thread(target=heartbeat, name=f"lock {path.name}", daemon=True)
    beating.start()
    try:
        yield path
    finally:
        stop.set()
        beating.join()
        release(path)
