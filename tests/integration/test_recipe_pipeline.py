"""The best recipe through the real CLI on small synthetic audio: functionals in the head,
augmentation, schedule; then nested selection, a seed ensemble and a report against a reference."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.cli import run_cli as sergraph
from tests.integration.test_cli_pipeline import SMALL

pytestmark = pytest.mark.slow

RECIPE = [*SMALL, "folds.only=[0]", "trainer.max_epochs=3", "optim.warmup_epochs=1"]
# three of the ablation's variants (best_emodb_ablation) keep the test small
VARIANTS = {
    "best": [],
    "no_functionals": ["features.concat_functionals=false"],
    "no_graph": ["model.params.num_layers=0"],
}


def test_recipe_variants_select_ensemble_and_report(env, tmp_path):
    base = ["train", "experiment=best_emodb", *RECIPE, f"run.out_dir={tmp_path}", "run.name=study"]
    labels = tuple(VARIANTS)
    for label, overrides in VARIANTS.items():
        seeds = "run.seeds=[0,1]" if label == "best" else "run.seeds=[0]"
        result = sergraph([*base, *overrides, f"run.label={label}", seeds], env, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    study = tmp_path / "study"
    for label in labels:
        for seed in (0, 1) if label == "best" else (0,):
            cell = study / label / f"seed-{seed}" / "fold-00"
            metrics = json.loads((cell / "metrics.json").read_text())
            assert metrics["n_test"] == 16 and metrics["best_val_ua"] is not None
            config = (cell / "config.yaml").read_text()
            assert "concat_functionals: true" in config or label == "no_functionals"
    # nested selection on validation UA: the chosen variant's test predictions, cell by cell
    chosen = sergraph(["select", str(study), "--candidates", ",".join(labels)], env, tmp_path)
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    for seed in (0,):
        nested = json.loads(
            (study / "nested" / f"seed-{seed}" / "fold-00" / "metrics.json").read_text()
        )
        vals = nested["selection_val_ua"]
        assert nested["selected"] == max(labels, key=lambda name: vals[name])
        source = study / nested["selected"] / f"seed-{seed}" / "fold-00"
        pd.testing.assert_frame_equal(
            pd.read_csv(source / "predictions.csv"),
            pd.read_csv(study / "nested" / f"seed-{seed}" / "fold-00" / "predictions.csv"),
        )
    ensemble = sergraph(["ensemble", str(study / "best")], env, tmp_path)
    assert ensemble.returncode == 0, ensemble.stderr[-3000:]
    assert "pooled over all test predictions" in ensemble.stdout
    report = sergraph(["report", str(study), "--reference", "best"], env, tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    results = pd.read_csv(study / "report" / "results.csv")
    assert set(results["label"]) == {*labels, "nested", "best_seed_ensemble"}
    assert "| best | no_graph |" in report.stdout and "| best | nested |" in report.stdout
    bad = sergraph(["report", str(study), "--reference", "nope"], env, tmp_path)
    assert bad.returncode == 2 and "nope" in bad.stderr
