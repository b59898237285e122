"""The speaker-balanced training sampler (``optim.sampler=speaker_balanced``).

Each epoch draws ``len(train)`` utterances **with replacement** such that every training speaker
is equally likely: utterance ``i`` of speaker ``s`` has probability ``1 / (S * n_s)`` per draw,
where ``S`` is the number of training speakers and ``n_s`` the utterances of ``s``; so a draw
picks each speaker with probability ``1/S`` and, given the speaker, each of its utterances with
probability ``1/n_s``. The draws come from the generator the data module gives (its seeded
training generator, saved in checkpoints), so a seed fixes the order and a resumed run draws
what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def speaker_weights(speakers: Sequence[str]) -> torch.Tensor:
    """``[N]`` float64 probabilities ``1 / (S * n_s)`` of each utterance (they sum to 1)."""
    if len(speakers) == 0:
        raise ValueError("speaker_balanced sampling needs at least one training utterance")
    counts: dict[str, int] = {}
    for speaker in speakers:
        counts[speaker] = counts.get(speaker, 0) + 1
    total = len(counts)
    return torch.tensor([1.0 / (total * counts[s]) for s in speakers], dtype=torch.float64)


class SpeakerBalancedSampler(Sampler[int]):
    """``len(speakers)`` indices per epoch, drawn with replacement, speakers equally likely.

    Args:
        speakers: the speaker of each training utterance, in dataset order.
        generator: the random source of every draw (advanced by each epoch).
        num_samples: draws per epoch (default: ``len(speakers)``).
    """

    def __init__(
        self,
        speakers: Sequence[str],
        generator: torch.Generator,
        num_samples: int | None = None,
    ) -> None:
        self.weights = speaker_weights([str(s) for s in speakers])
        self.generator = generator
        self.num_samples = len(speakers) if num_samples is None else int(num_samples)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        drawn = torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=self.generator
        )
        return iter(drawn.tolist())
