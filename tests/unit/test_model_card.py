"""The model card stored in every bundle, checked against the run's own files.

The expected numbers are computed here from the cells' ``metrics.json`` and
``predictions.csv`` with the standard library and scikit-learn, not with sergraph's summary.
"""

from __future__ import annotations

import json
import statistics

import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from sergraph.cli import main
from sergraph.deploy.bundle import load_bundle
from sergraph.deploy.card import model_card


def _cells(model_dir):
    return sorted(model_dir.glob("seed-*/fold-*"))


def test_the_card_reports_the_runs_cross_validated_scores_and_provenance(bundle_run):
    bundle = load_bundle(bundle_run.ensemble, map_location="cpu")
    card = bundle.model_card
    assert card == bundle.meta["model_card"]  # stored at export, not remade at load
    cells = _cells(bundle_run.model_dir)
    assert len(cells) == 2
    records = [json.loads((cell / "metrics.json").read_text()) for cell in cells]
    wa = [r["wa"] for r in records]
    ua = [r["ua"] for r in records]
    f1 = [r["f1"] for r in records]
    assert "| over 2 (seed, fold) cells | WA % | UA % | F1 % |" in card
    assert (
        f"| mean ± std over folds | {100 * statistics.mean(wa):.2f} ± "
        f"{100 * statistics.stdev(wa):.2f} | {100 * statistics.mean(ua):.2f} ± "
        f"{100 * statistics.stdev(ua):.2f} | {100 * statistics.mean(f1):.2f} ± "
        f"{100 * statistics.stdev(f1):.2f} |" in card
    )
    pooled = pd.concat(pd.read_csv(cell / "predictions.csv") for cell in cells)
    pooled_wa = accuracy_score(pooled["true"], pooled["predicted"])
    pooled_ua = balanced_accuracy_score(pooled["true"], pooled["predicted"])
    present = sorted(set(pooled["true"]))
    pooled_f1 = f1_score(pooled["true"], pooled["predicted"], labels=present, average="macro")
    assert (
        f"| pooled test predictions | {100 * pooled_wa:.2f} | {100 * pooled_ua:.2f} | "
        f"{100 * pooled_f1:.2f} |" in card
    )
    for record in records:
        assert (
            f"seed 0 fold {record['fold']} WA {100 * record['wa']:.2f} "
            f"UA {100 * record['ua']:.2f} F1 {100 * record['f1']:.2f}" in card
        )
        for name in ("table", "inputs", "folds"):
            assert record["data"][name] in card
        assert record["provenance"]["commit"] in card
        assert record["provenance"]["sergraph"] in card
        assert ", ".join(record["test_speakers"]) in card
    speakers = sorted({s for r in records for s in r["train_speakers"] + r["test_speakers"]})
    assert f"4 speakers: {', '.join(speakers)}" in card
    assert "neutral, happy, sad, angry" in card or ", ".join(records[0]["classes"]) in card
    assert "eval.protocol=inductive" in card
    assert "speaker adaptation: none needed" in card
    assert "## Intended use and known limits" in card


def test_a_one_fold_bundle_has_its_own_card(bundle_run):
    card = load_bundle(bundle_run.fold1, map_location="cpu").model_card
    record = json.loads((bundle_run.model_dir / "seed-0" / "fold-01" / "metrics.json").read_text())
    assert "one fold model" in card
    assert "over 1 (seed, fold) cells" in card
    # one cell: no spread, and its pooled score is its own
    assert f"{100 * record['wa']:.2f} ± 0.00" in card
    assert (
        f"| pooled test predictions | {100 * record['wa']:.2f} | {100 * record['ua']:.2f} |" in card
    )


def test_predict_info_prints_the_card(bundle_run, capsys):
    assert main(["predict", "--info", str(bundle_run.ensemble)]) == 0
    out = capsys.readouterr().out
    assert out == load_bundle(bundle_run.ensemble, map_location="cpu").model_card


def test_predict_info_refuses_audio(bundle_run, capsys):
    wav = next(iter(bundle_run.audio.values()))
    assert main(["predict", "--info", str(bundle_run.ensemble), wav]) == 2
    assert "give no audio" in capsys.readouterr().err


def test_bundles_exported_before_cards_get_one_from_their_metadata(bundle_run):
    meta = dict(load_bundle(bundle_run.ensemble, map_location="cpu").meta)
    meta.pop("model_card")
    meta.pop("evaluation")
    card = model_card(meta)
    assert "Per-member test scores only" in card
    assert "mean ± std" not in card
    for member in meta["members"]:
        assert f"UA {100 * member['test_ua']:.2f}" in card


def test_bundles_exported_before_f1_show_it_missing(bundle_run):
    """A bundle whose members and evaluation record WA and UA only (exported before sergraph
    computed F1) gets a card with F1 shown as missing."""
    meta = dict(load_bundle(bundle_run.ensemble, map_location="cpu").meta)
    meta["members"] = [
        {key: value for key, value in member.items() if key != "test_f1"}
        for member in meta["members"]
    ]
    evaluation = dict(meta["evaluation"])
    for part in ("fold_mean", "fold_std", "pooled"):
        evaluation[part] = {key: value for key, value in evaluation[part].items() if key != "f1"}
    meta["evaluation"] = evaluation
    card = model_card(meta)
    assert "| F1 % |" in card
    assert card.count(" | – |") == 2  # the mean ± std and the pooled row
    for member in meta["members"]:
        assert f"UA {100 * member['test_ua']:.2f} F1 –" in card
