"""Spectral graph convolutions: GCN (Kipf & Welling, 2017) and ChebNet (Defferrard et al., 2016).

The paper's "GCN (spectral)" baseline is ``gcn``: five first-order GCN layers on the raw node
features. ``cheb`` is a second spectral option with a K-th order Chebyshev filter.
"""

from __future__ import annotations

from torch_geometric.nn import ChebConv, GCNConv

from sergraph.models import banded
from sergraph.models.base import TemporalGNN
from sergraph.models.registry import register


@register("gcn")
class GCN(TemporalGNN):
    """Kipf & Welling's first-order spectral GCN layers (:class:`~torch_geometric.nn.GCNConv`).

    ``h^(l) = act(D^-1/2 (A + I) D^-1/2 h^(l-1) W^(l) + b^(l))`` with self-loops added and
    symmetric normalisation, recomputed for every batch (graphs differ in size).

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        **kwargs: the :class:`~sergraph.models.base.TemporalGNN` parameters (``use_lstm``,
            ``hidden``, ``num_layers``, ``activation``, ``batch_norm``, ``readout``, ...).

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def make_conv(self, in_channels: int, out_channels: int) -> GCNConv:
        return GCNConv(in_channels, out_channels)

    def band_layer(self, conv):
        return banded.gcn if banded.gcn_supported(conv) else None


@register("cheb")
class Cheb(TemporalGNN):
    """Chebyshev spectral graph convolutions (:class:`~torch_geometric.nn.ChebConv`).

    Each layer filters with ``sum_{k<K} T_k(L~) h W_k``, ``L~ = 2 L / lambda_max - I`` on the
    symmetric normalised Laplacian with ``lambda_max = 2``; ``K = 1`` is a per-node linear map
    and ``K`` hops of neighbourhood enter each layer.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        K: Chebyshev filter order (number of weight matrices per layer), at least 1.
        **kwargs: the :class:`~sergraph.models.base.TemporalGNN` parameters.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, K: int = 3, **kwargs) -> None:
        if K < 1:
            raise ValueError(f"model.params.K={K} must be at least 1 (Chebyshev filter order)")
        self.K = K  # read by make_conv during super().__init__
        super().__init__(in_channels, num_classes, **kwargs)

    def make_conv(self, in_channels: int, out_channels: int) -> ChebConv:
        return ChebConv(in_channels, out_channels, K=self.K, normalization="sym")

    def band_layer(self, conv):
        return banded.cheb if banded.cheb_supported(conv) else None
