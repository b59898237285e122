"""The optimisers ``optim.optimizer`` builds: multi-tensor (``foreach``) updates, equal bit for bit
to torch's one-parameter-at-a-time loop for every model a user can name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from sergraph.data.collate import mark_band
from sergraph.data.graphs import build_graph
from sergraph.optim import OPTIMIZERS, build_optimizer
from tests.models import build_named, neural_names

STEPS = 4


def training_batch(pad: bool) -> Batch:
    rng = np.random.default_rng(0)
    lengths = [12, 5, 9, 12, 3, 7]
    items = [
        build_graph(rng.normal(size=(n, 6)), 4, 12, pad, i % 3, f"u{i}", f"s{i % 2}")
        for i, n in enumerate(lengths)
    ]
    return mark_band(Batch.from_data_list(items), items)


def parameters_after_steps(name: str, optimizer: str, batch: Batch, loop: bool) -> list:
    """The parameters of model ``name`` after ``STEPS`` training steps with ``build_optimizer``
    (``loop=False``) or with torch's own per-parameter loop (``foreach=False``)."""
    torch.manual_seed(0)
    model = build_named(name, 6, 3)
    model.train()
    opt = build_optimizer(optimizer, model.parameters(), lr=1e-2, weight_decay=1e-2)
    if loop:
        for group in opt.param_groups:
            group["foreach"] = False
    for _ in range(STEPS):
        torch.manual_seed(1)  # the same dropout draws on both sides
        opt.zero_grad()
        F.cross_entropy(model(batch), batch.y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_the_optimisers_update_all_parameters_at_once(optimizer):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(optimizer, model.parameters(), lr=1e-3, weight_decay=0.0)
    assert all(group["foreach"] is True for group in opt.param_groups)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", neural_names())
def test_multi_tensor_updates_equal_the_per_parameter_loop_bit_for_bit(name, optimizer):
    batch = training_batch(pad=True)
    fast = parameters_after_steps(name, optimizer, batch, loop=False)
    loop = parameters_after_steps(name, optimizer, batch, loop=True)
    start = [p.detach() for p in (torch.manual_seed(0), build_named(name, 6, 3))[1].parameters()]
    # the steps moved the parameters (a test of the comparison, not of a no-op)
    assert any(not torch.equal(a, b) for a, b in zip(fast, start, strict=True))
    for index, (a, b) in enumerate(zip(fast, loop, strict=True)):
        assert torch.equal(a, b), f"{name}, {optimizer}: parameter {index} differs"
