"""Content hashes of folders and atomic ``.npy`` writes of the feature cache.

The hash of one file (the cache's keys) is :func:`sergraph.io.file_sha256`, importable from
here as before."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np

from sergraph.io import WriteError, atomic_write_bytes, ensure_folder, file_sha256, write_error


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
