"""Device-to-host synchronisations of a training step, counted on the CPU.

On a GPU, every value the host reads back from the device (``int(t)``, ``bool(t)``,
``t.item()``, ``t.tolist()``, a boolean-mask index, ``nonzero``, ``repeat_interleave`` without
``output_size``, a copy between devices) waits until the device has run everything queued
before it, so the next step cannot be queued while the previous one runs. The fast path decides
on the CPU, where the batch is collated (:class:`sergraph.data.collate.BandMark`), so a
training step of a padded batch reads nothing back.

:class:`HostSyncCounter` is a ``TorchFunctionMode`` that sees every torch call of the step
(forward, loss and backward, custom autograd functions included) and counts the calls that
synchronise on a CUDA device. Everything here runs on the CPU, where none of them costs
anything, so the counter counts the calls themselves.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from sergraph.config import resolve_model
from sergraph.data.collate import band_mark, graph_loader
from sergraph.data.graphs import build_graph
from sergraph.models import banded, model_parameters
from tests.models import FAST_MODELS, build_named

# the models with a fast path (test_fast_path.py pins the list), and bigru_attn: not a
# TemporalGNN, but its BiGRU takes the batch layout from the mark
FAST_MODELS = [*FAST_MODELS, "bigru_attn"]

# calls that read a device tensor's value on the host
READS = {
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__array__",
    "item",
    "tolist",
    "numpy",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "unique_consecutive",
    "equal",
    "cpu",
    "cuda",
}


def _is_bool_tensor(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    if isinstance(index, tuple | list):
        return any(_is_bool_tensor(i) for i in index)
    return False


def _names_a_device(args, kwargs) -> bool:
    if "device" in kwargs:
        return True
    return any(isinstance(a, str | torch.device) for a in args[1:])


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in tree_flatten(tree)[0] if isinstance(leaf, torch.Tensor)]


class HostSyncCounter(TorchFunctionMode):
    """Counts the torch calls made inside the ``with`` block that synchronise on CUDA.

    Tensors that live on the host on a GPU too are not counted when read: ``host`` (the
    collater's CPU lengths), the ``batch_sizes`` of packed sequences (always on the CPU), and
    whatever is computed from host tensors alone.

    Args:
        host: tensors that stay on the CPU in a GPU run.
    """

    def __init__(self, host: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self._host: dict[int, torch.Tensor] = {id(t): t for t in host}

    def _is_host(self, tensor: torch.Tensor) -> bool:
        return self._host.get(id(tensor)) is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        inputs = _tensors((args, kwargs))
        on_host = bool(inputs) and all(self._is_host(t) for t in inputs)
        if on_host:
            out = func(*args, **kwargs)
            for tensor in _tensors(out):
                self._host[id(tensor)] = tensor
            return out
        if name == "_pack_padded_sequence":
            out = func(*args, **kwargs)
            self._host[id(out[1])] = out[1]  # batch_sizes: on the CPU by definition
            return out
        if name in READS:
            self.calls[name] += 1
        elif name in ("__getitem__", "__setitem__", "index_put_", "index_put") and (
            len(args) > 1 and _is_bool_tensor(args[1])
        ):
            self.calls[f"{name}[bool mask]"] += 1
        elif name == "repeat_interleave" and kwargs.get("output_size") is None:
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            if isinstance(repeats, torch.Tensor) or (len(args) == 1 and "repeats" not in kwargs):
                self.calls["repeat_interleave without output_size"] += 1
        elif name == "to" and isinstance(args[0], torch.Tensor) and _names_a_device(args, kwargs):
            self.calls["to(device)"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def test_the_counter_sees_each_kind_of_read_back():
    t = torch.arange(6)
    with HostSyncCounter() as counter:
        bool(t[0] > 1)
        int(t.max())
        t.sum().item()
        t[t > 2]
        t.tolist()
        torch.repeat_interleave(t, t)
        torch.repeat_interleave(t, t, output_size=15)  # not counted
        torch.equal(t, t)
        t.to("cpu")
        t.to(torch.float64)  # not counted
        t.nonzero()
    assert counter.calls == {
        "__bool__": 1,
        "__int__": 1,
        "item": 1,
        "__getitem__[bool mask]": 1,
        "tolist": 1,
        "repeat_interleave without output_size": 1,
        "equal": 1,
        "to(device)": 1,
        "nonzero": 1,
    }


SMALL = {"hidden": 8, "lstm_hidden": 5, "gru_hidden": 5, "classifier_hidden": 7, "num_layers": 2}


def collated_batch(pad: bool, lengths=(12, 5, 1, 9, 2, 12), k: int = 4):
    rng = np.random.default_rng(0)
    items = [
        build_graph(rng.normal(size=(n, 6)), k, 12, pad, i % 3, f"u{i}", "s")
        for i, n in enumerate(lengths)
    ]
    batch = next(iter(graph_loader(items, batch_size=len(items))))
    assert band_mark(batch) is not None
    return batch


def syncs_of_a_step(name: str, batch, fast: bool) -> Counter:
    """Read-backs of forward, loss and backward of one training step (train mode)."""
    torch.manual_seed(0)
    widths = {
        key: v for key, v in SMALL.items() if key in model_parameters(resolve_model(name, {})[0])
    }
    model = build_named(name, 6, 3, **widths).train()
    with banded.fast_path(fast):
        assert model.uses_fast_path(batch) is fast
        with HostSyncCounter(host=(band_mark(batch).lengths,)) as counter:
            loss = F.cross_entropy(model(batch), batch.y)
            loss.backward()
    return counter.calls


@pytest.mark.parametrize("name", FAST_MODELS)
def test_a_padded_training_step_reads_nothing_back(name):
    batch = collated_batch(pad=True)
    assert syncs_of_a_step(name, batch, fast=True) == {}


def test_the_decision_from_the_edges_read_back():
    """What every forward did before the collater marked batches: the counter sees it."""
    batch = collated_batch(pad=True)
    with HostSyncCounter() as counter:
        assert banded.verify(batch) is not None
    assert counter.calls["equal"] == 1 and counter.total >= 4


# True-length batches too: the BiLSTM/BiGRU front packs with the lengths the collater put on
# the CPU; the readout of graphs of different sizes is a segment reduction over ``ptr``.
@pytest.mark.parametrize("name", FAST_MODELS)
def test_a_true_length_training_step_reads_nothing_back(name):
    batch = collated_batch(pad=False)
    assert syncs_of_a_step(name, batch, fast=True) == {}


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_the_lightning_training_step_reads_nothing_back(augment, monkeypatch):
    """SERModule.training_step (augmentation, loss with class weights, logging) on a padded
    batch, outside a Trainer; the augmentation as it runs on a GPU (on the CPU it reads its
    masks' spans on the host, where that costs nothing)."""
    from sergraph.training import module as module_file
    from sergraph.training.module import SERModule

    monkeypatch.setattr(module_file, "masks_on_host", lambda x: False)
    torch.manual_seed(0)
    module = SERModule(
        "lstm_gin",
        {"hidden": 8, "lstm_hidden": 5, "num_layers": 2},
        in_channels=6,
        class_names=["a", "b", "c"],
        class_weights=[1.0, 2.0, 0.5],
        augment={"noise": 0.1, "time_mask": 3, "feature_mask": 2} if augment else None,
    )
    batch = collated_batch(pad=True)
    with HostSyncCounter(host=(band_mark(batch).lengths,)) as counter:
        module.training_step(batch, 0).backward()
    assert counter.calls == {}


@pytest.mark.gpu
@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("name", FAST_MODELS)
def test_a_cuda_training_step_does_not_synchronise(name, pad):
    """On a GPU, the same claim checked by CUDA itself: torch raises on a synchronising call."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    torch.manual_seed(0)
    widths = {
        key: v for key, v in SMALL.items() if key in model_parameters(resolve_model(name, {})[0])
    }
    model = build_named(name, 6, 3, **widths).cuda().train()
    batch = collated_batch(pad).to("cuda")
    assert model.uses_fast_path(batch)
    F.cross_entropy(model(batch), batch.y).backward()  # warm-up: cuDNN plans, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(model(batch), batch.y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
