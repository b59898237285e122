"""Segment nodes (issue 16's lever ``features.pool=25``): real openSMILE on a made-up signal
whose loud part ends at a known second, so the nodes' boundaries in seconds can be checked."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from sergraph.data.features import FeatureCache, FeatureConfig
from sergraph.data.features.opensmile import feature_names

RATE = 16000


def test_segment_nodes_cover_250_ms_each_and_keep_their_boundaries(tmp_path):
    # 0.0-0.5 s: a loud 220 Hz tone; 0.5-1.0 s: near silence
    t = np.arange(RATE) / RATE
    signal = 0.5 * np.sin(2 * np.pi * 220 * t)
    signal[RATE // 2 :] *= 1e-3
    wav = tmp_path / "tone.wav"
    sf.write(wav, signal.astype(np.float32), RATE)

    frames = FeatureCache(tmp_path / "cache", FeatureConfig("is10", pool=1)).get([wav])[0]
    cache = FeatureCache(tmp_path / "cache", FeatureConfig("is10", pool=25))
    nodes = cache.get([wav])[0]
    assert cache.node_seconds() == 0.25
    # 10 ms frames, 25 per node: ceil(T / 25) nodes, node j = mean of frames 25j .. 25j + 24,
    # i.e. the audio of [0.25 j, 0.25 (j + 1)) s
    assert nodes.shape == (-(-len(frames) // 25), frames.shape[1])
    for j in range(len(nodes)):
        expected = frames[25 * j : 25 * (j + 1)].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(nodes[j], expected, rtol=1e-5, atol=1e-5)
    loudness = nodes[:, feature_names(FeatureConfig("is10")).index("pcm_loudness_sma")]
    # nodes 0 and 1 (0-0.5 s) hold the tone, nodes 2 and 3 (0.5-1.0 s) the silence
    assert len(loudness) == 4
    assert loudness[:2].min() > 10 * loudness[2:].max()
