"""Tests for sergraph.data.features: pooling, length fitting, openSMILE extraction and the cache.

The audio is generated here (a 220 Hz sine plus a little noise, written with soundfile), so the
expected shapes are worked out by hand from the frame layout in the module docstring. The IS10 LLD
level joins 25 ms frames with 60 ms pitch frames at a 10 ms hop, so a file of ``d`` seconds gives
``floor((d - 0.060) / 0.010) + 1`` frames, e.g. 95 for 1 s.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sergraph.data import features
from sergraph.data.features import (
    FeatureCache,
    FeatureConfig,
    FeatureError,
    extract_functionals,
    extract_llds,
    file_sha256,
    pool_frames,
)
from sergraph.data.features.extraction import Job, run_opensmile_job, worker_pool

IS10_FRAMES_1S = 95  # (1.000 - 0.060) / 0.010 + 1
IS10_FRAMES_2S = 195  # (2.000 - 0.060) / 0.010 + 1


def make_signal(seconds: float, rate: int, seed: int = 0, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * noise


def write_wav(path, signal, rate: int, subtype: str = "PCM_16") -> str:
    sf.write(str(path), signal, rate, subtype=subtype)
    return str(path)


@pytest.fixture
def wavs(tmp_path):
    """Four different 1 s, 16 kHz mono files."""
    folder = tmp_path / "audio"
    folder.mkdir()
    return [
        write_wav(folder / f"utt{i}.wav", make_signal(1.0, 16000, seed=i, freq=150 + 50 * i), 16000)
        for i in range(4)
    ]


# ---------------------------------------------------------------------------------------------
# pooling and length


def test_pool_frames_averages_groups_and_the_partial_last_group():
    frames = np.arange(14, dtype=np.float32).reshape(7, 2)  # rows [0,1], [2,3], ..., [12,13]
    pooled = pool_frames(frames, 3)
    # groups: rows 0-2 -> mean [2, 3]; rows 3-5 -> mean [8, 9]; row 6 alone -> [12, 13]
    np.testing.assert_array_equal(pooled, [[2, 3], [8, 9], [12, 13]])
    assert pooled.dtype == np.float32


def test_pool_frames_edge_cases():
    frames = np.array([[1.0, 10.0], [3.0, 30.0], [8.0, 80.0], [0.0, 0.0]])
    np.testing.assert_array_equal(pool_frames(frames, 1), frames)
    np.testing.assert_array_equal(pool_frames(frames, 2), [[2.0, 20.0], [4.0, 40.0]])
    np.testing.assert_array_equal(pool_frames(frames, 10), [[3.0, 30.0]])  # one partial group
    assert pool_frames(np.zeros((0, 2)), 5).shape == (0, 2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="pool"):
            pool_frames(frames, bad)


def test_feature_config_rejects_unknown_values_naming_the_choices():
    with pytest.raises(ValueError, match=r"feature_set='mfcc'.*is10.*egemaps.*compare"):
        FeatureConfig(feature_set="mfcc")
    with pytest.raises(ValueError, match="pool"):
        FeatureConfig(pool=0)
    with pytest.raises(ValueError, match="sample_rate"):
        FeatureConfig(sample_rate=-8000)
    with pytest.raises(ValueError, match="feature_set"):
        extract_functionals("x.wav", "gemaps")


def test_feature_config_from_mapping_ignores_run_config_keys():
    config = FeatureConfig.from_any(
        {"feature_set": "compare", "pool": 3, "cache_dir": None, "workers": 2}
    )
    assert config == FeatureConfig(feature_set="compare", deltas=True, pool=3)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (FeatureConfig("is10"), 76),  # 38 LLD + 38 delta
        (FeatureConfig("is10", deltas=False), 38),
        (FeatureConfig("egemaps"), 25),  # no delta level exists for eGeMAPSv02
        (FeatureConfig("egemaps", deltas=False), 25),
        (FeatureConfig("compare"), 130),  # 65 + 65
        (FeatureConfig("compare", deltas=False), 65),
    ],
)
def test_num_features_per_set(config, expected):
    assert features.num_features(config) == expected
    names = features.feature_names(config)
    assert len(names) == expected == len(set(names))
    assert any(name.endswith("_de") or "_de[" in name for name in names) == (
        config.deltas and config.feature_set != "egemaps"
    )


def test_is10_names_are_the_llds_then_their_deltas():
    names = features.feature_names(FeatureConfig("is10"))
    assert names[0] == "pcm_loudness_sma"
    assert names[37] == "shimmerLocal_sma"
    assert names[38:] == [
        name.replace("_sma", "_sma_de") for name in names[:38]
    ]  # same order, deltas second


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    ("feature_set", "deltas", "columns"),
    [("is10", True, 76), ("is10", False, 38), ("egemaps", True, 25), ("compare", True, 130)],
)
def test_extract_llds_shape(tmp_path, feature_set, deltas, columns):
    path = write_wav(tmp_path / "a.wav", make_signal(1.0, 16000), 16000)
    frames = extract_llds(path, feature_set, deltas=deltas)
    assert frames.dtype == np.float32
    assert frames.shape[1] == columns
    assert abs(frames.shape[0] - 100) <= 5  # about one frame per 10 ms
    assert np.isfinite(frames).all()


def test_is10_frame_count_follows_the_60ms_pitch_window(tmp_path):
    one = write_wav(tmp_path / "one.wav", make_signal(1.0, 16000), 16000)
    two = write_wav(tmp_path / "two.wav", make_signal(2.0, 16000), 16000)
    assert extract_llds(one).shape == (IS10_FRAMES_1S, 76)
    assert extract_llds(two).shape == (IS10_FRAMES_2S, 76)


def test_joined_lld_and_delta_run_matches_two_separate_runs(tmp_path):
    """The one-pass wrapper config gives the same numbers as openSMILE's own two levels."""
    import opensmile

    signal = make_signal(1.0, 16000).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", signal, 16000, subtype="FLOAT")
    joined = extract_llds(path, "is10")
    llds = opensmile.Smile(opensmile.FeatureSet.IS10, "lld").process_signal(signal, 16000)
    deltas = opensmile.Smile(opensmile.FeatureSet.IS10, "lld_de").process_signal(signal, 16000)
    rows = min(len(llds), len(deltas))
    assert len(joined) == rows
    np.testing.assert_array_equal(joined[:, :38], llds.to_numpy(np.float32)[:rows])
    np.testing.assert_array_equal(joined[:, 38:], deltas.to_numpy(np.float32)[:rows])


