"""Shared fixtures: small made-up corpus tables and the location of the real EmoDB."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Unit modules for the edit-test loop, ``pytest -m quick`` (under 2 minutes on 2 cores): they
#: train no study, start no subprocess and read no corpus.
QUICK_MODULES = {
    "test_audformat_corpus",
    "test_console_detail",
    "test_datamodule",
    "test_experiments",
    "test_fastdata",
    "test_folds",
    "test_graphs",
    "test_labels",
    "test_long_and_mixed_audio",
    "test_metrics",
    "test_models",
    "test_model_zoo",
    "test_packaging",
    "test_parallel_devices",
    "test_segment_nodes",
    "test_structure",
    "test_synthetic",
    "test_transfers",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if module in QUICK_MODULES and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.quick)


def emodb_root() -> Path | None:
    """EmoDB from $SERGRAPH_EMODB or ../shared/data/emodb beside the repository."""
    candidates = [os.environ.get("SERGRAPH_EMODB"), REPO.parent / "shared" / "data" / "emodb"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "wav").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def emodb() -> Path:
    root = emodb_root()
    if root is None:
        pytest.skip("EmoDB not found: set SERGRAPH_EMODB or place it at ../shared/data/emodb")
    return root


@pytest.fixture
def toy_table() -> pd.DataFrame:
    """4 speakers x 3 classes x 2 utterances, with made-up paths."""
    rows = []
    for speaker in ("s1", "s2", "s3", "s4"):
        for label in ("angry", "neutral", "sad"):
            for take in range(2):
                utterance = f"{speaker}_{label}_{take}"
                rows.append((utterance, f"/audio/{utterance}.wav", speaker, label))
    return pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])


@pytest.fixture
def toy_features(toy_table) -> list[np.ndarray]:
    """Random pooled features [T, 6] of varying length, class-dependent mean."""
    rng = np.random.default_rng(0)
    offsets = {"angry": 1.0, "neutral": 0.0, "sad": -1.0}
    return [
        (rng.normal(size=(int(rng.integers(8, 30)), 6)) + offsets[label]).astype(np.float32)
        for label in toy_table["label"]
    ]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Environment of the CLI subprocesses of one test module: its own feature cache, W&B
    offline."""
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "SERGRAPH_CACHE": str(cache), "WANDB_MODE": "offline"}


def skip_without_cpu_lstm_kernel(dtype: str = "bfloat16") -> None:
    """Skip, saying why, where this CPU has no LSTM kernel for CPU autocast in ``dtype``
    (:func:`sergraph.training.capabilities.cpu_autocast_lstm_error`, probed once per run)."""
    from sergraph.training.capabilities import cpu_autocast_lstm_error

    error = cpu_autocast_lstm_error(dtype)
    if error is not None:
        short = {"bfloat16": "bf16", "float16": "fp16"}[dtype]
        pytest.skip(f"this CPU has no {short} LSTM kernel ({error})")


@pytest.fixture
def cpu_bf16_lstm():
    """For tests that run ``nn.LSTM`` under CPU bf16 autocast: skip where the CPU lacks it."""
    skip_without_cpu_lstm_kernel("bfloat16")


@pytest.fixture
def cuda_like_rnn():
    """``nn.LSTM``/``nn.GRU`` return the autocast dtype under CPU autocast, as on CUDA
    (:func:`tests.emulation.cuda_like_recurrent_layers`)."""
    from tests.emulation import cuda_like_recurrent_layers

    with cuda_like_recurrent_layers():
        yield


@pytest.fixture
def cudnn_fp16_rnn():
    """``nn.LSTM``/``nn.GRU`` return fp16 under any CPU autocast, as autocast's cuDNN RNN wrapper
    does under ``bf16-mixed`` (:func:`tests.emulation.cuda_like_recurrent_layers`)."""
    from tests.emulation import cuda_like_recurrent_layers

    with cuda_like_recurrent_layers(returns="float16"):
        yield
