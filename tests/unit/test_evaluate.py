"""``sergraph evaluate``: a bundle scored on another labelled corpus, with a label mapping.

The bundle (``bundle_run``) was trained on the synthetic corpus with seed 0. It is scored on a
second synthetic corpus generated with seed 7 whose "sad" is relabelled "gloomy"
(``data.merge``), a class the bundle does not know: refused by name until mapped or dropped.
The written metrics are checked against scikit-learn on the written predictions, and the
predictions' true labels against the corpus table read independently.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

from sergraph.cli import main
from sergraph.deploy.evaluate import evaluate_bundle, label_mapping, parse_mapping


def _corpus(tmp_path):
    return [
        "data=synthetic",
        f"data.root={tmp_path / 'other'}",
        "data.options.seed=7",
        "data.options.n_speakers=2",
        "data.options.n_per_class=2",
        "data.merge={sad: gloomy}",
        "data.classes=[neutral,happy,gloomy,angry]",
    ]


def test_label_mapping_is_validated_by_name():
    bundle = ["neutral", "happy", "sad", "angry"]
    corpus = ["angry", "gloomy", "happy", "neutral"]
    assert label_mapping(corpus, bundle, {"gloomy": "sad"}) == {
        "angry": "angry",
        "gloomy": "sad",
        "happy": "happy",
        "neutral": "neutral",
    }
    assert label_mapping(corpus, bundle, drop=["gloomy"])["gloomy"] is None
    with pytest.raises(ValueError, match=r"class\(es\) \['gloomy'\] that the bundle cannot"):
        label_mapping(corpus, bundle)
    with pytest.raises(ValueError, match=r"\['excited'\] that the corpus does not have"):
        label_mapping(corpus, bundle, {"excited": "happy", "gloomy": "sad"})
    with pytest.raises(ValueError, match=r"\['bored'\] that the bundle cannot predict"):
        label_mapping(corpus, bundle, {"gloomy": "bored"})
    with pytest.raises(ValueError, match="both mapped"):
        label_mapping(corpus, bundle, {"gloomy": "sad"}, drop=["gloomy"])
    assert parse_mapping(["excited=happy,calm=neutral", "x=y"]) == {
        "excited": "happy",
        "calm": "neutral",
        "x": "y",
    }
    with pytest.raises(ValueError, match="CORPUS_CLASS=BUNDLE_CLASS"):
        parse_mapping(["excited"])


def test_evaluate_on_another_corpus_writes_a_cell_report_reads(bundle_run, tmp_path, capsys):
    from sergraph.config import compose
    from sergraph.data.prepared import load_table

    out = tmp_path / "runs"
    common = ["--out-dir", str(out), "--workers", "1", "--cache-dir", str(bundle_run.cache), "-q"]
    # the unmapped class is refused by name, and nothing is written
    code = main(["evaluate", str(bundle_run.ensemble), *_corpus(tmp_path), *common])
    assert code == 2
    assert "['gloomy'] that the bundle cannot predict" in capsys.readouterr().err
    assert not out.exists()

    code = main(
        ["evaluate", str(bundle_run.ensemble), *_corpus(tmp_path), "--map", "gloomy=sad", *common]
    )
    assert code == 0, capsys.readouterr().err
    cell = out / "evaluate" / "ensemble-on-synthetic" / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    predictions = pd.read_csv(cell / "predictions.csv")

    # every utterance of the other corpus is scored once (inductive bundle: no enrollment)
    table, _ = load_table(compose(_corpus(tmp_path)))
    assert len(table) == 2 * 4 * 2 == metrics["n_test"] == len(predictions)
    expected_true = table.set_index("utterance")["label"].replace({"gloomy": "sad"})
    assert (
        predictions["true"].to_numpy() == expected_true[predictions["utterance"]].to_numpy()
    ).all()
    assert set(predictions["corpus_label"]) == {"angry", "gloomy", "happy", "neutral"}
    classes = metrics["classes"]
    probabilities = predictions[[f"p_{c}" for c in classes]].to_numpy()
    assert (predictions["predicted"] == np.array(classes)[probabilities.argmax(axis=1)]).all()

    # the metrics, recomputed with scikit-learn from the predictions file
    true, predicted = predictions["true"], predictions["predicted"]
    assert metrics["wa"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["ua"] == pytest.approx(balanced_accuracy_score(true, predicted))
    assert metrics["f1"] == pytest.approx(
        f1_score(true, predicted, labels=sorted(set(true)), average="macro", zero_division=0)
    )
    assert metrics["recall"] == pytest.approx(
        recall_score(true, predicted, labels=classes, average=None, zero_division=0)
    )
    assert metrics["confusion"] == confusion_matrix(true, predicted, labels=classes).tolist()
    assert metrics["support"] == [int((true == c).sum()) for c in classes]

    # provenance of both sides
    evaluation = metrics["evaluation"]
    assert evaluation["label_map"] == {"gloomy": "sad"}
    assert evaluation["dropped"] == {} and evaluation["n_dropped"] == 0
    assert evaluation["bundle"]["trained_on"] == "synthetic"
    assert evaluation["bundle"]["members"] == [[0, 0], [0, 1]]
    assert evaluation["bundle"]["training_data"]["table"] != [metrics["data"]["table"]]
    assert metrics["data"]["n_scored"] == len(predictions)
    assert metrics["test_speakers"] == sorted(table["speaker"].unique())
    assert metrics["provenance"]["commit"]

    # sergraph report reads the folder like a study
    capsys.readouterr()
    assert main(["report", str(out / "evaluate"), "--out", str(tmp_path / "report")]) == 0
    shown = capsys.readouterr().out
    assert "ensemble-on-synthetic" in shown
    assert f"{100 * metrics['ua']:.2f}" in shown


def test_a_dropped_class_is_left_out_and_counted(bundle_run, tmp_path):
    cell, metrics = evaluate_bundle(
        bundle_run.fold0,
        _corpus(tmp_path),
        drop=["gloomy"],
        out_dir=tmp_path / "runs",
        cache_dir=bundle_run.cache,
    )
    predictions = pd.read_csv(cell / "predictions.csv")
    assert len(predictions) == 2 * 3 * 2 == metrics["n_test"]
    # eval.label_map, as an experiment file spells it, is the same mapping as --map
    _, mapped = evaluate_bundle(
        bundle_run.fold0,
        [*_corpus(tmp_path), "eval.label_map={gloomy: sad}"],
        out_dir=tmp_path / "mapped",
        cache_dir=bundle_run.cache,
    )
    assert mapped["evaluation"]["label_map"] == {"gloomy": "sad"}
    assert mapped["n_test"] == 16 and mapped["support"][metrics["classes"].index("sad")] == 4
    assert "gloomy" not in set(predictions["corpus_label"])
    assert metrics["evaluation"]["dropped"] == {"gloomy": 4}
    assert metrics["evaluation"]["classes_absent"] == ["sad"]
    sad = metrics["classes"].index("sad")
    assert np.isnan(metrics["recall"][sad]) and metrics["support"][sad] == 0
    present = [r for r, n in zip(metrics["recall"], metrics["support"], strict=True) if n]
    assert metrics["ua"] == pytest.approx(np.mean(present))
    # F1 too is the mean over the classes present: sad is left out, predicted or not
    labels = [c for c, n in zip(metrics["classes"], metrics["support"], strict=True) if n]
    assert metrics["f1"] == pytest.approx(
        f1_score(
            predictions["true"],
            predictions["predicted"],
            labels=labels,
            average="macro",
            zero_division=0,
        )
    )


def test_only_corpus_overrides_are_accepted(bundle_run, tmp_path):
    with pytest.raises(ValueError, match=r"corpus overrides only .*\['model=svm'\]"):
        evaluate_bundle(bundle_run.fold0, ["model=svm"], out_dir=tmp_path)
