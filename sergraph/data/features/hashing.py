"""Content hashes of files (the cache's keys) and atomic ``.npy`` writes."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np

from sergraph.io import WriteError, atomic_write_bytes, ensure_folder, write_error

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


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Store one cached array atomically (see :func:`save_to_cache`)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    save_to_cache(path, buffer.getvalue())


def save_to_cache(path: Path, data: bytes) -> None:
    """Write one file of the feature cache atomically.

    Raises:
        WriteError: the cache cannot be written (no space, quota, read-only, permissions); it
            names the file, and is never a failure of the input file (the run stops). A plain
            ``OSError`` subclass, so that it crosses from an extraction worker intact.
    """
    try:
        ensure_folder(path.parent)
        atomic_write_bytes(path, data)
    except OSError as error:
        failure = write_error(path, error)
        raise WriteError(
            failure.errno, f"the feature cache cannot be written: {failure}", str(path)
        ) from None


def folder_sha256(folder: str | os.PathLike) -> str:
    """One hash of every file under ``folder`` (relative path and content), hidden ones skipped.

    Used as the identity of a model folder: the same weights and configuration give the same
    hash wherever the folder lives.
    """
    folder = Path(folder)
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_dir() or any(part.startswith(".") for part in relative.parts):
            continue
        sha.update(f"{relative.as_posix()}\0{file_sha256(path)}\n".encode())
    return sha.hexdigest()
