"""Frames into nodes: by count (openSMILE, 10 ms frames) or by time (any frame rate)."""

from __future__ import annotations

import math

import numpy as np

from sergraph.data.features.config import check_positive_int, check_positive_number


def pool_frames(frames: np.ndarray, pool: int) -> np.ndarray:
    """Average every ``pool`` consecutive frames.

    Args:
        frames: ``[T, F]``.
        pool: group size (>= 1). The last group may be shorter; it is averaged over its real
            frames (no zero padding enters the mean).

    Returns:
        ``[ceil(T / pool), F]`` with the dtype of ``frames`` (float64 for integer input).
    """
    check_positive_int(pool, "pool")
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must be 2-D [T, F], got shape {frames.shape}")
    dtype = frames.dtype if np.issubdtype(frames.dtype, np.floating) else np.float64
    num_frames = frames.shape[0]
    if num_frames == 0:
        return np.zeros((0, frames.shape[1]), dtype=dtype)
    starts = np.arange(0, num_frames, pool)
    sums = np.add.reduceat(frames.astype(np.float64), starts, axis=0)
    counts = np.minimum(pool, num_frames - starts)
    return (sums / counts[:, None]).astype(dtype)


def pool_by_time(frames: np.ndarray, hop_seconds: float, node_seconds: float) -> np.ndarray:
    """Average frames into nodes of ``node_seconds`` by their start time.

    Frame ``j`` starts at ``j * hop_seconds`` and belongs to node ``floor(j * hop / node)``
    (computed with a small tolerance, so 0.06 / 0.02 counts as 3). With 20 ms frames and 50 ms
    nodes, nodes get 3, 2, 3, 2, ... frames; with ``node_seconds == hop_seconds`` every frame is a
    node. The last node may hold fewer frames; it is averaged over the frames it has.

    Args:
        frames: ``[T, F]``.
        hop_seconds: time between two frames.
        node_seconds: length of one node; at least ``hop_seconds`` (else a node could hold no
            frame).

    Returns:
        ``[N, F]`` with ``N = floor((T - 1) * hop / node) + 1`` (0 for no frames), dtype of
        ``frames`` (float64 for integer input).
    """
    check_positive_number(hop_seconds, "hop_seconds")
    check_positive_number(node_seconds, "node_seconds")
    if node_seconds < hop_seconds * (1 - 1e-9):
        raise ValueError(
            f"features.node_seconds={node_seconds} is shorter than the frame hop {hop_seconds} s; "
            f"a node must hold at least one frame: use node_seconds >= {hop_seconds}"
        )
    frames = np.asarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"frames must be 2-D [T, F], got shape {frames.shape}")
    dtype = frames.dtype if np.issubdtype(frames.dtype, np.floating) else np.float64
    if frames.shape[0] == 0:
        return np.zeros((0, frames.shape[1]), dtype=dtype)
    node_of = np.floor(np.arange(frames.shape[0]) * hop_seconds / node_seconds + 1e-6)
    node_of = node_of.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, node_of[1:] != node_of[:-1]])
    sums = np.add.reduceat(frames.astype(np.float64), starts, axis=0)
    counts = np.diff(np.r_[starts, frames.shape[0]])
    return (sums / counts[:, None]).astype(dtype)


def frames_for_seconds(seconds: float, hop_seconds: float) -> int:
    """How many frames of hop ``hop_seconds`` start within the first ``seconds``."""
    return max(1, math.ceil(seconds / hop_seconds - 1e-6))
