"""ONNX export of bundles, run under ONNX Runtime against the bundle on the synthetic corpus.

The reference is the bundle's own ``predict`` on the audio files (its route: audio -> cache ->
normalisation -> graph -> PyTorch model); the ONNX model gets the same cached node features,
padded with the helper documented in ``model.json``, and must give the same probabilities
within ``ONNX_TOLERANCE``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sergraph.cli import main
from sergraph.deploy.bundle import BundleError, load_bundle
from sergraph.deploy.onnx import (
    ONNX_TOLERANCE,
    check_onnx_exportable,
    onnx_inputs,
    run_onnx,
)

pytest.importorskip("onnxruntime")


def _features(bundle, paths, cache):
    from sergraph.data.features import FeatureCache

    return FeatureCache(cache, bundle.input_config()).get(paths, progress=False)


@pytest.mark.parametrize("which", ["ensemble", "fold0"])
def test_onnx_export_matches_the_bundle_under_onnxruntime(bundle_run, tmp_path, which, capsys):
    path = getattr(bundle_run, which)
    out = tmp_path / "onnx"
    assert main(["export", str(path), "--onnx", str(out)]) == 0
    assert "checked under ONNX Runtime" in capsys.readouterr().out
    bundle = load_bundle(path, map_location="cpu")
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["classes"] == bundle.classes
    assert sidecar["features"]["names"] == bundle.meta["features"]["names"]
    assert sidecar["inputs"]["features"]["shape"] == [1, 120, 76]
    assert sidecar["check"]["max_abs_diff"] <= ONNX_TOLERANCE
    assert (out / "MODEL_CARD.md").read_text() == bundle.model_card

    paths = list(bundle_run.audio.values())
    expected = bundle.predict(paths, cache_dir=bundle_run.cache, progress=False)
    columns = [f"p_{c}" for c in bundle.classes]
    got = run_onnx(
        out / "model.onnx", onnx_inputs(bundle, _features(bundle, paths, bundle_run.cache))
    )
    assert got.shape == (len(paths), len(bundle.classes))
    np.testing.assert_allclose(got, expected[columns].to_numpy(), rtol=0, atol=ONNX_TOLERANCE)
    assert (np.array(bundle.classes)[got.argmax(axis=1)] == expected["emotion"]).all()
    # not a constant model: the probabilities differ between files
    assert np.ptp(got, axis=0).max() > 1e-4


def test_onnx_inputs_pad_cut_and_mask(bundle_run):
    bundle = load_bundle(bundle_run.fold0, map_location="cpu")
    short, long = np.ones((3, 76), np.float32), np.full((130, 76), 2.0, np.float32)
    first, second = onnx_inputs(bundle, [short, long])
    assert first["features"].shape == (1, 120, 76) and first["mask"].sum() == 3
    assert (first["features"][0, 3:] == 0).all() and (first["features"][0, :3] == 1).all()
    assert second["mask"].sum() == 120 and (second["features"] == 2).all()


def test_bundles_without_a_fixed_graph_are_refused_by_reason(bundle_run):
    meta = load_bundle(bundle_run.fold0, map_location="cpu").meta
    with pytest.raises(BundleError, match="graph.pad=false"):
        check_onnx_exportable({**meta, "graph": {**meta["graph"], "pad": False}})
    with pytest.raises(BundleError, match=r"graph.dilations=\[1, 2\]"):
        check_onnx_exportable({**meta, "graph": {**meta["graph"], "dilations": [1, 2]}})
    with pytest.raises(BundleError, match="eval.protocol=enrollment"):
        check_onnx_exportable({**meta, "protocol": {"name": "enrollment", "note": ""}})
    check_onnx_exportable(meta)  # the LSTM-GIN bundle itself is accepted


def _fake_bundle(name):
    """A bundle-shaped object holding one randomly initialised model of the preset ``name``."""
    from types import SimpleNamespace

    from sergraph.config import compose, model_spec
    from sergraph.data.graphs import Normalizer
    from sergraph.models import build_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    family, params = model_spec(compose([f"model={name}"]))
    model = build_model(family, 76, 4, **params).eval()
    meta = {
        "graph": {"k": 4, "max_nodes": 120, "pad": True, "normalize": "zscore"},
        "model": {"name": name, "in_channels": 76},
    }
    rng = np.random.default_rng(0)
    normalizer = Normalizer(
        rng.standard_normal(76).astype(np.float32), (1 + rng.random(76)).astype(np.float32)
    )
    return SimpleNamespace(
        meta=meta,
        models=[model],
        normalizers=[normalizer],
        classes=list("abcd"),
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("name", ["gin", "gcn", "cheb", "sage_mean", "bigru_attn"])
def test_the_families_said_to_export_match_pytorch(name, tmp_path):
    """Each family of ONNX_FAMILIES (lstm_gin: above, trained) with random weights: ONNX
    Runtime against the bundle's route (graph from build_graph, PyTorch forward)."""
    from sergraph.deploy.ensemble import Bundle
    from sergraph.deploy.onnx import ONNX_FAMILIES, onnx_model_bytes

    assert name in ONNX_FAMILIES
    fake = _fake_bundle(name)
    (tmp_path / "m.onnx").write_bytes(onnx_model_bytes(fake))
    features = [
        np.random.default_rng(length).standard_normal((length, 76)).astype(np.float32)
        for length in (5, 120, 150)
    ]
    fake.meta["features"] = {}
    expected = Bundle.predict_features(fake, features)
    got = run_onnx(tmp_path / "m.onnx", onnx_inputs(fake, features))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ONNX_TOLERANCE)


@pytest.mark.parametrize("name", ["gat", "gps"])
def test_families_that_cannot_export_are_refused_by_name(name):
    from sergraph.deploy.onnx import onnx_model_bytes

    with pytest.raises(BundleError, match=f"model '{name}'"):
        onnx_model_bytes(_fake_bundle(name))
