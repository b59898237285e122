"""The banded fast path (sergraph.models.banded) equals PyG message passing, and is only taken
on batches that the collater marked as the pipeline's temporal band.

Equality is checked in float64, in training mode (BatchNorm on batch statistics) and in eval
mode, for outputs and for the gradients of every parameter and of the input features. LSTM-GIN's
route on padded batches (banded.gin_input) is also checked against the general fast path in
float32, bit for bit.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.utils import degree, to_dense_adj

from sergraph.config import resolve_model
from sergraph.data.collate import band_mark, mark_band, set_band_mark
from sergraph.data.graphs import build_graph
from sergraph.models import banded, build_model, model_parameters
from sergraph.models.base import TemporalGNN
from sergraph.models.sage import GraphSAGE
from tests.models import FAST_MODELS, build_named, neural_names

SMALL = {"hidden": 8, "lstm_hidden": 5, "gru_hidden": 5, "classifier_hidden": 7}
# padded: every graph has max_nodes nodes; true length: sizes 1 and 2 (fewer than k/2
# neighbours on a side) and sizes above k
LENGTHS = [12, 5, 1, 9, 2, 12]


def graphs(lengths, pad, k=4, features=6, max_nodes=12, seed=0):
    rng = np.random.default_rng(seed)
    return [
        build_graph(rng.normal(size=(n, features)), k, max_nodes, pad, i % 3, f"u{i}", f"s{i % 2}")
        for i, n in enumerate(lengths)
    ]


def batch_of(lengths, pad, k=4, **kwargs):
    """A float64 batch, marked as the collater marks it."""
    items = graphs(lengths, pad, k, **kwargs)
    batch = mark_band(Batch.from_data_list(items), items)
    assert band_mark(batch) is not None
    batch.x = batch.x.double()
    return batch


def small_model(name, **params):
    """A float64 model with small widths, the same initialisation every time."""
    family, params = resolve_model(name, params)  # a family or a preset (gin, lstm_gat, ...)
    widths = {key: value for key, value in SMALL.items() if key in model_parameters(family)}
    torch.manual_seed(0)
    return build_model(family, 6, 3, **{**widths, **params}).double()


def output_and_gradients(model, batch, fast: bool):
    """Logits, input-feature gradient and every parameter gradient of one backward pass."""
    model.zero_grad()
    x = batch.x.clone().requires_grad_(True)
    data = batch.clone()
    data.x = x
    with banded.fast_path(fast):
        assert model.uses_fast_path(data) is fast
        logits = model(data)
    # a loss that weights every logit differently, so no gradient cancels by symmetry
    weights = torch.linspace(-1.0, 2.0, logits.numel(), dtype=logits.dtype).view_as(logits)
    (logits * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), x.grad.clone(), grads


def assert_paths_equal(model, batch, rtol=1e-9, atol=1e-10):
    fast_out, fast_dx, fast_grads = output_and_gradients(model, batch, True)
    pyg_out, pyg_dx, pyg_grads = output_and_gradients(model, batch, False)
    torch.testing.assert_close(fast_out, pyg_out, rtol=rtol, atol=atol)
    torch.testing.assert_close(fast_dx, pyg_dx, rtol=rtol, atol=atol)
    assert fast_grads.keys() == pyg_grads.keys()
    assert len(fast_grads) == sum(1 for p in model.parameters() if p.requires_grad)
    for name in pyg_grads:
        torch.testing.assert_close(
            fast_grads[name], pyg_grads[name], rtol=rtol, atol=atol, msg=name
        )


def test_fast_path_models_are_the_expected_ones():
    batch = batch_of([12, 12], pad=True)
    have = []
    for name in neural_names():
        model = build_named(name, 6, 3)
        if isinstance(model, TemporalGNN) and model.uses_fast_path(batch):
            have.append(name)
    assert have == FAST_MODELS


@pytest.mark.parametrize("name", FAST_MODELS)
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_path_equals_pyg_output_and_gradients(name, pad, mode):
    model = small_model(name)
    model.train(mode == "train")
    assert_paths_equal(model, batch_of(LENGTHS, pad))


@pytest.mark.parametrize("k", [2, 6])
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("name", ["lstm_gin", "gcn", "sage_mean", "gat", "cheb", "sage_lstm"])
def test_fast_path_equals_pyg_for_other_neighbour_counts(name, pad, k):
    assert_paths_equal(small_model(name), batch_of(LENGTHS, pad, k=k))


@pytest.mark.parametrize(
    "name,params",
    [
        ("gat", {"concat": True, "heads": 2}),
        ("gat", {"heads": 1}),
        ("cheb", {"K": 1}),
        ("cheb", {"K": 2}),
        ("lstm_gin", {"readout": "mean"}),
        ("lstm_gin", {"readout": "max", "train_eps": False}),
        ("gcn", {"readout": "max", "batch_norm": False, "activation": "tanh"}),
        ("sage_mean", {"readout": "mean", "num_layers": 1}),
    ],
)
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
def test_fast_path_equals_pyg_for_model_options(name, params, pad):
    assert_paths_equal(small_model(name, **params), batch_of(LENGTHS, pad))


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bigru_attention_front_equals_pyg(pad, mode):
    """bigru_attn is no TemporalGNN, but its BiGRU reads the batch layout from the mark too."""
    model = small_model("bigru_attn")
    model.train(mode == "train")
    assert_paths_equal(model, batch_of(LENGTHS, pad))


@pytest.mark.parametrize(
    "name,params",
    [
        ("lstm_gin", {}),
        ("gin", {}),
        ("lstm_gin", {"num_layers": 1, "k": 6}),
        ("lstm_gin", {"num_layers": 0}),
        ("lstm_gin", {"global_channels": 3}),
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lstm_gin_sequence_route_is_the_general_fast_path_bit_for_bit(name, params, mode):
    """On a uniform band LSTM-GIN keeps each layer's [B, T, C] view (banded.gin_input, the
    BiLSTM's own output layout, in-place ReLUs): in float32 its logits and the gradients of
    every parameter and of the input equal those of the general fast path exactly."""
    params = dict(params)
    k = params.pop("k", 4)
    model = small_model(name, **params).float().train(mode == "train")
    with torch.no_grad():  # eps != 0, so the scaled node term is exercised
        for conv in model.convs:
            conv.eps.uniform_(-0.5, 0.5)
    batch = batch_of(LENGTHS, True, k=k)
    batch.x = batch.x.float()
    if params.get("global_channels"):
        batch.u = torch.randn(batch.num_graphs, params["global_channels"])
    band = banded.detect(batch)
    assert model._sequence_route(batch, band)
    true_length = batch_of(LENGTHS, False)
    assert not model._sequence_route(true_length, banded.detect(true_length))

    def run(forward):
        model.zero_grad()
        data = batch.clone()
        data.x = batch.x.clone().requires_grad_(True)
        logits = forward(data)
        weights = torch.linspace(-1.0, 2.0, logits.numel()).view_as(logits)
        (logits * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), data.x.grad, grads

    route = run(model)
    general = run(lambda data: TemporalGNN._forward_band(model, data, banded.detect(data)))
    assert torch.equal(route[0], general[0])
    assert torch.equal(route[1], general[1])
    assert route[2].keys() == general[2].keys()
    assert len(route[2]) == sum(1 for p in model.parameters())
    for key, grad in general[2].items():
        assert torch.equal(route[2][key], grad), key


@pytest.mark.parametrize(
    "params", [{"readout": "mean"}, {"readout": "attention"}, {"virtual_node": True}]
)
def test_lstm_gin_options_outside_the_sequence_route_take_the_general_fast_path(params):
    model = small_model("lstm_gin", **params)
    batch = batch_of(LENGTHS, True)
    assert model.uses_fast_path(batch)
    assert not model._sequence_route(batch, banded.detect(batch))
    batch.x = batch.x.float()  # features in another dtype than the model's
    assert not small_model("lstm_gin")._sequence_route(batch, banded.detect(batch))


def test_fast_path_equals_pyg_in_float32_at_paper_size():
    torch.manual_seed(0)
    model = build_model("lstm_gin", 76, 4)
    batch = mark_band(Batch.from_data_list(graphs([120] * 8, True, features=76, max_nodes=120)))
    with banded.fast_path(True):
        fast = model(batch)
    with banded.fast_path(False):
        pyg = model(batch)
    torch.testing.assert_close(fast, pyg, rtol=1e-4, atol=1e-4)


def test_gat_attention_dropout_is_applied_on_the_fast_path():
    model = small_model("gat", attn_dropout=0.5).train()
    batch = batch_of([12, 12], pad=True)
    with banded.fast_path(True), torch.no_grad():
        torch.manual_seed(1)
        first = model(batch)
        torch.manual_seed(2)
        second = model(batch)
        model.eval()
        assert torch.equal(model(batch), model(batch))
    assert not torch.allclose(first, second)


# --- the band itself, against an independent route (a dense adjacency from edge_index) -----


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
def test_band_sum_degree_and_edges_match_the_adjacency(k, pad):
    batch = batch_of(LENGTHS, pad, k=k)
    band = banded.detect(batch)
    assert band is not None and band.uniform is pad and band.k == k
    adjacency = to_dense_adj(batch.edge_index, max_num_nodes=batch.num_nodes)[0].double()
    h = torch.randn(batch.num_nodes, 3, dtype=torch.float64)
    torch.testing.assert_close(band.sum(h), adjacency @ h)
    torch.testing.assert_close(
        band.degree(torch.float64).squeeze(-1),
        degree(batch.edge_index[1], batch.num_nodes, dtype=torch.float64),
    )
    assert torch.equal(band.edge_index(), batch.edge_index)
    assert banded.band_edge_count(band.lengths, k) == batch.edge_index.size(1)
    # the band sum is its own adjoint: its gradient is the band sum of the output gradient
    h.requires_grad_(True)
    g = torch.randn_like(h)
    band.sum(h).backward(g)
    torch.testing.assert_close(h.grad, adjacency.T @ g)


@pytest.mark.parametrize("graphs_per_chunk", [1, 4, 6, 1000])
def test_chunked_band_sum_and_gin_input_match_the_adjacency(monkeypatch, graphs_per_chunk):
    """On the CPU a uniform band is summed a few graphs at a time; whatever the chunk size,
    Band.sum is A h, and gin_input gives (1 + eps) h + A h, the sum readout of h and their
    gradients (the dense adjacency's route through autograd, float64)."""
    batch = batch_of(LENGTHS, True)  # 6 graphs of 12 nodes
    band = banded.detect(batch)
    channels = 3
    monkeypatch.setattr(banded, "CHUNK_BYTES", graphs_per_chunk * 12 * channels * 8)
    h = torch.randn(batch.num_nodes, channels, dtype=torch.float64, requires_grad=True)
    parts = band.chunks(h.detach().view(6, 12, channels))
    assert [part.start for part in parts] == list(range(0, 6, graphs_per_chunk))
    assert [part.stop for part in parts] == [min(p.start + graphs_per_chunk, 6) for p in parts]
    adjacency = to_dense_adj(batch.edge_index, max_num_nodes=batch.num_nodes)[0].double()
    torch.testing.assert_close(band.sum(h), adjacency @ h)

    conv = SimpleNamespace(eps=torch.tensor([-0.3], dtype=torch.float64, requires_grad=True))
    z, pooled = banded.gin_input(conv, h, band)
    grad_z, grad_pooled = torch.randn_like(z), torch.randn_like(pooled)
    torch.autograd.backward([z, pooled], [grad_z, grad_pooled])
    h2 = h.detach().clone().requires_grad_(True)
    eps2 = conv.eps.detach().clone().requires_grad_(True)
    expected_z = adjacency @ h2 + (1 + eps2) * h2
    expected_pooled = h2.view(6, 12, channels).sum(dim=1)
    torch.autograd.backward([expected_z, expected_pooled], [grad_z, grad_pooled])
    torch.testing.assert_close(z, expected_z)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(conv.eps.grad, eps2.grad)


def test_band_pool_matches_pyg_readouts():
    from torch_geometric.nn import global_add_pool, global_mean_pool

    for pad in (True, False):
        batch = batch_of(LENGTHS, pad)
        band = banded.detect(batch)
        for name, pool in (("sum", global_add_pool), ("mean", global_mean_pool)):
            torch.testing.assert_close(band.pool(batch.x, name), pool(batch.x, batch.batch))


# --- automatic selection and the fallback ----------------------------------------------------


def with_edges(batch, edge_index):
    batch = batch.clone()
    batch.edge_index = edge_index
    return batch


def not_banded_batches():
    """Batches that carry ``band_k`` but whose edges are not (exactly) the band; unmarked."""
    base = batch_of([12, 12, 12], pad=True)
    set_band_mark(base, None)
    edges = base.edge_index
    swapped = edges.clone()
    swapped[1, 0] = (swapped[1, 0] + 5) % base.num_nodes  # same count, one edge moved
    reversed_order = edges[:, torch.arange(edges.size(1) - 1, -1, -1)]
    cross = edges.clone()
    cross[1, 1] = 12  # graph 0 joined to graph 1
    other_k = base.clone()
    other_k.band_k = torch.tensor([4, 6, 4])
    unmarked = base.clone()
    del unmarked.band_k
    no_ptr = base.clone()
    del no_ptr.ptr
    k_marker_wrong = batch_of([12, 12, 12], pad=True, k=2)
    set_band_mark(k_marker_wrong, None)
    return {
        "no_edges": with_edges(base, edges[:, :0]),
        "one_edge_moved": with_edges(base, swapped),
        "edge_order": with_edges(base, reversed_order),
        "edge_between_graphs": with_edges(base, cross),
        "one_edge_missing": with_edges(base, edges[:, 1:]),
        "self_loops_added": with_edges(
            base, torch.cat([edges, torch.arange(base.num_nodes).repeat(2, 1)], dim=1)
        ),
        "marker_disagrees": other_k,
        "no_marker": unmarked,
        "no_ptr": no_ptr,
        "k_marker_wrong": with_edges(k_marker_wrong, edges),
    }


@pytest.mark.parametrize("case", sorted(not_banded_batches()))
def test_non_band_edges_are_not_marked_and_fall_back_to_message_passing(case):
    batch = not_banded_batches()[case]
    batch.x = batch.x.double()
    # the collater's decision (on the CPU) and the model's re-check from the edges agree
    assert band_mark(mark_band(batch)) is None
    assert banded.verify(batch) is None
    assert banded.detect(batch) is None
    model = small_model("lstm_gin").eval()
    assert not model.uses_fast_path(batch)
    with torch.no_grad():
        auto = model(batch)
        with banded.fast_path(False):
            pyg = model(batch)
    assert torch.equal(auto, pyg)


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
def test_marking_agrees_with_the_check_from_the_edges(pad):
    items = graphs(LENGTHS, pad)
    batch = Batch.from_data_list(items)
    for marked in (mark_band(batch.clone()), mark_band(batch.clone(), items)):
        mark, band = band_mark(marked), banded.verify(marked)
        assert mark is not None and band is not None
        assert (mark.k, mark.uniform, mark.max_length) == (4, pad, 12)
        assert (mark.num_nodes, mark.num_edges) == (marked.num_nodes, marked.edge_index.size(1))
        assert mark.lengths.tolist() == band.lengths.tolist()


def test_a_marked_batch_whose_edges_changed():
    batch = batch_of([12, 12, 12], pad=True)
    model = small_model("gin")
    # a count that disagrees with the mark: PyG's path, without reading the edges
    assert not model.uses_fast_path(with_edges(batch, batch.edge_index[:, 1:]))
    # the same count: the mark is trusted, unless SERGRAPH_FAST_PATH=check compares the edges
    swapped = batch.edge_index.clone()
    swapped[1, 0] = (swapped[1, 0] + 5) % batch.num_nodes
    edited = with_edges(batch, swapped)
    assert model.uses_fast_path(edited)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(banded.FAST_PATH_ENV, "check")
        assert model.uses_fast_path(batch)
        with pytest.raises(RuntimeError, match="set_band_mark"):
            model(edited)
    set_band_mark(edited, None)
    assert not model.uses_fast_path(edited)


class MaxSAGE(GraphSAGE):
    def make_conv(self, in_channels: int, out_channels: int):
        from torch_geometric.nn import SAGEConv

        return SAGEConv(in_channels, out_channels, aggr="max")


def test_models_without_a_fast_path_use_message_passing():
    batch = batch_of([12, 12], pad=True)
    assert not MaxSAGE(6, 3).uses_fast_path(batch)
    assert not build_named("gin", 6, 3).uses_fast_path(Batch.from_data_list(graphs([12], True)))


def test_switches_force_message_passing(monkeypatch):
    batch = batch_of([12, 12], pad=True)
    model = small_model("gin")
    assert model.uses_fast_path(batch)
    model.fast_path = False
    assert not model.uses_fast_path(batch)
    model.fast_path = True
    monkeypatch.setenv(banded.FAST_PATH_ENV, "off")
    assert not model.uses_fast_path(batch)
    with banded.fast_path(True):  # the context manager wins over the environment
        assert model.uses_fast_path(batch)
    monkeypatch.setenv(banded.FAST_PATH_ENV, "auto")
    assert model.uses_fast_path(batch)
    monkeypatch.setenv(banded.FAST_PATH_ENV, "sometimes")
    with pytest.raises(ValueError, match="SERGRAPH_FAST_PATH='sometimes'"):
        model(batch)
