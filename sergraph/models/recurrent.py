"""Recurrent baselines: BiGRU + attention pooling (Table 2) and GA-GRU (Table 1).

Both are re-implementations from the published descriptions; neither paper released code, so
sizes not stated there follow LSTM-GIN (128 cells per direction, 128-wide classifier). Both read
every node of a graph in time order, including the zero padding nodes that ``graph.pad=true``
adds (those are part of the graph as the pipeline builds it); graphs of different lengths in a
batch are packed, so a graph's output does not depend on its batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.utils import softmax

from sergraph.models import banded
from sergraph.models.common import BiLSTMFront, ReadoutHead
from sergraph.models.gat import GAT
from sergraph.models.registry import register


class BiGRUFront(BiLSTMFront):
    """:class:`~sergraph.models.common.BiLSTMFront` with GRU cells (same packing per graph).

    The GRU replaces the LSTM under the attribute name ``lstm`` so that the parent's
    ``forward`` runs it.

    Args:
        in_channels: node feature size F.
        hidden: GRU cells per direction.

    Shapes:
        - input: node features ``[N, F]``, ``batch`` ``[N]``.
        - output: ``[N, 2 * hidden]``.
    """

    def __init__(self, in_channels: int, hidden: int = 128) -> None:
        super().__init__(in_channels, hidden)
        self.lstm = nn.GRU(in_channels, hidden, batch_first=True, bidirectional=True)


@register("bigru_attn")
class BiGRUAttention(nn.Module):
    """Bidirectional GRU over each utterance's nodes, attention pooling, classifier.

    Re-implementation of the "BiGRU + attention" baseline of the paper's Table 2: a graph is
    read as a sequence and its edges are ignored. The attention weights are
    ``alpha_t = softmax_t(v^T tanh(W h_t + b))`` over the nodes of one graph, and the utterance
    vector ``sum_t alpha_t h_t`` is a sum readout of the weighted nodes, fed to the same
    classifier as every other model.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        gru_hidden: GRU cells per direction.
        attention_hidden: width of the attention scorer's hidden layer (``W``).
        classifier_hidden: hidden width of the classifier.
        dropout: dropout in the classifier.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]`` and ``batch [N]`` (``edge_index`` unused).
        - output: logits ``[B, num_classes]``; :meth:`attention` gives ``alpha [N]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        gru_hidden: int = 128,
        attention_hidden: int = 128,
        classifier_hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
    ) -> None:
        super().__init__()
        self.front = BiGRUFront(in_channels, gru_hidden)
        self.score = nn.Sequential(
            nn.Linear(self.front.out_channels, attention_hidden),
            nn.Tanh(),
            nn.Linear(attention_hidden, 1, bias=False),
        )
        self.head = ReadoutHead(
            [self.front.out_channels],
            num_classes,
            "sum",
            classifier_hidden,
            dropout,
            global_channels,
        )

    #: Set to ``False`` on an instance to always use the PyG route (see
    #: :mod:`sergraph.models.banded`); the fast route reads the GRU's batch layout from the
    #: collater's mark instead of from the device.
    fast_path: bool = True

    #: The batch attributes :meth:`forward` reads on the model's device (see
    #: :attr:`~sergraph.models.base.TemporalGNN.batch_keys`): the edges are ignored.
    batch_keys: frozenset[str] = frozenset({"x", "batch", "u"})
    #: The same on the fast path (the GRU's layout from the mark and ``ptr``).
    band_batch_keys: frozenset[str] = frozenset({"x", "ptr", "batch", "u"})

    def band_of(self, data) -> banded.Band | None:
        """The band of ``data`` when this forward takes the fast path, else ``None``."""
        if not self.fast_path or not banded.fast_path_enabled():
            return None
        return banded.detect(data)

    def uses_fast_path(self, data) -> bool:
        """Whether a forward on ``data`` takes the fast path (from shapes and the mark)."""
        if not self.fast_path or not banded.fast_path_enabled():
            return False
        return banded.marked(data) is not None

    def _encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        band = self.band_of(data)
        if band is not None:
            h = self.front.forward_band(data.x, band)
        else:
            h = self.front(data.x, data.batch)
        alpha = softmax(self.score(h).squeeze(-1), data.batch, num_nodes=h.size(0))
        return h, alpha

    def attention(self, data) -> torch.Tensor:
        """Attention weight of every node ``[N]``; they sum to 1 over each graph."""
        return self._encode(data)[1]

    def forward(self, data):
        h, alpha = self._encode(data)
        return self.head(
            [alpha.unsqueeze(-1) * h], data.batch, data.num_graphs, getattr(data, "u", None)
        )


@register("ga_gru")
class GAGRU(GAT):
    """GA-GRU: a BiGRU encodes the frames, graph attention layers relate them, readout, classifier.

    Re-implementation of Su, Chang, Lin & Lee, "Improving Speech Emotion Recognition Using Graph
    Attentive Bi-directional Gated Recurrent Unit Network", Interspeech 2020, the graph-based
    baseline of the paper's Table 1. What that paper states: frame-level LLDs go through a
    BiGRU, a graph is built over the BiGRU's per-frame outputs, graph attention is applied, and
    the result is classified. What is our choice: the graph is the pipeline's frame graph (each
    node joined to its ``graph.k`` temporal neighbours), the attention layers are the ``gat``
    model's (multi-head GAT, heads averaged, BatchNorm and ELU after each), and the readout of
    every layer feeds the same classifier as the other models. It is therefore ``lstm_gat``
    with GRU cells. A complete graph over the frames was not chosen: with GAT's attention,
    ``LeakyReLU(a_src . W h_j + a_dst . W h_i)`` mostly stays on one side of the LeakyReLU, so
    on a complete graph every node gets nearly the same attention distribution and the same
    output, and stacked layers add nothing.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        gru_hidden: GRU cells per direction.
        hidden: width of every graph attention layer.
        num_layers: number of graph attention layers.
        heads: attention heads per layer (averaged).
        attn_dropout: dropout on the attention coefficients (training only).
        activation: after each layer; one of ``relu``, ``elu``, ``leaky_relu``, ``gelu``,
            ``tanh``, ``identity``.
        batch_norm: BatchNorm over the nodes after each layer.
        readout: ``sum``, ``mean`` or ``max`` over each graph's nodes, for every layer.
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
        gru_hidden: int = 128,
        hidden: int = 128,
        num_layers: int = 5,
        heads: int = 4,
        attn_dropout: float = 0.0,
        activation: str = "elu",
        batch_norm: bool = True,
        readout: str = "sum",
        classifier_hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
        virtual_node: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            num_classes,
            heads=heads,
            concat=False,
            attn_dropout=attn_dropout,
            activation=activation,
            use_lstm=True,  # the front end is always on; make_front makes it a GRU
            lstm_hidden=gru_hidden,
            hidden=hidden,
            num_layers=num_layers,
            batch_norm=batch_norm,
            readout=readout,
            classifier_hidden=classifier_hidden,
            dropout=dropout,
            global_channels=global_channels,
            virtual_node=virtual_node,
        )

    def make_front(self, in_channels: int, hidden: int) -> BiGRUFront:
        return BiGRUFront(in_channels, hidden)