def test_stereo_equals_its_mono_mixdown(tmp_path):
    left = make_signal(1.0, 16000, seed=1, freq=220)
    right = make_signal(1.0, 16000, seed=2, freq=330)
    stereo = write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), 16000, "DOUBLE")
    mono = write_wav(tmp_path / "mono.wav", (left + right) / 2, 16000, "DOUBLE")
    left_only = write_wav(tmp_path / "left.wav", left, 16000, "DOUBLE")
    from_stereo = extract_llds(stereo)
    np.testing.assert_array_equal(from_stereo, extract_llds(mono))
    assert not np.allclose(from_stereo, extract_llds(left_only))  # not just the first channel


def test_int_and_float_wavs_of_the_same_samples_agree(tmp_path):
    quantised = np.round(make_signal(1.0, 16000) * 32768) / 32768
    pcm = write_wav(tmp_path / "pcm16.wav", quantised, 16000, "PCM_16")
    floating = write_wav(tmp_path / "float.wav", quantised, 16000, "FLOAT")
    np.testing.assert_array_equal(extract_llds(pcm), extract_llds(floating))


@pytest.mark.parametrize(
    ("rate", "subtype"), [(8000, "PCM_16"), (48000, "PCM_24"), (96000, "FLOAT")]
)
def test_other_sample_rates(tmp_path, rate, subtype):
    path = write_wav(tmp_path / f"r{rate}.wav", make_signal(1.0, rate), rate, subtype)
    frames = extract_llds(path)
    assert frames.shape == (IS10_FRAMES_1S, 76)  # the hop is in seconds, not samples
    assert np.isfinite(frames).all()


