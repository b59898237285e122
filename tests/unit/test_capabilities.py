"""CPU capability probes: mixed precision on a CPU without the LSTM kernel stops before training.

A CPU with bf16 instructions is made into one without by ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's
own cap, read when torch first uses oneDNN), in a subprocess: the same oneDNN refusal a CPU
without AVX512-BF16/AMX gives. The probe's answer is checked against an independent route, a real
training step of LSTM-GIN under CPU autocast in the same capped process, on padded graphs (equal
lengths run the LSTM unpacked; CPU autocast leaves packed sequences in float32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sergraph.config import compose
from sergraph.training.capabilities import (
    AUTOCAST_PRECISIONS,
    cpu_autocast_lstm_error,
    holds_an_lstm,
    runs_an_lstm,
    trains_on_cpu,
)
from tests.cli import run_cli, tiny_study

#: oneDNN capped to AVX2: no bf16 LSTM kernel, whatever the host CPU has.
NO_BF16 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}

PROBE_AND_STEP = """
import json, sys
import numpy as np, torch, torch.nn.functional as F
from sergraph.data.collate import graph_loader
from sergraph.data.graphs import build_graph
from sergraph.models import build_model
from sergraph.training.capabilities import cpu_autocast_lstm_error

dtype = sys.argv[1]
probe = cpu_autocast_lstm_error(dtype)
rng = np.random.default_rng(0)
items = [build_graph(rng.normal(size=(n, 6)), 4, 12, True, i % 3, f"u{i}", "s")
         for i, n in enumerate((12, 5, 9))]
batch = next(iter(graph_loader(items, batch_size=3)))
model = build_model("lstm_gin", 6, 3, hidden=8, lstm_hidden=5, num_layers=2)
try:
    with torch.autocast("cpu", dtype=getattr(torch, dtype)):
        loss = F.cross_entropy(model(batch).float(), batch.y)
    loss.backward()
    step = None
except RuntimeError as error:
    step = str(error)
