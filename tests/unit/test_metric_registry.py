"""The metrics registry is the one place a metric is defined.

A toy metric added to :data:`sergraph.metrics.METRICS` by a fixture (and removed after the
test) reaches a cell's ``metrics.json``, the summary, the report's tables and the
LightningModule's logged keys with no other change; made the primary metric, its direction
(lower is better) is the one every choice takes. A structure test keeps metric names out of
the rest of the package.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import sergraph
from sergraph import metrics
from sergraph.metrics import METRICS, Metric, weighted_accuracy


def error_rate(confusion) -> float:
    return 1.0 - weighted_accuracy(confusion)


@pytest.fixture
def with_error_rate(monkeypatch) -> Metric:
    """The error rate (1 - WA, lower is better) registered as a metric for one test."""
    entry = Metric("err", "ERR", "share of wrong predictions", error_rate, higher_is_better=False)
    monkeypatch.setitem(METRICS, entry.name, entry)
    return entry


def test_a_registered_metric_reaches_the_results_files_and_tables(
    with_error_rate, tmp_path, capsys
):
    """A tiny SVM study: the toy metric is in each cell's metrics.json, the summary files and
    the report (by the error rate's own definition, 1 - WA)."""
    from sergraph.results.report import write_report
    from sergraph.training.study import run_study

    summaries = run_study(
        [
            "model=svm",
            f"data.root={tmp_path / 'corpus'}",
            "data.options.n_speakers=4",
            "data.options.n_per_class=2",
            "folds.only=[0,1]",
            "features.workers=1",
            f"features.cache_dir={tmp_path / 'features'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "logger.kind=none",
        ]
    )
    root = tmp_path / "runs" / "synthetic" / "svm"
    cells = [
        json.loads(path.read_text()) for path in sorted(root.glob("seed-*/fold-*/metrics.json"))
    ]
    assert len(cells) == 2
    for cell in cells:
        assert cell["err"] == pytest.approx(1 - cell["wa"])
        assert {"wa", "ua", "f1"} <= set(cell)
    assert " ERR " in capsys.readouterr().err  # the one line per finished cell

    summary = json.loads((root / "summary.json").read_text())
    assert summary["pooled"]["err"] == summaries["svm"]["pooled"]["err"]
    assert [row["err"] for row in summary["folds"]] == [cell["err"] for cell in cells]
    assert summary["fold_mean"]["err"] == pytest.approx(np.mean([c["err"] for c in cells]))
    assert summary["fold_std"]["err"] == pytest.approx(np.std([c["err"] for c in cells], ddof=1))
    assert summary["pooled"]["err"] == pytest.approx(1 - summary["pooled"]["wa"])
    text = (root / "summary.md").read_text()
    assert "| WA | UA | F1 | ERR |" in text and "ERR = share of wrong predictions" in text

    report = write_report(tmp_path / "runs" / "synthetic")
    markdown = Path(report["paths"]["report"]).read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| label |"))
    assert "| ERR mean ± std |" in header and "| pooled ERR |" in header
    row = next(line for line in markdown.splitlines() if line.startswith("| svm |"))
    shown = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert shown["pooled ERR"] == f"{100 * summary['pooled']['err']:.2f}"
    results = pd.read_csv(report["paths"]["results"])
    assert results.loc[0, "err_mean"] == pytest.approx(summary["fold_mean"]["err"])
    assert results.loc[0, "pooled_err"] == pytest.approx(summary["pooled"]["err"])
    assert pd.read_csv(report["paths"]["folds"])["err"].tolist() == pytest.approx(
        [cell["err"] for cell in cells]
    )


def test_the_module_logs_every_registered_metric(with_error_rate, monkeypatch):
    from sergraph.training.module import SERModule

    module = SERModule("lstm_gin", {}, in_channels=4, class_names=["a", "b", "c"])
    logged = {}
    monkeypatch.setattr(module, "log", lambda key, value, **_: logged.__setitem__(key, value))
    # 3 of 4 right; class 2: TP 1, FN 1 -> F1 2/3; class 1: TP 1, FP 1 -> 2/3; class 0: 1
    module.val_scores.update(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
    module.val_loss.update(torch.tensor(1.0))
    module.on_validation_epoch_end()
    assert {"val/wa", "val/ua", "val/f1", "val/err"} <= set(logged)
    assert logged["val/wa"] == pytest.approx(0.75) and logged["val/err"] == pytest.approx(0.25)
    assert logged["val/f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


@pytest.fixture
def error_rate_decides(with_error_rate, monkeypatch) -> Metric:
    """The error rate made the primary metric: every choice must now minimise."""
    monkeypatch.setattr(metrics, "PRIMARY", with_error_rate.name)
    return with_error_rate


def test_choices_follow_the_primary_metrics_direction(error_rate_decides):
    from sergraph.models.classic import inner_selection
    from sergraph.results.select import choose
    from sergraph.training.fusion import choose_weight

    assert metrics.primary().mode == "min"  # the checkpoint and early stopping's mode

    views = {
        label: {"val_speakers": ["v"], "best_val_ua": score}
        for label, score in (("a", 0.3), ("b", 0.1), ("c", 0.2))
    }
    assert choose(views) == "b"  # the lowest error rate

    # 4 of class 0, 1 of class 1. The graph model says 0 for all (error 0.2, UA 0.5), the SVM
    # is right on class 1 and on two of class 0 (error 0.4, UA 0.75). From w = 0.5 on the
    # fused argmax is the graph model's: the lowest error there, the largest such w: 1.0 (UA
    # would choose 0.4).
    labels = np.array([0, 0, 0, 0, 1])
    graph = np.eye(2)[[0, 0, 0, 0, 0]]
    svm = np.eye(2)[[0, 0, 1, 1, 1]]
    weight, table = choose_weight(graph, svm, labels, 2)
    assert weight == 1.0
    assert table["1.0"] == pytest.approx(0.2) and table["0.4"] == pytest.approx(0.4)

    class Constant:
        """Candidate 0 predicts class 1 for every utterance, candidate 1 class 0."""

        def score_candidates(self, grid, x_fit, y_fit, x_test, seed):
            rows = len(x_test)
            return [
                (np.array([0, 1]), np.tile([0.0, 1.0], (rows, 1))),
                (np.array([0, 1]), np.tile([1.0, 0.0], (rows, 1))),
            ]

    # each speaker: 3 of class 0, 1 of class 1. Candidate 0 errs on 3 of 4, candidate 1 on 1
    # of 4; their UA ties at 0.5 (UA would keep the first).
    labels = np.array([0, 0, 0, 1] * 2)
    speakers = np.array(["s1"] * 4 + ["s2"] * 4)
    values = np.arange(16, dtype=float).reshape(8, 2)
    chosen, score, table = inner_selection(
        Constant(), [{"C": 1}, {"C": 2}], values, labels, speakers, np.arange(8), 2, 0
    )
    assert chosen == {"C": 2} and score == pytest.approx(0.25)
    assert table == pytest.approx([0.75, 0.25])


# Strings outside sergraph/metrics.py that hold a metric's name as a word, and why they may.
RECORDED_KEYS = {
    # metrics.json keys of the primary metric's values, written before the registry: results
    # on disk, the docs and downstream scripts read them under these names
    "val_ua": "a fused cell's validation score per fusion weight (training/fusion.py)",
    "graph_test_ua": "a fused cell's unfused graph test score",
    "svm_test_ua": "a fused cell's unfused SVM test score",
    "svm_inner_cv_ua": "the fused SVM's inner leave-one-speaker-out score",
    "inner_cv_ua": "a classic baseline's inner leave-one-speaker-out score",
    "model_best_val_ua": "a fused cell's neural model's own best validation score",
    "selection_val_ua": "each candidate's validation score recorded by nested selection",
    # a report file name that docs and earlier reports use
    "wa_ua_vs_k.png": "the figure of every metric against graph.k (results/report.py)",
}


def metric_name_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a module, docstrings aside, that holds one of
    WA/UA/F1's keys as a word (``"ua"``, ``"val/ua"``, ``"test_wa"``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    names = {"wa", "ua", "f1"}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and names & set(re.split(r"[^A-Za-z0-9]+", node.value))
    ]


def test_metric_names_are_spelled_in_the_registry_only():
    """A new metric must be a one-place change: code outside sergraph/metrics.py reads the
    registry (``METRICS``, ``PRIMARY``, ``BEST_VALIDATION``) instead of spelling ``"wa"``,
    ``"ua"``, ``"f1"`` or keys made of them, except the recorded keys listed above."""
    package = Path(sergraph.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "metrics.py":
            continue
        for line, text in metric_name_strings(path):
            if text not in RECORDED_KEYS:
                found.append(f"{path.relative_to(package.parent)}:{line}: {text!r}")
    assert not found, "metric names spelled outside sergraph/metrics.py:\n" + "\n".join(found)


def test_the_structure_check_can_fail(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        '"""Docstrings may say ``val/ua``."""\n'
        'KEY = "ua"\n'
        'LOGGED = f"val/ua{1}"\n'
        'OTHER = "usual words, qua"\n'
    )
    assert metric_name_strings(source) == [(2, "ua"), (3, "val/ua")]
