"""Host-to-device transfers: only the batch attributes a step reads move, non-blocking; the data
module's loaders pin memory for CUDA only.

Which attributes a step reads is checked by running it: every tensor attribute of a batch is
made a :class:`HostOnly` tensor, whose shape may be read but which raises on any other use,
and the transfer turns the attributes it moves into plain tensors. A training, evaluation or
prediction step that reads an attribute the transfer left behind then fails, as it would with
that attribute on the host and the model on a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from torch import Tensor, nn
from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory
from torch_geometric.data import Batch

from sergraph.config import resolve_model
from sergraph.data.collate import band_mark, graph_loader
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import make_folds
from sergraph.data.graphs import build_graph
from sergraph.models import accepts_global, banded, model_parameters
from sergraph.models.base import TemporalGNN
from sergraph.models.recurrent import BiGRUAttention
from sergraph.training import module as module_file
from sergraph.training.module import SERModule, model_device_keys
from tests.models import FAST_MODELS, neural_names

SMALL = {"hidden": 8, "lstm_hidden": 5, "gru_hidden": 5, "classifier_hidden": 7, "num_layers": 2}
SPEAKERS = ["s0", "s1"]
GLOBAL = 3  # width of the utterance vector u


class LeftOnHost(RuntimeError):
    pass


# Reading these needs no device: the fast path's decision reads shapes of host tensors.
_METADATA = {
    Tensor.size,
    Tensor.dim,
    Tensor.numel,
    Tensor.shape.__get__,
    Tensor.ndim.__get__,
    Tensor.dtype.__get__,
    Tensor.device.__get__,
}


class HostOnly(Tensor):
    """A batch attribute on the host: its shape may be read, ``.to``/``.cpu`` give a plain
    tensor (a transfer; :attr:`moves` records its ``non_blocking``), anything else raises."""

    moves: list[bool] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if func in _METADATA:
                return func(*args, **kwargs)
            if func in (Tensor.to, Tensor.cpu):
                plain = args[0].as_subclass(Tensor)
                if func is Tensor.to:
                    cls.moves.append(bool(kwargs.get("non_blocking", False)))
                return func(plain, *args[1:], **kwargs)
        name = getattr(func, "__name__", repr(func))
        raise LeftOnHost(f"{name} read a batch attribute that the transfer left on the host")


def make_batch(pad: bool, lengths=(12, 5, 1, 9, 2, 12), k: int = 4) -> Batch:
    """A collated (band-marked) batch of build_graph graphs, each with an utterance vector u."""
    rng = np.random.default_rng(0)
    graphs = []
    for i, n in enumerate(lengths):
        graph = build_graph(rng.normal(size=(n, 6)), k, 12, pad, i % 3, f"u{i}", SPEAKERS[i % 2])
        graph.u = torch.from_numpy(rng.normal(size=(1, GLOBAL)).astype(np.float32))
        graphs.append(graph)
    batch = next(iter(graph_loader(graphs, batch_size=len(graphs))))
    assert band_mark(batch) is not None
    return batch


def host_only(batch: Batch) -> Batch:
    """``batch`` with every tensor attribute a :class:`HostOnly` (the mark kept)."""
    out = batch.clone()
    for key in out.keys():
        if isinstance(out[key], Tensor):
            out[key] = out[key].as_subclass(HostOnly)
    return out


def on_device(batch: Batch) -> set[str]:
    """The tensor attributes that the transfer moved (plain tensors, not HostOnly)."""
    return {key for key in batch.keys() if type(batch[key]) is Tensor}


def on_meta(batch: Batch) -> set[str]:
    """The attributes moved to the ``meta`` device."""
    return {k for k in batch.keys() if isinstance(batch[k], Tensor) and batch[k].is_meta}


def small_module(name: str, **levers) -> SERModule:
    family = resolve_model(name, {})[0]
    widths = {key: v for key, v in SMALL.items() if key in model_parameters(family)}
    torch.manual_seed(0)
    return SERModule(
        name,
        widths,
        in_channels=6,
        class_names=["a", "b", "c"],
        global_channels=GLOBAL if accepts_global(family) else 0,
        train_speakers=SPEAKERS,
        **levers,
    )


LEVERS = {
    "augment": {"noise": 0.1, "time_mask": 3, "feature_mask": 2, "mixup": 0.4},
    "speaker_adversary": 0.5,
}


def run_step(module: SERModule, batch: Batch, stage: str) -> None:
    """One ``stage`` step of ``module`` on a host batch, moved by the module's own transfer."""
    # the stage as a Trainer tells it (the steps then run outside a Trainer)
    module._trainer = SimpleNamespace(training=stage == "train", predicting=stage == "predict")
    try:
        moved = module.transfer_batch_to_device(host_only(batch), torch.device("cpu"), 0)
    finally:
        module._trainer = None
    expected = module.device_keys(batch, stage) & set(batch.keys())
    assert on_device(moved) == expected
    assert band_mark(moved) is band_mark(batch)  # kept, lengths still on the CPU
    if stage == "train":
        module.train()
        module.training_step(moved, 0).backward()
    elif stage == "eval":
        module.eval()
        with torch.no_grad():
            module.validation_step(moved, 0)
    else:
        module.eval()
        with torch.no_grad():
            out = module.predict_step(moved, 0)
        assert out["speaker"] == list(batch.speaker)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "message_passing"])
