"""LSTM-GIN (Liu & Wang, Interspeech 2021); plain GIN is its preset ``configs/model/gin.yaml``
(``use_lstm: false``)."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GINConv, global_add_pool

from sergraph.models import banded
from sergraph.models.base import TemporalGNN
from sergraph.models.common import BiLSTMFront, ReadoutHead
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

    def _sequence_route(self, data, band: banded.Band) -> bool:
        """Whether :meth:`_forward_band` may take the sequence route: a uniform band, the sum
        readout, the modules as this class builds them, no virtual node, no tracing, and one
        dtype throughout (no autocast, where the layers' dtypes would mix)."""
        if not band.uniform or self.virtual_node or torch.jit.is_tracing():
            return False
        head = self.head
        if type(head) is not ReadoutHead or head.pool is not global_add_pool or head.gates:
            return False
        x = data.x
        if torch.is_autocast_enabled(x.device.type) or x.dtype != head.classifier[1].weight.dtype:
            return False
        if self.front is not None and type(self.front) is not BiLSTMFront:
            return False
        if type(self.activation) is not nn.Identity:
            return False
        return all(
            type(norm) is nn.Identity and banded.gin_supported(conv) and _is_gin_mlp(conv.nn)
            for conv, norm in zip(self.convs, self.norms, strict=True)
        )

    def _forward_band(self, data, band: banded.Band):
        """The fast path on a uniform band (every graph ``T`` nodes), keeping the ``[B, T, C]``
        view of every layer: :func:`~sergraph.models.banded.gin_input` computes each layer's
        aggregation and the readout of its input in one node, the MLP's ReLUs run in place, and
        the last layer's readout gradient is broadcast. The same values as the general fast
        path bit for bit (float32 included: every sum is added in the same order), with fewer
        passes over the nodes; anything else takes the general fast path."""
        if not self._sequence_route(data, band):
            return super()._forward_band(data, band)
        # the BiLSTM's output copied into node order, as on the general fast path: a sum over
        # T of its own (time-major) layout is added in another order at some widths
        h = self.front.forward_band(data.x, band) if self.front is not None else data.x
        pooled = []
        for index, conv in enumerate(self.convs):
            z, readout = banded.gin_input(conv, h, band)
            pooled.append(readout)
            lin1, norm, _, lin2, _ = conv.nn
            # in place: BatchNorm's and the Linear's backward read their inputs, not outputs
            y = lin2(torch.relu_(norm(lin1(z))))
            if index < len(self.convs) - 1:
                h = torch.relu_(y)
            else:  # read out from [B, T, C]: its gradient reaches the ReLU by broadcasting
                h = torch.relu(band.sequence(y))
        pooled.append(band.pool(h, "sum"))
        return self.head.classify(pooled, getattr(data, "u", None))


def _is_gin_mlp(module: nn.Module) -> bool:
    """Whether ``module`` is :func:`gin_mlp`'s Linear-BatchNorm-ReLU-Linear-ReLU."""
    kinds = (nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.ReLU)
    return (
        type(module) is nn.Sequential
        and len(module) == len(kinds)
        and all(type(m) is kind for m, kind in zip(module, kinds, strict=True))
    )
