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


def _fake_bundle(name, functionals=0):
    """A bundle-shaped object holding one randomly initialised model of the preset ``name``
    (taking a functionals vector of ``functionals`` values, with its own statistics, if > 0)."""
    from types import SimpleNamespace

    from sergraph.config import compose, model_spec
    from sergraph.data.graphs import Normalizer
    from sergraph.models import build_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    family, params = model_spec(compose([f"model={name}"]))
    model = build_model(family, 76, 4, global_channels=functionals, **params).eval()
    meta = {
        "graph": {"k": 4, "max_nodes": 120, "pad": True, "normalize": "zscore"},
        "model": {"name": name, "in_channels": 76},
    }
    rng = np.random.default_rng(0)
    normalizer = Normalizer(
        rng.standard_normal(76).astype(np.float32), (1 + rng.random(76)).astype(np.float32)
    )
    global_normalizers = []
    if functionals:
        names = [f"f{index}" for index in range(functionals)]
        meta["functionals"] = {"feature_set": "is10", "names": names}
        global_normalizers.append(
            Normalizer(
                (100 * rng.standard_normal(functionals)).astype(np.float32),
                (1 + 10 * rng.random(functionals)).astype(np.float32),
            )
        )
    return SimpleNamespace(
        meta=meta,
        models=[model],
        normalizers=[normalizer],
        global_normalizers=global_normalizers,
        classes=list("abcd"),
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("functionals", [0, 24])
@pytest.mark.parametrize("name", ["gin", "gcn", "cheb", "sage_mean", "bigru_attn", "lstm_gin"])
def test_the_families_said_to_export_match_pytorch(name, functionals, tmp_path):
    """Each family of ONNX_FAMILIES with random weights, with and without a functionals
    vector: ONNX Runtime against the bundle's route (graph from build_graph, PyTorch forward,
    functionals z-scored with the member's statistics)."""
    from sergraph.deploy.ensemble import Bundle
    from sergraph.deploy.onnx import ONNX_FAMILIES, onnx_model_bytes

    assert name in ONNX_FAMILIES
    fake = _fake_bundle(name, functionals)
    (tmp_path / "m.onnx").write_bytes(onnx_model_bytes(fake))
    features = [
        np.random.default_rng(length).standard_normal((length, 76)).astype(np.float32)
        for length in (5, 120, 150)
    ]
    vectors = None
    if functionals:
        normalizer = fake.global_normalizers[0]
        noise = np.random.default_rng(1).standard_normal((3, functionals))
        vectors = (normalizer.mean + normalizer.std * noise).astype(np.float32)
    fake.meta["features"] = {}
    expected = Bundle.predict_features(fake, features, functionals=vectors)
    got = run_onnx(tmp_path / "m.onnx", onnx_inputs(fake, features, vectors))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ONNX_TOLERANCE)


@pytest.mark.parametrize("name", ["gat", "gps"])
def test_families_that_cannot_export_are_refused_by_name(name):
    from sergraph.deploy.onnx import onnx_model_bytes

    with pytest.raises(BundleError, match=f"model '{name}'"):
        onnx_model_bytes(_fake_bundle(name))


# ---- audonnx (model.yaml): the export loaded by audonnx, called on audio


def _audonnx():
    return pytest.importorskip(
        "audonnx", reason="audonnx is not installed (it comes with pip install 'sergraph[onnx]')"
    )


def _odd_file(run, tmp_path):
    """A stereo file at 44.1 kHz, longer than the bundle reads (120 nodes + 1 s): what the
    transform must average, resample and cut as sergraph does."""
    import soundfile as sf
    from scipy.signal import resample_poly

    parts = [sf.read(path)[0] for path in list(run.audio.values())[:6]]
    mono = resample_poly(np.concatenate(parts * 3), 441, 160)
    assert len(mono) / 44100 > 8.0
    stereo = np.stack([mono, 0.5 * mono[::-1]], axis=1)
    path = tmp_path / "stereo-44k.wav"
    sf.write(path, 0.9 * stereo / np.abs(stereo).max(), 44100, subtype="PCM_16")
    return str(path)


_STANDALONE = """
import json, sys
sys.modules["sergraph"] = None  # the audonnx model must run without sergraph
import audonnx, soundfile
model = audonnx.load(sys.argv[1])
rows = []
for path in sys.argv[2:]:
    signal, rate = soundfile.read(path, dtype="float32")
    rows.append(model(signal.T, rate)[0].tolist())  # [channels, n], as audiofile reads it
print(json.dumps({"rows": rows, "labels": model.labels()}))
"""