@pytest.mark.parametrize("name", neural_names())
def test_every_model_steps_with_only_its_declared_keys_moved(name, fast):
    module = small_module(name, **LEVERS)
    for pad in (True, False):
        batch = make_batch(pad)
        with banded.fast_path(fast):
            assert module.model.uses_fast_path(batch) is (
                fast and name in FAST_MODELS + ["bigru_attn"]
            )
            keys = model_device_keys(module.model, batch)
            assert keys == (
                module.model.band_batch_keys
                if module.model.uses_fast_path(batch)
                else module.model.batch_keys
            )
            for stage in ("train", "eval", "predict"):
                run_step(module, batch, stage)
    # what stays on the host whatever the path: the per-graph counts and the band marker
    assert not {"n_valid", "band_k"} & module.device_keys(batch, "eval")


def test_the_fast_path_leaves_the_edges_on_the_host_and_check_mode_moves_them(monkeypatch):
    module = small_module("lstm_gin")
    batch = make_batch(pad=True)
    assert module.model.uses_fast_path(batch)
    assert module.device_keys(batch, "eval") == {"x", "ptr", "batch", "u", "y"}
    with banded.fast_path(False):
        assert module.device_keys(batch, "eval") == {"x", "edge_index", "batch", "u", "y"}
    # SERGRAPH_FAST_PATH=check compares the edges with the band on the device
    monkeypatch.setenv(banded.FAST_PATH_ENV, "check")
    assert {"edge_index", "band_k"} <= module.device_keys(batch, "eval")
    run_step(module, batch, "eval")


def test_each_stage_moves_what_it_reads():
    batch = make_batch(pad=True)
    plain = small_module("lstm_gin")
    augmented = small_module("lstm_gin", augment={"noise": 0.1})
    model = {"x", "ptr", "batch", "u"}
    assert plain.device_keys(batch, "train") == model | {"y"}
    assert augmented.device_keys(batch, "train") == model | {"y", "n_valid"}  # ptr: already
    assert augmented.device_keys(batch, "eval") == model | {"y"}  # no augmentation there
    assert augmented.device_keys(batch, "predict") == model  # targets return to the host


@pytest.mark.parametrize(
    ("owner", "attribute", "key", "fast"),
    [
        (TemporalGNN, "batch_keys", "edge_index", False),
        (TemporalGNN, "batch_keys", "batch", False),
        (TemporalGNN, "band_batch_keys", "ptr", True),
        (TemporalGNN, "band_batch_keys", "x", True),
        (module_file, "TARGET_KEYS", "y", True),
        (module_file, "AUGMENT_KEYS", "n_valid", True),
    ],
)
def test_a_step_fails_when_a_key_it_reads_is_not_declared(owner, attribute, key, fast, monkeypatch):
    """The check above can fail: leave one needed key out of a declaration and the step
    reads a host tensor."""
    monkeypatch.setattr(owner, attribute, getattr(owner, attribute) - {key})
    # augmentation (which reads ptr too) only where its own keys are under test
    augment = {"time_mask": 3} if attribute == "AUGMENT_KEYS" else None
    module = small_module("lstm_gin", augment=augment)
    with banded.fast_path(fast), pytest.raises(LeftOnHost):
        run_step(module, make_batch(pad=False), "train")


def test_the_recurrent_baseline_fails_without_its_node_features(monkeypatch):
    monkeypatch.setattr(BiGRUAttention, "band_batch_keys", BiGRUAttention.band_batch_keys - {"x"})
    with pytest.raises(LeftOnHost):
        run_step(small_module("bigru_attn"), make_batch(pad=True), "eval")


def test_the_copies_are_non_blocking_and_the_host_batch_is_left_alone():
    module = small_module("lstm_gin")
    batch = make_batch(pad=False)
    HostOnly.moves.clear()
    module.transfer_batch_to_device(host_only(batch), torch.device("cpu"), 0)
    assert HostOnly.moves == [True] * 5  # x, ptr, batch, u, y
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert on_meta(moved) == {"x", "ptr", "batch", "u", "y"}
    assert moved.edge_index.device.type == "cpu" and moved.n_valid.device.type == "cpu"
    assert moved.speaker == batch.speaker and moved.num_graphs == batch.num_graphs
    assert all(
        batch[key].device.type == "cpu" for key in batch.keys() if isinstance(batch[key], Tensor)
    )
    mark = band_mark(moved)
    assert mark is band_mark(batch) and mark.lengths.device.type == "cpu"


