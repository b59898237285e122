"""Parts shared by the encoders: the optional BiLSTM front end and the readout + classifier head."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.utils import softmax, to_dense_batch

READOUTS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}
READOUT_CHOICES = (*READOUTS, "attention")


def check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(
            f"model.params.{key}={value!r} is not valid; choose one of {sorted(choices)}"
        )


def recurrent_output(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A recurrent layer's output in the dtype of its input ``like``, before it meets any other
    tensor.

    Under CUDA autocast cuDNN's RNN returns half precision for float32 input, and autocast's
    cuDNN RNN wrapper has returned fp16 whatever the autocast dtype: under ``bf16-mixed`` an
    fp16 tensor in a bf16 region, which ``torch.cat`` refuses ("Unexpected floating ScalarType
    in at::autocast::prioritize"). In its input's dtype the output is autocast by the layers
    that follow like any other input; outside autocast this is the identity.
    """
    return out if out.dtype == like.dtype else out.to(like.dtype)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the same mask, drawn in about half the time on the CPU.

    torch's CPU dropout fills its mask with ``bernoulli_(1 - p)``, which draws one uniform
    double per element in a serial loop and keeps the element where it is below ``1 - p``.
    ``torch.rand(..., dtype=float64) < 1 - p`` draws the same doubles from the same generator in
    a faster loop, so the mask, the output, the gradient and the generator's state afterwards
    are those of ``nn.Dropout``, bit for bit (``tests/unit/test_models.py`` compares them; a
    torch whose kernels differ fails that test, and the mask is still a Bernoulli one).
    Elsewhere (CUDA, ``inplace``, a non-contiguous input, ``p`` of 0 or 1) it is
    ``nn.Dropout``. The classifier's two dropouts draw a quarter of the recommended recipe's
    training step's time with ``nn.Dropout`` (``benchmarks/bench_cell_step.py``).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or self.inplace
            or not 0.0 < self.p < 1.0
            or input.device.type != "cpu"
            or not input.is_contiguous()
            or not input.is_floating_point()
        ):
            return super().forward(input)
        keep = 1.0 - self.p
        draws = torch.rand(input.shape, dtype=torch.float64, device=input.device)
        return input * (draws < keep).to(input.dtype).div_(keep)


class BiLSTMFront(nn.Module):
    """A bidirectional LSTM run over each graph's nodes in time order.

    Graphs of different lengths are packed, so padding never enters the recurrence and the
    output of a graph does not depend on the other graphs in its batch.

    Args:
        in_channels: node feature size F.
        hidden: LSTM cells per direction (the paper: 128).

    Shapes:
        - input: node features ``[N, F]``, ``batch`` vector ``[N]`` (nodes of a graph contiguous
          and in time order, as PyG batches them).
        - output: ``[N, 2 * hidden]``.
    """

    def __init__(self, in_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_channels, hidden, batch_first=True, bidirectional=True)
        self.out_channels = 2 * hidden

    def forward(self, x: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        dense, mask = to_dense_batch(x, batch)
        lengths = mask.sum(dim=1)
        if bool((lengths == dense.size(1)).all()):
            out, _ = self.lstm(dense)
        else:
            packed = pack_padded_sequence(
                dense, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=dense.size(1))
        return recurrent_output(out[mask], x)

    def forward_band(self, x: torch.Tensor, band) -> torch.Tensor:
        """:meth:`forward` on a :class:`~sergraph.models.banded.Band`, whose sizes are known on
        the CPU: no read-back from the device (equal lengths: one unpacked call; otherwise the
        graphs are packed longest first, the order sorted on the CPU)."""
        if band.uniform:
            out, _ = self.lstm(x.reshape(band.num_graphs, band.max_length, -1))
            return recurrent_output(out.reshape(band.num_nodes, -1), x)
        dense = x.new_zeros(band.num_graphs, band.max_length, x.size(-1))
        dense[band.graph, band.position] = x
        # stable sorts give the same order on the CPU and on the device
        sorted_lengths, _ = torch.sort(band.cpu_lengths, descending=True, stable=True)
        order = torch.sort(band.lengths, descending=True, stable=True).indices
        packed = pack_padded_sequence(
            dense.index_select(0, order), sorted_lengths, batch_first=True, enforce_sorted=True
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=band.max_length)
        out = out.index_select(0, torch.argsort(order))
        return recurrent_output(out[band.graph, band.position], x)


class ReadoutHead(nn.Module):
    """Readout of every layer's node features, concatenated, then an MLP classifier.

    Args:
        layer_channels: feature size of each layer whose nodes are read out (input layer first).
        num_classes: number of emotion classes.
        readout: ``sum``, ``mean`` or ``max`` over the nodes of each graph, or ``attention``:
            ``sum_i softmax_i(w_l^T h_i + b_l) h_i`` with one gate ``(w_l, b_l)`` per layer
            (gated attention pooling, softmax over the nodes of one graph).
        hidden: width of the classifier's hidden layer.
        dropout: dropout before each classifier layer.
        global_channels: size ``D`` of an utterance vector ``u`` concatenated with the pooled
            layers before the classifier (openSMILE functionals); 0: none.

    Shapes:
        - input: list of ``[N, C_l]`` node features, ``batch`` ``[N]``, ``u`` ``[B, D]``.
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        layer_channels: list[int],
        num_classes: int,
        readout: str = "sum",
        hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
    ) -> None:
        super().__init__()
        check_choice("readout", readout, READOUT_CHOICES)
        self.pool = READOUTS.get(readout)
        self.gates = (
            nn.ModuleList(nn.Linear(c, 1) for c in layer_channels)
            if readout == "attention"
            else None
        )
        self.global_channels = int(global_channels)
        self.classifier = nn.Sequential(
            Dropout(dropout),
            nn.Linear(sum(layer_channels) + self.global_channels, hidden),
            nn.ReLU(),
            Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def classify(self, pooled: list[torch.Tensor], u: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the pooled layers ``[B, C_l]`` (and ``u [B, D]`` when built with it)."""
        if self.global_channels:
            if u is None or u.size(-1) != self.global_channels:
                got = None if u is None else list(u.shape)
                raise ValueError(
                    f"this model was built with global_channels={self.global_channels} and needs "
                    f"each batch's utterance vectors u [B, {self.global_channels}] "
                    f"(features.concat_functionals=true); got {got}"
                )
            pooled = [*pooled, u]
        return self.classifier(torch.cat(pooled, dim=-1))

    def forward(
        self,
        layers: list[torch.Tensor],
        batch: torch.Tensor,
        num_graphs: int,
        u: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.gates is None:
            pooled = [self.pool(h, batch, num_graphs) for h in layers]
        else:
            pooled = []
            for gate, h in zip(self.gates, layers, strict=True):
                alpha = softmax(gate(h), batch, num_nodes=h.size(0))
                pooled.append(global_add_pool(alpha * h, batch, num_graphs))
        return self.classify(pooled, u)
