"""Graph attention networks (Veličković et al., 2018): GAT from the paper's Table 1; LSTM-GAT is
its preset ``configs/model/lstm_gat.yaml`` (``use_lstm: true``)."""

from __future__ import annotations

from torch_geometric.nn import GATConv

from sergraph.models import banded
from sergraph.models.base import TemporalGNN
from sergraph.models.registry import register


@register("gat")
class GAT(TemporalGNN):
    """Multi-head graph attention layers (:class:`~torch_geometric.nn.GATConv`, self-loops added).

    Every layer keeps the width ``hidden``: with ``concat=False`` each of the ``heads`` heads has
    ``hidden`` channels and the heads are averaged; with ``concat=True`` each head has
    ``hidden / heads`` channels and the heads are concatenated.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        heads: attention heads per layer.
        concat: concatenate the heads (``hidden`` must be divisible by ``heads``) instead of
            averaging them.
        attn_dropout: dropout on the attention coefficients (training only).
        activation: after each layer; GAT's own choice is ``elu``.
        **kwargs: the other :class:`~sergraph.models.base.TemporalGNN` parameters.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        heads: int = 4,
        concat: bool = False,
        attn_dropout: float = 0.0,
        activation: str = "elu",
        **kwargs,
    ) -> None:
        if heads < 1:
            raise ValueError(f"model.params.heads={heads} must be at least 1")
        # read by make_conv during super().__init__
        self.heads, self.concat, self.attn_dropout = heads, concat, attn_dropout
        super().__init__(in_channels, num_classes, activation=activation, **kwargs)

    def make_conv(self, in_channels: int, out_channels: int) -> GATConv:
        if not self.concat:
            return GATConv(
                in_channels, out_channels, self.heads, concat=False, dropout=self.attn_dropout
            )
        if out_channels % self.heads:
            raise ValueError(
                f"model.params.hidden={out_channels} must be divisible by "
                f"model.params.heads={self.heads} when concat=true"
            )
        return GATConv(
            in_channels,
            out_channels // self.heads,
            self.heads,
            concat=True,
            dropout=self.attn_dropout,
        )

    def band_layer(self, conv):
        return banded.gat if banded.gat_supported(conv) else None
