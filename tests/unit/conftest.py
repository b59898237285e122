"""Fixtures shared by the unit tests of bundles and export: tiny real runs, each trained once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sergraph.deploy.bundle import export_bundle


@pytest.fixture(scope="session")
def bundle_run(tmp_path_factory):
    """Two folds of LSTM-GIN, one epoch, on 4 synthetic speakers x 4 classes x 3 utterances."""
    from sergraph.training.study import run_study

    root = tmp_path_factory.mktemp("bundle")
    run_study(
        [
            f"data.root={root / 'corpus'}",
            "data.options.n_speakers=4",
            "data.options.n_per_class=3",
            "folds.only=[0,1]",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "optim.lr=1e-3",
            "features.workers=1",
            f"features.cache_dir={root / 'features'}",
            f"run.out_dir={root / 'runs'}",
            "logger.kind=none",
        ]
    )
    model_dir = root / "runs" / "synthetic" / "lstm_gin"
    ensemble, _ = export_bundle(model_dir, root / "ensemble.sergraph")
    fold0, _ = export_bundle(model_dir / "seed-0" / "fold-00", root / "fold0.sergraph")
    fold1, _ = export_bundle(model_dir, root / "fold1.sergraph", folds=[1])
    corpus = next((root / "corpus").glob("synthetic-*"))
    audio = {p.stem: str(p) for p in sorted((corpus / "wav").glob("*.wav"))}
    return SimpleNamespace(
        root=root,
        model_dir=model_dir,
        cache=root / "features",
        ensemble=ensemble,
        fold0=fold0,
        fold1=fold1,
        audio=audio,
    )


_SMALL_CORPUS = ["data.options.n_speakers=4", "data.options.n_per_class=3"]


def _functionals_cell(root, out_dir, overrides, variant="inductive"):
    """One fold of the recommended recipe (IS10 LLD nodes and the IS10 functionals vector)
    under ``variant`` (its eval.protocol), one epoch, on the corpus and feature cache under
    ``root``."""
    from sergraph.training.study import run_study

    run_study(
        [
            "experiment=recommended",
            f"run.variants=[{variant}]",
            "run.seeds=[0]",
            f"data.root={root / 'corpus'}",
            *_SMALL_CORPUS,
            "folds.only=[0]",
            "folds.val_speakers=1",
            "trainer.max_epochs=1",
            "optim.schedule=constant",
            "optim.warmup_epochs=0",
            "trainer.accelerator=cpu",
            "features.workers=1",
            f"features.cache_dir={root / 'features'}",
            f"run.out_dir={out_dir}",
            "logger.kind=none",
            *overrides,
        ]
    )
    return next(out_dir.glob("**/seed-0/fold-00"))


@pytest.fixture(scope="session")
def functionals_run(tmp_path_factory):
    """The recommended model (GIN without graph layers, with the functionals vector), one
    fold, exported as ``root/recommended.sergraph``."""
    root = tmp_path_factory.mktemp("functionals")
    cell = _functionals_cell(root, root / "runs", [])
    corpus = next((root / "corpus").glob("synthetic-*"))
    audio = {p.stem: str(p) for p in sorted((corpus / "wav").glob("*.wav"))}
    bundle, exported = export_bundle(cell.parents[1], root / "recommended.sergraph")
    return SimpleNamespace(
        cell=cell, audio=audio, root=root, bundle=bundle, exported=exported, cache=root / "features"
    )


@pytest.fixture(scope="session")
def functionals_graph_run(functionals_run):
    """The same recipe with two GIN layers (best_emodb's graph under eval.protocol=inductive),
    on the same corpus and feature cache, exported as ``root/graph.sergraph``."""
    root = functionals_run.root
    cell = _functionals_cell(root, root / "runs-graph", ["model.params.num_layers=2"])
    bundle, exported = export_bundle(cell.parents[1], root / "graph.sergraph")
    return SimpleNamespace(cell=cell, bundle=bundle, exported=exported)


@pytest.fixture(scope="session")
def functionals_enrollment_run(functionals_run):
    """The recommended model under eval.protocol=enrollment (3 enrollment utterances of each
    held-out speaker), on the same corpus and feature cache, exported as
    ``root/enrollment.sergraph``; ``table`` is the corpus table."""
    from sergraph.config import compose
    from sergraph.data.prepared import load_table

    root = functionals_run.root
    overrides = ["eval.enrollment=3"]
    cell = _functionals_cell(root, root / "runs-enrollment", overrides, "enrollment")
    bundle, exported = export_bundle(cell.parents[1], root / "enrollment.sergraph")
    table, _ = load_table(compose([f"data.root={root / 'corpus'}", *_SMALL_CORPUS]))
    return SimpleNamespace(cell=cell, bundle=bundle, exported=exported, table=table)
