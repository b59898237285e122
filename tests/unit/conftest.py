"""Fixtures shared by the unit tests of bundles and export: one tiny real run, trained once."""

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
