"""LSTM-GIN (Liu & Wang, Interspeech 2021); plain GIN is its preset ``configs/model/gin.yaml``
(``use_lstm: false``)."""

from __future__ import annotations

from torch import nn
from torch_geometric.nn import GINConv

from sergraph.models import banded
from sergraph.models.base import TemporalGNN
from sergraph.models.registry import register


def gin_mlp(in_channels: int, out_channels: int) -> nn.Sequential:
    """The per-layer MLP of GIN: Linear-BatchNorm-ReLU-Linear-ReLU."""
    return nn.Sequential(
        nn.Linear(in_channels, out_channels),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(),
        nn.Linear(out_channels, out_channels),
        nn.ReLU(),
    )


@register("lstm_gin")
class LSTMGIN(TemporalGNN):
    """BiLSTM node encoder, GIN layers over the temporal graph, per-layer readout, classifier.

    ``h_i^(l) = MLP^(l)((1 + eps^(l)) h_i^(l-1) + sum_{u in N(i)} h_u^(l-1))`` with learnable
    ``eps``; the readouts of ``h^(0)`` (the LSTM output) and of every GIN layer are concatenated.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        lstm_hidden: LSTM cells per direction (paper: 128).
        use_lstm: run the BiLSTM front end (``False`` gives plain GIN on the raw features).
        hidden: width of each GIN layer.
        num_layers: number of GIN layers (paper: 5).
        train_eps: learn ``eps`` (paper: yes) or keep it fixed at 0.
        readout: ``sum`` (paper's best), ``mean`` or ``max``.
        classifier_hidden: hidden width of the classifier.
        dropout: dropout in the classifier.
        virtual_node: a virtual global node per graph (:mod:`sergraph.models.base`).

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        lstm_hidden: int = 128,
        use_lstm: bool = True,
        hidden: int = 128,
        num_layers: int = 5,
        train_eps: bool = True,
        readout: str = "sum",
        classifier_hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
        virtual_node: bool = False,
    ) -> None:
        self.train_eps = train_eps  # read by make_conv during super().__init__
        # gin_mlp has its own BatchNorm and ends in a ReLU, so the base adds neither.
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

    def make_conv(self, in_channels: int, out_channels: int) -> GINConv:
        return GINConv(gin_mlp(in_channels, out_channels), train_eps=self.train_eps)

    def band_layer(self, conv):
        return banded.gin if banded.gin_supported(conv) else None
