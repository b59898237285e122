"""Training-only levers on the classifier's input: speaker-adversarial training and mixup.

Both act on the *embedding* of a model: the input of its emotion classifier (for the graph
models, ``model.head.classifier``: the pooled layers concatenated with the functionals vector
``u``). :func:`classifier_input` captures it during one forward (and may replace it), through a
forward pre-hook that exists only inside a training step, so validation, test, predict and
exported bundles run the model exactly as without these levers.

- ``optim.speaker_adversary = lambda > 0`` (domain-adversarial training, Ganin & Lempitsky
  2015): ``embedding -> GradientReversal(lambda) -> SpeakerHead -> logits over the fold's
  training speakers``; the loss adds the speaker cross-entropy to the emotion loss. The
  reversal is the identity forward and multiplies the gradient by ``-lambda`` backward, so the
  speaker head learns to recognise the speaker while the encoder learns to hide it.
- ``augment.mixup = alpha > 0`` (Zhang et al. 2018, on embeddings): per training batch
  ``lam ~ Beta(alpha, alpha)`` and a permutation ``perm`` of the batch; the classifier sees
  ``lam * z + (1 - lam) * z[perm]`` and the loss is
  ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm])``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged forward; backward, the gradient times ``-scale``."""
    return _ReverseGradient.apply(x, float(scale))


class GradientReversal(nn.Module):
    """The gradient reversal layer: identity forward, gradient multiplied by ``-scale`` backward.

    Args:
        scale: ``lambda >= 0`` (``optim.speaker_adversary``).

    Shapes:
        - input: any; output: the same.
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class SpeakerHead(nn.Module):
    """Gradient reversal, then ``Linear(embedding, hidden) - ReLU - Linear(hidden, speakers)``.

    Args:
        in_channels: width of the embedding (the emotion classifier's input).
        hidden: hidden width (the emotion classifier's, ``classifier_hidden``).
        num_speakers: the fold's training speakers.
        scale: ``lambda`` of the gradient reversal.

    Shapes:
        - input: ``[B, in_channels]``; output: speaker logits ``[B, num_speakers]``.
    """

    def __init__(self, in_channels: int, hidden: int, num_speakers: int, scale: float) -> None:
        super().__init__()
        self.reverse = GradientReversal(scale)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, num_speakers)
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.reverse(embedding))


def emotion_classifier(model: nn.Module, option: str) -> nn.Module:
    """The module whose input is ``model``'s embedding: ``model.head.classifier``.

    Raises ``ValueError`` naming ``option`` for a model without one (a plugin with its own head).
    """
    head = getattr(model, "head", None)
    classifier = getattr(head, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise ValueError(
            f"{option} needs the model's embedding, the input of model.head.classifier; "
            f"{type(model).__name__} has no such module (the sergraph models all have one, "
            "ReadoutHead). Set it to 0 for this model."
        )
    return classifier


def classifier_widths(classifier: nn.Module, option: str) -> tuple[int, int]:
    """``(embedding width, hidden width)``: the first ``nn.Linear`` of the classifier."""
    for module in classifier.modules():
        if isinstance(module, nn.Linear):
            return module.in_features, module.out_features
    raise ValueError(
        f"{option}: the model's classifier has no nn.Linear to read the embedding width from"
    )


@contextmanager
def classifier_input(classifier: nn.Module, mix=None):
    """Capture (and with ``mix``, replace) the input of ``classifier`` during the forwards run
    inside the ``with`` block. Yields a list that receives each original input tensor.

    ``mix``: a function of the embedding returning the tensor the classifier sees instead.
    """
    seen: list[torch.Tensor] = []

    def hook(module, args):
        embedding = args[0]
        seen.append(embedding)
        if mix is None:
            return None
        return (mix(embedding), *args[1:])

    handle = classifier.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def draw_mixup(alpha: float, batch_size: int) -> tuple[float, torch.Tensor]:
    """``(lam, perm)``: ``lam ~ Beta(alpha, alpha)`` and a permutation of the batch, both drawn
    on the CPU from torch's global generator (seeded per cell, saved in checkpoints), so the
    draws do not depend on the device."""
    concentration = torch.tensor(float(alpha), dtype=torch.float64)
    lam = float(torch.distributions.Beta(concentration, concentration).sample())
    return lam, torch.randperm(batch_size)


def mix(embedding: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """``lam * z + (1 - lam) * z[perm]``."""
    return lam * embedding + (1.0 - lam) * embedding[perm.to(embedding.device)]


def speaker_targets(speakers, index: dict[str, int]) -> torch.Tensor:
    """Class indices of a training batch's speakers; a speaker outside ``index`` (not one of
    the fold's training speakers) is an error."""
    try:
        return torch.tensor([index[str(s)] for s in speakers], dtype=torch.long)
    except KeyError as error:
        raise RuntimeError(
            f"speaker {error.args[0]!r} of a training batch is not one of the fold's training "
            f"speakers {sorted(index)}; the speaker head is trained on those only. Please report this"
        ) from None
