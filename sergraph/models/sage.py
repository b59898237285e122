"""GraphSAGE (Hamilton et al., 2017) with the mean and the LSTM aggregator, with and without the
BiLSTM front end (the paper's Table 1: "GraphSAGE, mean aggregator" and "LSTM aggregator"): one
family, registered as ``sage_mean`` (its default aggregator); ``sage_lstm``, ``lstm_sage_mean``
and ``lstm_sage_lstm`` are its presets in ``configs/model/`` (``aggr``, ``use_lstm``).

The LSTM aggregator reads each node's neighbours as a sequence. Hamilton et al. feed a random
permutation; here the neighbours come in time order (earliest first), which is the natural order
of a temporal graph and makes the model deterministic. PyG's own ``LSTMAggregation`` needs
``edge_index`` sorted by target and runs its LSTM over zero padding up to the largest degree in
the batch, so a node with fewer neighbours (the first and last frames) reads zeros after its
real neighbours. :class:`PackedLSTMAggregation` sorts the messages itself and packs the
sequences, so every node's result depends on its own neighbours only.

On the pipeline's banded temporal graphs (:mod:`sergraph.models.banded`) the neighbours of node
``t`` are ``t - k/2 .. t + k/2`` without ``t``, cut at the graph's ends, so their sequences are
gathered with index arithmetic (:func:`sage_lstm_band`); the LSTM runs over ``k`` steps for every
node and each node's aggregate is read at its own last neighbour. An LSTM is causal, so that is
the state after the node's true number of neighbours, as packing gives: the same function,
without the sort, the scatter and the read-backs of packing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch_geometric.nn import SAGEConv
from torch_geometric.nn.aggr import Aggregation
from torch_geometric.utils import to_dense_batch

from sergraph.models import banded
from sergraph.models.base import TemporalGNN
from sergraph.models.common import check_choice, recurrent_output
from sergraph.models.registry import register


class PackedLSTMAggregation(Aggregation):
    """LSTM aggregation over each target node's messages, in edge order, without padding.

    Messages are grouped by target with a stable sort, so each node reads its neighbours in the
    order their edges appear (the pipeline's edges are sorted by source: time order). The
    aggregate is the LSTM's last hidden state after the node's true number of neighbours; a node
    without neighbours gets zeros.

    Args:
        in_channels: message size.
        out_channels: LSTM hidden size (the aggregate's size).

    Shapes:
        - input: messages ``[E, in_channels]``, target ``index [E]``, ``dim_size`` nodes.
        - output: ``[dim_size, out_channels]``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lstm = nn.LSTM(in_channels, out_channels, batch_first=True)

    def reset_parameters(self) -> None:
        self.lstm.reset_parameters()

    def forward(self, x, index=None, ptr=None, dim_size=None, dim=-2, **kwargs):
        self.assert_index_present(index)
        self.assert_two_dimensional_input(x, dim)
        order = torch.sort(index, stable=True).indices
        dense, mask = to_dense_batch(x[order], index[order], batch_size=dim_size)
        lengths = mask.sum(dim=1)
        has_neighbours = lengths > 0
        if not bool(has_neighbours.any()):
            return x.new_zeros(dense.size(0), self.out_channels)
        packed = pack_padded_sequence(
            dense[has_neighbours],
            lengths[has_neighbours].cpu(),
            batch_first=True,
            enforce_sorted=False,
        )
        _, (last_hidden, _) = self.lstm(packed)
        out = x.new_zeros(dense.size(0), self.out_channels)
        out[has_neighbours] = recurrent_output(last_hidden[-1], x)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"


def sage_lstm_band(conv: SAGEConv, h: torch.Tensor, band: banded.Band) -> torch.Tensor:
    """``conv(h, edge_index)`` for a :class:`SAGEConv` with :class:`PackedLSTMAggregation` on
    a band: each node reads ``t - before .. t - 1, t + 1 .. t + after`` (time order), where
    ``before``/``after`` are its neighbours on each side, zero-padded to ``k`` steps."""
    aggregation = conv.aggr_module
    k, r = band.k, band.radius
    before = band.position.clamp(max=r)
    count = band.degree(torch.long).squeeze(-1)  # before + after
    step = torch.arange(k, device=h.device)
    # step j reads the neighbour at offset j - before (j < before) or j - before + 1, that is
    # window slot offset + r of the node's window t - r .. t + r; steps past count read nothing
    slot = step[None, :] - before[:, None] + (step[None, :] >= before[:, None]).long() + r
    valid = step[None, :] < count[:, None]
    slots = torch.arange(2 * r + 1, device=h.device)
    selector = ((slot.unsqueeze(-1) == slots) & valid.unsqueeze(-1)).to(h.dtype)  # [N, k, W]
    windows = F.pad(h, (0, 0, r, r)).unfold(0, 2 * r + 1, 1)  # [N, C, W]: slot i = node n+i-r
    # a product with 0/1 weights: exact, and its backward is another product (no scatter)
    dense = torch.einsum("nkw,ncw->nkc", selector, windows)
    states = recurrent_output(aggregation.lstm(dense)[0], h)  # [N, k, C_out]
    # the state after the node's last neighbour (an LSTM is causal: the packed result);
    # nodes without neighbours get 0
    last = (step[None, :] == (count - 1)[:, None]).to(states.dtype)  # [N, k]
    aggregate = (states * last.unsqueeze(-1)).sum(dim=1)
    out = conv.lin_l(aggregate)
    if conv.root_weight:
        out = out + conv.lin_r(h)
    return out


def sage_lstm_supported(conv) -> bool:
    return (
        type(conv) is SAGEConv
        and type(conv.aggr_module) is PackedLSTMAggregation
        and not conv.project
        and not conv.normalize
        and conv.aggr_module.lstm.num_layers == 1
        and not conv.aggr_module.lstm.bidirectional
    )


AGGREGATORS = ("mean", "lstm")


@register("sage_mean")
class GraphSAGE(TemporalGNN):
    """GraphSAGE layers (:class:`~torch_geometric.nn.SAGEConv`) with the mean or LSTM aggregator.

    ``h_i^(l) = act(W_1 h_i^(l-1) + W_2 agg_{u in N(i)} h_u^(l-1))``. Registered as
    ``sage_mean``: the family's name since before ``aggr`` was a parameter, kept so that runs of
    ``model=sage_mean`` keep their config id.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        aggr: ``mean``, or ``lstm``: :class:`PackedLSTMAggregation` (neighbours in time order;
            the paper's slowest model).
        **kwargs: the :class:`~sergraph.models.base.TemporalGNN` parameters (``use_lstm``,
            ``hidden``, ``num_layers``, ``activation``, ``batch_norm``, ``readout``, ...).

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(self, in_channels: int, num_classes: int, aggr: str = "mean", **kwargs) -> None:
        check_choice("aggr", aggr, AGGREGATORS)
        self.aggr = aggr  # read by make_conv during super().__init__
        super().__init__(in_channels, num_classes, **kwargs)

    def make_conv(self, in_channels: int, out_channels: int) -> SAGEConv:
        if self.aggr == "lstm":
            # As PyG's aggr="lstm": an LSTM of the input width, then SAGE's linear map.
            aggregator = PackedLSTMAggregation(in_channels, in_channels)
            return SAGEConv(in_channels, out_channels, aggr=aggregator)
        return SAGEConv(in_channels, out_channels, aggr=self.aggr)

    def band_layer(self, conv):
        if banded.sage_mean_supported(conv):
            return banded.sage_mean
        return sage_lstm_band if sage_lstm_supported(conv) else None