def test_float_wav_louder_than_full_scale_is_clipped_not_wrapped(tmp_path):
    loud = write_wav(tmp_path / "loud.wav", 3.0 * make_signal(1.0, 16000), 16000, "FLOAT")
    signal, rate = features.load_mono(loud)
    assert rate == 16000
    assert signal.max() < 1.0 and signal.min() >= -1.0
    assert np.isfinite(extract_llds(loud)).all()


def test_load_mono_resamples_to_the_requested_rate(tmp_path):
    path = write_wav(tmp_path / "a.wav", make_signal(1.0, 48000), 48000)
    signal, rate = features.load_mono(path, sample_rate=16000)
    assert (signal.shape, rate) == ((16000,), 16000)
    frames = extract_llds(path, sample_rate=16000)
    assert frames.shape == (IS10_FRAMES_1S, 76)


@pytest.mark.parametrize(
    ("feature_set", "columns"), [("is10", 1582), ("egemaps", 88), ("compare", 6373)]
)
def test_extract_functionals(tmp_path, feature_set, columns):
    path = write_wav(tmp_path / "a.wav", make_signal(1.0, 16000), 16000)
    values = extract_functionals(path, feature_set)
    assert values.shape == (columns,)
    assert values.dtype == np.float32
    assert len(features.functional_names(feature_set)) == columns


def test_corrupt_empty_and_short_files_raise_feature_error_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    short = write_wav(tmp_path / "short.wav", make_signal(0.02, 16000), 16000)  # < one 60 ms frame
    cases = [(str(corrupt), "unreadable audio"), (empty, "empty audio"), (short, "too short")]
    for path, reason in cases:
        with pytest.raises(FeatureError, match=reason) as caught:
            extract_llds(path)
        assert caught.value.failures[0][0] == path
        assert path in str(caught.value)


# ---------------------------------------------------------------------------------------------
# cache


def test_file_sha256_is_the_sha256_of_the_bytes(wavs):
    with open(wavs[0], "rb") as handle:
        expected = hashlib.sha256(handle.read()).hexdigest()
    assert features.file_sha256(wavs[0]) == expected


def test_cache_hit_does_not_run_opensmile_again(tmp_path, wavs):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig("is10", pool=5))
    first = cache.get(wavs, progress=False)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.extracted) == (0, 4, 4)
    assert [a.shape for a in first] == [(19, 76)] * 4  # ceil(95 / 5)
    np.testing.assert_array_equal(first[2], pool_frames(extract_llds(wavs[2]), 5))

    again = FeatureCache(tmp_path / "cache", FeatureConfig("is10", pool=5))
    second = again.get(wavs, progress=False)
    assert (again.stats.hits, again.stats.misses, again.stats.extracted) == (4, 0, 0)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == np.float32

    key_dir = cache.key_dir()
    assert (key_dir / "manifest.json").exists()
    stored = sorted(p.name for p in key_dir.glob("*/*.npy"))
    assert stored == sorted(f"{features.file_sha256(p)}.npy" for p in wavs)
    assert not list(key_dir.rglob("*.tmp"))


def test_cache_changed_content_is_a_miss(tmp_path, wavs):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    before = cache.get(wavs[:1], progress=False)[0]
    write_wav(wavs[0], make_signal(1.0, 16000, seed=99, freq=400), 16000)  # same size
    after = cache.get(wavs[:1], progress=False)[0]
    assert cache.stats.extracted == 2
    assert not np.allclose(before, after)


def test_cache_touched_file_with_same_content_is_a_hit(tmp_path, wavs):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    cache.get(wavs[:2], progress=False)
    info = os.stat(wavs[0])
    os.utime(wavs[0], ns=(info.st_atime_ns, info.st_mtime_ns - 3_600 * 10**9))
    cache.get(wavs[:2], progress=False)
    assert (cache.stats.extracted, cache.stats.hits) == (2, 2)