def test_a_model_that_declares_nothing_gets_every_tensor():
    class Undeclared(nn.Module):  # a plugin family written before batch_keys
        def forward(self, data):
            return data.x.new_zeros(data.num_graphs, 3)

    module = small_module("lstm_gin")
    module.model = Undeclared()
    batch = make_batch(pad=True)
    assert model_device_keys(module.model, batch) is None
    moved = module.transfer_batch_to_device(batch.clone(), torch.device("meta"), 0)
    tensors = {key for key in batch.keys() if isinstance(batch[key], Tensor)}
    assert on_meta(moved) == tensors
    # not a PyG batch: Lightning's own transfer
    assert module.transfer_batch_to_device([torch.ones(2)], torch.device("meta"), 0)[0].is_meta


# --- pinned memory ---------------------------------------------------------------------------


def toy_datamodule(toy_table, toy_features, **kwargs) -> FoldDataModule:
    fold = make_folds(toy_table, "loso")[0]
    dm = FoldDataModule(
        toy_table, toy_features, fold, ["angry", "neutral", "sad"], k=4, max_nodes=20, **kwargs
    )
    dm.setup()
    return dm


def attached(dm: FoldDataModule, accelerator) -> FoldDataModule:
    dm.trainer = SimpleNamespace(accelerator=accelerator, world_size=1, global_rank=0)
    return dm


def test_loaders_pin_for_cuda_only_or_as_asked(toy_table, toy_features):
    dm = toy_datamodule(toy_table, toy_features)
    assert not dm.train_dataloader().pin_memory  # no Trainer
    attached(dm, CPUAccelerator())
    assert not any(loader().pin_memory for loader in (dm.train_dataloader, dm.val_dataloader))
    attached(dm, CUDAAccelerator())
    loaders = (dm.train_dataloader, dm.val_dataloader, dm.test_dataloader, dm.predict_dataloader)
    assert all(loader().pin_memory for loader in loaders)
    assert (
        not attached(toy_datamodule(toy_table, toy_features, pin_memory=False), CUDAAccelerator())
        .train_dataloader()
        .pin_memory
    )
    assert toy_datamodule(toy_table, toy_features, pin_memory=True).val_dataloader().pin_memory


@pytest.mark.parametrize("collated", [True, False], ids=["collated", "pyg_collation"])
def test_the_loaders_pinning_pins_every_tensor_and_keeps_the_mark(collated, monkeypatch):
    """What the DataLoader's pinning thread does with a batch (the pinning itself needs a GPU,
    so Tensor.pin_memory is replaced by a recording copy)."""
    pinned: list[Tensor] = []

    def fake_pin(tensor, *args, **kwargs):
        copy = tensor.clone()
        pinned.append(copy)
        return copy

    rng = np.random.default_rng(0)
    graphs = [build_graph(rng.normal(size=(n, 6)), 4, 12, False, 0, "u", "s") for n in (12, 5)]
    if not collated:  # a stacked attribute: PyG's collation (MarkingCollater) instead
        for graph in graphs:
            graph.extra = torch.zeros(())
    batch = next(iter(graph_loader(graphs, batch_size=2)))
    mark = band_mark(batch)
    assert mark is not None
    tensors = {key for key in batch.keys() if isinstance(batch[key], Tensor)}
    monkeypatch.setattr(Tensor, "pin_memory", fake_pin)
    out = loader_pin_memory(batch)
    assert isinstance(out, Batch) and band_mark(out) is mark
    assert {key for key in tensors if any(out[key] is p for p in pinned)} == tensors
    assert out.speaker == ["s", "s"]


@pytest.mark.gpu
def test_a_cuda_step_from_a_pinned_loader(toy_table, toy_features):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    dm = attached(toy_datamodule(toy_table, toy_features, batch_size=4), CUDAAccelerator())
    batch = next(iter(dm.train_dataloader()))
    assert batch.x.is_pinned() and batch.edge_index.is_pinned()
    module = SERModule(
        "lstm_gin", {"hidden": 8, "lstm_hidden": 5, "num_layers": 2}, 6, ["a", "b", "c"]
    )
    module = module.cuda()
    moved = module.transfer_batch_to_device(batch, torch.device("cuda"), 0)
    assert moved.x.is_cuda and moved.y.is_cuda and not moved.edge_index.is_cuda
    assert band_mark(moved) is band_mark(batch) and not band_mark(moved).lengths.is_cuda
    module.training_step(moved, 0).backward()