def assert_standalone_audonnx_matches(out, bundle, paths, cache_dir) -> None:
    """``audonnx.load(out)`` in a Python where importing sergraph fails gives the labels and the
    probabilities of ``bundle.predict`` on ``paths``, within the stated tolerance."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _STANDALONE, str(out), *paths],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["labels"] == bundle.classes
    got = np.array(result["rows"])
    expected = bundle.predict(paths, cache_dir=cache_dir, progress=False)
    columns = [f"p_{c}" for c in bundle.classes]
    np.testing.assert_allclose(got, expected[columns].to_numpy(), rtol=0, atol=ONNX_TOLERANCE)
    assert np.ptp(got, axis=0).max() > 1e-4  # not a constant model


def test_audonnx_loads_the_export_and_gives_the_bundles_probabilities_on_audio(
    bundle_run, tmp_path, capsys
):
    audonnx = _audonnx()
    out = tmp_path / "onnx"
    assert main(["export", str(bundle_run.ensemble), "--onnx", str(out)]) == 0
    assert "model.yaml" in capsys.readouterr().out
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["audonnx"]["file"] == "model.yaml" and "IS10" in sidecar["audonnx"]["transform"]
    bundle = load_bundle(bundle_run.ensemble, map_location="cpu")
    model = audonnx.load(str(out))
    assert model.labels() == bundle.classes
    assert isinstance(model.inputs["features"].transform, audonnx.Function)
    assert "import sergraph" not in (out / "model.yaml").read_text()

    paths = [*list(bundle_run.audio.values())[:5], _odd_file(bundle_run, tmp_path)]
    assert_standalone_audonnx_matches(out, bundle, paths, tmp_path / "cache")


def test_audonnx_inputs_are_sergraphs_onnx_inputs(bundle_run, tmp_path):
    """The transform's two inputs equal onnx_inputs of sergraph's cached features (exactly)."""
    import soundfile as sf

    from sergraph.deploy.onnx import audonnx_transforms

    _audonnx()
    bundle = load_bundle(bundle_run.fold0, map_location="cpu")
    transforms, _ = audonnx_transforms(bundle)
    paths = [*list(bundle_run.audio.values())[:2], _odd_file(bundle_run, tmp_path)]
    expected = onnx_inputs(bundle, _features(bundle, paths, tmp_path / "cache"))
    for path, feed in zip(paths, expected, strict=True):
        signal, rate = sf.read(path, dtype="float32")
        for name in ("features", "mask"):
            np.testing.assert_array_equal(transforms[name](signal.T, rate), feed[name])


def _ssl_bundle(bundle_run):
    """The trained bundle, its metadata saying SSL features (the weights do not care)."""
    from sergraph.deploy.ensemble import Bundle

    real = load_bundle(bundle_run.fold0, map_location="cpu")
    ssl = {
        "model": "microsoft/wavlm-base",
        "layer": -1,
        "chunk_seconds": 20.0,
        "context_seconds": 1.5,
        "node_seconds": 0.05,
    }
    meta = {**real.meta, "features": {**real.meta["features"], "feature_set": "ssl", "ssl": ssl}}
    return Bundle(meta, real._members)


@pytest.mark.parametrize("case", ["ssl", "other opensmile"])
def test_audonnx_without_an_opensmile_transform_takes_the_onnx_inputs(case, bundle_run, tmp_path):
    """SSL features (and openSMILE of another version than the bundle's) get a model.yaml
    with the labels and no transform: audonnx then takes the two inputs as a dict."""
    from sergraph.deploy.onnx import export_onnx

    audonnx = _audonnx()
    if case == "ssl":
        bundle = _ssl_bundle(bundle_run)
    else:
        bundle = load_bundle(bundle_run.fold0, map_location="cpu")
        bundle.meta["features"]["opensmile"] = "0.0.1"
    _, sidecar = export_onnx(bundle, tmp_path, check=False)
    record = sidecar["audonnx"]
    assert record["file"] == "model.yaml" and record["transform"] is None
    assert ("PyTorch front end" if case == "ssl" else "openSMILE 0.0.1") in record["why"]
    model = audonnx.load(str(tmp_path))
    assert model.labels() == bundle.classes
    assert all(node.transform is None for node in model.inputs.values())
    rng = np.random.default_rng(1)
    normalizer = bundle.normalizers[0]
    arrays = [
        (normalizer.mean + normalizer.std * rng.standard_normal((n, 76))).astype(np.float32)
        for n in (7, 150)
    ]
    got = np.concatenate([model(feed) for feed in onnx_inputs(bundle, arrays)])
    np.testing.assert_allclose(got, bundle.predict_features(arrays), rtol=0, atol=ONNX_TOLERANCE)


def test_without_audonnx_no_model_yaml_is_left(bundle_run, tmp_path, monkeypatch, capsys):
    """Without audonnx the export writes no model.yaml and removes one an earlier export left
    (its transform could be another bundle's); the CLI says why."""
    import sys

    (tmp_path / "model.yaml").write_text("$audonnx.core.model.Model==1.0.1:\n  path: old\n")
    monkeypatch.setitem(sys.modules, "audonnx", None)  # import audonnx -> ImportError
    assert main(["export", str(bundle_run.fold0), "--onnx", str(tmp_path)]) == 0
    assert not (tmp_path / "model.yaml").exists()
    assert "audonnx is not installed" in capsys.readouterr().err
    assert json.loads((tmp_path / "model.json").read_text())["audonnx"]["file"] is None


# ---- models that also take the utterance functionals (features.concat_functionals)


def _functionals(bundle, paths, cache):
    from sergraph.data.features import FeatureCache

    feature_set = bundle.functionals["feature_set"]
    return FeatureCache(cache, bundle.functionals_config()).functionals(
        paths, progress=False, feature_set=feature_set
    )


@pytest.mark.parametrize("which", ["recommended", "graph"])
def test_onnx_export_of_functionals_models_matches_the_bundle(
    which, functionals_run, functionals_graph_run, tmp_path, capsys
):
    """The recommended model (GIN, no graph layers) and GIN with two graph layers, both with
    the IS10 functionals vector: ONNX Runtime on onnx_inputs (node features and raw
    functionals from the feature cache) against Bundle.predict on the audio files."""
    run = functionals_run if which == "recommended" else functionals_graph_run
    bundle = load_bundle(run.bundle, map_location="cpu")
    assert len(bundle.models[0].convs) == (0 if which == "recommended" else 2)
    out = tmp_path / "onnx"
    assert main(["export", str(run.bundle), "--onnx", str(out)]) == 0
    assert "checked under ONNX Runtime" in capsys.readouterr().out
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["inputs"]["functionals"]["shape"] == [1, 1582]
    assert sidecar["functionals"]["feature_set"] == "is10"
    assert sidecar["functionals"]["names"] == bundle.meta["functionals"]["names"]
    assert sidecar["check"]["max_abs_diff"] <= ONNX_TOLERANCE

    paths = list(functionals_run.audio.values())
    expected = bundle.predict(paths, cache_dir=tmp_path / "fresh", progress=False)
    columns = [f"p_{c}" for c in bundle.classes]
    cache = functionals_run.cache
    features, functionals = _features(bundle, paths, cache), _functionals(bundle, paths, cache)
    got = run_onnx(out / "model.onnx", onnx_inputs(bundle, features, functionals))
    assert got.shape == (len(paths), len(bundle.classes))
    np.testing.assert_allclose(got, expected[columns].to_numpy(), rtol=0, atol=ONNX_TOLERANCE)
    assert np.ptp(got, axis=0).max() > 1e-4  # not a constant model
    # the functionals input is used: another file's vector moves the answer
    shifted = run_onnx(out / "model.onnx", onnx_inputs(bundle, features, functionals[::-1]))
    assert np.abs(shifted - got).max() > 1e-3


def test_onnx_inputs_check_the_functionals(functionals_run, bundle_run):
    with_functionals = load_bundle(functionals_run.bundle, map_location="cpu")
    arrays = [np.ones((3, 76), np.float32), np.ones((200, 76), np.float32)]
    with pytest.raises(BundleError, match=r"give functionals \[N, 1582\]"):
        onnx_inputs(with_functionals, arrays)
    with pytest.raises(BundleError, match=r"needs \[2, 1582\]"):
        onnx_inputs(with_functionals, arrays, np.zeros((2, 88), np.float32))
    rows = np.arange(2 * 1582, dtype=np.float32).reshape(2, 1582)
    feeds = onnx_inputs(with_functionals, arrays, rows)
    assert [sorted(feed) for feed in feeds] == [["features", "functionals", "mask"]] * 2
    np.testing.assert_array_equal(feeds[1]["functionals"], rows[1:2])  # raw: not normalised
    without = load_bundle(bundle_run.fold0, map_location="cpu")
    with pytest.raises(BundleError, match="take no utterance functionals"):
        onnx_inputs(without, arrays, rows)


def test_audonnx_functionals_input_is_sergraphs_and_the_model_gives_the_bundles_answer(
    functionals_run, tmp_path
):
    """The third transform gives exactly the feature cache's functionals of the whole file
    (stereo 44.1 kHz and longer than the node features read included), and audonnx, run
    where sergraph cannot be imported, gives Bundle.predict's probabilities."""

    import soundfile as sf

    from sergraph.deploy.onnx import audonnx_transforms, export_onnx

    audonnx = _audonnx()
    bundle = load_bundle(functionals_run.bundle, map_location="cpu")
    paths = [*list(functionals_run.audio.values())[:4], _odd_file(functionals_run, tmp_path)]
    transforms, what = audonnx_transforms(bundle)
    assert sorted(transforms) == ["features", "functionals", "mask"] and "func" in what
    functionals = _functionals(bundle, paths, tmp_path / "cache")
    features = _features(bundle, paths, tmp_path / "cache")
    for path, row, feed in zip(
        paths, functionals, onnx_inputs(bundle, features, functionals), strict=True
    ):
        signal, rate = sf.read(path, dtype="float32")
        np.testing.assert_array_equal(transforms["functionals"](signal.T, rate), row[None, :])
        np.testing.assert_array_equal(transforms["features"](signal.T, rate), feed["features"])

    out = tmp_path / "onnx"
    _, sidecar = export_onnx(bundle, out)
    assert "functionals" in sidecar["audonnx"]["transform"]
    model = audonnx.load(str(out))
    assert sorted(model.inputs) == ["features", "functionals", "mask"]
    assert_standalone_audonnx_matches(out, bundle, paths, tmp_path / "cache")