def test_cache_changed_config_is_a_miss_but_pool_is_not(tmp_path, wavs):
    root = tmp_path / "cache"
    base = FeatureCache(root, FeatureConfig("is10", pool=5))
    base.get(wavs[:1], progress=False)
    for config in (
        FeatureConfig("egemaps"),
        FeatureConfig("is10", deltas=False),
        FeatureConfig("is10", sample_rate=8000),
    ):
        other = FeatureCache(root, config)
        other.get(wavs[:1], progress=False)
        assert other.stats.extracted == 1, config
    # Pooling is applied on load, so another pool size reuses the stored frames.
    pooled3 = FeatureCache(root, FeatureConfig("is10", pool=3))
    (array,) = pooled3.get(wavs[:1], progress=False)
    assert pooled3.stats.extracted == 0
    assert array.shape == (32, 76)  # ceil(95 / 3)
    assert len({p.name for p in root.iterdir()}) == 4  # is10, egemaps, is10 no-delta, is10 @ 8k


def test_cache_same_content_under_two_names_is_extracted_once(tmp_path, wavs):
    copy = tmp_path / "copy.wav"
    copy.write_bytes(open(wavs[0], "rb").read())
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    a, b = cache.get([wavs[0], str(copy)], progress=False)
    assert cache.stats.extracted == 1
    np.testing.assert_array_equal(a, b)


def test_cache_resumes_and_parallel_matches_serial(tmp_path, wavs):
    root = tmp_path / "cache"
    serial = FeatureCache(root, FeatureConfig())
    done = serial.get(wavs[:2], workers=1, progress=False)  # as if a run was killed here
    resumed = FeatureCache(root, FeatureConfig())
    order = [wavs[3], wavs[0], wavs[2], wavs[1]]
    arrays = resumed.get(order, workers=2, progress=False)  # real spawn processes
    assert (resumed.stats.hits, resumed.stats.extracted) == (2, 2)
    np.testing.assert_array_equal(arrays[1], done[0])
    np.testing.assert_array_equal(arrays[3], done[1])
    for path, array in zip(order, arrays, strict=True):  # input order, worker results intact
        np.testing.assert_array_equal(array, pool_frames(extract_llds(path), 5))


