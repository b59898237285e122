"""From pooled frame features to PyG graphs: normalisation, temporal edges, ``Data`` objects.

Every utterance becomes one graph whose nodes are pooled openSMILE frames in time order. An
undirected edge joins each node to its ``k`` nearest temporal neighbours, ``k/2`` on each side
(``k=2`` is the line graph), as in LSTM-GIN. With ``graph.dilations`` (a list of offsets ``d``)
node ``i`` is joined to ``i - d`` and ``i + d`` for every listed ``d`` instead (multi-scale /
dilated temporal edges; ``k`` is then not used for edges), see :func:`dilated_edge_index`.

Normalisation statistics are fitted on training-fold utterances only, over their real frames
(padding is added *after* normalisation and never enters the statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where a graph is built: light verbs never import torch or PyG
    import torch
    from torch_geometric.data import Data

NORMALIZE_CHOICES = ("train", "speaker", "none")


def check_k(k: int, max_nodes: int | None = None) -> None:
    """Validate the neighbour count: even, positive and smaller than the node count."""
    if k < 2 or k % 2:
        raise ValueError(f"graph.k={k} must be an even number >= 2 (k/2 neighbours on each side)")
    if max_nodes is not None and k >= max_nodes:
        raise ValueError(f"graph.k={k} must be smaller than graph.max_nodes={max_nodes}")


def check_dilations(dilations, max_nodes: int | None = None) -> None:
    """Validate ``graph.dilations``: ``None``, or a non-empty list of unique positive ints,
    each smaller than ``max_nodes``."""
    if dilations is None:
        return
    values = list(dilations)
    if not values or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values):
        raise ValueError(
            f"graph.dilations={values} must be null or a non-empty list of positive integers "
            "(node i is joined to i-d and i+d for each d), e.g. [1, 2, 4, 8]"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"graph.dilations={values} lists an offset twice; list each once")
    if max_nodes is not None and max(values) >= max_nodes:
        raise ValueError(
            f"graph.dilations={values}: every offset must be smaller than "
            f"graph.max_nodes={max_nodes} (an offset >= the node count joins nothing)"
        )


def _offset_edges(num_nodes: int, offsets) -> torch.Tensor:
    """Both directions of ``(i, i + o)`` for every offset, sorted by (source, target)."""
    import torch

    src, dst = [], []
    nodes = torch.arange(num_nodes)
    for offset in offsets:
        if offset >= num_nodes:
            continue
        a, b = nodes[:-offset], nodes[offset:]
        src += [a, b]
        dst += [b, a]
    if not src:
        return torch.empty(2, 0, dtype=torch.long)
    edge_index = torch.stack([torch.cat(src), torch.cat(dst)])
    # Sort by (source, target) so the layout matches PyG's coalesced order.
    order = torch.argsort(edge_index[0] * num_nodes + edge_index[1])
    return edge_index[:, order].contiguous()


@lru_cache(maxsize=1024)
def _edge_index_cached(num_nodes: int, k: int) -> torch.Tensor:
    return _offset_edges(num_nodes, range(1, k // 2 + 1))


@lru_cache(maxsize=1024)
def _dilated_cached(num_nodes: int, dilations: tuple[int, ...]) -> torch.Tensor:
    return _offset_edges(num_nodes, sorted(dilations))


def dilated_edge_index(num_nodes: int, dilations) -> torch.Tensor:
    """Undirected edges joining node ``i`` to ``i - d`` and ``i + d`` for every ``d`` in
    ``dilations`` (within the graph; no self loops, no duplicates).

    Returns:
        ``LongTensor [2, E]`` holding both directions of each edge, sorted by source then target
        (PyG's coalesced order). ``dilations=[1, 2, ..., k/2]`` gives :func:`temporal_edge_index`.
    """
    check_dilations(dilations)
    return _dilated_cached(int(num_nodes), tuple(int(d) for d in dilations)).clone()


def temporal_edge_index(num_nodes: int, k: int) -> torch.Tensor:
    """Undirected edges joining each node to neighbours at most ``k/2`` steps away.

    Args:
        num_nodes: nodes in the graph (time steps).
        k: neighbours per interior node (even).

    Returns:
        ``LongTensor [2, E]`` holding both directions of each edge, sorted by source then target.
    """
    check_k(k)
    return _edge_index_cached(int(num_nodes), int(k)).clone()


@dataclass
class Normalizer:
    """Per-feature z-scoring with statistics from a fixed set of utterances.

    Attributes:
        mean: ``[F]`` feature means over all real frames of the fitted utterances.
        std: ``[F]`` standard deviations (1 where a feature is constant).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: list[np.ndarray]) -> Normalizer:
        if not features:
            raise ValueError("cannot fit normalisation statistics on zero utterances")
        frames = np.concatenate([np.asarray(f, dtype=np.float64) for f in features], axis=0)
        mean = frames.mean(axis=0)
        std = frames.std(axis=0)
        std[std < 1e-8] = 1.0
        return cls(mean.astype(np.float32), std.astype(np.float32))

    @classmethod
    def identity(cls, num_features: int) -> Normalizer:
        return cls(np.zeros(num_features, np.float32), np.ones(num_features, np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def fit_length(x: np.ndarray, max_nodes: int) -> tuple[np.ndarray, int]:
    """Cut or zero-pad ``[T, F]`` to ``[max_nodes, F]``; also return the real node count."""
    n_valid = min(len(x), max_nodes)
    out = np.zeros((max_nodes, x.shape[1]), dtype=np.float32)
    out[:n_valid] = x[:n_valid]
    return out, n_valid


def build_graph(
    x: np.ndarray,
    k: int,
    max_nodes: int | None,
    pad: bool,
    y: int,
    utterance: str,
    speaker: str,
    dilations=None,
) -> Data:
    """One utterance graph.

    Args:
        x: normalised node features ``[T, F]`` (pooled frames in time order).
        k: temporal neighbours per node.
        max_nodes: cut longer sequences to this many nodes (``None``: never cut when not padding).
        pad: zero-pad shorter sequences to ``max_nodes`` (the paper's fixed 120-node graphs);
            with ``False`` each graph keeps its true length and has no padding nodes.
        y: class index.
        utterance, speaker: provenance carried by the ``Data`` object.
        dilations: ``None`` (the ``k`` band) or offsets ``d``: edges ``i -- i +- d`` instead
            (:func:`dilated_edge_index`; ``k`` is then unused). Such graphs carry no ``band_k``,
            so the models use PyG's message passing on them.

    Returns:
        ``Data(x [N, F], edge_index [2, E], y [1], n_valid [1], band_k, utterance, speaker)``.
        ``band_k`` (the int ``k``) marks the edges as this module's temporal band, which lets
        the models take their fast path (:mod:`sergraph.models.banded`, which still checks the
        edges before using it).
    """
    if len(x) == 0:
        raise ValueError(f"utterance {utterance!r} has no frames; cannot build a graph")
    if pad:
        if max_nodes is None:
            raise ValueError("graph.pad=true needs graph.max_nodes")
        nodes, n_valid = fit_length(x, max_nodes)
    else:
        nodes = np.asarray(x[:max_nodes] if max_nodes else x, dtype=np.float32)
        n_valid = len(nodes)
    if dilations is None:
        edge_index, band = temporal_edge_index(len(nodes), k), {"band_k": int(k)}
    else:  # not the k band: no band mark, so the models use message passing
        edge_index, band = dilated_edge_index(len(nodes), dilations), {}
    import torch
    from torch_geometric.data import Data

    return Data(
        x=torch.from_numpy(np.ascontiguousarray(nodes)),
        edge_index=edge_index,
        y=torch.tensor([y], dtype=torch.long),
        n_valid=torch.tensor([n_valid], dtype=torch.long),
        **band,
        utterance=utterance,
        speaker=speaker,
    )
