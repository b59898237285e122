"""GPS graph transformer layers (Rampasek et al., NeurIPS 2022) over the temporal graph.

Each layer is PyG's :class:`~torch_geometric.nn.GPSConv`: a local message-passing layer (here a
GIN over the temporal edges) and multi-head self-attention over all nodes of the same graph
(one utterance), added, each with a residual connection and BatchNorm, then an MLP. The
attention reaches every node of the utterance in one layer, where the temporal edges reach
``k`` neighbours per side.
"""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import GINConv, GPSConv

from sergraph.models.base import TemporalGNN
from sergraph.models.gin import gin_mlp
from sergraph.models.registry import register


class GPSLayer(nn.Module):
    """An optional input projection (GPSConv keeps its width), then one GPSConv.

    Args:
        in_channels: input width; a ``Linear(in_channels, channels)`` projects it first when it
            differs from ``channels``.
        channels: width of the layer.
        heads: attention heads (``channels`` must be divisible by it).
        attn_dropout: dropout on the attention weights.
        train_eps: learn the local GIN's ``eps``.

    Shapes:
        - input: ``h [N, in_channels]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: ``[N, channels]``.
    """

    def __init__(
        self, in_channels: int, channels: int, heads: int, attn_dropout: float, train_eps: bool
    ) -> None:
        super().__init__()
        self.project = nn.Linear(in_channels, channels) if in_channels != channels else None
        local = GINConv(gin_mlp(channels, channels), train_eps=train_eps)
        self.conv = GPSConv(
            channels,
            local,
            heads=heads,
            attn_type="multihead",
            attn_kwargs={"dropout": attn_dropout},
        )

    def forward(self, h, edge_index, batch):
        if self.project is not None:
            h = self.project(h)
        return self.conv(h, edge_index, batch)


@register("gps")
class GPS(TemporalGNN):
    """GPS layers (local GIN + attention within each utterance), per-layer readout, classifier.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        heads: attention heads per layer (``hidden`` must be divisible by it).
        attn_dropout: dropout on the attention weights.
        train_eps: learn ``eps`` of each layer's local GIN.
        use_lstm: run the BiLSTM front end before the layers.
        lstm_hidden: LSTM cells per direction.
        hidden: width of every layer.
        num_layers: number of GPS layers.
        readout: ``sum``, ``mean``, ``max`` or ``attention``.
        classifier_hidden: hidden width of the classifier.
        dropout: dropout in the classifier.
        global_channels: size of the utterance vector ``u`` (``features.concat_functionals``).
        virtual_node: a virtual global node per graph (:mod:`sergraph.models.base`).

    GPSConv normalises (BatchNorm) and activates inside, so the base adds neither after a layer.
    There is no banded fast path: every batch uses message passing and dense attention.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        heads: int = 4,
        attn_dropout: float = 0.0,
        train_eps: bool = True,
        use_lstm: bool = False,
        lstm_hidden: int = 128,
        hidden: int = 128,
        num_layers: int = 5,
        readout: str = "sum",
        classifier_hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
        virtual_node: bool = False,
    ) -> None:
        if heads < 1 or hidden % heads:
            raise ValueError(
                f"model.params.heads={heads} must be at least 1 and divide "
                f"model.params.hidden={hidden}"
            )
        # read by make_conv during super().__init__
        self.heads, self.attn_dropout, self.train_eps = heads, attn_dropout, train_eps
        super().__init__(
            in_channels,
            num_classes,
            use_lstm=use_lstm,
            lstm_hidden=lstm_hidden,
            hidden=hidden,
            num_layers=num_layers,
            activation="identity",
            batch_norm=False,
            readout=readout,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            global_channels=global_channels,
            virtual_node=virtual_node,
        )

    def make_conv(self, in_channels: int, out_channels: int) -> GPSLayer:
        return GPSLayer(in_channels, out_channels, self.heads, self.attn_dropout, self.train_eps)

    def conv_forward(self, conv: nn.Module, h, edge_index, batch):
        return conv(h, edge_index, batch)