def stored_files(root) -> dict[str, bytes]:
    """Every file under ``root`` (manifests and arrays) by its path relative to ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["lld", "func"])
def test_a_worker_process_stores_the_bytes_this_process_stores(tmp_path, wavs, kind):
    # Every job in the worker (started as the pool starts them, with this process's Smile).
    def jobs(folder):
        return [
            Job(
                path,
                file_sha256(path),
                str(tmp_path / folder / f"{i}.npy"),
                kind,
                "is10",
                True,
                None,
            )
            for i, path in enumerate(wavs)
        ]

    here = [run_opensmile_job(job) for job in jobs("here")]
    with worker_pool(jobs("there")[0], 1) as pool:
        there = list(pool.map(run_opensmile_job, jobs("there")))
        assert pool.submit(os.getpid).result() != os.getpid()
    width = 1582 if kind == "func" else 76
    for (digest, array, reason), (other_digest, other, other_reason) in zip(
        here, there, strict=True
    ):
        assert (reason, other_reason, other_digest) == (None, None, digest)
        assert array.shape[-1] == width
        np.testing.assert_array_equal(other, array)
    assert stored_files(tmp_path / "there") == stored_files(tmp_path / "here")
    assert len(stored_files(tmp_path / "here")) == len(wavs)


def test_n_workers_fill_the_cache_with_the_bytes_of_one_worker(tmp_path, wavs):
    folder = Path(wavs[0]).parent
    paths = wavs + [
        write_wav(folder / f"long{i}.wav", make_signal(1.5 + i / 4, 16000, seed=10 + i), 16000)
        for i in range(5)
    ]
    serial = FeatureCache(tmp_path / "one", FeatureConfig())
    one = serial.get(paths, workers=1, progress=False)
    parallel = FeatureCache(tmp_path / "three", FeatureConfig())
    three = parallel.get(paths, workers=3, progress=False)  # this process and two workers
    assert (parallel.stats.extracted, parallel.stats.hits) == (len(paths), 0)
    for path, a, b in zip(paths, one, three, strict=True):
        assert a.shape == (-(-(round(sf.info(path).duration * 100) - 5) // 5), 76)
        np.testing.assert_array_equal(b, a)
    assert stored_files(tmp_path / "three") == stored_files(tmp_path / "one")
    assert len(stored_files(tmp_path / "one")) == len(paths) + 1  # the arrays and the manifest


def test_cache_failures_are_listed_together_after_good_files_are_stored(tmp_path, wavs):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"not a wav file at all")
    empty = write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    missing = str(tmp_path / "missing.wav")
    paths = [wavs[0], str(corrupt), wavs[1], empty, missing]
    cache = FeatureCache(tmp_path / "cache", FeatureConfig())
    with pytest.raises(FeatureError) as caught:
        cache.get(paths, workers=2, progress=False)
    reasons = dict(caught.value.failures)
    assert sorted(reasons) == sorted([str(corrupt), empty, missing])
    assert "unreadable audio" in reasons[str(corrupt)]
    assert "empty audio" in reasons[empty]
    assert "cannot read file" in reasons[missing]
    assert str(corrupt) in str(caught.value) and "3 file(s)" in str(caught.value)
    again = FeatureCache(tmp_path / "cache", FeatureConfig())
    again.get(wavs[:2], progress=False)
    assert (again.stats.hits, again.stats.extracted) == (2, 0)


def test_cache_rejects_a_single_path_string(tmp_path, wavs):
    with pytest.raises(TypeError, match="list of files"):
        FeatureCache(tmp_path / "cache", FeatureConfig()).get(wavs[0])


def test_cache_functionals_are_cached_separately(tmp_path, wavs):
    cache = FeatureCache(tmp_path / "cache", FeatureConfig("is10"))
    table = cache.functionals(wavs[:3], progress=False)
    assert table.shape == (3, 1582)
    np.testing.assert_array_equal(table[1], extract_functionals(wavs[1], "is10"))
    cache.functionals(wavs[:3], progress=False)
    assert (cache.stats.extracted, cache.stats.hits) == (3, 3)
    egemaps = cache.functionals(wavs[:1], progress=False, feature_set="egemaps")
    assert egemaps.shape == (1, 88)
    assert cache.stats.extracted == 4
    assert cache.key_dir("func").name.startswith("func-is10-")


def test_feature_error_lists_every_file_but_shortens_a_long_message():
    failures = [(f"/data/f{i}.wav", "empty audio (0 samples)") for i in range(60)]
    error = FeatureError(failures)
    assert error.failures == failures
    message = str(error)
    assert message.startswith("feature extraction failed for 60 file(s):")
    assert "/data/f0.wav: empty audio (0 samples)" in message
    assert "/data/f59.wav" not in message and "... and 10 more" in message


# ---------------------------------------------------------------------------------------------
# one config class; cache keys of existing caches unchanged


def test_cache_keys_of_opensmile_settings_are_those_computed_before_the_package_split():
    # Computed on main before features.py became a package and the two config classes merged:
    # existing caches must still hit.
    assert FeatureCache("/c", FeatureConfig()).key_dir().name == "lld-is10-fc28fcb40dcff29b"
    assert FeatureCache("/c", FeatureConfig()).key_dir("func").name == "func-is10-94e8084285e535a6"
    assert FeatureCache("/c", FeatureConfig("egemaps")).key_dir().name == (
        "lld-egemaps-b879f2d8c711cf9f"
    )
    assert FeatureCache("/c", FeatureConfig("compare")).key_dir().name == (
        "lld-compare-51fe3c3e4599154c"
    )
    changed = FeatureConfig(deltas=False, sample_rate=16000)
    assert FeatureCache("/c", changed).key_dir().name == "lld-is10-bf37c3b3a15f991f"


def test_the_run_config_features_node_is_the_feature_config():
    from omegaconf import OmegaConf

    from sergraph.config import Config, compose, identity

    assert Config.__dataclass_fields__["features"].type in ("FeatureConfig", FeatureConfig)
    cfg = compose(["features.feature_set=compare", "features.pool=3", "features.workers=1"])
    config = FeatureConfig.from_any(cfg.features)
    assert (config.feature_set, config.pool, config.workers) == ("compare", 3, 1)
    assert OmegaConf.to_container(cfg.features)["ssl"]["layer"] == -1
    # Run ids computed on main before the merge: finished runs keep their id.
    assert identity(compose([])) == "0f1268d2ea22"
    assert (
        identity(compose(["data=emodb", "data.root=/x", "features.feature_set=egemaps"]))
        == "1b33673c2fc2"
    )
