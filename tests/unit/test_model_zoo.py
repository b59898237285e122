"""The baselines of the paper's Tables 1-2: one hand-checkable property per model, and configs.

Shape, backward, one-step and batch-independence checks for every registered model live in
``test_models.py``; here each model is checked for what makes it that model.
"""

import hashlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import ChebConv, GATConv, GCNConv, GINConv, GraphConv, SAGEConv
from torch_geometric.nn.aggr import MeanAggregation
from torch_geometric.utils import scatter

from sergraph.config import compose, config_dir, model_family
from sergraph.data.graphs import build_graph
from sergraph.models import CLASSIC, MODELS, build_model, is_classic, model_parameters
from sergraph.models.base import TemporalGNN
from sergraph.models.recurrent import BiGRUFront
from sergraph.models.sage import PackedLSTMAggregation
from tests.models import build_named

MODEL_YAMLS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def batch_of(lengths, pad=False, features=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    max_nodes = max(lengths)
    return Batch.from_data_list(
        [
            build_graph(
                rng.normal(size=(n, features)).astype(np.float32),
                k,
                max_nodes,
                pad,
                i % 3,
                "u",
                "s",
            )
            for i, n in enumerate(lengths)
        ]
    )


def without_edges(batch):
    batch = batch.clone()
    batch.edge_index = batch.edge_index[:, :0]
    return batch


# --- configs ---------------------------------------------------------------------------------


# The presets: a family with other defaults, written out in the file (and nothing else changed).
PRESETS = {
    "gin": ("lstm_gin", {"use_lstm": False}),
    "lstm_gat": ("gat", {"use_lstm": True}),
    "lstm_sage_mean": ("sage_mean", {"use_lstm": True}),
    "lstm_sage_lstm": ("sage_mean", {"use_lstm": True, "aggr": "lstm"}),
    "sage_lstm": ("sage_mean", {"aggr": "lstm"}),
}


def test_every_family_has_a_config_file_and_every_file_a_family():
    files_of: dict[str, list[str]] = {}
    for name in MODEL_YAMLS:
        files_of.setdefault(model_family(compose([f"model={name}"])), []).append(name)
    assert sorted(files_of) == sorted([*MODELS, *CLASSIC])
    # each family has a file of its own name; the other files are the presets above
    assert all(family in names for family, names in files_of.items())
    presets = {name: family for family, names in files_of.items() for name in names}
    assert {name: family for name, family in presets.items() if name != family} == {
        name: family for name, (family, _) in PRESETS.items()
    }


@pytest.mark.parametrize("name", MODEL_YAMLS)
def test_model_config_composes_and_writes_out_the_defaults(name):
    cfg = compose([f"model={name}"])
    family, changed = PRESETS.get(name, (name, {}))
    assert cfg.model.name == name and model_family(cfg) == family
    assert cfg.model.family == (family if name in PRESETS else None)
    params = OmegaConf.to_container(cfg.model.params)
    if is_classic(family):  # a classic baseline's file lists every option with its default
        assert params == model_parameters(family)
        return
    defaults = model_parameters(family)
    assert {key: value for key, value in params.items() if defaults[key] != value} == changed
    if name not in ("gin", "lstm_gin"):  # the zoo's files list every parameter ...
        # ... but sage_mean's file predates its aggr parameter, and every file predates the
        # base's virtual_node (writing them would change the config id of their runs)
        later = {"virtual_node"} | ({"aggr"} if name == "sage_mean" else set())
        assert set(params) | (later & set(defaults)) == set(defaults)


# Recorded with the classes the presets replaced (GIN, LSTMGAT, LSTMSAGEMean, LSTMSAGELSTM,
# SAGELSTM, all gone now): torch.manual_seed(0), then the class with the file's params at 6
# features and 3 classes; the state_dict's number of entries and the first 16 hex digits of the
# sha256 of its names and bytes, in order. Same modules, same order of creation: same weights.
OLD_CLASS_WEIGHTS = {
    "gin": (54, "c0984610d92942d6"),
    "lstm_gat": (57, "080ea213265e9739"),
    "lstm_sage_mean": (52, "7453843c08a3592f"),
    "lstm_sage_lstm": (72, "72b53c5eaea9b44a"),
    "sage_lstm": (64, "ac3553e0f7a254fb"),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_the_initial_weights_of_the_class_it_replaced(name):
    cfg = compose([f"model={name}"])
    torch.manual_seed(0)
    model = build_model(model_family(cfg), 6, 3, **OmegaConf.to_container(cfg.model.params))
    state = model.state_dict()
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    assert (len(state), digest.hexdigest()[:16]) == OLD_CLASS_WEIGHTS[name]


# --- the shared base class -------------------------------------------------------------------


def test_a_new_baseline_needs_only_make_conv():
    class GraphConvBaseline(TemporalGNN):
        def make_conv(self, in_channels, out_channels):
            return GraphConv(in_channels, out_channels)

    model = GraphConvBaseline(6, 3, hidden=8, num_layers=3).eval()
    assert [type(conv) for conv in model.convs] == [GraphConv] * 3
    assert model.front is None
    # readout of the input layer (6) and three layers (8 each)
    assert model.head.classifier[1].in_features == 6 + 3 * 8
    assert model(batch_of([5, 7])).shape == (2, 3)


def test_base_without_make_conv_and_bad_activation_are_explained():
    with pytest.raises(NotImplementedError, match="make_conv"):
        TemporalGNN(6, 3)
    with pytest.raises(ValueError, match="elu"):
        build_model("gcn", 6, 3, activation="swish")
    with pytest.raises(ValueError, match="num_layers"):
        build_model("gat", 6, 3, num_layers=-1)


def test_lstm_gin_keeps_its_parameter_names_on_the_base_class():
    # checkpoints written before LSTM-GIN moved onto TemporalGNN still load
    keys = set(build_model("lstm_gin", 6, 3).state_dict())
    assert {"front.lstm.weight_ih_l0", "convs.4.eps", "convs.0.nn.1.running_mean"} <= keys
    assert "head.classifier.4.weight" in keys
    assert not any(key.startswith("norms.") for key in keys)


# --- spectral: gcn, cheb ---------------------------------------------------------------------


def test_gcn_is_five_gcn_layers_on_raw_features():
    model = build_model("gcn", 76, 4)
    assert [type(conv) for conv in model.convs] == [GCNConv] * 5
    assert model.front is None and model.convs[0].in_channels == 76


@pytest.mark.parametrize("batch_norm,extra", [(False, 0), (True, 2 * 2 * 8)])
def test_tiny_gcn_parameter_count_matches_hand_formula(batch_norm, extra):
    model = build_model(
        "gcn", 6, 3, hidden=8, num_layers=2, classifier_hidden=4, batch_norm=batch_norm
    )
    convs = (6 * 8 + 8) + (8 * 8 + 8)  # W and b per GCN layer
    classifier = (6 + 8 + 8) * 4 + 4 + 4 * 3 + 3  # readouts of 3 layers -> 4 -> 3 classes
    # each BatchNorm1d(8) adds a weight and a bias of 8
    assert sum(p.numel() for p in model.parameters()) == convs + classifier + extra


def test_cheb_order_sets_weights_and_reach():
    default = build_model("cheb", 6, 3)
    assert all(isinstance(conv, ChebConv) and len(conv.lins) == 3 for conv in default.convs)
    batch = batch_of([9, 6])
    for K, uses_edges in [(1, False), (2, True)]:
        torch.manual_seed(0)
        model = build_model("cheb", 6, 3, K=K, num_layers=2).eval()
        with torch.no_grad():
            same = torch.allclose(model(batch), model(without_edges(batch)), atol=1e-6)
        assert same is not uses_edges  # order 1 is a per-node linear map
    with pytest.raises(ValueError, match="model.params.K=0"):
        build_model("cheb", 6, 3, K=0)


# --- attention: gat, lstm_gat ----------------------------------------------------------------


def test_gat_heads_average_to_hidden_width():
    model = build_model("gat", 6, 3)
    assert model.front is None
    assert all(isinstance(conv, GATConv) for conv in model.convs) and len(model.convs) == 5
    assert all(conv.heads == 4 and not conv.concat for conv in model.convs)
    assert all(conv.out_channels == 128 for conv in model.convs)
    concat = build_model("gat", 6, 3, hidden=12, heads=3, concat=True)
    assert all(conv.heads * conv.out_channels == 12 and conv.concat for conv in concat.convs)
    assert concat.head.classifier[1].in_features == 6 + 5 * 12
    with pytest.raises(ValueError, match="divisible by model.params.heads=5"):
        build_model("gat", 6, 3, hidden=12, heads=5, concat=True)


def test_lstm_gat_has_the_paper_bilstm_front():
    model = build_named("lstm_gat", 76, 4)
    assert model.front.lstm.hidden_size == 128 and model.front.lstm.bidirectional
    assert model.convs[0].in_channels == 256
    assert model.head.classifier[1].in_features == 256 + 5 * 128


# --- GraphSAGE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,aggregator,front",
    [
        ("sage_mean", MeanAggregation, False),
        ("sage_lstm", PackedLSTMAggregation, False),
        ("lstm_sage_mean", MeanAggregation, True),
        ("lstm_sage_lstm", PackedLSTMAggregation, True),
    ],
)
def test_sage_aggregator_and_front(name, aggregator, front):
    model = build_named(name, 6, 3)
    assert all(isinstance(conv, SAGEConv) for conv in model.convs) and len(model.convs) == 5
    assert all(type(conv.aggr_module) is aggregator for conv in model.convs)
    assert (model.front is not None) is front


def test_packed_lstm_aggregation_reads_each_nodes_neighbours_in_edge_order_without_padding():
    torch.manual_seed(0)
    aggregation = PackedLSTMAggregation(3, 4)
    messages = torch.randn(4, 3)
    # node 0 gets messages 0 and 2 (in that order), node 1 gets message 1 and 3, node 2 none
    index = torch.tensor([0, 1, 0, 1])
    messages[3] = 0.0  # a zero message is still a step, unlike padding
    out = aggregation(messages, index, dim_size=3)

    def last_hidden(sequence):
        _, (hidden, _) = aggregation.lstm(sequence.unsqueeze(0))
        return hidden[-1, 0]

    assert torch.allclose(out[0], last_hidden(messages[[0, 2]]), atol=1e-6)
    assert torch.allclose(out[1], last_hidden(messages[[1, 3]]), atol=1e-6)
    assert torch.equal(out[2], torch.zeros(4))
    single = aggregation(messages[:1], torch.tensor([0]), dim_size=1)
    assert torch.allclose(single[0], last_hidden(messages[:1]), atol=1e-6)


def test_sage_lstm_graph_with_fewer_neighbours_is_batch_independent():
    # A 3-node graph has degree <= 2; batched with a 12-node graph (degree 4), PyG's own
    # LSTMAggregation would feed it two padding steps and change its output.
    torch.manual_seed(0)
    model = build_named("sage_lstm", 6, 3).eval()
    together = batch_of([3, 12])
    with torch.no_grad():
        alone = model(batch_of([3]))[0]
        assert torch.allclose(model(together)[0], alone, atol=1e-5)


# --- recurrent: bigru_attn, ga_gru -----------------------------------------------------------


def test_bigru_attention_weights_sum_to_one_per_graph_and_ignore_other_graphs():
    torch.manual_seed(0)
    model = build_model("bigru_attn", 6, 3).eval()
    batch = batch_of([4, 9, 6], seed=1)
    with torch.no_grad():
        alpha = model.attention(batch)
        assert torch.allclose(scatter(alpha, batch.batch, reduce="sum"), torch.ones(3))
        assert bool((alpha > 0).all())
        first_alone = model.attention(batch_of([4], seed=1))
        assert torch.allclose(alpha[:4], first_alone, atol=1e-6)


def test_bigru_attention_is_a_bigru_and_ignores_edges():
    model = build_model("bigru_attn", 76, 4).eval()
    assert isinstance(model.front, BiGRUFront)
    assert isinstance(model.front.lstm, nn.GRU) and model.front.lstm.bidirectional
    assert model.front.lstm.hidden_size == 128
    batch = batch_of([5, 8], features=76)
    with torch.no_grad():
        assert torch.equal(model(batch), model(without_edges(batch)))


def test_ga_gru_is_a_bigru_then_five_graph_attention_layers():
    model = build_model("ga_gru", 76, 4).eval()
    assert isinstance(model.front, BiGRUFront) and isinstance(model.front.lstm, nn.GRU)
    assert model.front.lstm.bidirectional and model.front.out_channels == 256
    assert all(isinstance(conv, GATConv) and conv.heads == 4 for conv in model.convs)
    assert len(model.convs) == 5
    assert "use_lstm" not in model_parameters("ga_gru")  # its front end is always on


def test_every_graph_model_uses_edges_and_gin_stays_gin():
    assert all(isinstance(conv, GINConv) for conv in build_model("lstm_gin", 6, 3).convs)
    batch = batch_of([6, 9])
    widths = ("hidden", "lstm_hidden", "gru_hidden", "classifier_hidden")
    for name in sorted(set(MODELS) - {"bigru_attn"}):
        small = {key: 16 for key in widths if key in model_parameters(name)}
        torch.manual_seed(0)
        model = build_model(name, 6, 3, **small).eval()
        with torch.no_grad():
            assert not torch.allclose(model(batch), model(without_edges(batch))), name
