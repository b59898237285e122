"""Late fusion with the SVM (``model.fusion=svm``): the weight chosen by hand, on validation
speakers only, the SVM fitted on training speakers only, and a real fused run whose
predictions.csv is recomputed from its recorded parts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import f1_score

from sergraph.config import ConfigError, compose, identity
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import Fold
from sergraph.training.fusion import FUSION_WEIGHTS, choose_weight, fuse

# ---------------------------------------------------------------------------------------------
# the weight, by hand

# Two classes. Fused probability of the true class, as a function of the graph weight w:
#   a (true 0): 0.6w + 0.2(1-w) = 0.2 + 0.4w   right iff w > 0.75   -> w in {0.8, 0.9, 1.0}
#   b (true 0): 0.3w + 0.9(1-w) = 0.9 - 0.6w   right iff w < 2/3    -> w in {0.0, ..., 0.6}
#   c (true 1): 0.8w + 0.4(1-w) = 0.4 + 0.4w   right iff w > 0.25   -> w in {0.3, ..., 1.0}
#   d (true 1): 0.9w + 0.7(1-w)                always right
GRAPH = {"a": [0.6, 0.4], "b": [0.3, 0.7], "c": [0.2, 0.8], "d": [0.1, 0.9]}
SVM = {"a": [0.2, 0.8], "b": [0.9, 0.1], "c": [0.6, 0.4], "d": [0.3, 0.7]}
TRUE = {"a": 0, "b": 0, "c": 1, "d": 1}


def hand_set(names):
    return (
        np.array([GRAPH[n] for n in names]),
        np.array([SVM[n] for n in names]),
        np.array([TRUE[n] for n in names]),
    )


def test_weight_by_hand_ties_go_to_the_graph_model():
    # UA = (recall of class 0 + recall of class 1) / 2 with a, b, c, d:
    #   w 0.0-0.2: b right, c wrong -> (1/2 + 1/2)/2 = 0.5
    #   w 0.3-0.6: b, c right       -> (1/2 + 1)/2   = 0.75
    #   w 0.7:     c right only     -> (0 + 1)/2     = 0.5
    #   w 0.8-1.0: a, c right       -> (1/2 + 1)/2   = 0.75
    # best 0.75 at 0.3-0.6 and 0.8-1.0: the tie goes to the largest weight, 1.0.
    weight, table = choose_weight(*hand_set("abcd"), num_classes=2)
    expected = [0.5] * 3 + [0.75] * 4 + [0.5] + [0.75] * 3
    assert list(table) == [f"{w:.1f}" for w in FUSION_WEIGHTS]
    assert list(table.values()) == pytest.approx(expected)
    assert weight == 1.0


def test_weight_by_hand_an_inner_weight():
    # Without a: recall of class 0 is b alone.
    #   w 0.0-0.2: (1 + 1/2)/2 = 0.75;  w 0.3-0.6: (1 + 1)/2 = 1.0;  w 0.7-1.0: (0 + 1)/2 = 0.5
    # best 1.0 at 0.3-0.6: the largest of them, 0.6.
    weight, table = choose_weight(*hand_set("bcd"), num_classes=2)
    assert list(table.values()) == pytest.approx([0.75] * 3 + [1.0] * 4 + [0.5] * 4)
    assert weight == 0.6
    # b alone: right for w <= 0.6 (UA 1), wrong above (UA 0): the largest of them, 0.6
    weight, _ = choose_weight(*hand_set("b"), num_classes=2)
    assert weight == 0.6
    # g (true 0): 0.0w + 0.55(1-w) > 0.5 iff w < 1/11: only the SVM alone is right, w = 0.0
    g, s, y = np.array([[0.0, 1.0]]), np.array([[0.55, 0.45]]), np.array([0])
    weight, table = choose_weight(g, s, y, num_classes=2)
    assert weight == 0.0 and table["0.0"] == 1.0 and table["0.1"] == 0.0
    g, s, y = hand_set("bc")
    weight, table = choose_weight(g, s, y, num_classes=2)
    assert table["0.6"] == 1.0 and table["0.7"] == 0.5 and weight == 0.6


def test_weight_needs_matching_shapes_and_a_validation_set():
    g, s, y = hand_set("abcd")
    with pytest.raises(ValueError, match="same"):
        choose_weight(g, s[:3], y, num_classes=2)
    with pytest.raises(ValueError, match="at least one validation utterance"):
        choose_weight(g[:0], s[:0], y[:0], num_classes=2)


# ---------------------------------------------------------------------------------------------
# on a fold: validation speakers choose the weight, training speakers fit the SVM

FOLD = Fold(0, ("s3", "s4", "s5"), ("s2",), ("s1",))
LABELS = ["angry", "neutral", "sad"]


def table_of(per_speaker=12) -> pd.DataFrame:
    rows = [
        (f"{s}_{i:02d}", f"/audio/{s}_{i:02d}.wav", s, LABELS[i % 3])
        for s in ("s1", "s2", "s3", "s4", "s5")
        for i in range(per_speaker)
    ]
    return pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])


def fold_inputs(table):
    rng = np.random.default_rng(0)
    nodes = [rng.normal(size=(6, 3)).astype(np.float32) for _ in range(len(table))]
    index = table["label"].map(LABELS.index).to_numpy()
    # functionals that carry the class (so the SVM's C search is not flat) plus noise
    functionals = rng.normal(size=(len(table), 5)) + np.eye(3, 5)[index] * 1.5
    return nodes, functionals


def fused_fold(table, nodes, functionals, graph, **kwargs):
    datamodule = FoldDataModule(
        table,
        nodes,
        FOLD,
        LABELS,
        k=2,
        max_nodes=6,
        utterance_features=functionals,
        **kwargs,
    )
    datamodule.setup()
    return fuse(datamodule, graph), datamodule


def graph_scores(rng, n_val, n_test):
    return {
        "val": rng.dirichlet(np.ones(3), size=n_val),
        "test": rng.dirichlet(np.ones(3), size=n_test),
    }


SETTINGS = [
    {"normalize": "train"},
    {"normalize": "speaker", "protocol": "transductive"},
    {"normalize": "speaker", "protocol": "enrollment", "enrollment": 3},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_weight_and_c_never_see_the_test_speaker(settings):
    table = table_of()
    nodes, functionals = fold_inputs(table)
    n_test = 12 - settings.get("enrollment", 0)
    graph = graph_scores(np.random.default_rng(1), 12 - settings.get("enrollment", 0), n_test)
    (scores, record, parts), datamodule = fused_fold(table, nodes, functionals, graph, **settings)
    assert record["weight"] in FUSION_WEIGHTS and len(scores) == n_test
    assert list(parts["split"]) == ["val"] * len(graph["val"]) + ["test"] * n_test
    assert set(parts["speaker"][parts["split"] == "test"]) == {"s1"}
    # rewrite every label, node and functionals vector of the test speaker, and the graph
    # model's test scores
    test = (table["speaker"] == "s1").to_numpy()
    rng = np.random.default_rng(7)
    rewritten = table.assign(label=np.where(test, "sad", table["label"]))
    nodes2 = [
        rng.normal(scale=9, size=x.shape).astype(np.float32) if t else x
        for x, t in zip(nodes, test, strict=True)
    ]
    functionals2 = functionals.copy()
    functionals2[test] = rng.normal(scale=50, size=(test.sum(), 5))
    graph2 = {"val": graph["val"], "test": rng.dirichlet(np.ones(3), size=n_test)}
    (scores2, record2, parts2), _ = fused_fold(rewritten, nodes2, functionals2, graph2, **settings)
    for key in ("weight", "val_ua", "svm_C", "svm_inner_cv_ua"):
        assert record2[key] == record[key], key
    val = parts["split"] == "val"
    pd.testing.assert_frame_equal(parts[val], parts2[val])
    # the validation labels do matter: a different validation set gives other UAs
    flipped = {"val": graph["val"][:, ::-1].copy(), "test": graph["test"]}
    _, record3, _ = fuse(datamodule, flipped)
    assert record3["val_ua"] != record["val_ua"]


@pytest.mark.parametrize("settings", SETTINGS[:2], ids=lambda s: "-".join(map(str, s.values())))
def test_the_svm_is_fitted_on_training_speakers_only(settings):
    table = table_of()
    nodes, functionals = fold_inputs(table)
    graph = graph_scores(np.random.default_rng(1), 12, 12)
    (_, record, parts), _ = fused_fold(table, nodes, functionals, graph, **settings)
    # rewrite every label and functionals vector of the validation speaker: the SVM (its C and
    # its test scores) is unchanged
    val = (table["speaker"] == "s2").to_numpy()
    rewritten = table.assign(label=np.where(val, "angry", table["label"]))
    functionals2 = functionals.copy()
    functionals2[val] = np.random.default_rng(5).normal(scale=50, size=(val.sum(), 5))
    (_, record2, parts2), _ = fused_fold(rewritten, nodes, functionals2, graph, **settings)
    assert (record2["svm_C"], record2["svm_inner_cv_ua"]) == (
        record["svm_C"],
        record["svm_inner_cv_ua"],
    )
    svm = [c for c in parts.columns if c.startswith("svm_")]
    test = parts["split"] == "test"
    np.testing.assert_array_equal(parts.loc[test, svm], parts2.loc[test, svm])
    assert record2["svm_test_ua"] == record["svm_test_ua"]


def test_fusion_needs_two_training_speakers_and_the_functionals():
    table = table_of()
    nodes, functionals = fold_inputs(table)
    graph = graph_scores(np.random.default_rng(1), 12, 12)
    one = Fold(0, ("s3",), ("s2", "s4", "s5"), ("s1",))
    datamodule = FoldDataModule(
        table, nodes, one, LABELS, k=2, max_nodes=6, utterance_features=functionals
    )
    datamodule.setup()
    graph["val"] = np.random.default_rng(2).dirichlet(np.ones(3), size=36)
    with pytest.raises(ValueError, match="this fold has 1"):
        fuse(datamodule, graph)
    plain = FoldDataModule(table, nodes, FOLD, LABELS, k=2, max_nodes=6)
    plain.setup()
    with pytest.raises(ValueError, match="features.concat_functionals=true"):
        fuse(plain, graph_scores(np.random.default_rng(1), 12, 12))


# ---------------------------------------------------------------------------------------------
# configuration


def test_fusion_key_validated_and_old_ids_unchanged():
    base = ["features.concat_functionals=true"]
    cfg = compose(base)
    assert cfg.model.fusion is None
    old = OmegaConf.to_container(cfg)
    del old["model"]["fusion"]  # a configuration saved before the key existed
    assert identity(OmegaConf.create(old)) == identity(cfg)
    assert identity(compose([*base, "model.fusion=svm"])) != identity(cfg)
    for overrides, message in [
        (["model.fusion=mlp"], "choose null"),
        (["model=svm", "model.fusion=svm"], "classic baseline"),
        (["model.fusion=svm", "features.concat_functionals=false"], "concat_functionals=true"),
        (
            ["model.fusion=svm", "folds.val_speakers=0", "trainer.early_stopping=false"],
            "folds.val_speakers >= 1",
        ),
        (["model.fusion=svm", "trainer.devices=2"], "one process only"),
    ]:
        with pytest.raises(ConfigError, match=message):
            compose([*base, *overrides])


# ---------------------------------------------------------------------------------------------
# the real runner path

SMALL = [
    "data.options.n_speakers=5",
    "data.options.n_per_class=3",
    "features.workers=1",
    "folds.only=[0]",
    "logger.kind=none",
]


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    from sergraph.data.prepared import _PREPARED

    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _PREPARED.clear()
    yield tmp_path
    _PREPARED.clear()


def test_a_fused_run_writes_the_fused_predictions(small_run):
    from sergraph import cli
    from sergraph.deploy.bundle import export_bundle
    from sergraph.deploy.pipeline import BundleError
    from sergraph.metrics import scores_from_labels

    args = [
        "train",
        *SMALL,
        "trainer=quick",
        "trainer.max_epochs=2",
        "model.params.hidden=4",
        "features.concat_functionals=true",
        "model.fusion=svm",
        "run.name=fused",
    ]
    assert cli.main(args) == 0
    (metrics_path,) = small_run.rglob("metrics.json")
    cell = metrics_path.parent
    metrics = json.loads(metrics_path.read_text())
    classes = metrics["classes"]
    record = metrics["fusion"]
    weight = record["weight"]
    predictions = pd.read_csv(cell / "predictions.csv")
    parts = pd.read_csv(cell / "fusion.csv")
    test = parts[parts["split"] == "test"].reset_index(drop=True)
    assert test["utterance"].tolist() == predictions["utterance"].tolist()
    graph = test[[f"graph_{c}" for c in classes]].to_numpy()
    svm = test[[f"svm_{c}" for c in classes]].to_numpy()
    fused_probabilities = predictions[[f"p_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(fused_probabilities, weight * graph + (1 - weight) * svm, atol=2e-6)
    # the test metrics are those of the fused predictions
    expected = scores_from_labels(
        predictions["true"].map(classes.index),
        predictions["predicted"].map(classes.index),
        len(classes),
    )
    assert metrics["ua"] == pytest.approx(expected["ua"])
    assert metrics["confusion"] == expected["confusion"]
    # macro F1 of the fused predictions, by scikit-learn over the classes present
    present = sorted(set(predictions["true"]))
    assert metrics["f1"] == pytest.approx(
        f1_score(predictions["true"], predictions["predicted"], labels=present, average="macro")
    )
    margin = np.sort(fused_probabilities, axis=1)
    clear = margin[:, -1] - margin[:, -2] > 1e-5
    assert (np.array(classes)[fused_probabilities.argmax(1)] == predictions["predicted"])[
        clear
    ].all()
    # the recorded validation UAs, recomputed from the validation parts by hand
    val = parts[parts["split"] == "val"]
    truth = val["true"].map(classes.index).to_numpy()
    for w in FUSION_WEIGHTS:
        p = (
            w * val[[f"graph_{c}" for c in classes]].to_numpy()
            + (1 - w) * val[[f"svm_{c}" for c in classes]].to_numpy()
        )
        recalls = [
            np.mean(p[truth == k].argmax(1) == k) for k in range(len(classes)) if (truth == k).any()
        ]
        assert record["val_ua"][f"{w:.1f}"] == pytest.approx(np.mean(recalls), abs=1e-9)
    best = max(record["val_ua"].values())
    assert weight == max(w for w in FUSION_WEIGHTS if record["val_ua"][f"{w:.1f}"] == best)
    # the unfused UAs are there too; w = 1 on validation is the graph model's own val UA
    assert record["val_ua"]["1.0"] == pytest.approx(metrics["model_best_val_ua"], abs=1e-6)
    # what `sergraph select` ranks: the fused model's validation UA at the chosen weight
    assert metrics["best_val_ua"] == record["val_ua"][f"{weight:.1f}"] == best
    graph_ua = scores_from_labels(test["true"].map(classes.index), graph.argmax(1), len(classes))[
        "ua"
    ]
    assert record["graph_test_ua"] == pytest.approx(graph_ua)
    # a fused cell is not exported: its SVM is not part of a bundle
    with pytest.raises(BundleError, match="model.fusion=svm"):
        export_bundle(cell, small_run / "fused.sergraph")


@pytest.mark.parametrize("layers", [3, 0], ids=["recipe", "no_graph_control"])
def test_the_recipe_and_its_no_graph_control_run_fused(small_run, layers):
    from sergraph import cli

    args = [
        "train",
        "experiment=best_emodb",
        *SMALL,
        "run.seeds=[0]",
        "trainer.max_epochs=4",  # > the recipe's 3 warm-up epochs (cosine schedule)
        "trainer.accelerator=cpu",
        f"model.params.num_layers={layers}",
        "model.fusion=svm",
    ]
    assert cli.main(args) == 0
    (metrics_path,) = small_run.rglob("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert (
        metrics["fusion"]["with"] == "svm" and metrics["val_speakers"] and metrics["n_test"] == 12
    )
    assert len(metrics["train_speakers"]) == 2 and len(metrics["val_speakers"]) == 2
    parts = pd.read_csv(metrics_path.parent / "fusion.csv")
    assert set(parts.loc[parts["split"] == "val", "speaker"]) == set(metrics["val_speakers"])
    assert set(parts.loc[parts["split"] == "test", "speaker"]) == set(metrics["test_speakers"])


def test_the_svm_is_fitted_once_per_fold_and_equals_a_fresh_fit():
    from sergraph.training import fusion

    table = table_of()
    nodes, functionals = fold_inputs(table)
    fusion._SVM_MEMO.clear()
    rng = np.random.default_rng(3)
    (_, first, parts_first), datamodule = fused_fold(
        table, nodes, functionals, graph_scores(rng, 12, 12)
    )
    assert len(fusion._SVM_MEMO) == 1
    # another seed's graph probabilities on the same fold: the same SVM, not fitted again
    (_, second, parts_second), _ = fused_fold(table, nodes, functionals, graph_scores(rng, 12, 12))
    assert len(fusion._SVM_MEMO) == 1
    svm_columns = [c for c in parts_first if c.startswith("svm_")]
    pd.testing.assert_frame_equal(parts_first[svm_columns], parts_second[svm_columns])
    assert (first["svm_C"], first["svm_inner_cv_ua"]) == (
        second["svm_C"],
        second["svm_inner_cv_ua"],
    )
    # a fresh fit (memo cleared) gives the same scores; other functionals are a new entry
    fusion._SVM_MEMO.clear()
    fresh, _ = fusion.svm_scores(datamodule)
    np.testing.assert_array_equal(
        np.round(fresh["val"], 6), parts_first.loc[parts_first.split == "val", svm_columns]
    )
    fused_fold(table, nodes, functionals + 1.0, graph_scores(rng, 12, 12))
    assert len(fusion._SVM_MEMO) == 2
