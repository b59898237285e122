"""``run.parallel=N`` on a node with several GPUs: one GPU per worker, round robin (that each
worker process sees its own: tests/unit/test_worker_pool.py)."""

from __future__ import annotations

import torch

from sergraph.training.study import worker_devices


def test_workers_get_the_visible_gpus_round_robin(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_devices(6, "gpu", 1) == ["0", "1", "2", "3", "0", "1"]
    assert worker_devices(2, "auto", "auto") == ["0", "1"]
    assert worker_devices(3, "cuda", "1") == ["0", "1", "2"]
    # The parent's own selection is kept, indices and UUIDs alike.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,GPU-1a2b")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert worker_devices(4, "gpu", 1) == ["3", "5", "GPU-1a2b", "3"]


def test_no_assignment_without_cuda_or_with_devices_named_by_the_user(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_devices(2, "cpu", 1) == [None, None]
    assert worker_devices(2, "gpu", [1]) == [None, None]
    assert worker_devices(2, "gpu", "0,2") == [None, None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert worker_devices(3, "auto", 1) == [None, None, None]