print(json.dumps({"probe": probe, "step": step}))
"""


def probe_in_subprocess(dtype: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE_AND_STEP, dtype],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "dtype,env",
    [("bfloat16", {}), ("bfloat16", NO_BF16), ("float16", {})],
    ids=["bf16-host", "bf16-capped", "fp16-host"],
)
def test_the_probe_agrees_with_a_real_training_step(dtype, env):
    answer = probe_in_subprocess(dtype, env)
    # the probe says "no kernel" exactly where a real LSTM-GIN step under autocast fails
    assert (answer["probe"] is None) == (answer["step"] is None), answer
    if answer["probe"] is not None:
        assert "LSTM" in answer["step"]


def test_the_probe_answers_for_the_lstm_in_effect(cuda_like_rnn):
    # the CUDA emulation runs the LSTM in float32: no kernel needed, whatever the CPU
    assert cpu_autocast_lstm_error("bfloat16") is None
    assert cpu_autocast_lstm_error("float16") is None


def test_the_probe_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match=r"dtype='float8'.*'bfloat16', 'float16'"):
        cpu_autocast_lstm_error("float8")


@pytest.mark.parametrize(
    "model,expected",
    [("lstm_gin", True), ("lstm_gat", True), ("sage_lstm", True), ("gin", False)]
    + [("gcn", False), ("bigru_attn", False), ("svm", False)],
)
def test_which_models_hold_an_lstm(model, expected):
    # PAPER.md / the model files: LSTM-GIN, LSTM-GAT and GraphSAGE-LSTM hold an LSTM; GIN and
    # GCN none; the BiGRU baseline a GRU (CPU autocast keeps GRUs in float32); the SVM is numpy
    assert runs_an_lstm(compose([f"model={model}"])) is expected


def test_an_lstm_is_found_at_any_depth_and_a_gru_is_not_one():
    from torch import nn

    nested = nn.Sequential(nn.Linear(3, 3), nn.ModuleList([nn.Sequential(nn.LSTM(3, 2))]))
    assert holds_an_lstm(nested) is True
    assert holds_an_lstm(nn.Sequential(nn.GRU(3, 2), nn.Linear(2, 2))) is False
    assert holds_an_lstm(nn.LSTMCell(3, 2)) is False  # a cell is not the nn.LSTM kernel


def test_the_accelerator_decides_whether_training_is_on_the_cpu():
    import torch

    assert trains_on_cpu(compose(["trainer.accelerator=cpu"])) is True
    assert trains_on_cpu(compose(["trainer.accelerator=gpu"])) is False
    auto = trains_on_cpu(compose(["trainer.accelerator=auto"]))
    assert auto is not torch.cuda.is_available()


def tiny_train(tmp_path, precision: str, model: str = "lstm_gin") -> list[str]:
    return ["train", *tiny_study(tmp_path, f"model={model}", f"trainer.precision={precision}")]


@pytest.mark.parametrize(
    "precision,env,short",
    [("bf16-mixed", NO_BF16, "bf16"), ("16-mixed", {"OMP_NUM_THREADS": "1"}, "fp16")],
    ids=["bf16-capped", "fp16-host"],
)
def test_train_stops_before_training_on_a_cpu_without_the_kernel(tmp_path, precision, env, short):
    dtype = AUTOCAST_PRECISIONS[precision]
    if probe_in_subprocess(dtype, env)["probe"] is None:
        pytest.skip(f"this CPU (as capped: {env}) has the {short} LSTM kernel")
    done = run_cli(tiny_train(tmp_path, precision), env={**os.environ, **env}, timeout=300)
    assert done.returncode != 0
    message = done.stderr + done.stdout
    assert f"trainer.precision={precision} on the CPU: this CPU has no {short} LSTM kernel" in (
        message
    )
    assert "Use trainer.precision=32-true on this CPU" in message
    assert "primitive descriptor" in message  # torch's own words, quoted once
    assert "Traceback" not in message
    # stopped before any work: no feature extracted, no cell folder
    assert not [p for p in (tmp_path / "features").rglob("*") if p.is_file()]
    assert not list((tmp_path / "runs").rglob("fold-*"))


@pytest.mark.slow
def test_a_model_without_an_lstm_still_trains_in_bf16_on_such_a_cpu(tmp_path):
    if probe_in_subprocess("bfloat16", NO_BF16)["probe"] is None:
        pytest.skip("this CPU, capped to AVX2, still has the bf16 LSTM kernel")
    done = run_cli(tiny_train(tmp_path, "bf16-mixed", "gin"), env={**os.environ, **NO_BF16})
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "runs").rglob("predictions.csv"))) == 1


# ---------------------------------------------------------------------------------------------
# threads: the allotted cores divided among the processes


def test_allotted_cores_follow_the_affinity_mask_and_slurm(monkeypatch):
    from sergraph.training.capabilities import allotted_cores

    mask = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert allotted_cores() == mask
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert allotted_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(mask + 8))  # never more than the mask
    assert allotted_cores() == mask


def test_threads_per_process_from_the_key_the_environment_or_the_cores(monkeypatch):
    from sergraph.training.capabilities import torch_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    cores = min(8, len(os.sched_getaffinity(0)))
    assert torch_threads(compose([]), 1) == (cores, f"{cores} allotted core(s) / 1 process(es)")
    assert torch_threads(compose([]), 2)[0] == max(1, cores // 2)
    assert torch_threads(compose([]), 64)[0] == 1  # never 0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert torch_threads(compose([]), 2) == (3, "OMP_NUM_THREADS=3")
    assert torch_threads(compose(["run.threads=5"]), 2) == (5, "run.threads=5")


def test_cells_at_a_time_from_the_key_the_cores_and_the_threads_per_cell(monkeypatch):
    from sergraph.training import capabilities
    from sergraph.training.capabilities import study_workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    cpu = ["trainer.accelerator=cpu"]
    assert compose([]).run.parallel == "auto"
    workers, why = study_workers(compose(cpu), 64)
    assert workers == cores and f"{cores} allotted core(s) / 1 thread(s) per cell" in why
    assert study_workers(compose(cpu), 1)[0] == 1  # never more workers than cells
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert study_workers(compose(cpu), 64)[0] == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores))  # all cores to one cell's threads
    assert study_workers(compose(cpu), 64)[0] == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert study_workers(compose([*cpu, f"run.threads={cores}"]), 64)[0] == 1
    assert study_workers(compose([*cpu, "run.parallel=3"]), 64) == (3, "run.parallel=3")
    assert study_workers(compose([*cpu, "run.parallel=3"]), 2)[0] == 2
    several = study_workers(compose([*cpu, "trainer.devices=2"]), 64)
    assert several == (1, "run.parallel=auto, each cell trains on several processes")
    # a machine with memory for one worker only
    monkeypatch.setattr(capabilities, "WORKER_MEMORY", capabilities.machine_memory())
    assert study_workers(compose(cpu), 64)[0] == 1


def test_the_fork_server_starts_early_only_where_workers_may_run(monkeypatch):
    from sergraph.training.capabilities import may_use_workers

    for name in ("OMP_NUM_THREADS", "SLURM_NTASKS", "SLURM_STEP_ID", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert may_use_workers([]) and may_use_workers(["run.parallel=3", "run.threads=2"])
    for serial in (
        ["run.parallel=1"],
        ["run.cell=3"],
        ["trainer.accelerator=gpu"],
        ["run.threads=4"],
        ["run.threads=3"],  # 4 cores hold one cell of 3 threads
    ):
        assert not may_use_workers(serial), serial
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert not may_use_workers([])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert may_use_workers([])
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert not may_use_workers([])
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun process
    assert not may_use_workers([])
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # an srun task of several
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert not may_use_workers([])
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert may_use_workers([])


def test_cells_run_one_at_a_time_by_default_when_this_process_registered_its_own(monkeypatch):
    # a worker process starts afresh: a model or metric registered here at run time (a
    # notebook's class, an entry of METRICS) would be unknown there
    import torch.nn as nn

    from sergraph.config import ConfigError
    from sergraph.metrics import METRICS
    from sergraph.models import registry
    from sergraph.training.capabilities import registered_in_process, study_workers

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpu = compose(["trainer.accelerator=cpu"])
    cores = len(os.sched_getaffinity(0))
    assert registered_in_process() == [] and study_workers(cpu, 64)[0] == cores

    class Notebook(nn.Module):
        pass

    monkeypatch.setitem(registry.MODELS, "notebook_gnn", Notebook)
    monkeypatch.setitem(METRICS, "err", METRICS["wa"])
    assert registered_in_process() == ["model notebook_gnn", "metric err"]
    workers, why = study_workers(cpu, 64)
    assert workers == 1 and "model notebook_gnn, metric err registered in this process" in why
    with pytest.raises(ConfigError, match=r"run.parallel=2: model notebook_gnn, metric err .*"):
        study_workers(compose(["trainer.accelerator=cpu", "run.parallel=2"]), 64)
    assert study_workers(compose(["trainer.accelerator=cpu", "run.parallel=1"]), 64)[0] == 1


@pytest.mark.parametrize("value", ["two", "0", "-1", "true"])
def test_run_parallel_is_a_positive_number_or_auto(value):
    from sergraph.config import ConfigError

    with pytest.raises(ConfigError, match="run.parallel="):
        compose([f"run.parallel={value}"])


def test_run_threads_must_be_positive():
    from sergraph.config import ConfigError

    with pytest.raises(ConfigError, match=r"run.threads=0 must be > 0"):
        compose(["run.threads=0"])


def svm_cell_threads(tmp_path, env: dict, one_core: bool, folds: str = "[0]") -> list[int]:
    """torch threads recorded in the metrics.json of a default `sergraph train model=svm`."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    environment.pop("SLURM_CPUS_PER_TASK", None)
    environment.update(env, SERGRAPH_CACHE=str(tmp_path.parent / "cache"))  # shared: one extraction
    tmp_path.mkdir()
    first_core = min(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-m", "sergraph.cli", "train", "model=svm", f"folds.only={folds}"]
        + ["data.options.n_speakers=3", "data.options.n_per_class=2", "logger.kind=none"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=(lambda: os.sched_setaffinity(0, {first_core})) if one_core else None,
    )
    assert done.returncode == 0, done.stderr
    assert "torch threads:" in done.stderr + done.stdout
    return [
        json.loads(path.read_text())["provenance"]["torch_threads"]
        for path in (tmp_path / "runs").rglob("metrics.json")
    ]


@pytest.mark.slow
def test_a_default_run_uses_the_allotted_cores(tmp_path):
    assert svm_cell_threads(tmp_path / "one", {}, one_core=True) == [1]
    assert svm_cell_threads(tmp_path / "slurm", {"SLURM_CPUS_PER_TASK": "1"}, False) == [1]
    all_cores = len(os.sched_getaffinity(0))
    assert svm_cell_threads(tmp_path / "all", {}, one_core=False) == [all_cores]


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to run 2 cells")
def test_a_default_study_runs_its_cells_side_by_side_one_thread_each(tmp_path):
    # run.parallel=auto: 2 cells on 2 or more cores run in 2 workers of 1 thread each; on one
    # core, one after another with its one thread
    assert svm_cell_threads(tmp_path / "two", {}, False, folds="[0,1]") == [1, 1]
    assert svm_cell_threads(tmp_path / "one", {}, True, folds="[0,1]") == [1, 1]
    log = (tmp_path / "two" / "runs").rglob("*.log")
    assert any("cells at a time: 2" in path.read_text() for path in log)
