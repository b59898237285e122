"""The levers of the best recipe: utterance functionals in the head, augmentation, learning-rate
schedule, attention readout, per-speaker SVM normalisation, nested selection, seed ensembles."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Batch, Data

from sergraph.config import ConfigError, compose, compose_study
from sergraph.data.collate import mark_band
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import make_folds
from sergraph.models.classic import speaker_standardized
from sergraph.models.common import ReadoutHead
from sergraph.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor
from sergraph.results import select
from sergraph.training.module import SERModule, augment_nodes
from tests.models import build_named

# ---------------------------------------------------------------------------------------------
# augmentation


def _batch(lengths, n_valid, features=5):
    graphs = [
        Data(
            x=torch.arange(n * features, dtype=torch.float32).view(n, features) + 1.0,
            n_valid=torch.tensor([v]),
        )
        for n, v in zip(lengths, n_valid, strict=True)
    ]
    return Batch.from_data_list(graphs)


def test_no_augmentation_is_an_equal_copy():
    batch = _batch([4, 6], [4, 6])
    out = augment_nodes(batch.x, batch.ptr, batch.n_valid)
    assert torch.equal(out, batch.x) and out.data_ptr() != batch.x.data_ptr()


def test_time_mask_zeroes_one_span_inside_the_real_nodes_of_each_graph():
    batch = _batch([10, 12, 8], [6, 12, 3])
    torch.manual_seed(0)
    for _ in range(50):
        out = augment_nodes(batch.x, batch.ptr, batch.n_valid, time_mask=4)
        for g in range(3):
            start, stop = int(batch.ptr[g]), int(batch.ptr[g + 1])
            zero = (out[start:stop] == 0).all(dim=1).nonzero().view(-1).tolist()
            assert len(zero) <= min(4, int(batch.n_valid[g]))
            if zero:  # one contiguous span among the real nodes
                assert zero == list(range(zero[0], zero[0] + len(zero)))
                assert zero[-1] < int(batch.n_valid[g])
            kept = [i for i in range(stop - start) if i not in zero]
            assert torch.equal(out[start:stop][kept], batch.x[start:stop][kept])


def test_feature_mask_zeroes_one_band_of_columns_per_graph():
    batch = _batch([5, 7], [5, 7], features=10)
    torch.manual_seed(1)
    widths = set()
    for _ in range(50):
        out = augment_nodes(batch.x, batch.ptr, batch.n_valid, feature_mask=3)
        for g in range(2):
            block = out[int(batch.ptr[g]) : int(batch.ptr[g + 1])]
            zero = (block == 0).all(dim=0).nonzero().view(-1).tolist()
            widths.add(len(zero))
            assert (
                len(zero) <= 3 and zero == list(range(zero[0], zero[0] + len(zero)))
                if zero
                else True
            )
            assert ((block == 0).any(dim=0) == (block == 0).all(dim=0)).all()
    assert widths == {0, 1, 2, 3}


def test_noise_has_the_requested_spread():
    x = torch.zeros(20000, 4)
    out = augment_nodes(x, torch.tensor([0, 20000]), noise=0.3)
    assert abs(float(out.std()) - 0.3) < 0.01 and abs(float(out.mean())) < 0.01


@pytest.mark.parametrize("with_valid", [True, False])
def test_padded_batches_draw_the_same_augmentation_on_the_grid_bit_for_bit(with_valid):
    # the [B, T, F] path for equal-size graphs against the per-node path, same seed
    lengths, n_valid = [9] * 5, [9, 4, 1, 7, 2]
    batch = _batch(lengths, n_valid, features=6)
    valid = batch.n_valid if with_valid else None
    masks = {"time_mask": 5, "feature_mask": 4}
    for options in (masks, {**masks, "noise": 0.2}):
        for seed in range(20):
            torch.manual_seed(seed)
            per_node = augment_nodes(batch.x, batch.ptr, valid, **options)
            torch.manual_seed(seed)
            grid = augment_nodes(batch.x, batch.ptr, valid, **options, nodes_per_graph=9)
            assert torch.equal(per_node, grid)
            if "noise" not in options:  # masks were drawn: the comparison covers them
                assert (grid == 0).any()
    options = {**masks, "noise": 0.2}
    # a size that does not tile the batch is not taken for the grid
    torch.manual_seed(0)
    per_node = augment_nodes(batch.x, batch.ptr, valid, **options)
    torch.manual_seed(0)
    assert torch.equal(
        per_node, augment_nodes(batch.x, batch.ptr, valid, **options, nodes_per_graph=8)
    )


def _reference_augmentation(x, ptr, n_valid, noise, time_mask, feature_mask):
    """The augmentation written out graph by graph: the same draws in the same order (time
    mask, feature mask, then the noise), spans zeroed in a copy, then ``+ noise * N(0, 1)``."""
    graphs = ptr.numel() - 1
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    lengths = (
        sizes if n_valid is None else [min(int(v), n) for v, n in zip(n_valid, sizes, strict=True)]
    )
    out = x.clone()
    if time_mask > 0:
        width = torch.randint(0, time_mask + 1, (graphs,))
        width = torch.minimum(width, torch.tensor(lengths))
        start = (torch.rand(graphs) * (torch.tensor(lengths) - width + 1)).long()
        for g in range(graphs):
            first = int(ptr[g]) + int(start[g])
            out[first : first + int(width[g])] = 0.0
    if feature_mask > 0:
        width = torch.randint(0, min(feature_mask, x.size(1)) + 1, (graphs,))
        start = (torch.rand(graphs) * (x.size(1) - width + 1)).long()
        for g in range(graphs):
            first = int(start[g])
            out[int(ptr[g]) : int(ptr[g + 1]), first : first + int(width[g])] = 0.0
    if noise > 0:
        out = out + noise * torch.randn_like(out)
    return out


@pytest.mark.parametrize("host", [True, False], ids=["cpu_slices", "device_masks"])
@pytest.mark.parametrize("grid", [True, False])
@pytest.mark.parametrize("with_valid", [True, False])
def test_augmentation_equals_the_graph_by_graph_reference_bit_for_bit(
    grid, with_valid, host, monkeypatch
):
    # the CPU's slice fills, the broadcast masks a GPU uses, and the in-place noise against the
    # plain expression, signs of zero included (torch.equal alone would take -0.0 for 0.0)
    from sergraph.training import module as module_file

    monkeypatch.setattr(module_file, "masks_on_host", lambda x: host)
    lengths, n_valid = ([9] * 6, [9, 4, 1, 7, 2, 9]) if grid else ([9, 5, 12, 3], [9, 2, 10, 3])
    batch = _batch(lengths, n_valid, features=7)
    batch.x = batch.x - 20.0  # negative values too
    valid = batch.n_valid if with_valid else None
    hits = 0
    for options in (
        {"noise": 0.2, "time_mask": 5, "feature_mask": 4},
        {"time_mask": 5, "feature_mask": 4},
        {"noise": 0.3},
    ):
        for seed in range(25):
            torch.manual_seed(seed)
            expected = _reference_augmentation(
                batch.x,
                batch.ptr,
                valid,
                **{
                    "noise": 0.0,
                    "time_mask": 0,
                    "feature_mask": 0,
                    **options,
                },
            )
            torch.manual_seed(seed)
            out = augment_nodes(
                batch.x, batch.ptr, valid, **options, nodes_per_graph=9 if grid else None
            )
            assert torch.equal(out, expected)
            assert torch.equal(torch.signbit(out), torch.signbit(expected))
            hits += int((expected == 0).sum())
    assert hits > 0  # masks were drawn, so the spans were compared


def test_a_training_step_augments_a_padded_batch_as_the_per_node_path_does():
    # the module passes the collater's size; the step's loss equals the per-node path's
    from sergraph.data.collate import mark_band
    from sergraph.data.graphs import build_graph

    rng = np.random.default_rng(0)
    items = [
        build_graph(rng.normal(size=(n, 6)), 4, 10, True, i % 3, f"u{i}", "s")
        for i, n in enumerate([10, 4, 7, 10])
    ]
    batch = mark_band(Batch.from_data_list(items), items)
    module = SERModule(
        "gin",
        {"num_layers": 1},
        6,
        ["a", "b", "c"],
        augment={"noise": 0.1, "time_mask": 3, "feature_mask": 2},
    )
    module.train()
    torch.manual_seed(3)
    loss = module.training_step(batch, 0)
    torch.manual_seed(3)
    x = augment_nodes(batch.x, batch.ptr, batch.n_valid, noise=0.1, time_mask=3, feature_mask=2)
    plain = batch.clone()
    plain.x = x
    assert torch.equal(loss, module._loss(module(plain), batch.y))


# ---------------------------------------------------------------------------------------------
# learning-rate schedule


def test_lr_factor_warmup_then_cosine_by_hand():
    factor = lr_factor("cosine", warmup=3, total=13)
    assert [factor(e) for e in range(3)] == [0.25, 0.5, 0.75]
    assert factor(3) == 1.0
    assert factor(8) == pytest.approx(0.5)  # half way through the 10 cosine epochs
    assert factor(13) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 0, None)(7) == 1.0
    with pytest.raises(ValueError, match="max_epochs"):
        lr_factor("cosine", 5, 5)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_validates_and_builds_with_the_given_rate_and_decay(name):
    assert compose([f"optim.optimizer={name}"]).optim.optimizer == name
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer(name, [weight], lr=0.5, weight_decay=0.25)
    assert isinstance(optimizer, torch.optim.Optimizer)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["params"]) == (0.5, 0.25, [weight])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_validates_and_warms_up_to_the_base_rate(name):
    assert compose([f"optim.schedule={name}", "optim.warmup_epochs=2"]).optim.schedule == name
    factor = lr_factor(name, warmup=2, total=10)
    assert [factor(e) for e in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(0.0 <= factor(e) <= 1.0 for e in range(3, 12))


def test_unknown_optimizer_or_schedule_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match=r"optim.optimizer='sgd' is not valid.*\['adam', 'adamw'\]"
    ):
        build_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"optim.schedule='linear'.*\['constant', 'cosine'\]"):
        lr_factor("linear", 0, 10)
    with pytest.raises(ConfigError, match=r"optim.optimizer='sgd'.*\['adam', 'adamw'\]"):
        compose(["optim.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"optim.schedule='linear'.*\['constant', 'cosine'\]"):
        compose(["optim.schedule=linear"])


def test_configure_optimizers_builds_adamw_with_the_schedule():
    module = SERModule(
        "gin",
        {"hidden": 8, "num_layers": 1},
        4,
        ["a", "b"],
        lr=0.01,
        weight_decay=0.1,
        optimizer="adamw",
        schedule="cosine",
        warmup_epochs=1,
    )
    module.trainer = type("T", (), {"max_epochs": 5})()  # what configure_optimizers reads
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW)
    assert config["optimizer"].param_groups[0]["weight_decay"] == 0.1
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.005)  # warm-up epoch 0
    scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------
# readout head: attention and the utterance vector


def test_attention_readout_by_hand():
    head = ReadoutHead([2], num_classes=2, readout="attention")
    with torch.no_grad():
        head.gates[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.gates[0].bias.zero_()
    h = torch.tensor([[0.0, 1.0], [math.log(3.0), 2.0], [5.0, 7.0]])
    batch = torch.tensor([0, 0, 1])
    captured = {}
    head.classifier.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    head([h], batch, 2)
    # graph 0: weights 1/4 and 3/4 of the scores e^0, e^log3; graph 1: its only node
    expected = torch.tensor([[0.25 * 0 + 0.75 * math.log(3.0), 0.25 * 1 + 0.75 * 2], [5.0, 7.0]])
    assert torch.allclose(captured["in"], expected)


def test_utterance_vector_is_concatenated_after_the_pooled_layers():
    head = ReadoutHead([2, 3], num_classes=2, readout="sum", global_channels=4)
    captured = {}
    head.classifier.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    layers = [torch.ones(3, 2), 2 * torch.ones(3, 3)]
    u = torch.arange(8.0).view(2, 4)
    head(layers, torch.tensor([0, 0, 1]), 2, u)
    assert torch.equal(
        captured["in"],
        torch.tensor([[2.0, 2, 4, 4, 4, 0, 1, 2, 3], [1.0, 1, 2, 2, 2, 4, 5, 6, 7]]),
    )
    with pytest.raises(ValueError, match="concat_functionals"):
        head(layers, torch.tensor([0, 0, 1]), 2)


@pytest.mark.parametrize(
    "name", ["gin", "lstm_gin", "gcn", "gat", "sage_mean", "ga_gru", "bigru_attn"]
)
def test_models_take_the_utterance_vector_on_both_paths(name):
    torch.manual_seed(0)
    graphs = []
    for n in (6, 6, 6):
        src = torch.arange(n - 1)
        edge_index = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
        order = torch.argsort(edge_index[0] * n + edge_index[1])
        graphs.append(
            Data(
                x=torch.randn(n, 3), edge_index=edge_index[:, order], u=torch.randn(1, 5), band_k=2
            )
        )
    batch = mark_band(Batch.from_data_list(graphs), graphs)
    params = {"gru_hidden": 8} if name == "bigru_attn" else {"hidden": 8, "num_layers": 2}
    model = build_named(name, 3, 4, global_channels=5, **params).eval()
    out = model(batch)
    assert out.shape == (3, 4)
    if hasattr(model, "fast_path"):
        assert model.uses_fast_path(batch)
        model.fast_path = False
        assert torch.allclose(model(batch), out, atol=1e-5)
    changed = batch.clone()
    changed.u = changed.u + 1.0
    assert not torch.allclose(model(changed), out)  # the vector reaches the classifier


def test_zero_graph_layers_reads_out_the_node_features():
    model = build_named("gin", 3, 2, num_layers=0, readout="mean").eval()
    assert len(model.convs) == 0
    data = Batch.from_data_list(
        [Data(x=torch.randn(4, 3), edge_index=torch.empty(2, 0, dtype=torch.long))]
    )
    assert model(data).shape == (1, 2)
    with pytest.raises(ValueError, match=">= 0"):
        build_named("gin", 3, 2, num_layers=-1)


# ---------------------------------------------------------------------------------------------
# data module: the utterance vector and its normalisation


def _module(table, features, normalize, functionals):
    fold = make_folds(table, val_speakers=1)[0]
    dm = FoldDataModule(
        table,
        features,
        fold,
        ["angry", "neutral", "sad"],
        k=2,
        max_nodes=10,
        normalize=normalize,
        utterance_features=functionals,
    )
    dm.setup()
    return fold, dm


@pytest.fixture
def toy_functionals(toy_table):
    rng = np.random.default_rng(3)
    values = rng.normal(2.0, 3.0, size=(len(toy_table), 7))
    values[:, 6] = 5.0  # a constant column
    return values


def test_train_mode_normalises_the_vector_with_training_rows_only(
    toy_table, toy_features, toy_functionals
):
    fold, dm = _module(toy_table, toy_features, "train", toy_functionals)
    assert dm.num_global_features == 7
    train_rows = toy_table.index[toy_table["speaker"].isin(fold.train_speakers)]
    expected = toy_functionals[train_rows]
    expected = (expected - expected.mean(0)) / np.where(expected.std(0) > 1e-8, expected.std(0), 1)
    got = torch.cat([g.u for g in dm.datasets["train"]]).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    # the test speaker's vectors never change a training or validation graph
    changed = toy_functionals.copy()
    changed[toy_table["speaker"].isin(fold.test_speakers).to_numpy()] += 100.0
    _, other = _module(toy_table, toy_features, "train", changed)
    for split in ("train", "val"):
        for a, b in zip(dm.datasets[split], other.datasets[split], strict=True):
            assert torch.equal(a.u, b.u) and torch.equal(a.x, b.x)


def test_speaker_mode_uses_each_speakers_own_statistics(toy_table, toy_features, toy_functionals):
    _, dm = _module(toy_table, toy_features, "speaker", toy_functionals)
    graphs = [g for split in ("train", "val", "test") for g in dm.datasets[split]]
    for speaker in toy_table["speaker"].unique():
        u = torch.cat([g.u for g in graphs if g.speaker == speaker]).numpy()
        assert np.allclose(u.mean(0), 0, atol=1e-5)
        assert np.allclose(u[:, :6].std(0), 1, atol=1e-4) and np.allclose(u[:, 6], 0)


def test_speaker_standardized_by_hand():
    values = np.array([[1.0, 4.0], [3.0, 4.0], [10.0, 0.0], [20.0, 2.0]])
    out = speaker_standardized(values, np.array(["a", "a", "b", "b"]))
    assert np.allclose(out, [[-1, 0], [1, 0], [-1, -1], [1, 1]])


def test_bad_utterance_vector_shape_is_named(toy_table, toy_features):
    fold = make_folds(toy_table)[0]
    with pytest.raises(ValueError, match="utterance_features must be"):
        FoldDataModule(
            toy_table,
            toy_features,
            fold,
            ["angry", "neutral", "sad"],
            utterance_features=np.zeros((3, 2)),
        )


# ---------------------------------------------------------------------------------------------
# configuration


def test_ablation_extends_the_recipe_and_switches_one_lever_each():
    recipe = compose(["experiment=best_emodb"])
    study = compose_study(["experiment=best_emodb_ablation"])
    assert study["best"].optim == recipe.optim and study["best"].model == recipe.model
    assert study["best"].augment == recipe.augment and study["best"].graph == recipe.graph
    assert study["no_functionals"].features.concat_functionals is False
    assert study["best"].eval.protocol == "transductive"
    assert study["train_norm"].eval.protocol == "inductive"
    assert study["train_norm"].graph == recipe.graph
    assert study["no_graph"].model.params.num_layers == 0
    assert study["best"].run.seeds == [0] and recipe.run.seeds == [0, 1, 2]


def test_bad_recipe_values_are_named():
    with pytest.raises(ConfigError, match="optim.schedule"):
        compose(["optim.schedule=linear"])
    with pytest.raises(ConfigError, match="augment.noise"):
        compose(["augment.noise=-1"])
    with pytest.raises(ConfigError, match="optim.optimizer"):
        compose(["optim.optimizer=sgd"])
    with pytest.raises(ConfigError, match="max_epochs"):
        compose(["experiment=best_emodb", "trainer.max_epochs=3"])  # warm-up is 3 epochs


# ---------------------------------------------------------------------------------------------
# nested selection and seed ensembles


CLASSES = ["a", "b"]


def _cell(root, label, seed, fold, val_ua, test_ua, predicted, val_speakers=("v",)):
    cell = root / label / f"seed-{seed}" / f"fold-{fold:02d}"
    cell.mkdir(parents=True)
    true = ["a", "a", "b", "b"]
    p_a = [0.9 if p == "a" else 0.2 for p in predicted]
    pd.DataFrame(
        {
            "utterance": [f"u{fold}{i}" for i in range(4)],
            "speaker": "t",
            "true": true,
            "predicted": predicted,
            "p_a": p_a,
            "p_b": [1 - p for p in p_a],
        }
    ).to_csv(cell / "predictions.csv", index=False)
    metrics = {
        "config_id": label,
        "model": "gin",
        "seed": seed,
        "fold": fold,
        "train_speakers": ["r"],
        "val_speakers": list(val_speakers),
        "test_speakers": [f"t{fold}"],
        "classes": CLASSES,
        "n_test": 4,
        "wa": test_ua,
        "ua": test_ua,
        "best_val_ua": val_ua,
    }
    (cell / "metrics.json").write_text(json.dumps(metrics))


def test_nested_selection_follows_validation_and_never_sees_test_data(tmp_path, monkeypatch):
    # fold 0: x wins on validation but loses on test; fold 1: y wins on validation
    _cell(tmp_path, "x", 0, 0, 0.9, 0.1, ["b", "b", "a", "a"])
    _cell(tmp_path, "y", 0, 0, 0.5, 1.0, ["a", "a", "b", "b"])
    _cell(tmp_path, "x", 0, 1, 0.2, 1.0, ["a", "a", "b", "b"])
    _cell(tmp_path, "y", 0, 1, 0.6, 0.0, ["b", "b", "a", "a"])
    seen = []
    original = select.choose
    monkeypatch.setattr(select, "choose", lambda views: seen.append(views) or original(views))
    chosen = select.select_nested(tmp_path, ["x", "y"])
    assert chosen == {(0, 0): "x", (0, 1): "y"}
    for views in seen:  # the rule was handed validation fields only
        for view in views.values():
            assert set(view) == set(select.VALIDATION_FIELDS)
    fold0 = json.loads((tmp_path / "nested/seed-0/fold-00/metrics.json").read_text())
    assert fold0["selected"] == "x" and fold0["ua"] == 0.1  # the chosen variant's test score
    # rewriting every test-side value leaves the choice alone
    for path in tmp_path.glob("[xy]/seed-0/fold-*/metrics.json"):
        metrics = json.loads(path.read_text())
        metrics.update(wa=1 - metrics["wa"], ua=1 - metrics["ua"], test_speakers=["other"])
        path.write_text(json.dumps(metrics))
    assert select.select_nested(tmp_path, ["x", "y"], label="again") == chosen


def test_nested_selection_refuses_different_validation_speakers(tmp_path):
    _cell(tmp_path, "x", 0, 0, 0.9, 0.1, ["a", "a", "b", "b"], val_speakers=("v",))
    _cell(tmp_path, "y", 0, 0, 0.5, 1.0, ["a", "a", "b", "b"], val_speakers=("v", "w"))
    with pytest.raises(ValueError, match="different speakers"):
        select.select_nested(tmp_path, ["x", "y"])


def test_nested_selection_over_seeds_with_the_fold_criterion(tmp_path):
    # fold 0: x leads on seed 0's validation UA (0.9 vs 0.5) but y on the mean over the seeds
    # ((0.9 + 0.1) / 2 = 0.5 < (0.5 + 0.7) / 2 = 0.6): "cell" follows each seed, "fold" takes
    # y for both seeds.
    _cell(tmp_path, "x", 0, 0, 0.9, 0.1, ["b", "b", "a", "a"])
    _cell(tmp_path, "x", 1, 0, 0.1, 0.1, ["b", "b", "a", "a"])
    _cell(tmp_path, "y", 0, 0, 0.5, 1.0, ["a", "a", "b", "b"])
    _cell(tmp_path, "y", 1, 0, 0.7, 1.0, ["a", "b", "b", "b"])
    assert select.select_nested(tmp_path, ["x", "y"]) == {(0, 0): "x", (1, 0): "y"}
    chosen = select.select_nested(tmp_path, ["x", "y"], label="by_fold", criterion="fold")
    assert chosen == {(0, 0): "y", (1, 0): "y"}
    # against the fixed recipe x, seed by seed (pooled UA over the seed's folds)
    table = select.compare_per_seed(tmp_path, "by_fold", "x").set_index("seed")
    assert table.loc[0, "ua_by_fold"] == pytest.approx(1.0)
    assert table.loc[1, "ua_by_fold"] == pytest.approx((1 / 2 + 1) / 2)  # a: 1 of 2, b: 2 of 2
    assert table.loc[0, "ua_x"] == pytest.approx(0.0)
    assert table["difference"].tolist() == pytest.approx([1.0, 0.75])


def test_nested_selection_refuses_to_mix_fused_and_unfused_candidates(tmp_path):
    _cell(tmp_path, "x", 0, 0, 0.9, 0.1, ["a", "a", "b", "b"])
    _cell(tmp_path, "y", 0, 0, 0.5, 1.0, ["a", "a", "b", "b"])
    path = tmp_path / "y/seed-0/fold-00/metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps(metrics | {"fusion": {"with": "svm", "weight": 0.5}}))
    with pytest.raises(ValueError, match="mix fused"):
        select.select_nested(tmp_path, ["x", "y"])


def test_nested_selection_refuses_candidates_of_different_protocols(tmp_path):
    _cell(tmp_path, "x", 0, 0, 0.9, 0.1, ["a", "a", "b", "b"])
    _cell(tmp_path, "y", 0, 0, 0.5, 1.0, ["a", "a", "b", "b"])
    path = tmp_path / "y/seed-0/fold-00/metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps(metrics | {"protocol": {"name": "transductive", "note": ""}}))
    with pytest.raises(ValueError, match="different protocols"):
        select.select_nested(tmp_path, ["x", "y"])


def test_seed_ensemble_averages_probabilities_by_hand(tmp_path):
    # p_a per utterance: seed 0 (0.9, 0.9, 0.2, 0.2), seed 1 (0.2, 0.9, 0.9, 0.2)
    _cell(tmp_path, "x", 0, 0, 0.5, 0.5, ["a", "a", "b", "b"])
    _cell(tmp_path, "x", 1, 0, 0.5, 0.5, ["b", "a", "a", "b"])
    used = select.ensemble_seeds(tmp_path / "x")
    assert used == {0: [0, 1]}
    cell = tmp_path / "x_seed_ensemble/seed-0/fold-00"
    predictions = pd.read_csv(cell / "predictions.csv")
    assert np.allclose(predictions["p_a"], [0.55, 0.9, 0.55, 0.2])
    assert predictions["predicted"].tolist() == ["a", "a", "a", "b"]
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["wa"] == pytest.approx(0.75) and metrics["ua"] == pytest.approx(0.75)


def test_report_over_several_study_folders_prefixes_labels(tmp_path):
    from sergraph.results.report import write_report

    for study, ua, predicted in (
        ("one", 1.0, ["a", "a", "b", "b"]),
        ("two", 0.75, ["a", "b", "b", "b"]),
    ):
        for fold in (0, 1):
            _cell(tmp_path / study, "x", 0, fold, 0.5, ua, predicted)
    report = write_report([tmp_path / "one", tmp_path / "two"], tmp_path / "out", reference="two/x")
    rows = {row["label"]: row for row in report["rows"]}
    assert set(rows) == {"one/x", "two/x"}
    assert rows["one/x"]["pooled_ua"] == 1.0 and rows["two/x"]["pooled_ua"] == 0.75
    (test,) = report["comparisons"]
    assert (test["first"], test["second"]) == ("two/x", "one/x")
    assert test["mean_difference"] == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="--out"):
        write_report([tmp_path / "one", tmp_path / "two"])
