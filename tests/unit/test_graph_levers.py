"""Levers of the graph-value study: ``optim.sampler=speaker_balanced``, ``graph.dilations`` and
``model.params.virtual_node``.

Reference values are hand-written (edge lists, a virtual-node forward computed by hand with set
weights) or independent (binomial bounds of the sampler's draws, PyG's message passing against
the banded fast path, a bundle's predictions against the run's predictions.csv).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from sergraph.config import ConfigError, compose, identity, validate
from sergraph.data.collate import band_mark, graph_loader
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import Fold
from sergraph.data.graphs import build_graph, check_dilations, dilated_edge_index
from sergraph.data.sampling import SpeakerBalancedSampler, speaker_weights
from sergraph.models import banded, build_model

# ---------------------------------------------------------------------------------------------
# speaker-balanced sampling

#: training speakers with very unequal utterance counts (a plain shuffle would draw "e" 12/24
#: of the time, the balanced sampler 1/5)
COUNTS = {"a": 1, "b": 2, "c": 3, "d": 6, "e": 12}


def unbalanced_table() -> tuple[pd.DataFrame, list[np.ndarray], Fold]:
    rows = []
    for speaker, count in {**COUNTS, "v": 3, "t": 3}.items():
        for take in range(count):
            rows.append((f"{speaker}_{take}", f"/a/{speaker}_{take}.wav", speaker, "x"))
    table = pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])
    rng = np.random.default_rng(0)
    features = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(len(table))]
    fold = Fold(0, tuple(COUNTS), ("v",), ("t",))
    return table, features, fold


def datamodule(sampler: str, seed: int = 0, batch_size: int = 4) -> FoldDataModule:
    table, features, fold = unbalanced_table()
    dm = FoldDataModule(
        table, features, fold, ["x"], k=2, max_nodes=5, batch_size=batch_size, seed=seed,
        sampler=sampler,
    )  # fmt: skip
    dm.setup()
    return dm


def epoch_utterances(dm: FoldDataModule, loader=None) -> list[str]:
    loader = loader if loader is not None else dm.train_dataloader()
    return [u for batch in loader for u in batch.utterance]


def test_speaker_weights_by_hand():
    weights = speaker_weights(["a", "b", "b", "c", "c", "c"])
    expected = [1 / 3, 1 / 6, 1 / 6, 1 / 9, 1 / 9, 1 / 9]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-15)


def test_balanced_sampler_draws_every_speaker_equally_often_and_uniformly_within():
    dm = datamodule("speaker_balanced")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, SpeakerBalancedSampler) and len(loader.sampler) == 24
    epochs = 400
    drawn = [u for _ in range(epochs) for u in epoch_utterances(dm, loader)]
    n = len(drawn)
    assert n == epochs * 24  # len(train) draws per epoch
    speakers = pd.Series([u.split("_")[0] for u in drawn])
    # per speaker: Binomial(n, 1/5); 5 standard deviations (a seeded draw: fixed, cannot flake)
    p = 1 / len(COUNTS)
    bound = 5 * math.sqrt(n * p * (1 - p))
    for speaker in COUNTS:
        assert abs((speakers == speaker).sum() - n * p) < bound, speaker
    # within a speaker: each of its n_s utterances with probability 1/n_s
    for speaker, count in COUNTS.items():
        own = pd.Series([u for u in drawn if u.startswith(f"{speaker}_")])
        q = 1 / count
        for take in range(count):
            hits = (own == f"{speaker}_{take}").sum()
            assert abs(hits - len(own) * q) < 5 * math.sqrt(len(own) * q * (1 - q)) + 1e-9
    # a plain shuffle would give speaker "e" half of every epoch: far outside the bound
    assert abs(n * 12 / 24 - n * p) > bound


def epochs(dm: FoldDataModule, count: int) -> list[list[str]]:
    """``count`` epochs of one training loader (as Lightning iterates it)."""
    loader = dm.train_dataloader()
    return [epoch_utterances(dm, loader) for _ in range(count)]


def test_balanced_sampler_same_seed_same_order_other_seed_other_order():
    one = epochs(datamodule("speaker_balanced", seed=3), 3)
    two = epochs(datamodule("speaker_balanced", seed=3), 3)
    other = epochs(datamodule("speaker_balanced", seed=4), 1)
    assert one == two and one[0] != one[1] != one[2]
    assert other[0] != one[0]


def test_balanced_sampler_resumes_exactly_from_the_saved_generator_state():
    dm = datamodule("speaker_balanced", seed=5)
    loader = dm.train_dataloader()
    first = epoch_utterances(dm, loader)
    state = dm.state_dict()  # what an end-of-epoch checkpoint saves
    expected = epoch_utterances(dm, loader)
    resumed = datamodule("speaker_balanced", seed=5)
    resumed.load_state_dict(state)
    assert epoch_utterances(resumed) == expected != first


def test_default_sampler_gives_the_batches_of_a_seeded_shuffle():
    # the shuffle path unchanged: a DataLoader over the split with shuffle=True and the seeded
    # generator (what the data module did before samplers existed)
    dm = datamodule("shuffle", seed=2)
    reference = torch.utils.data.DataLoader(
        range(24), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(2)
    )
    train = dm.datasets["train"]
    expected = [[train[i].utterance for i in batch.tolist()] for batch in reference]
    loader = dm.train_dataloader()
    got = [list(batch.utterance) for batch in loader]
    assert got == expected
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert len({u for batch in got for u in batch}) == 24  # a permutation, no repeats


def test_balanced_sampler_is_refused_under_ddp_and_bad_names_are_refused(monkeypatch):
    dm = datamodule("speaker_balanced")
    monkeypatch.setattr(dm, "_world", lambda: (2, 0))
    with pytest.raises(ValueError, match="speaker_balanced is single-process only.*2 processes"):
        dm.train_dataloader()
    dm.val_dataloader()  # evaluation unaffected
    for topology in (["trainer.devices=2"], ["trainer.num_nodes=2"]):
        with pytest.raises(ConfigError, match="speaker_balanced is single-process only"):
            validate(compose(["optim.sampler=speaker_balanced", *topology]))
    validate(compose(["optim.sampler=speaker_balanced", "trainer.devices=1"]))
    table, features, fold = unbalanced_table()
    with pytest.raises(ValueError, match="optim.sampler='balanced'.*speaker_balanced"):
        FoldDataModule(table, features, fold, ["x"], k=2, max_nodes=5, sampler="balanced")


# ---------------------------------------------------------------------------------------------
# dilated temporal edges


def test_dilated_edges_of_a_six_node_graph_by_hand():
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5)]
    both = sorted(pairs + [(b, a) for a, b in pairs])
    assert dilated_edge_index(6, [1, 3]).t().tolist() == [list(p) for p in both]
    assert dilated_edge_index(6, [3, 1]).t().tolist() == [list(p) for p in both]
    # offsets past the graph join nothing (true-length graphs shorter than an offset)
    assert dilated_edge_index(3, [1, 3]).t().tolist() == [[0, 1], [1, 0], [1, 2], [2, 1]]
    assert dilated_edge_index(1, [1]).shape == (2, 0)


def test_dilated_graphs_are_not_banded_and_take_pyg_message_passing():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    graph = build_graph(x, 4, 6, True, 0, "u", "s", dilations=[1, 3])
    assert not hasattr(graph, "band_k") or graph.band_k is None
    assert graph.edge_index.t().tolist() == dilated_edge_index(6, [1, 3]).t().tolist()
    batch = next(iter(graph_loader([graph, graph], batch_size=2)))
    assert band_mark(batch) is None
    model = build_model("lstm_gin", 3, 2, use_lstm=False, hidden=4, num_layers=1)
    assert not model.uses_fast_path(batch)


def test_default_edges_are_unchanged():
    x = np.zeros((10, 2), np.float32)
    old_edges = {  # the k=4 band, written out: i -- i+1, i -- i+2
        (i, j) for i in range(10) for j in range(10) if 0 < abs(i - j) <= 2
    }
    graph = build_graph(x, 4, 10, True, 0, "u", "s")
    assert graph.band_k == 4
    edges = graph.edge_index.t().tolist()
    assert edges == sorted(list(e) for e in old_edges)
    for n in (1, 2, 7, 120):
        for k in (2, 4, 8):
            band = build_graph(np.zeros((n, 2), np.float32), k, None, False, 0, "u", "s")
            same = dilated_edge_index(n, list(range(1, k // 2 + 1)))
            assert torch.equal(band.edge_index, same)


@pytest.mark.parametrize(
    ("dilations", "message"),
    [
        ([], "non-empty list of positive"),
        ([0, 1], "positive integers"),
        ([1, 1], "lists an offset twice"),
        ([1, 120], "smaller than graph.max_nodes=120"),
    ],
)
def test_bad_dilations_are_refused_naming_the_key(dilations, message):
    with pytest.raises(ValueError, match=message):
        check_dilations(dilations, 120)
    with pytest.raises(ConfigError, match="graph.dilations"):
        validate(compose(["graph.dilations=" + str(dilations).replace(" ", "")]))


def test_new_keys_at_their_defaults_keep_run_ids_and_change_them_when_set():
    base = identity(compose([]))
    assert identity(compose(["optim.sampler=shuffle", "graph.dilations=null"])) == base
    assert identity(compose(["optim.sampler=speaker_balanced"])) != base
    assert identity(compose(["graph.dilations=[1,2]"])) != base
    assert identity(compose(["model.params.virtual_node=false"])) == base
    assert identity(compose(["model.params.virtual_node=true"])) != base
    with pytest.raises(ConfigError, match=r"optim.sampler='uniform'.*speaker_balanced"):
        validate(compose(["optim.sampler=uniform"]))


# ---------------------------------------------------------------------------------------------
# virtual node


def two_graph_batch(lengths=(3, 2), features: int = 2, pad: bool = False):
    rng = np.random.default_rng(1)
    graphs = [
        build_graph(
            rng.normal(size=(n, features)), 2, max(lengths), pad, 0, f"u{i}", "s"
        )  # fmt: skip
        for i, n in enumerate(lengths)
    ]
    return next(iter(graph_loader(graphs, batch_size=len(graphs))))


def test_virtual_node_off_adds_nothing_to_any_family():
    for name in ("lstm_gin", "gcn", "gat", "sage_mean", "cheb", "ga_gru", "gps"):
        torch.manual_seed(0)
        plain = build_model(name, 3, 2, num_layers=2, hidden=4)
        torch.manual_seed(0)
        off = build_model(name, 3, 2, num_layers=2, hidden=4, virtual_node=False)
        on = build_model(name, 3, 2, num_layers=2, hidden=4, virtual_node=True)
        assert list(off.state_dict()) == list(plain.state_dict())
        for key, value in plain.state_dict().items():
            assert torch.equal(value, off.state_dict()[key])
        assert {k for k in on.state_dict() if k.startswith("vn_")} >= {
            "vn_embedding",
            "vn_mlps.0.0.weight",
        }


def test_virtual_node_one_layer_model_by_hand():
    # GCN without BatchNorm, identity activation, one layer, sum readout: every value by hand
    torch.manual_seed(0)
    model = build_model(
        "gcn", 2, 2, num_layers=1, hidden=2, batch_norm=False, activation="identity",
        readout="sum", virtual_node=True,
    )  # fmt: skip
    model = model.double().eval()
    assert len(model.vn_mlps) == 0  # the virtual node of a 1-layer model feeds layer 1 only
    vn0 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    conv = model.convs[0]
    with torch.no_grad():  # every weight of the graph layer set by hand
        model.vn_embedding.copy_(vn0)
        conv.lin.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    batch = two_graph_batch((3, 2))
    batch.x = batch.x.double()
    # h^(1) = GCN(x + vn0) (the same vn0 on both graphs); GCN on a line graph with self loops:
    # out_i = sum_{j in N(i) + i} (x_j W) / sqrt(d_i d_j) + b, d = degree + 1
    g = batch.x + vn0
    w = conv.lin.weight.detach().double()
    b = conv.bias.detach().double()
    xw = g @ w.t()
    edges = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2], 3: [3, 4], 4: [3, 4]}
    deg = {i: len(n) for i, n in edges.items()}
    h1 = torch.stack(
        [sum(xw[j] / math.sqrt(deg[i] * deg[j]) for j in nbrs) + b for i, nbrs in edges.items()]
    )
    head = model.head
    with torch.no_grad():
        out = model(batch)
        # readouts: h^(0) = x (without vn0) and h^(1), summed over each graph's nodes
        pooled = [
            torch.stack([batch.x[:3].sum(0), batch.x[3:].sum(0)]),
            torch.stack([h1[:3].sum(0), h1[3:].sum(0)]),
        ]
        expected = head.classify(pooled, None)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-12)
    # and the layer readout indeed saw vn0 inside the layer: without it the output differs
    with torch.no_grad():
        model.vn_embedding.zero_()
        assert not torch.allclose(model(batch), out)


def test_virtual_node_update_between_layers_by_hand():
    # two GCN layers; vn_1 = ReLU(LayerNorm(Linear(sum_pool(x + vn0) + vn0))) enters layer 2
    torch.manual_seed(0)
    model = build_model(
        "gcn", 2, 2, num_layers=2, hidden=3, batch_norm=False, activation="identity",
        virtual_node=True,
    ).double()  # fmt: skip
    model.eval()
    with torch.no_grad():
        model.vn_embedding.copy_(torch.tensor([0.25, -0.5]))
    batch = two_graph_batch((3, 2))
    batch.x = x = batch.x.double()
    vn0 = model.vn_embedding.detach()
    g0 = x + vn0
    sums = torch.stack([g0[:3].sum(0), g0[3:].sum(0)])
    linear, norm = model.vn_mlps[0][0], model.vn_mlps[0][1]
    z = (sums + vn0) @ linear.weight.detach().t() + linear.bias.detach()
    z = (z - z.mean(1, keepdim=True)) / torch.sqrt(z.var(1, unbiased=False, keepdim=True) + 1e-5)
    vn1 = torch.relu(z * norm.weight.detach() + norm.bias.detach())
    with torch.no_grad():
        h1 = model.convs[0](g0, batch.edge_index)
        h2 = model.convs[1](h1 + vn1[batch.batch], batch.edge_index)
        expected = model.head([x, h1, h2], batch.batch, 2, None)
        np.testing.assert_allclose(model(batch).numpy(), expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("name", ["lstm_gin", "gcn", "gat", "sage_mean"])
def test_virtual_node_fast_path_equals_pyg(name, pad):
    torch.manual_seed(0)
    model = build_model(name, 3, 3, num_layers=3, hidden=5, virtual_node=True).double()
    with torch.no_grad():
        model.vn_embedding.normal_()
    batch = two_graph_batch((7, 4, 6), features=3, pad=pad)
    batch.x = batch.x.double()
    assert model.uses_fast_path(batch)
    model.train()
    outputs, grads = [], []
    for enabled in (True, False):
        model.zero_grad()
        with banded.fast_path(enabled):
            out = model(batch)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-9, atol=1e-10)
    assert grads[0].keys() == grads[1].keys() and "vn_embedding" in grads[0]
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-8, atol=1e-9)


def test_virtual_node_on_a_family_without_fast_path_changes_its_output():
    # GPS (local GIN + attention) has no banded fast path: the PyG path carries the virtual node
    torch.manual_seed(0)
    model = build_model("gps", 3, 2, num_layers=2, hidden=4, heads=2, virtual_node=True).eval()
    batch = two_graph_batch((5, 3), features=3)
    assert not model.uses_fast_path(batch)
    with torch.no_grad():
        before = model(batch)
        model.vn_embedding.fill_(1.0)
        after = model(batch)
    assert before.shape == (2, 2) and not torch.allclose(before, after)
