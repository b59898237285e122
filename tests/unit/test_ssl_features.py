"""Self-supervised frame embeddings as node features, on tiny random models built here.

No weights are downloaded: each test model is a randomly initialised 2-layer WavLM, wav2vec2 or
HuBERT with hidden size 32, written with ``save_pretrained``. Its feature encoder has two
convolutions, kernels (40, 16) and strides (20, 16): one frame sees
``1 + 39 + 15 * 20 = 340`` samples and frames are ``20 * 16 = 320`` samples (20 ms at 16 kHz)
apart, like the real models. A file of ``n`` samples gives ``(n - 340) // 320 + 1`` frames.
"""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from sergraph.data.features import FeatureCache, FeatureConfig, pool_by_time  # noqa: E402
from sergraph.data.features.ssl import chunk_spans, embed_file, num_frames  # noqa: E402

FAMILIES = {
    "wavlm": (WavLMConfig, WavLMModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    "hubert": (HubertConfig, HubertModel),
}
FIELD, HOP = 340, 320


def frames_of(samples: int) -> int:
    return (samples - FIELD) // HOP + 1


def build_model(folder, family: str = "wavlm", seed: int = 0) -> str:
    config_class, model_class = FAMILIES[family]
    settings = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_kernel=(40, 16),
        conv_stride=(20, 16),
        conv_bias=True,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    if family == "wavlm":
        settings.update(num_buckets=16, max_bucket_distance=40)
    torch.manual_seed(seed)
    model_class(config_class(**settings)).save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(
        sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl-models")
    return {family: build_model(root / family, family) for family in FAMILIES}


@pytest.fixture
def audio(tmp_path):
    rng = np.random.default_rng(0)
    stereo = tmp_path / "stereo.wav"  # 3 s, two channels, 16 kHz
    sf.write(stereo, 0.3 * rng.standard_normal((48000, 2)), 16000)
    other_rate = tmp_path / "22k.wav"  # 2 s at 22.05 kHz: resampled to 32000 samples
    sf.write(other_rate, 0.3 * rng.standard_normal(44100), 22050)
    return [str(stereo), str(other_rate)]


def ssl_config(model: str, **ssl) -> FeatureConfig:
    return FeatureConfig("ssl", ssl={"model": model, **ssl})


def reference_states(model_dir: str, path: str, layers: list[int]) -> np.ndarray:
    """Hidden states computed directly with transformers (whole file, no chunks, no cache)."""
    data, rate = sf.read(path, always_2d=True)
    signal = data.mean(axis=1)
    if rate != 16000:
        from scipy.signal import resample_poly

        common = math.gcd(16000, rate)
        signal = resample_poly(signal, 16000 // common, rate // common)
    signal = np.clip(signal, -1, 32767 / 32768).astype(np.float32).astype(np.float64)
    signal = (signal - signal.mean()) / np.sqrt(signal.var() + 1e-7)
    model = {"wavlm": WavLMModel, "wav2vec2": Wav2Vec2Model, "hubert": HubertModel}
    family = next(name for name in model if name in model_dir)
    net = model[family].from_pretrained(model_dir).eval()
    with torch.inference_mode():
        output = net(torch.tensor(signal, dtype=torch.float32)[None], output_hidden_states=True)
    return torch.stack([output.hidden_states[i][0] for i in layers]).mean(0).numpy()


def test_pool_by_time_averages_20ms_frames_into_50ms_nodes():
    frames = np.arange(7, dtype=np.float32)[:, None]  # frames start at 0, 20, ..., 120 ms
    # nodes [0, 50) ms: frames 0, 1, 2; [50, 100): 3, 4; [100, 150): 5, 6
    np.testing.assert_allclose(pool_by_time(frames, 0.02, 0.05)[:, 0], [1.0, 3.5, 5.5])
    np.testing.assert_array_equal(pool_by_time(frames, 0.02, 0.02), frames)
    with pytest.raises(ValueError, match="node_seconds=0.01 is shorter than the frame hop"):
        pool_by_time(frames, 0.02, 0.01)


def test_chunk_spans_cover_every_frame_once():
    samples = 16000 * 3  # 149 frames
    spans = chunk_spans(samples, FIELD, HOP, chunk_frames=50, context_frames=10)
    kept = sum(end - first for _, _, first, end in spans)
    assert kept == num_frames(samples, FIELD, HOP) == frames_of(samples) == 149
    assert spans[0] == (0, (60 - 1) * HOP + FIELD, 0, 50)  # no left context at the start
    assert spans[1] == (40 * HOP, (110 - 1) * HOP + FIELD, 10, 60)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_features_equal_the_models_own_hidden_states_pooled_by_time(models, audio, family):
    cache = FeatureCache(audio[0] + ".cache", ssl_config(models[family], layer=-1))
    nodes = cache.get(audio, progress=False)
    for path, got, samples in zip(audio, nodes, (48000, 32000), strict=True):
        expected = pool_by_time(reference_states(models[family], path, [-1]), 0.02, 0.05)
        assert expected.shape[0] == math.floor((frames_of(samples) - 1) * 0.4) + 1
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-5)


def test_layer_choice_index_and_averaged_list(models, audio):
    model = models["wavlm"]
    first = embed_file(ssl_config(model, layer=0), audio[0])
    second = embed_file(ssl_config(model, layer=1), audio[0])
    averaged = embed_file(ssl_config(model, layer=[0, 1]), audio[0])
    np.testing.assert_allclose(first, reference_states(model, audio[0], [0]), atol=2e-5)
    np.testing.assert_allclose(averaged, (first + second) / 2, atol=2e-5)
    assert np.abs(first - second).max() > 1e-2  # the layers differ, so the choice matters
    with pytest.raises(ValueError, match=r"layer 5 does not exist.*0\.\.2"):
        FeatureCache("/unused", ssl_config(model, layer=5)).ssl_front_end()
    with pytest.raises(ValueError, match="features.ssl.layer='last'.*or all"):
        ssl_config(model, layer="last")
    # all: every hidden state (0, 1, 2) side by side
    stacked = embed_file(ssl_config(model, layer="all"), audio[0])
    last = embed_file(ssl_config(model, layer=2), audio[0])
    np.testing.assert_allclose(stacked, np.concatenate([first, second, last], axis=1), atol=2e-5)


def test_layer_weighted_sum_by_hand():
    from sergraph.models.layers import LayerWeightedSum

    mix = LayerWeightedSum(3)
    x = torch.tensor([[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]])  # 3 layers of H = 2
    np.testing.assert_allclose(mix(x).detach().numpy(), [[37.0, 74.0]], rtol=1e-6)  # equal 1/3
    with torch.no_grad():
        mix.logits.copy_(torch.log(torch.tensor([1.0, 1.0, 2.0])))  # weights 1/4, 1/4, 1/2
    np.testing.assert_allclose(mix(x).detach().numpy(), [[52.75, 105.5]], rtol=1e-6)
    with pytest.raises(ValueError, match="cannot be split into 3 layers"):
        mix(torch.zeros(1, 7))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_chunked_layer0_equals_unchunked_and_deeper_layers_keep_the_frame_count(
    models, audio, family
):
    # Layer 0 (feature encoder + positional convolution of 8 frames) only sees 4 frames to each
    # side, so 0.2 s (10 frames) of context makes it exact up to float rounding. Transformer
    # layers attend over the whole input: chunked and whole-file results differ there.
    model = models[family]
    whole = embed_file(ssl_config(model, layer=0, chunk_seconds=60), audio[0])
    chunked = embed_file(ssl_config(model, layer=0, chunk_seconds=1, context_seconds=0.2), audio[0])
    assert whole.shape == chunked.shape == (frames_of(48000), 32)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)
    last_whole = embed_file(ssl_config(model, chunk_seconds=60), audio[0])
    last_chunked = embed_file(ssl_config(model, chunk_seconds=1, context_seconds=0.2), audio[0])
    assert last_chunked.shape == last_whole.shape


def test_cache_hits_misses_and_what_the_key_holds(models, audio, tmp_path):
    root = tmp_path / "cache"
    cache = FeatureCache(root, ssl_config(models["wavlm"], batch_size=1))
    cache.get(audio[:1], progress=False)  # an interrupted run stored the first file ...
    first = cache.get(audio, progress=False)  # ... and the rerun extracts only the other
    assert (cache.stats.hits, cache.stats.misses, cache.stats.extracted) == (1, 2, 2)
    again = FeatureCache(root, ssl_config(models["wavlm"], batch_size=4, device="cpu"))
    second = again.get(audio, progress=False)
    assert (again.stats.hits, again.stats.misses) == (2, 0)  # batch size and device: not in key
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # The layer choice and the weights are part of the key; the folder's path is not.
    assert FeatureCache(root, ssl_config(models["wavlm"], layer=0)).key_dir() != cache.key_dir()
    retrained = build_model(tmp_path / "wavlm", "wavlm", seed=1)
    assert FeatureCache(root, ssl_config(retrained)).key_dir() != cache.key_dir()
    copy = build_model(tmp_path / "copy" / "wavlm", "wavlm", seed=0)
    assert FeatureCache(root, ssl_config(copy)).key_dir() == cache.key_dir()
    # Another node length re-pools the cached frames without extracting anything.
    coarse = FeatureCache(root, FeatureConfig("ssl", node_seconds=0.1, ssl={"model": copy}))
    nodes = coarse.get(audio[:1], progress=False)
    assert coarse.stats.extracted == 0 and nodes[0].shape[0] == math.floor(148 * 0.2) + 1


def test_a_cached_array_of_the_wrong_shape_is_named_and_extracted_again(models, audio, tmp_path):
    cache = FeatureCache(tmp_path / "cache", ssl_config(models["hubert"]))
    good = cache.get(audio[:1], progress=False)[0]
    stored = next(cache.key_dir().glob("*/*.npy"))
    np.save(stored, np.zeros((5, 7), dtype=np.float32))
    again = FeatureCache(tmp_path / "cache", ssl_config(models["hubert"]))
    np.testing.assert_array_equal(again.get(audio[:1], progress=False)[0], good)
    assert again.stats.replaced == 1 and again.stats.extracted == 1
    assert np.load(stored).shape == (frames_of(48000), 32)


def test_without_transformers_the_setting_fails_before_any_work_with_the_install_command(
    monkeypatch, models
):
    from sergraph.config import ConfigError, compose

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r'pip install "sergraph\[ssl\]"'):
        compose(["features.feature_set=ssl", f"features.ssl.model={models['wavlm']}"])


