"""write_report on a hand-written results folder: every expected number is worked out by hand.

Two classes (ang, neu). Folds 0-3 test 2 ang + 2 neu utterances of speaker s<fold>; fold 4 tests
2 ang + 3 neu of s4.

- A (k=4, readout sum): perfect on folds 0-4, seed 0.
- B (k=4, readout mean): seed 0 with known errors, seed 1 perfect, folds 0-4.
- C (k=2, readout sum, otherwise as A): one error on fold 0, perfect on folds 1-3, no fold 4.

These cells record WA and UA only, as cells written before sergraph computed macro-F1: the
report shows their per-fold F1 as missing and pools F1 from their predictions files.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from sergraph.results.compare import paired_test
from sergraph.results.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["ang", "neu"]


def truths(fold: int) -> list[str]:
    return ["ang", "ang", "neu", "neu"] + (["neu"] if fold == 4 else [])


def perfect(fold: int) -> list[tuple[str, str]]:
    return [(t, t) for t in truths(fold)]


# (true, predicted) per fold, with WA and UA worked out by hand
B_SEED0 = {
    0: (perfect(0), 1.0, 1.0),
    1: ([("ang", "neu"), ("ang", "ang"), ("neu", "neu"), ("neu", "neu")], 0.75, 0.75),
    2: ([("ang", "neu"), ("ang", "ang"), ("neu", "neu"), ("neu", "neu")], 0.75, 0.75),
    3: ([("ang", "neu"), ("ang", "ang"), ("neu", "ang"), ("neu", "neu")], 0.5, 0.5),
    4: ([("ang", "neu"), ("ang", "neu"), ("neu", "neu"), ("neu", "neu"), ("neu", "neu")], 0.6, 0.5),
}
C_SEED0 = {
    0: ([("ang", "neu"), ("ang", "ang"), ("neu", "neu"), ("neu", "neu")], 0.75, 0.75),
    1: (perfect(1), 1.0, 1.0),
    2: (perfect(2), 1.0, 1.0),
    3: (perfect(3), 1.0, 1.0),
}


def config_yaml(label: str, k: int, readout: str, seeds: str) -> str:
    return (
        f"data:\n  name: iemocap\ngraph:\n  k: {k}\n  max_nodes: 120\n"
        f"model:\n  name: lstm_gin\n  params:\n    readout: {readout}\n"
        f"run:\n  label: {label}\n  name: study\n  seeds: {seeds}\n"
        f"logger:\n  kind: csv\nreference: A\n"  # the experiment's declared baseline
    )


def write_cell(run_dir, label, seed, fold, pairs, wa, ua, config, f1=None):
    directory = run_dir / label / f"seed-{seed}" / f"fold-{fold:02d}"
    directory.mkdir(parents=True)
    pd.DataFrame(
        {
            "utterance": [f"{label}_{seed}_{fold}_{i}" for i in range(len(pairs))],
            "speaker": f"s{fold}",
            "true": [t for t, _ in pairs],
            "predicted": [p for _, p in pairs],
            "p_ang": [float(p == "ang") for _, p in pairs],
            "p_neu": [float(p == "neu") for _, p in pairs],
        }
    ).to_csv(directory / "predictions.csv", index=False)
    (directory / "config.yaml").write_text(config)
    metrics = {
        "config_id": f"id-{label}",
        "model": "lstm_gin",
        "seed": seed,
        "fold": fold,
        "train_speakers": [],
        "val_speakers": [],
        "test_speakers": [f"s{fold}"],
        "classes": CLASSES,
        "n_test": len(pairs),
        "wa": wa,
        "ua": ua,
        **({} if f1 is None else {"f1": f1}),
        "epochs": 1,
        "seconds": 0.0,
    }
    (directory / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "study"
    config_a = config_yaml("A", 4, "sum", "[0, 1]")
    config_b = config_yaml("B", 4, "mean", "[0, 1]")
    config_c = config_yaml("C", 2, "sum", "[0]")  # run.seeds differs: a runtime key, ignored
    for fold in range(5):
        write_cell(root, "A", 0, fold, perfect(fold), 1.0, 1.0, config_a)
        pairs, wa, ua = B_SEED0[fold]
        write_cell(root, "B", 0, fold, pairs, wa, ua, config_b)
        write_cell(root, "B", 1, fold, perfect(fold), 1.0, 1.0, config_b)
    for fold, (pairs, wa, ua) in C_SEED0.items():
        write_cell(root, "C", 0, fold, pairs, wa, ua, config_c)
    return root


@pytest.fixture(scope="module")
def result(run_dir):
    """One report shared by the tests that only read it (rendering figures takes a while)."""
    return write_report(run_dir)


def test_results_table_by_hand(run_dir, result):
    results = pd.read_csv(run_dir / "report" / "results.csv").set_index("label")
    assert list(results.index) == ["A", "B", "C"]

    a = results.loc["A"]
    assert (a["folds"], a["seeds"], a["cells"], a["predictions"]) == (5, 1, 5, 21)
    assert a[["wa_mean", "ua_mean", "pooled_wa", "pooled_ua"]].tolist() == pytest.approx([1] * 4)
    assert a["wa_std"] == 0 and a["ua_std"] == 0
    assert math.isnan(a["pooled_ua_std"])  # one seed: no std over seeds

    b = results.loc["B"]
    assert (b["folds"], b["seeds"], b["cells"], b["predictions"]) == (5, 2, 10, 42)
    ua_cells = [1, 0.75, 0.75, 0.5, 0.5] + [1] * 5
    wa_cells = [1, 0.75, 0.75, 0.5, 0.6] + [1] * 5
    assert b["ua_mean"] == pytest.approx(0.85)
    assert b["ua_std"] == pytest.approx(math.sqrt(0.4 / 9))  # squares .135 + .02 + .245
    assert b["wa_mean"] == pytest.approx(0.86)
    assert b["wa_std"] == pytest.approx(np.std(wa_cells, ddof=1))
    assert b["ua_std"] == pytest.approx(np.std(ua_cells, ddof=1))
    # seed 0 pooled: ang 5/10 right, neu 10/11 right, 15/21 overall; seed 1 perfect
    ua_seed0, wa_seed0 = (5 / 10 + 10 / 11) / 2, 15 / 21
    assert b["pooled_ua"] == pytest.approx((ua_seed0 + 1) / 2)
    assert b["pooled_wa"] == pytest.approx((wa_seed0 + 1) / 2)
    assert b["pooled_ua_std"] == pytest.approx((1 - ua_seed0) / math.sqrt(2))
    assert b["pooled_wa_std"] == pytest.approx((1 - wa_seed0) / math.sqrt(2))

    c = results.loc["C"]
    assert (c["folds"], c["cells"], c["predictions"]) == (4, 4, 16)
    assert c["ua_mean"] == pytest.approx(0.9375)
    assert c["pooled_ua"] == pytest.approx((7 / 8 + 1) / 2)
    assert c["pooled_wa"] == pytest.approx(15 / 16)

    assert result["reference"] == "A"  # declared in the experiment, not chosen by a score
    assert [row["label"] for row in result["rows"]] == ["A", "B", "C"]

    folds = pd.read_csv(run_dir / "report" / "folds.csv")
    assert list(folds.columns) == ["label", "seed", "fold", "test_speakers", "n", "wa", "ua", "f1"]
    assert len(folds) == 5 + 10 + 4
    cell = folds[(folds["label"] == "B") & (folds["seed"] == 0) & (folds["fold"] == 4)].iloc[0]
    assert (cell["test_speakers"], cell["n"], cell["wa"], cell["ua"]) == ("s4", 5, 0.6, 0.5)


def test_cells_that_do_not_record_f1_show_it_missing_and_pool_it(run_dir, result):
    """The hand-written cells predate F1: no fold mean (a "–" and a note), but a pooled F1
    from their predictions files: F1 per class = 2 TP / (2 TP + FP + FN)."""
    results = pd.read_csv(run_dir / "report" / "results.csv").set_index("label")
    assert results[["f1_mean", "f1_std"]].isna().all().all()
    assert pd.read_csv(run_dir / "report" / "folds.csv")["f1"].isna().all()
    assert results.loc["A", "pooled_f1"] == pytest.approx(1.0)
    # B seed 0 pooled: ang TP 5, FN 5, FP 1; neu TP 10, FN 1, FP 5; seed 1 perfect
    f1_seed0 = (10 / (10 + 1 + 5) + 20 / (20 + 5 + 1)) / 2
    assert results.loc["B", "pooled_f1"] == pytest.approx((f1_seed0 + 1) / 2)
    assert results.loc["B", "pooled_f1_std"] == pytest.approx((1 - f1_seed0) / math.sqrt(2))
    summary = json.loads((run_dir / "B" / "summary.json").read_text())
    assert summary["fold_mean"]["f1"] is None and summary["fold_std"]["f1"] is None
    assert all(row["f1"] is None for row in summary["folds"])
    assert summary["pooled"]["f1"] == pytest.approx((f1_seed0 + 1) / 2)
    report = (run_dir / "report" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| label |"))
    assert "| F1 mean ± std |" in header and "| pooled F1 |" in header
    row = next(line for line in report.splitlines() if line.startswith("| B |"))
    cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert cells["F1 mean ± std"] == "–"
    assert cells["pooled F1"].startswith(f"{100 * (f1_seed0 + 1) / 2:.2f} ± ")
    assert "–: not recorded in the metrics.json of some cells" in report
    assert "F1 = mean F1 over the classes present in the targets" in report
    text = (run_dir / "B" / "summary.md").read_text()
    assert "| WA | UA | F1 |" in text and "not recorded in the metrics.json" in text


def test_recorded_f1_is_averaged_over_cells(run_dir, tmp_path):
    """Cells that record F1 get its mean and sample std over cells, like WA and UA."""
    from sklearn.metrics import f1_score

    recorded = []
    for fold, (pairs, wa, ua) in B_SEED0.items():
        true, predicted = zip(*pairs, strict=True)
        f1 = f1_score(true, predicted, labels=sorted(set(true)), average="macro", zero_division=0)
        recorded.append(f1)
        write_cell(tmp_path / "run", "B", 0, fold, pairs, wa, ua, "", f1=f1)
    assert recorded[4] == pytest.approx((0 + 6 / 8) / 2)  # fold 4: ang 0 of 2, neu 3/(3 + 2/2)
    result = write_report(tmp_path / "run")
    (row,) = result["rows"]
    assert row["f1_mean"] == pytest.approx(np.mean(recorded))
    assert row["f1_std"] == pytest.approx(np.std(recorded, ddof=1))
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "not recorded in the metrics.json" not in report


def test_paired_comparisons(run_dir, result):
    tests = {(t["first"], t["second"]): t for t in result["comparisons"]}
    assert set(tests) == {("A", "B"), ("A", "C"), ("B", "C")}

    # A - B per fold, B's two seeds averaged first: B = 1, .875, .875, .75, .75
    a_b = tests["A", "B"]
    differences = [0.0, 0.125, 0.125, 0.25, 0.25]
    assert a_b["paired"] == 5 and a_b["kind"] == "vs reference"
    assert a_b["differences"] == pytest.approx(differences)
    assert a_b["mean_difference"] == pytest.approx(0.15)
    assert a_b["p_value"] == pytest.approx(wilcoxon(differences, alternative="two-sided").pvalue)
    assert a_b["ci_low"] <= 0.15 <= a_b["ci_high"]
    assert "no power" in a_b["note"]  # 4 nonzero differences

    # C has no fold 4: it is left out of the pairing and reported
    a_c = tests["A", "C"]
    assert a_c["paired"] == 4
    assert a_c["only_first"] == [(4, "s4")] and a_c["only_second"] == []
    assert a_c["differences"] == pytest.approx([0.25, 0, 0, 0])
    assert a_c["mean_difference"] == pytest.approx(0.0625)

    b_c = tests["B", "C"]
    assert b_c["kind"] == "pair" and b_c["paired"] == 4
    assert b_c["differences"] == pytest.approx([0.25, -0.125, -0.125, -0.25])

    # no variant declares readout or k here, so each pair notes what else differs
    assert tests["A", "B"]["undeclared"] == ["model.params.readout"]
    assert tests["A", "C"]["undeclared"] == ["graph.k"]

    report = (run_dir / "report" / "report.md").read_text()
    assert "Paired comparisons" in report
    assert "| A | B | 5 | +15.00 | [" in report and "| not significant (p ≥ 0.05);" in report
    assert "configs also differ in keys their variants do not declare: graph.k" in report
    assert "data not recorded by some cells: not checked" in report  # hand-written cells
    assert "unpaired, only in A: 4 (s4)" in report
    assert "| A | B | 5 | +15.00 |" in report
    assert "| A (reference) |" in report and "**" not in report  # nothing bolded by a score
    assert "often noise" in report
    assert "do not cover the same folds" in report  # C lacks fold 4


def test_paired_test_edge_cases():
    same = {(i, f"s{i}"): 0.5 for i in range(5)}
    zero = paired_test(same, dict(same))
    assert zero["p_value"] is None and "zero" in zero["note"]
    assert (zero["mean_difference"], zero["ci_low"], zero["ci_high"]) == (0, 0, 0)

    # six folds of one sign: an exact test can reach p < 0.05, so no "no power" note
    first = {(i, f"s{i}"): 0.6 + 0.01 * i for i in range(7)}
    second = {(i, f"s{i}"): 0.5 for i in range(1, 7)}
    test = paired_test(first, second)
    differences = [0.11, 0.12, 0.13, 0.14, 0.15, 0.16]
    assert test["paired"] == 6 and test["only_first"] == [(0, "s0")]
    assert test["p_value"] == pytest.approx(wilcoxon(differences, alternative="two-sided").pvalue)
    assert test["p_value"] < 0.05 and test["note"] == ""
    assert test["ci_low"] <= np.mean(differences) <= test["ci_high"]
    assert paired_test(first, second) == test  # seeded bootstrap

    # the same fold number with other test speakers is not the same fold
    other = paired_test({(0, "s0"): 0.5}, {(0, "s9"): 0.4})
    assert other["paired"] == 0 and other["p_value"] is None


def test_figures(run_dir, result):
    out = run_dir / "report"
    # C differs from A in graph.k only (run.seeds is a runtime key); B differs in the readout
    assert result["k_groups"] == [{"labels": ["C", "A"], "k": [2, 4]}]
    names = {"confusion_A.png", "confusion_B.png", "confusion_C.png", "folds.png", "wa_ua_vs_k.png"}
    assert {p.name for p in out.glob("*.png")} == names
    assert sorted(result["paths"]["figures"]) == sorted(str(out / n) for n in names)
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert "![wa_ua_vs_k.png](wa_ua_vs_k.png)" in (out / "report.md").read_text()


def test_no_k_figure_when_k_is_shared(run_dir, tmp_path):
    """A and B share k: no k figure, and one left by an earlier report is removed."""
    for label in ("A", "B"):
        shutil.copytree(run_dir / label, tmp_path / "run" / label)
    (tmp_path / "run" / "D" / "seed-0" / "fold-00").mkdir(parents=True)  # still training
    out = tmp_path / "out"
    out.mkdir()
    (out / "wa_ua_vs_k.png").write_bytes(PNG_MAGIC)
    result = write_report(tmp_path / "run", out)
    assert result["k_groups"] == []
    assert [row["label"] for row in result["rows"]] == ["A", "B"]
    assert result["unfinished"] == ["D"]
    assert not (out / "wa_ua_vs_k.png").exists()
    report = (out / "report.md").read_text()
    assert "wa_ua_vs_k.png" not in report
    assert "do not cover the same folds" not in report  # A and B share all five folds
    assert "No finished fold yet, so not in the table: D." in report
    assert (out / "folds.png").read_bytes()[:8] == PNG_MAGIC


def test_single_label_folder(run_dir, tmp_path):
    shutil.copytree(run_dir / "B", tmp_path / "B")
    result = write_report(tmp_path / "B")
    assert [row["label"] for row in result["rows"]] == ["B"]
    assert result["comparisons"] == []
    assert "nothing to compare" in (tmp_path / "B" / "report" / "report.md").read_text()
    assert (tmp_path / "B" / "report" / "confusion_B.png").read_bytes()[:8] == PNG_MAGIC


def test_no_finished_cells_names_the_folder(tmp_path):
    (tmp_path / "run" / "A" / "seed-0" / "fold-00").mkdir(parents=True)  # unfinished fold
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "run"))):
        write_report(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")


def _relabel_cells(root, label: str, **fields) -> None:
    for path in (root / label).glob("seed-*/fold-*/metrics.json"):
        metrics = json.loads(path.read_text())
        metrics.update(fields)
        path.write_text(json.dumps(metrics))


def test_reference_is_never_chosen_by_a_test_score(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    for config in study.glob("*/seed-*/fold-*/config.yaml"):
        config.write_text(config.read_text().replace("reference: A\n", ""))
    result = write_report(study)
    assert result["reference"] is None
    assert {t["kind"] for t in result["comparisons"]} == {"pair"}
    assert "No reference declared" in (study / "report" / "report.md").read_text()
    # --reference wins over the declaration and over every score (C has the worst pooled UA)
    result = write_report(study, reference="C")
    assert {(t["first"], t["kind"]) for t in result["comparisons"] if t["first"] == "C"} == {
        ("C", "vs reference")
    }


def test_pairs_of_different_protocols_are_refused_unless_asked(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    transductive = {"name": "transductive", "note": "transductive: test utterances were used"}
    inductive = {"name": "inductive", "note": "inductive: training speakers only"}
    _relabel_cells(study, "A", protocol=inductive)
    _relabel_cells(study, "C", protocol=inductive)
    _relabel_cells(study, "B", protocol=transductive)
    result = write_report(study)
    assert sorted(result["refused"]) == [("A", "B"), ("B", "C")]
    assert {(t["first"], t["second"]) for t in result["comparisons"]} == {("A", "C")}
    text = (study / "report" / "report.md").read_text()
    assert (
        "Not compared, their protocols differ (--cross-protocol to test anyway): A / B, B / C."
        in text
    )
    # the paired table still names its metric beside the refused pairs
    assert "| A | B | folds paired | Δ UA | 95% CI | Wilcoxon p | Holm p | note |" in text
    assert "| B | lstm_gin | transductive |" in text and "transductive: test utterances" in text

    result = write_report(study, cross_protocol=True)
    kinds = {(t["first"], t["second"]): t["kind"] for t in result["comparisons"]}
    assert kinds["A", "B"] == "vs reference, CROSS-PROTOCOL (inductive vs transductive)"
    assert kinds["A", "C"] == "vs reference" and result["refused"] == []


def test_rows_show_provenance_and_changed_config_files(run_dir, tmp_path):
    from sergraph.config import config_dir, file_sha256

    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    current = file_sha256(config_dir() / "default.yaml")
    files = {"default.yaml": current, "experiment/quickstart.yaml": "0" * 64}
    clean = {"commit": "a" * 40, "dirty": False, "config_files": {"default.yaml": current}}
    _relabel_cells(study, "A", provenance=clean)
    _relabel_cells(study, "B", provenance={**clean, "dirty": True, "config_files": files})
    result = write_report(study)
    rows = {row["label"]: row["provenance"] for row in result["rows"]}
    assert rows == {
        "A": "clean @ aaaaaaaa",
        "B": "DIRTY @ aaaaaaaa",
        "C": "unknown (cells without git provenance)",
    }
    assert list(result["changed_sources"]) == ["B"]
    assert result["changed_sources"]["B"][0].startswith("experiment/quickstart.yaml (recorded 000")
    assert "WARNING: config files changed" in (study / "report" / "report.md").read_text()


def test_a_report_over_some_folds_only(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    before = (study / "B" / "summary.json").read_text()
    result = write_report(study, folds=[1, 2, 3])
    rows = {row["label"]: row for row in result["rows"]}
    # B over folds 1-3: seed 0 UA .75, .75, .5 and seed 1 perfect
    assert rows["B"]["ua_mean"] == pytest.approx((0.75 + 0.75 + 0.5 + 3) / 6)
    assert (rows["B"]["folds"], rows["C"]["folds"]) == (3, 3)
    assert {t["paired"] for t in result["comparisons"]} == {3}
    assert "(folds 1,2,3 only)" in (study / "report" / "report.md").read_text()
    assert (study / "B" / "summary.json").read_text() == before  # left alone


def test_cells_made_before_protocols_take_theirs_from_config_yaml(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    for config in (study / "B").glob("seed-*/fold-*/config.yaml"):
        config.write_text(config.read_text().replace("  k: 4\n", "  k: 4\n  normalize: speaker\n"))
    result = write_report(study)
    assert {row["label"]: row["protocol"] for row in result["rows"]} == {
        "A": "inductive",
        "B": "transductive",  # graph.normalize=speaker alone, as before protocols had names
        "C": "inductive",
    }
    assert sorted(result["refused"]) == [("A", "B"), ("B", "C")]


def test_declared_controls_are_paired_with_their_variant(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    for config in study.glob("*/seed-*/fold-*/config.yaml"):
        config.write_text(config.read_text() + "controls:\n  C: B\n")
    result = write_report(study)
    tests = {(t["first"], t["second"]): t for t in result["comparisons"]}
    control = tests["C", "B"]
    assert control["kind"] == "vs control"
    assert ("B", "C") not in tests  # the pair is tested once, variant first
    # per-fold UA, seeds averaged: B = 1, .875, .875, .75 (folds 0-3); C = .75, 1, 1, 1
    assert control["paired"] == 4
    assert control["mean_difference"] == pytest.approx((-0.25 + 0.125 + 0.125 + 0.25) / 4)
    assert "B is A's declared control" in (study / "report" / "report.md").read_text()


def test_a_control_that_is_the_reference_is_tested_once(run_dir, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(run_dir, study, ignore=shutil.ignore_patterns("report"))
    for config in study.glob("*/seed-*/fold-*/config.yaml"):
        config.write_text(config.read_text() + "controls:\n  C: A\n")  # A is the reference
    result = write_report(study)
    kinds = [(t["first"], t["second"], t["kind"]) for t in result["comparisons"]]
    assert ("C", "A", "vs control") in kinds
    assert [k for k in kinds if {k[0], k[1]} == {"A", "C"}] == [("C", "A", "vs control")]
    assert ("A", "B", "vs reference") in kinds


def test_the_report_calls_a_difference_significant_only_where_the_paired_test_does():
    from sergraph.results.markdown import significance_words

    # the README's fusion row: the interval above 0, p = 0.131: not significant
    fused = {"p_value": 0.131, "ci_low": 0.0011, "ci_high": 0.0917}
    assert significance_words(fused) == (
        "not significant (p ≥ 0.05); the bootstrap interval excludes 0, which the paired test "
        "does not back"
    )
    assert significance_words({"p_value": 0.105, "ci_low": -0.0008, "ci_high": 0.0937}) == (
        "not significant (p ≥ 0.05)"
    )
    assert significance_words({"p_value": 0.05, "ci_low": 0.01, "ci_high": 0.02}).startswith(
        "not significant"
    )
    assert significance_words({"p_value": 0.0273, "ci_low": 0.03, "ci_high": 0.16}) == (
        "significant (p < 0.05)"
    )
    assert significance_words({"p_value": None, "ci_low": 0.0, "ci_high": 0.0}) == "not tested"


def test_holm_adjustment_against_a_hand_calculation():
    from sergraph.results.compare import holm

    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    # (never below the one before it); back in the given order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; one p alone is unchanged
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2]) and holm([]) == []


def test_holm_agrees_with_statsmodels():
    from sergraph.results.compare import holm

    statsmodels = pytest.importorskip("statsmodels.stats.multitest")
    p = [0.011, 0.2, 0.04, 0.003, 0.04, 0.9]
    expected = statsmodels.multipletests(p, method="holm")[1]
    assert holm(p) == pytest.approx(list(expected))


def test_the_report_adjusts_the_comparisons_with_the_reference(run_dir, result):
    tests = {(t["first"], t["second"]): t for t in result["comparisons"]}
    a_b, a_c, b_c = tests["A", "B"], tests["A", "C"], tests["B", "C"]
    # the family: A - B and A - C (both against the reference, both with a p); by hand
    low, high = sorted([a_b["p_value"], a_c["p_value"]])
    adjusted_low = min(1.0, 2 * low)
    adjusted_high = max(adjusted_low, min(1.0, high))
    by_p = {low: adjusted_low, high: adjusted_high}
    assert a_b["p_holm"] == pytest.approx(by_p[a_b["p_value"]])
    assert a_c["p_holm"] == pytest.approx(by_p[a_c["p_value"]])
    assert a_b["p_holm"] > a_b["p_value"]  # m = 2: the smaller p doubled
    assert b_c["p_holm"] is None  # a pair without the reference: outside the family
    report = (run_dir / "report" / "report.md").read_text()
    assert "| Wilcoxon p | Holm p | note |" in report
    assert "family of the 2 comparison(s) with the reference in this report" in report
    row = next(line for line in report.splitlines() if line.startswith("| A | B | 5 |"))
    assert f"| {a_b['p_value']:.3g} | {a_b['p_holm']:.3g} |" in row
    row = next(line for line in report.splitlines() if line.startswith("| B | C |"))
    assert f"| {b_c['p_value']:.3g} | – |" in row


def test_significance_follows_the_holm_p_inside_the_family():
    from sergraph.results.markdown import significance_words

    inside = {"p_value": 0.03, "p_holm": 0.06, "ci_low": 0.01, "ci_high": 0.02}
    assert significance_words(inside) == (
        "not significant after Holm's correction (p < 0.05, Holm p ≥ 0.05)"
    )
    assert significance_words({**inside, "p_holm": 0.04}) == "significant (Holm p < 0.05)"
    assert significance_words({**inside, "p_holm": None}) == "significant (p < 0.05)"


def sweep_item(grid, lr, fold_scores, pooled):
    return {
        "config": {"grid": grid, "optim": {"lr": lr}, "model": {"params": {"readout": "sum"}}},
        "fold_scores": fold_scores,
        "row": {"pooled_ua": pooled},
    }


def test_a_one_key_numeric_grid_gets_ua_against_the_key(tmp_path):
    from sergraph.results.figures import plot_sweep, save_png
    from sergraph.results.report import sweep_points

    grid = {"optim.lr": ["0.01", "0.001"]}
    collected = [
        sweep_item(grid, 0.01, {(0, "s0"): 0.5, (1, "s1"): 0.7}, 0.6),
        sweep_item(grid, 0.001, {(0, "s0"): 0.4, (1, "s1"): 0.9}, 0.65),
        sweep_item({}, 0.1, {(0, "s0"): 1.0}, 1.0),  # e.g. a nested selection: not a point
    ]
    key, points = sweep_points(collected)
    assert key == "optim.lr"
    assert points == [(0.01, {0: 0.5, 1: 0.7}, 0.6), (0.001, {0: 0.4, 1: 0.9}, 0.65)]
    path = save_png(plot_sweep(key, points), tmp_path / "ua_vs_lr.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    # two keys, a value that is no number, one point only: no such figure
    two = {"optim.lr": ["0.01", "0.001"], "graph.k": ["2"]}
    assert sweep_points([sweep_item(two, 0.01, {}, 0.5), sweep_item(two, 0.001, {}, 0.5)]) is None
    readout = {"model.params.readout": ["sum", "mean"]}
    words = [sweep_item(readout, 0.01, {}, 0.5), sweep_item(readout, 0.01, {}, 0.5)]
    assert sweep_points(words) is None
    assert sweep_points(collected[:1]) is None
