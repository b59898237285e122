"""Input layers shared by every encoder (applied before the registered model sees the nodes)."""

from __future__ import annotations

import torch
from torch import nn


class LayerWeightedSum(nn.Module):
    """A learned, softmax-normalised weighted sum of stacked hidden layers (SUPERB style).

    Used with ``features.ssl.layer=all``: each node carries the hidden states of every layer of
    a self-supervised model side by side, and the weights choose the mix during training.

    Args:
        num_layers: how many layers are stacked (``L``).

    Shapes:
        - input: ``[N, L * H]`` (layer ``l`` in columns ``l * H ... (l + 1) * H - 1``).
        - output: ``[N, H]``.

    The weights start equal (every layer counts ``1 / L``), so the untrained layer is the
    average of all layers.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers} must be >= 1")
        self.num_layers = num_layers
        self.logits = nn.Parameter(torch.zeros(num_layers))

    @property
    def weights(self) -> torch.Tensor:
        """The current mix, ``[L]``, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.size(-1) % self.num_layers:
            raise ValueError(
                f"{x.size(-1)} features per node cannot be split into {self.num_layers} layers"
            )
        stacked = x.reshape(*x.shape[:-1], self.num_layers, x.size(-1) // self.num_layers)
        return torch.einsum("...lh,l->...h", stacked, self.weights.to(x.dtype))