def test_ssl_settings_are_checked_when_composing(models):
    from sergraph.config import ConfigError, compose

    with pytest.raises(ConfigError, match="needs features.ssl.model"):
        compose(["features.feature_set=ssl"])
    with pytest.raises(ConfigError, match="features.ssl.layer"):
        compose(["features.feature_set=ssl", f"features.ssl.model={models['wavlm']}",
                 "features.ssl.layer=last"])  # fmt: skip


@pytest.mark.parametrize(
    "layer", [-1, pytest.param("all", marks=pytest.mark.slow)], ids=["last", "all"]
)
def test_train_end_to_end_on_ssl_features(tmp_path, env, layer):
    from tests.cli import run_cli

    model = build_model(tmp_path / "wavlm", "wavlm")  # its own copy: the test changes it

    result = run_cli(
        [
            "train",
            "data=synthetic",
            "data.options.n_speakers=4",
            "data.options.n_per_class=3",
            "features.feature_set=ssl",
            f"features.ssl.model={model}",
            f"features.ssl.layer={layer}",
            f"features.cache_dir={tmp_path / 'cache'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "folds.only=[0]",
            "trainer.max_epochs=1",
            "logger.kind=none",
        ],
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "UA" in result.stdout
    stored = list((tmp_path / "cache").glob("ssl-wavlm-*/*/*.npy"))
    assert stored and np.load(stored[0]).shape[1] == (96 if layer == "all" else 32)
    if layer == "all":  # the learned mix is part of the model and its checkpoint
        (checkpoint,) = (tmp_path / "runs").rglob("best.ckpt")
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        assert state["layer_mix.logits"].shape == (3,)
    from sergraph.deploy.bundle import BundleError, BundleMismatchError, export_bundle, load_bundle

    model_dir = tmp_path / "runs" / "synthetic" / "lstm_gin"
    if layer == "all":
        with pytest.raises(BundleError, match="layer=all: the learned layer mix"):
            export_bundle(model_dir)
        return
    # A bundle of SSL features: verified against the run's predictions (export does that), it
    # records the model's identity and refuses other weights at the same path.
    path, bundle = export_bundle(model_dir, tmp_path / "ssl.sergraph")
    assert bundle.meta["verification"]["max_abs_diff"] < 1e-3
    assert (
        bundle.meta["features"]["ssl"]["model_sha256"]
        == FeatureCache(tmp_path, ssl_config(model)).ssl_front_end().identity()
    )
    wav = str(next(p for p in sorted(Path(env["SERGRAPH_CACHE"]).rglob("*.wav"))))
    loaded = load_bundle(path, map_location="cpu")
    frame = loaded.predict([wav], progress=False)
    assert frame["error"].tolist() == [""] and frame["end"].iloc[0] <= 120 * 0.05
    samples, rate = sf.read(wav)
    in_memory = loaded.predict_signal(samples, rate)
    columns = [c for c in frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(in_memory[columns].to_numpy(), frame[columns].to_numpy(), atol=1e-5)
    moved = tmp_path / "elsewhere" / "wavlm"
    shutil.copytree(model, moved)
    build_model(model, "wavlm", seed=1)  # other weights at the path used in training
    with pytest.raises(BundleMismatchError, match="other weights or configuration"):
        load_bundle(path, map_location="cpu")
    # The same model moved elsewhere is accepted when named (its files hash as recorded).
    again = load_bundle(path, map_location="cpu", ssl_model=moved).predict([wav], progress=False)
    np.testing.assert_allclose(again[columns].to_numpy(), frame[columns].to_numpy(), atol=1e-6)
    shutil.rmtree(moved)
    with pytest.raises(BundleMismatchError, match="--ssl-model PATH"):
        load_bundle(path, map_location="cpu", ssl_model=moved)


def test_slurm_feature_job_of_ssl_features_asks_for_one_gpu(models, tmp_path, monkeypatch):
    from sergraph.training.slurm import plan_jobs

    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    common = [
        "data.options.n_speakers=3",
        "data.options.n_per_class=2",
        f"run.out_dir={tmp_path / 'runs'}",
        "slurm.gpus=2",
    ]
    ssl = ["features.feature_set=ssl", f"features.ssl.model={models['wavlm']}"]
    jobs, _ = plan_jobs([*common, *ssl])
    features = next(job for job in jobs if job.name == "features")
    assert "#SBATCH --gres=gpu:1" in features.script
    jobs, _ = plan_jobs(common)  # openSMILE runs on CPUs
    features = next(job for job in jobs if job.name == "features")
    assert "--gres" not in features.script
