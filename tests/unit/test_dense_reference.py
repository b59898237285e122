"""The shipped dense reference (``benchmarks/dense_reference.py``) computes LSTM-GIN's function.

``bench_train_step.py`` prints the project's step as a ratio to the reference's; the ratio
compares like with like only if both compute the same logits from the same weights. Here the
reference gets the weights of a built ``lstm_gin``/``gin`` model and both run on the same padded
batch (the model on its fast path, as in training; and on PyG message passing): logits, loss
gradients of the weights, in training and eval mode. float64, so the tolerance speaks about the
function, not about summation order.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sergraph.data.collate import CollatedGraphs
from sergraph.data.graphs import build_graph
from sergraph.models import banded, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from dense_reference import DenseLSTMGIN, band_adjacency  # noqa: E402

FEATURES, CLASSES, LENGTH = 7, 4, 12


def padded_batch(count: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    graphs = [
        build_graph(
            rng.normal(size=(int(n), FEATURES)).astype(np.float32),
            k,
            LENGTH,
            True,
            i % CLASSES,
            f"u{i}",
            f"s{i}",
        )
        for i, n in enumerate(rng.integers(3, LENGTH + 1, count))
    ]
    batch = CollatedGraphs(graphs).batch(range(count))
    batch.x = batch.x.double()
    return batch


def test_band_adjacency_is_the_graphs_edges():
    batch = padded_batch(1, 6)
    dense = torch.zeros(LENGTH, LENGTH)
    dense[batch.edge_index[1], batch.edge_index[0]] = 1.0
    assert torch.equal(band_adjacency(LENGTH, 6), dense)


@pytest.mark.parametrize("use_lstm", [True, False], ids=["lstm_gin", "gin"])
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pyg"])
def test_same_logits_and_gradients(use_lstm, k, training, fast):
    torch.manual_seed(0)
    model = build_model("lstm_gin", FEATURES, CLASSES, use_lstm=use_lstm, lstm_hidden=5, hidden=6)
    model = model.double()
    with torch.no_grad():  # eps != 0 and non-trivial BatchNorm statistics, so both are exercised
        for conv in model.convs:
            conv.eps.uniform_(-0.5, 0.5)
            conv.nn[1].running_mean.uniform_(-1, 1)
            conv.nn[1].running_var.uniform_(0.5, 2)
    model.train(training)
    batch = padded_batch(5, k)
    reference = DenseLSTMGIN.from_model(model, LENGTH, k)
    assert reference.training == training

    with banded.fast_path(fast):
        assert model.uses_fast_path(batch) == fast
        logits = model(batch)
    expected = reference(batch.x.reshape(batch.num_graphs, LENGTH, FEATURES))
    torch.testing.assert_close(expected, logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(expected, logits, rtol=1e-9, atol=1e-10)  # float64: much closer

    torch.nn.functional.cross_entropy(logits, batch.y).backward()
    torch.nn.functional.cross_entropy(expected, batch.y).backward()
    pairs = [(model.head.classifier[1].weight, reference.classifier[0].weight)]
    pairs += [(model.head.classifier[4].weight, reference.classifier[2].weight)]
    for conv, layer in zip(model.convs, reference.layers, strict=True):
        pairs += [(conv.eps, layer.eps), (conv.nn[0].weight, layer.lin1.weight)]
        pairs += [(conv.nn[1].weight, layer.norm.weight), (conv.nn[3].weight, layer.lin2.weight)]
    if use_lstm:
        pairs += [(model.front.lstm.weight_ih_l0, reference.lstm.weight_ih_l0)]
        pairs += [(model.front.lstm.weight_hh_l0_reverse, reference.lstm.weight_hh_l0_reverse)]
    for ours, theirs in pairs:
        torch.testing.assert_close(theirs.grad, ours.grad, rtol=1e-9, atol=1e-10)
