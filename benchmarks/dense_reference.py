"""The dense reference step: LSTM-GIN's function written as plain dense PyTorch on ``[B, T, C]``.

What the project's LSTM-GIN (``sergraph.models.gin.LSTMGIN``) computes on a batch of padded
temporal graphs (every graph ``T`` nodes, node ``t`` joined to ``t-k/2 .. t+k/2``), with no
graph library, no batch object and no fast-path bookkeeping:

- a BiLSTM over ``x [B, T, F]`` (``batch_first``), or the raw features for plain GIN;
- ``num_layers`` GIN-style layers ``h <- MLP((1 + eps) h + A h)`` where ``A [T, T]`` is the
  band's dense 0/1 adjacency (no self loops) applied by one batched matrix product, and ``MLP``
  is Linear-BatchNorm-ReLU-Linear-ReLU (BatchNorm over all ``B * T`` nodes);
- the sum over ``T`` of the LSTM output and of every layer's output, concatenated, then the
  classifier Linear-ReLU-Linear.

``DenseLSTMGIN.from_model(model)`` copies the weights of a built ``lstm_gin``/``gin`` model, so
the two compute the same function (``tests/unit/test_dense_reference.py``) and
``bench_train_step.py`` compares like with like: the project's step against this one, same
shapes, same weights, same optimizer (Adam).
"""

from __future__ import annotations

import torch
from torch import nn


def band_adjacency(length: int, k: int, dtype=torch.float32) -> torch.Tensor:
    """``[T, T]`` 0/1 matrix: ``A[i, j] = 1`` when ``0 < |i - j| <= k // 2``."""
    index = torch.arange(length)
    distance = (index.view(-1, 1) - index.view(1, -1)).abs()
    return ((distance > 0) & (distance <= k // 2)).to(dtype)


class DenseGINLayer(nn.Module):
    """``MLP((1 + eps) h + A h)`` on ``[B, T, C]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.eps = nn.Parameter(torch.zeros(1))
        self.lin1 = nn.Linear(in_channels, out_channels)
        self.norm = nn.BatchNorm1d(out_channels)
        self.lin2 = nn.Linear(out_channels, out_channels)

    def forward(self, h: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        z = torch.matmul(adjacency, h) + (1 + self.eps) * h
        z = self.lin1(z).reshape(batch * length, -1)
        z = torch.relu(self.norm(z)).reshape(batch, length, -1)
        return torch.relu(self.lin2(z))


class DenseLSTMGIN(nn.Module):
    """LSTM-GIN on padded ``[B, T, F]`` input (module docstring); returns logits ``[B, classes]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        length: int,
        k: int = 4,
        lstm_hidden: int = 128,
        use_lstm: bool = True,
        hidden: int = 128,
        num_layers: int = 5,
        classifier_hidden: int = 128,
    ) -> None:
        super().__init__()
        self.lstm = (
            nn.LSTM(in_channels, lstm_hidden, batch_first=True, bidirectional=True)
            if use_lstm
            else None
        )
        channels = 2 * lstm_hidden if use_lstm else in_channels
        widths = [channels]
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            self.layers.append(DenseGINLayer(channels, hidden))
            channels = hidden
            widths.append(hidden)
        self.classifier = nn.Sequential(
            nn.Linear(sum(widths), classifier_hidden),
            nn.ReLU(),
            nn.Linear(classifier_hidden, num_classes),
        )
        self.register_buffer("adjacency", band_adjacency(length, k), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lstm(x)[0] if self.lstm is not None else x
        pooled = [h.sum(dim=1)]
        adjacency = self.adjacency.to(h.dtype)
        for layer in self.layers:
            h = layer(h, adjacency)
            pooled.append(h.sum(dim=1))
        return self.classifier(torch.cat(pooled, dim=-1))

    @classmethod
    def from_model(cls, model: nn.Module, length: int, k: int) -> DenseLSTMGIN:
        """A reference with the weights (and dtype, device, train/eval mode) of a built
        ``lstm_gin``/``gin`` model (BatchNorm running statistics included)."""
        front = model.front
        first = model.convs[0].nn[0] if len(model.convs) else None
        in_channels = front.lstm.input_size if front is not None else first.in_features
        classifier = [m for m in model.head.classifier if isinstance(m, nn.Linear)]
        reference = cls(
            in_channels,
            classifier[-1].out_features,
            length,
            k,
            lstm_hidden=front.lstm.hidden_size if front is not None else 128,
            use_lstm=front is not None,
            hidden=first.out_features if first is not None else 128,
            num_layers=len(model.convs),
            classifier_hidden=classifier[0].out_features,
        )
        like = next(model.parameters())
        reference = reference.to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            if front is not None:
                reference.lstm.load_state_dict(front.lstm.state_dict())
            for layer, conv in zip(reference.layers, model.convs, strict=True):
                lin1, norm, _, lin2, _ = conv.nn
                layer.eps.copy_(conv.eps.reshape(1))
                layer.lin1.load_state_dict(lin1.state_dict())
                layer.norm.load_state_dict(norm.state_dict())
                layer.lin2.load_state_dict(lin2.state_dict())
            reference.classifier[0].load_state_dict(classifier[0].state_dict())
            reference.classifier[2].load_state_dict(classifier[1].state_dict())
        return reference.train(model.training)
