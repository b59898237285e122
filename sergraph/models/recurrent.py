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
from torch_geometric.nn import DenseGATConv
from torch_geometric.utils import softmax, to_dense_adj, to_dense_batch

from sergraph.models import register
from sergraph.models.base import ACTIVATIONS
from sergraph.models.common import BiLSTMFront, ReadoutHead, check_choice


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
    ) -> None:
        super().__init__()
        self.front = BiGRUFront(in_channels, gru_hidden)
        self.score = nn.Sequential(
            nn.Linear(self.front.out_channels, attention_hidden),
            nn.Tanh(),
            nn.Linear(attention_hidden, 1, bias=False),
        )
        self.head = ReadoutHead(
            [self.front.out_channels], num_classes, "sum", classifier_hidden, dropout
        )

    def _encode(self, data) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.front(data.x, data.batch)
        alpha = softmax(self.score(h).squeeze(-1), data.batch, num_nodes=h.size(0))
        return h, alpha

    def attention(self, data) -> torch.Tensor:
        """Attention weight of every node ``[N]``; they sum to 1 over each graph."""
        return self._encode(data)[1]

    def forward(self, data):
        h, alpha = self._encode(data)
        return self.head([alpha.unsqueeze(-1) * h], data.batch, data.num_graphs)


GA_GRU_GRAPHS = ("full", "temporal")


@register("ga_gru")
class GAGRU(nn.Module):
    """GA-GRU: a BiGRU encodes the frames, graph attention layers relate them, readout, classifier.

    Re-implementation of Su, Chang, Lin & Lee, "Improving Speech Emotion Recognition Using Graph
    Attentive Bi-directional Gated Recurrent Unit Network", Interspeech 2020, the graph-based
    baseline of the paper's Table 1. What the paper states: frame-level LLDs go through a BiGRU,
    a graph is built over the BiGRU's per-frame outputs, graph attention is applied, and the
    result is classified; the attention is meant to find structure "beyond left-to-right". What
    is our choice: ``graph="full"`` joins every pair of frames of an utterance (the attention
    decides which matter), ``"temporal"`` uses the pipeline's k-neighbour edges instead; the
    layers are multi-head GAT layers (``DenseGATConv``, self-loops added, heads averaged), and
    the readout of every layer feeds the same classifier as the other models.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        gru_hidden: GRU cells per direction.
        graph: ``full`` (all frame pairs of an utterance) or ``temporal`` (the data's edges).
        hidden: width of every graph attention layer.
        num_layers: number of graph attention layers.
        heads: attention heads per layer (averaged).
        attn_dropout: dropout on the attention coefficients (training only).
        activation: after each layer; one of ``relu``, ``elu``, ``leaky_relu``, ``gelu``, ``tanh``,
            ``identity``.
        readout: ``sum``, ``mean`` or ``max`` over each graph's nodes, for every layer.
        classifier_hidden: hidden width of the classifier.
        dropout: dropout in the classifier.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``batch [N]`` and, for ``graph="temporal"``,
          ``edge_index [2, E]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        gru_hidden: int = 128,
        graph: str = "full",
        hidden: int = 128,
        num_layers: int = 5,
        heads: int = 4,
        attn_dropout: float = 0.0,
        activation: str = "elu",
        readout: str = "sum",
        classifier_hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_choice("graph", graph, GA_GRU_GRAPHS)
        check_choice("activation", activation, ACTIVATIONS)
        if num_layers < 1:
            raise ValueError(f"model.params.num_layers={num_layers} must be at least 1")
        if heads < 1:
            raise ValueError(f"model.params.heads={heads} must be at least 1")
        self.graph = graph
        self.front = BiGRUFront(in_channels, gru_hidden)
        channels = self.front.out_channels
        layer_channels = [channels]
        self.convs = nn.ModuleList()
        for _ in range(num_layers):
            self.convs.append(
                DenseGATConv(channels, hidden, heads, concat=False, dropout=attn_dropout)
            )
            channels = hidden
            layer_channels.append(hidden)
        self.activation = ACTIVATIONS[activation]()
        self.head = ReadoutHead(layer_channels, num_classes, readout, classifier_hidden, dropout)

    def adjacency(self, data, mask: torch.Tensor) -> torch.Tensor:
        """Dense adjacency ``[B, T, T]`` of each graph (no self-loops; the layers add them)."""
        if self.graph == "temporal":
            return to_dense_adj(data.edge_index, data.batch, max_num_nodes=mask.size(1))
        adj = (mask.unsqueeze(2) & mask.unsqueeze(1)).to(data.x.dtype)
        return adj * (1 - torch.eye(mask.size(1), device=adj.device, dtype=adj.dtype))

    def forward(self, data):
        h = self.front(data.x, data.batch)
        layers = [h]
        dense, mask = to_dense_batch(h, data.batch)
        adj = self.adjacency(data, mask)
        for conv in self.convs:
            dense = self.activation(conv(dense, adj, mask))
            layers.append(dense[mask])
        return self.head(layers, data.batch, data.num_graphs)
