"""``trainer.precision``: the supported set, float32 probabilities, cuDNN RNN math pinned with
``trainer.deterministic``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sergraph.config import PRECISIONS, ConfigError, check_precision, compose
from sergraph.data.collate import graph_loader
from sergraph.data.graphs import build_graph
from sergraph.models import build_model
from sergraph.training.fit import pin_rnn_math
from tests.cli import tiny_study


def collated_batch(pad: bool = False):
    rng = np.random.default_rng(0)
    items = [
        build_graph(rng.normal(size=(n, 6)), 4, 12, pad, i % 3, f"u{i}", "s")
        for i, n in enumerate((12, 5, 1, 9))
    ]
    return next(iter(graph_loader(items, batch_size=len(items))))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_supported_precisions_compose(precision):
    assert compose([f"trainer.precision={precision}"]).trainer.precision == precision


@pytest.mark.parametrize(
    "precision,says",
    [
        ("16-true", ["16-mixed", "RNN input dtype", "PyG batches"]),
        ("bf16-true", ["bf16-mixed", "RNN input dtype"]),
        ("64-true", ["32-true", "float64"]),
        ("16", ["16-mixed"]),
        ("bf16", ["bf16-mixed"]),
        ("8-mixed", ["not valid", "32-true", "16-mixed", "bf16-mixed"]),
    ],
)
def test_unsupported_precisions_are_refused_with_the_reason(precision, says):
    with pytest.raises(ConfigError, match=f"trainer.precision='{precision}'") as error:
        compose([f"trainer.precision={precision}"])
    for words in says:
        assert words in str(error.value)
    with pytest.raises(ConfigError):
        check_precision(precision)


@pytest.mark.parametrize("precision", ["16-true", "bf16-true", "64-true"])
def test_true_precisions_fail_as_the_refusal_says(precision):
    """Why they are refused: Lightning converts the weights and plain-tensor inputs, not a PyG
    batch. If Lightning starts converting batches, this fails and the refusal can go."""
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision

    plugin = DoublePrecision() if precision == "64-true" else HalfPrecision(precision)
    model = plugin.convert_module(build_model("lstm_gin", 6, 3, hidden=8, lstm_hidden=5))
    batch = plugin.convert_input(collated_batch())
    assert batch.x.dtype == torch.float32
    with pytest.raises(RuntimeError, match="dtype"):
        model(batch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["lstm_gin", "sage_lstm", "bigru_attn"])
def test_predicted_probabilities_are_float32_under_autocast(name, dtype, cuda_like_rnn):
    from sergraph.training.module import SERModule

    module = SERModule(name, {}, in_channels=6, class_names=["a", "b", "c"]).eval()
    batch = collated_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        assert module(batch).dtype == dtype  # the logits are half precision
        out = module.predict_step(batch, 0)
    probabilities = out["probabilities"]
    assert probabilities.dtype == torch.float32 and probabilities.device.type == "cpu"
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-6)


def test_deterministic_pins_cudnn_rnn_math_to_ieee(monkeypatch):
    rnn = torch.backends.cudnn.rnn
    if not hasattr(rnn, "fp32_precision"):
        assert pin_rnn_math(True) is None  # older torch: nothing to pin
        return
    monkeypatch.setattr(rnn, "fp32_precision", "tf32")
    assert pin_rnn_math(False) is None and rnn.fp32_precision == "tf32"
    assert pin_rnn_math(True) == "ieee" and rnn.fp32_precision == "ieee"


@pytest.mark.slow
def test_a_bf16_mixed_cell_trains_predicts_and_pins_rnn_math(tmp_path, cuda_like_rnn, monkeypatch):
    """One fold, one epoch, under bf16-mixed on the CPU with CUDA's recurrent dtypes: the
    probabilities reach predictions.csv (bf16 ones made numpy fail), and the deterministic
    Trainer ran with cuDNN RNN math in IEEE fp32."""
    import pandas as pd

    from sergraph.training.study import run_study

    rnn = torch.backends.cudnn.rnn
    if hasattr(rnn, "fp32_precision"):
        monkeypatch.setattr(rnn, "fp32_precision", "tf32")
    run_study(tiny_study(tmp_path, "trainer.precision=bf16-mixed"))
    (predictions,) = (tmp_path / "runs").rglob("predictions.csv")
    frame = pd.read_csv(predictions)
    p = frame.filter(like="p_").to_numpy(dtype=float)
    assert len(frame) > 0 and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    if hasattr(rnn, "fp32_precision"):
        assert rnn.fp32_precision == "ieee"
