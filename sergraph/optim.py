"""Optimisers and learning-rate schedules by name: the one place that says which exist and how
each is built.

:data:`OPTIMIZERS` and :data:`SCHEDULES` map the names ``optim.optimizer`` and
``optim.schedule`` accept to their builders; configuration validation offers their keys as the
valid choices and the LightningModule builds from them. A new optimiser or schedule is a change
to this module only. torch is imported only when something is built, so reading the names stays
cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable


# foreach=True: the multi-tensor update (one kernel per operation over all parameters) on every
# device; torch chooses it by itself on CUDA only and loops over the parameters one by one on the
# CPU. The same values bit for bit as the loop (tests/unit/test_optim.py checks every family),
# and optimiser steps up to 1.4x faster on a CPU (benchmarks/bench_optimizer.py; docs/benchmarks.md).
def _adam(parameters: Iterable, lr: float, weight_decay: float):
    import torch

    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, foreach=True)


def _adamw(parameters: Iterable, lr: float, weight_decay: float):
    import torch

    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, foreach=True)


#: ``optim.sampler`` choices: ``shuffle`` (a permutation per epoch) or ``speaker_balanced``
#: (:class:`sergraph.data.sampling.SpeakerBalancedSampler`); named here, not in that torch
#: module, so that validating a configuration imports no torch.
SAMPLERS = ("shuffle", "speaker_balanced")

#: ``optim.optimizer`` -> ``builder(parameters, lr, weight_decay)``: ``adam`` (L2 weight decay,
#: the paper) or ``adamw`` (decoupled weight decay).
OPTIMIZERS: dict[str, Callable] = {"adam": _adam, "adamw": _adamw}


def _constant(progress: int, span: int | None) -> float:
    return 1.0


def _cosine(progress: int, span: int | None) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, span) / span))


#: ``optim.schedule`` -> the multiplier of the base learning rate ``progress`` epochs after the
#: warm-up, of ``span`` epochs in all after it (``None``: ``trainer.max_epochs`` unknown).
SCHEDULES: dict[str, Callable[[int, int | None], float]] = {
    "constant": _constant,
    "cosine": _cosine,
}
#: Schedules that end at ``trainer.max_epochs``, so need it to be after the warm-up.
_NEEDS_SPAN = {"cosine"}


def _check(key: str, name: str, table: dict) -> None:
    if name not in table:
        raise ValueError(f"{key}={name!r} is not valid; choose one of {sorted(table)}")


def build_optimizer(name: str, parameters: Iterable, lr: float, weight_decay: float):
    """The ``torch.optim`` optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``parameters``.

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    _check("optim.optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay)


def lr_factor(schedule: str, warmup: int, total: int | None) -> Callable[[int], float]:
    """The multiplier of the base learning rate at epoch ``e`` (0-based).

    Warm-up: ``(e + 1) / (warmup + 1)`` for ``e < warmup``. Then ``constant`` keeps 1 and
    ``cosine`` decays as ``0.5 * (1 + cos(pi * (e - warmup) / (total - warmup)))``, reaching 0 at
    epoch ``total``.

    Raises:
        ValueError: an unknown schedule (listing the valid ones), or one that ends at
            ``trainer.max_epochs`` (``total``) when that is not after the warm-up.
    """
    _check("optim.schedule", schedule, SCHEDULES)
    if schedule in _NEEDS_SPAN and (total is None or total <= warmup):
        raise ValueError(
            f"optim.schedule={schedule} needs trainer.max_epochs ({total}) > "
            f"optim.warmup_epochs ({warmup}); lower the warm-up or use optim.schedule=constant"
        )
    decay = SCHEDULES[schedule]
    span = None if total is None else total - warmup

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return decay(epoch - warmup, span)

    return factor
