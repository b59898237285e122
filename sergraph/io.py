"""Atomic file writes: a reader (or a re-run after a kill) never sees a half-written file.

A folder that cannot be written to raises :class:`NotWritableError`, which names the folder; a
write that fails for want of room (a full disk, a quota) raises :class:`WriteError`, which names
the file. Neither is ever taken for bad input: they stop the run (see :func:`write_error`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: `sergraph --help` does not import pandas
    import pandas as pd

#: errno values that mean "this folder cannot be written to".
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
#: errno values that mean "no room to write this file".
NO_ROOM = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
}


class NotWritableError(PermissionError):
    """A folder that cannot be created or written to; the message names it."""

    def __init__(self, target: Path, error: OSError):
        folder = Path(target)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # the folder that refused: the nearest existing one
        reason = "read-only file system" if error.errno == errno.EROFS else "permission denied"
        super().__init__(
            error.errno,
            f"cannot write {target}: folder {folder} is not writable ({reason}); fix its "
            "permissions or write elsewhere (run.out_dir=..., --out, -o, $SERGRAPH_CACHE)",
        )
        self.filename = str(folder)

    def __str__(self) -> str:
        return self.strerror


class WriteError(OSError):
    """A file that could not be written: the message names it, why, and what to do.

    Built like an ``OSError`` (``errno, message, filename``), so it crosses process boundaries
    (feature extraction workers) intact."""

    def __str__(self) -> str:
        return self.strerror


def write_error(path: str | Path, error: OSError) -> OSError:
    """The error to raise for a failed write of ``path``: :class:`NotWritableError` (permissions,
    read-only), :class:`WriteError` (no room, or an error that names no file), or ``error``
    itself (anything else: it names its file)."""
    if isinstance(error, NotWritableError | WriteError):
        return error
    if error.errno in NOT_WRITABLE:
        return NotWritableError(Path(path), error)
    if error.errno in NO_ROOM:
        return WriteError(
            error.errno,
            f"cannot write {path}: {NO_ROOM[error.errno]} ({errno.errorcode[error.errno]}); "
            "nothing half-written was kept. Free space there, or write elsewhere "
            "(run.out_dir=..., --out, -o, $SERGRAPH_CACHE)",
            str(path),
        )
    if error.filename is not None:
        return error
    return WriteError(error.errno, f"cannot write {path}: {error.strerror or error}", str(path))


def ensure_folder(path: str | Path) -> Path:
    """Create ``path`` (and its parents) if needed; :func:`write_error` if it cannot be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(path, error) from None
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``.

    The one atomic writer of the project: a killed process leaves the old file or the new one,
    never a partial one. ``durable=False`` skips the fsync, for files that are rewritten often
    and only speed work up (a cell's ``last.ckpt``): still whole after a killed process, but
    after a crash of the operating system possibly unreadable, which their reader must handle."""
    path = Path(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise write_error(path, error) from None
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (umask honoured),
        # so that a lab sharing a results folder can read it.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:  # a full disk or quota: named, the partial file removed
        Path(tmp).unlink(missing_ok=True)
        raise write_error(path, error) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n")


def atomic_write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


_HASH_CHUNK = 1 << 20
_HASH_MEMO: dict[tuple, str] = {}
# A file modified this recently could change again within one mtime tick without changing its
# (size, mtime_ns): do not memoise its hash (the "racily clean" rule of git).
_RACY_SECONDS = 2.0


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    Memoised in this process by (path, size, mtime_ns, inode) once the file is more than two
    seconds old, so repeated cache look-ups of unchanged files do not read them again.

    Args:
        path: the file.

    Returns:
        64 hex characters.

    Raises:
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    info = os.stat(path)
    memo_key = (os.path.abspath(path), info.st_size, info.st_mtime_ns, info.st_ino)
    digest = _HASH_MEMO.get(memo_key)
    if digest is not None:
        return digest
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    if time.time() - info.st_mtime_ns / 1e9 > _RACY_SECONDS:
        _HASH_MEMO[memo_key] = digest
    return digest


def shipped_folder(package: str, tree_folder: str, marker: str) -> tuple[Path | None, list[Path]]:
    """A data folder sergraph ships: package data ``package`` of an installed sergraph (wheel
    or editable), else ``tree_folder`` at the top of a source tree on the path. Returns the
    first candidate holding the file ``marker`` (or ``None``) and every candidate looked in."""
    from importlib import resources

    candidates = []
    try:
        candidates.append(Path(str(resources.files(package))))
    except (ModuleNotFoundError, TypeError):
        pass
    candidates.append(Path(__file__).resolve().parents[1] / tree_folder)
    found = next((folder for folder in candidates if (folder / marker).is_file()), None)
    return found, candidates
