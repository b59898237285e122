"""Bundles of ``features.concat_functionals`` runs (the recommended model): the utterance
functionals of new audio are computed, normalised per member and fed as in training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sergraph.deploy.bundle import load_bundle
from sergraph.deploy.pipeline import BundleError

#: Largest |difference| allowed between the bundle's probabilities for the corpus's own test
#: files and the cell's predictions.csv: both are float32 forward passes of the same weights on
#: the same inputs, so only the rounding of predictions.csv (6 decimals) separates them.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def functionals_run(functionals_run):
    """The recommended model's one-fold run (tests/unit/conftest.py) as (cell, audio, root,
    exported bundle)."""
    run = functionals_run
    return run.cell, run.audio, run.root, run.exported


def test_bundle_of_a_functionals_run_reproduces_its_predictions_from_audio(
    functionals_run, tmp_path
):
    cell, audio, root, exported = functionals_run
    path = root / "recommended.sergraph"
    assert exported.meta["verification"]["max_abs_diff"] <= 1e-3
    assert torch.load(path, weights_only=True)["format_version"] == 3
    bundle = load_bundle(path, map_location="cpu")
    recorded = bundle.meta["functionals"]
    assert recorded["feature_set"] == "is10" and len(recorded["names"]) == 1582
    assert bundle.meta["model"]["global_channels"] == 1582
    assert "functionals" in bundle.describe()
    saved = pd.read_csv(cell / "predictions.csv")
    paths = [audio[u] for u in saved["utterance"]]
    # a fresh cache: the functionals are computed anew from the audio, not read from training's
    frame = bundle.predict(paths, batch_size=4, cache_dir=tmp_path / "fresh", progress=False)
    expected = saved.filter(like="p_").to_numpy(dtype=float)
    got = frame.filter(like="p_").to_numpy(dtype=float)
    assert np.abs(got - expected).max() <= TOLERANCE
    # the functionals matter: without the member's statistics the answer moves
    own = bundle.global_normalizers[0]
    bundle.global_normalizers[0] = type(own)(own.mean * 0, own.std * 0 + 1)
    other = bundle.predict(paths, batch_size=4, cache_dir=tmp_path / "fresh", progress=False)
    assert np.abs(other.filter(like="p_").to_numpy(dtype=float) - expected).max() > 1e-4


def test_functionals_bundles_refuse_windows_and_missing_vectors(functionals_run):
    _, audio, root, _ = functionals_run
    bundle = load_bundle(root / "recommended.sergraph", map_location="cpu")
    path = next(iter(audio.values()))
    with pytest.raises(BundleError, match="whole files only"):
        bundle.predict([path], window=1.0, progress=False, cache_dir=root / "features")
    with pytest.raises(BundleError, match="give functionals"):
        bundle.predict_features([np.zeros((5, bundle.meta["model"]["in_channels"]), np.float32)])


def test_enrollment_with_functionals_is_refused_by_name():
    from sergraph.config import compose, model_spec, protocol_of
    from sergraph.deploy.export import _check_exportable

    cfg = compose(["experiment=recommended", "eval.protocol=enrollment"])
    family, _ = model_spec(cfg)
    with pytest.raises(BundleError, match="enrollment audio"):
        _check_exportable(cfg, family, protocol_of(cfg))
    inductive = compose(["experiment=recommended", "eval.protocol=inductive"])
    _check_exportable(inductive, family, protocol_of(inductive))


def test_a_signal_in_memory_gets_the_file_s_functionals(functionals_run, tmp_path):
    import soundfile as sf

    _, audio, root, _ = functionals_run
    bundle = load_bundle(root / "recommended.sergraph", map_location="cpu")
    path = next(iter(audio.values()))
    from_file = bundle.predict([path], cache_dir=tmp_path / "c", progress=False)
    samples, rate = sf.read(path, dtype="float32")
    from_memory = bundle.predict_signal(samples, rate)
    np.testing.assert_allclose(
        from_memory.filter(like="p_").to_numpy(dtype=float),
        from_file.filter(like="p_").to_numpy(dtype=float),
        atol=TOLERANCE,
    )
