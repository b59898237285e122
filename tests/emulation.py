"""CPU emulations of CUDA behaviour that CPU runs do not show.

:func:`cuda_like_recurrent_layers`: under CUDA autocast (``16-mixed``/``bf16-mixed``) cuDNN runs
``nn.LSTM`` and ``nn.GRU`` in half precision, packed sequences included, so they return fp16/bf16
for fp32 inputs. CPU autocast does not autocast recurrent layers (packed ones never), so on the
CPU they return fp32 and a model that mixes their output with fp32 tensors (an index-put into a
``new_zeros`` buffer, a ``torch.cat``) passes on the CPU and crashes on a GPU. Inside the context
the recurrent layers run in fp32 and their outputs (the packed data, ``h_n``, ``c_n``) are cast
to the CPU autocast dtype whenever CPU autocast is on: the dtypes a model sees are CUDA's.

``cuda_like_recurrent_layers(returns="float16")`` goes one step further: autocast's cuDNN RNN
wrapper (``_cudnn_rnn_cast_reflatten``) has cast to fp16 whatever the autocast dtype, so under
``bf16-mixed`` a CUDA LSTM can return fp16 inside a bf16 region, where ``torch.cat`` of it with a
bf16 tensor fails ("Unexpected floating ScalarType in at::autocast::prioritize").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence


def _cast(value, dtype: torch.dtype):
    if isinstance(value, PackedSequence):
        return PackedSequence(
            value.data.to(dtype), value.batch_sizes, value.sorted_indices, value.unsorted_indices
        )
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def _autocast_like_cuda(forward, returns: torch.dtype | None = None):
    def wrapped(self, input, hx=None):
        if not torch.is_autocast_enabled("cpu"):
            return forward(self, input, hx)
        dtype = returns or torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            output, hidden = forward(self, _cast(input, torch.float32), _cast(hx, torch.float32))
        return _cast(output, dtype), _cast(hidden, dtype)

    return wrapped


@contextlib.contextmanager
def cuda_like_recurrent_layers(returns: str | None = None) -> Iterator[None]:
    """``nn.LSTM``/``nn.GRU`` return the autocast dtype under CPU autocast, as on CUDA; with
    ``returns="float16"``, fp16 whatever the autocast dtype (cuDNN's RNN wrapper)."""
    originals = {cls: cls.forward for cls in (nn.LSTM, nn.GRU)}
    dtype = getattr(torch, returns) if returns else None
    try:
        for cls, forward in originals.items():
            cls.forward = _autocast_like_cuda(forward, dtype)
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward
