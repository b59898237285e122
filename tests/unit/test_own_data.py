"""Bring your own data: precomputed feature arrays, declared folds, extra manifest columns.

A manifest corpus of 4 speakers x 2 classes x 2 utterances (0.5 s tones) is written here, with
a ``fold`` column and one ``[frames, 3]`` array per utterance whose values are worked out by
hand: frame ``j`` of utterance ``u`` holds ``(u * 100 + j, j, 1)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from sergraph.config import ConfigError, compose
from sergraph.data.features import FeatureCache, FeatureConfig, FeatureError
from sergraph.data.features.precomputed import array_paths, load_array
from sergraph.data.prepared import prepare
from tests.cli import run_cli

SPEAKERS = ("s1", "s2", "s3", "s4")
FOLD_OF = {"s1": 0, "s2": 0, "s3": 1, "s4": 1}


def hand_array(number: int, frames: int) -> np.ndarray:
    j = np.arange(frames, dtype=np.float32)
    return np.stack([number * 100 + j, j, np.ones_like(j)], axis=1)


@pytest.fixture
def corpus(tmp_path):
    rows = []
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    rng = np.random.default_rng(0)
    for number, (speaker, label, take) in enumerate(
        (s, c, t) for s in SPEAKERS for c in ("angry", "sad") for t in range(2)
    ):
        utterance = f"{speaker}_{label}_{take}"
        wav = tmp_path / "wav" / f"{utterance}.wav"
        wav.parent.mkdir(exist_ok=True)
        sf.write(
            wav,
            0.3 * np.sin(np.arange(8000) * (0.05 + number / 100))
            + 0.01 * rng.standard_normal(8000),
            16000,
        )
        np.save(arrays / f"{utterance}.npy", hand_array(number, 10 + number))
        rows.append(
            {
                "path": f"wav/{utterance}.wav",
                "speaker": speaker,
                "label": label,
                "fold": FOLD_OF[speaker],
                "feats": f"arrays/{utterance}.npy",
            }
        )
    csv = tmp_path / "corpus.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def overrides(csv, *more):
    return [
        "data=manifest",
        f"data.root={csv}",
        f"features.cache_dir={csv.parent / 'cache'}",
        "features.workers=1",
        *more,
    ]


def test_manifest_keeps_extra_columns(corpus):
    from sergraph.data.corpora import load_corpus

    table = load_corpus("manifest", root=corpus)
    assert list(table.columns) == ["utterance", "path", "speaker", "label", "fold", "feats"]
    assert table.set_index("utterance").loc["s3_sad_1", "fold"] == "1"


def test_precomputed_arrays_are_read_validated_pooled_by_time_and_cached(corpus):
    cfg = compose(
        overrides(
            corpus,
            "features.feature_set=precomputed",
            f"features.precomputed.root={corpus.parent / 'arrays'}",
            "features.precomputed.hop_seconds=0.02",
            "features.node_seconds=0.04",
        )
    )
    study = prepare(cfg)
    table = study.table
    number = 5  # s2_angry_1: 15 frames; nodes of 2 frames -> 8 nodes, the last holds frame 14
    row = table.index[table["utterance"] == "s2_angry_1"][0]
    nodes = study.features[row]
    expected = hand_array(number, 15)
    assert nodes.shape == (8, 3)
    np.testing.assert_allclose(nodes[0], (expected[0] + expected[1]) / 2)
    np.testing.assert_allclose(nodes[-1], expected[14])
    # The same arrays named by a manifest column give the same nodes; a second run hits.
    by_column = compose(
        overrides(
            corpus,
            "features.feature_set=precomputed",
            "features.precomputed.column=feats",
            "features.precomputed.hop_seconds=0.02",
            "features.node_seconds=0.04",
        )
    )
    from sergraph.data.prepared import feature_cache, feature_inputs

    cache = feature_cache(by_column)
    again = cache.get(feature_inputs(by_column, table), progress=False)
    assert cache.stats.hits == len(table) and cache.stats.extracted == 0
    np.testing.assert_array_equal(again[row], nodes)


def test_precomputed_settings_are_required(corpus):
    with pytest.raises(ConfigError, match="precomputed.hop_seconds"):
        compose(
            overrides(corpus, "features.feature_set=precomputed", "features.precomputed.root=x")
        )
    with pytest.raises(ConfigError, match=r"precomputed.root.*or features.precomputed.column"):
        compose(overrides(corpus, "features.feature_set=precomputed"))


def test_bad_arrays_are_named_with_what_is_wrong(tmp_path):
    cases = {
        "three_d.npy": (np.zeros((2, 3, 4), np.float32), r"shape \(2, 3, 4\)"),
        "empty.npy": (np.zeros((0, 3), np.float32), r"shape \(0, 3\)"),
        "nan.npy": (np.array([[1.0, 2.0], [np.nan, 0.0]], np.float32), "1 NaN/inf value.*frame 1"),
        "text.npy": (np.array([["a", "b"]]), "dtype <U1"),
    }
    for name, (array, _) in cases.items():
        np.save(tmp_path / name, array)
    (tmp_path / "garbage.npy").write_bytes(b"not an array")
    torch.save({"x": torch.zeros(2, 2)}, tmp_path / "dict.pt")
    cases["garbage.npy"] = (None, "unreadable")
    cases["dict.pt"] = (None, "holds a dict")
    for name, (_, reason) in cases.items():
        with pytest.raises(FeatureError, match=reason) as caught:
            load_array(tmp_path / name)
        assert caught.value.failures[0][0].endswith(name)
    torch.save(torch.arange(6, dtype=torch.float64).reshape(3, 2), tmp_path / "good.pt")
    np.testing.assert_array_equal(load_array(tmp_path / "good.pt"), [[0, 1], [2, 3], [4, 5]])


def test_missing_arrays_and_mixed_widths_name_the_files(corpus, tmp_path):
    from sergraph.data.corpora import load_corpus

    table = load_corpus("manifest", root=corpus)
    config = FeatureConfig(
        "precomputed", precomputed={"root": str(corpus.parent / "arrays"), "hop_seconds": 0.02}
    )
    (corpus.parent / "arrays" / "s4_sad_1.npy").unlink()
    with pytest.raises(FeatureError, match=r"s4_sad_1.npy: no array for utterance 's4_sad_1'"):
        array_paths(table, config, corpus.parent)
    np.save(corpus.parent / "arrays" / "s4_sad_1.npy", np.ones((4, 5), np.float32))
    cache = FeatureCache(tmp_path / "cache", config)
    with pytest.raises(FeatureError, match=r"s4_sad_1.npy: 5 dims, while 3 dims are the most"):
        cache.get(array_paths(table, config, corpus.parent), progress=False)


def test_sergraph_folds_prints_the_declared_folds_and_refuses_overlap(corpus, env):
    result = run_cli(["folds", *overrides(corpus, "folds.scheme=predefined")], env=env)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[1:]]
    tests = {line[0]: line[2] for line in lines if line[1] == "test"}
    assert tests == {"fold-00": "s1,s2", "fold-01": "s3,s4"}
    frame = pd.read_csv(corpus)
    frame.loc[0, "fold"] = 1  # s1_angry_0 into fold 1: s1 is now in both folds
    frame.to_csv(corpus, index=False)
    refused = run_cli(["folds", *overrides(corpus, "folds.scheme=predefined")], env=env)
    assert refused.returncode == 2
    assert "s1 in folds [0, 1]" in refused.stderr and "allow_speaker_overlap" in refused.stderr
    allowed = run_cli(
        [
            "folds",
            *overrides(corpus, "folds.scheme=predefined", "folds.allow_speaker_overlap=true"),
        ],
        env=env,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "NOT speaker-independent" in allowed.stdout
