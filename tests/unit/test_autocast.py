"""Every registered model trains a step under mixed precision with CUDA's recurrent dtypes.

``trainer.precision=16-mixed``/``bf16-mixed`` run the model under ``torch.autocast``. On CUDA the
recurrent layers then return fp16/bf16 (cuDNN), which CPU autocast does not do; the
``cuda_like_rnn`` fixture (``tests/emulation.py``) makes them do it here. Each model runs forward
and backward on padded and true-length batches, with the fast path on and off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sergraph.config import resolve_model
from sergraph.data.collate import graph_loader
from sergraph.data.graphs import build_graph
from sergraph.models import banded, model_parameters
from tests.models import build_named, neural_names

SMALL = {"hidden": 8, "lstm_hidden": 5, "gru_hidden": 5, "classifier_hidden": 7, "num_layers": 2}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def collated_batch(pad: bool):
    rng = np.random.default_rng(0)
    items = [
        build_graph(rng.normal(size=(n, 6)), 4, 12, pad, i % 3, f"u{i}", "s")
        for i, n in enumerate((12, 5, 1, 9, 2, 12))
    ]
    return next(iter(graph_loader(items, batch_size=len(items))))


def step_under_autocast(name: str, pad: bool, fast: bool, dtype: torch.dtype):
    torch.manual_seed(0)
    widths = {
        key: v for key, v in SMALL.items() if key in model_parameters(resolve_model(name, {})[0])
    }
    model = build_named(name, 6, 3, **widths).train()
    batch = collated_batch(pad)
    with banded.fast_path(fast), torch.autocast("cpu", dtype=dtype):
        logits = model(batch)
        loss = F.cross_entropy(logits.float(), batch.y)
    loss.backward()
    return logits, loss, model


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pyg"])
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", neural_names())
def test_every_model_trains_under_autocast_with_cuda_recurrent_dtypes(
    name, dtype, pad, fast, cuda_like_rnn
):
    logits, loss, model = step_under_autocast(name, pad, fast, DTYPES[dtype])
    assert logits.shape == (6, 3)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # parameters stay fp32 (mixed precision), their gradients too
    assert all(g.dtype == torch.float32 for g in grads)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pyg"])
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("name", neural_names())
def test_every_model_trains_under_bf16_when_cudnn_returns_fp16(name, pad, fast, cudnn_fp16_rnn):
    """Under CUDA ``bf16-mixed`` autocast's cuDNN RNN wrapper returns fp16: the recurrent
    outputs must not meet bf16 tensors as they are (``torch.cat`` refuses fp16 with bf16)."""
    logits, loss, model = step_under_autocast(name, pad, fast, torch.bfloat16)
    assert logits.shape == (6, 3)
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads)


def test_the_fp16_emulation_returns_fp16_under_bf16_autocast(cudnn_fp16_rnn):
    lstm = torch.nn.LSTM(3, 4, batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = lstm(torch.randn(2, 5, 3))
    assert out.dtype == h.dtype == c.dtype == torch.float16
    # what a CUDA bf16-mixed run of the unfixed readout met: fp16 and bf16 in one torch.cat
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError):
        torch.cat([out, torch.zeros(2, 5, 4, dtype=torch.bfloat16)], dim=-1)


def test_the_emulation_returns_the_autocast_dtype(cuda_like_rnn):
    from torch.nn.utils.rnn import pack_padded_sequence

    lstm, gru = torch.nn.LSTM(3, 4, batch_first=True), torch.nn.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True)
    with torch.autocast("cpu", dtype=torch.float16):
        out, (h, c) = lstm(packed)
        assert out.data.dtype == h.dtype == c.dtype == torch.float16
        out, h = gru(x)
        assert out.dtype == h.dtype == torch.float16
    out, (h, c) = lstm(x)  # outside autocast: untouched
    assert out.dtype == torch.float32
