"""What this machine's CPU can run: probes for the kernels mixed precision needs on the CPU,
the cores a process may use (:func:`torch_threads`) and the cells a study runs at a time
(:func:`study_workers`).

Under ``trainer.precision=bf16-mixed`` or ``16-mixed`` on the CPU, ``torch.autocast`` runs
``nn.LSTM`` in the autocast dtype through oneDNN. oneDNN has a bf16 LSTM kernel only on CPUs
with bf16 instructions (AVX512-BF16 or AMX; not, for example, AMD EPYC before Zen 4) and, in the
torch builds seen so far, no fp16 one at all; without the kernel training stops with "could not
create a primitive descriptor for the LSTM forward propagation primitive" at the first batch
whose graphs have equal lengths (every batch of padded graphs: the LSTM then runs unpacked;
packed sequences CPU autocast keeps in float32).

:func:`cpu_autocast_lstm_error` runs a tiny LSTM forward and backward under CPU autocast once per
process and dtype, and :func:`require_precision_kernels` turns a missing kernel into a clear
error before any work. The probe calls ``nn.LSTM`` itself, so it answers for this process as it
is: where ``nn.LSTM.forward`` is replaced (the tests' CUDA emulation runs it in float32), the
probe follows the replacement. ``ONEDNN_MAX_CPU_ISA=AVX2`` (read once, when torch first uses
oneDNN) caps a CPU that has the kernel to one that has not.
"""

from __future__ import annotations

import functools
import os

from omegaconf import DictConfig

from sergraph.config import ConfigError
from sergraph.training.memory import machine_memory

#: ``trainer.precision`` values that run the model under autocast, and the autocast dtype.
AUTOCAST_PRECISIONS = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}
_SHORT = {"bfloat16": "bf16", "float16": "fp16"}


def cpu_autocast_lstm_error(dtype: str) -> str | None:
    """``None`` where ``nn.LSTM`` runs forward and backward under CPU autocast in ``dtype``
    (``"bfloat16"`` or ``"float16"``), else the error torch raised, on one line.

    Computed once per process, dtype and ``nn.LSTM.forward`` (a few milliseconds): a process
    whose ``nn.LSTM.forward`` is replaced later is probed again.
    """
    from torch import nn

    if dtype not in _SHORT:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(_SHORT)}")
    return _probe(dtype, nn.LSTM.forward)


@functools.cache
def _probe(dtype: str, forward) -> str | None:
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the probe's weights leave the caller's seed alone
        torch.manual_seed(0)
        lstm = nn.LSTM(4, 3, batch_first=True, bidirectional=True)
    inputs = torch.randn(2, 5, 4, generator=generator, requires_grad=True)
    try:
        with torch.autocast("cpu", dtype=getattr(torch, dtype)):
            output, _ = lstm(inputs)
        output.float().sum().backward()
    except RuntimeError as error:
        return " ".join(str(error).split()).split(". Run workload")[0]
    return None


def trains_on_cpu(cfg: DictConfig) -> bool:
    """Whether the run's Trainer puts the model on the CPU (``trainer.accelerator``)."""
    accelerator = str(cfg.trainer.accelerator)
    if accelerator == "cpu":
        return True
    if accelerator != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def missing_kernel_message(precision: str) -> str | None:
    """Why ``precision`` cannot train on this CPU, or ``None`` where it can (or is not mixed)."""
    dtype = AUTOCAST_PRECISIONS.get(str(precision))
    if dtype is None:
        return None
    error = cpu_autocast_lstm_error(dtype)
    if error is None:
        return None
    return (
        f"trainer.precision={precision} on the CPU: this CPU has no {_SHORT[dtype]} LSTM kernel "
        f"(torch: {error}): training stops at the first batch whose graphs have equal lengths "
        "(every batch with graph.pad=true; true-length graphs are packed, which CPU autocast "
        "keeps in float32). Use "
        "trainer.precision=32-true on this CPU, or train on a GPU "
        f"(trainer.accelerator=gpu trainer.precision={precision})"
    )


def holds_an_lstm(model) -> bool:
    """Whether ``model`` (a ``torch.nn.Module``) holds an ``nn.LSTM`` at any depth: the layer
    whose kernel CPU autocast needs (a GRU it keeps in float32)."""
    from torch import nn

    return any(isinstance(module, nn.LSTM) for module in model.modules())


def runs_an_lstm(cfg: DictConfig) -> bool:
    """Whether the run's model holds an ``nn.LSTM`` (built small from its configuration; a
    classic baseline holds none). A model that cannot be built here counts as holding one."""
    import torch

    from sergraph.config import model_spec
    from sergraph.models import build_model, is_classic

    family, params = model_spec(cfg)
    if is_classic(family):
        return False
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
            model = build_model(family, 4, 2, **params)
    except (TypeError, ValueError):
        return True
    return holds_an_lstm(model)


def require_precision_kernels(cfg: DictConfig) -> None:
    """Refuse, before any work, a mixed precision whose recurrent kernel this CPU lacks: a
    model with an LSTM trained under ``bf16-mixed``/``16-mixed`` on the CPU."""
    if str(cfg.trainer.precision) not in AUTOCAST_PRECISIONS or not trains_on_cpu(cfg):
        return
    if not runs_an_lstm(cfg):
        return
    message = missing_kernel_message(cfg.trainer.precision)
    if message is not None:
        raise ConfigError(message)


def allotted_cores() -> int:
    """The cores this process may use: SLURM's allotment (``SLURM_CPUS_PER_TASK``) where set,
    within the process's affinity mask (``taskset``, cgroups' cpusets, SLURM's binding), else
    the mask alone; ``os.cpu_count()`` where the platform has no mask."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        cores = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        cores = min(cores, int(slurm))
    return max(1, cores)


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` where it is set to a positive number (the user's or the cluster's
    choice of threads per process), else ``None``."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(omp) if omp.isdigit() and int(omp) > 0 else None


def cell_threads(given) -> int:
    """The torch threads of one cell: ``run.threads`` (``given``) where set, else
    ``OMP_NUM_THREADS``, else 1."""
    return int(given) if given is not None else (omp_threads() or 1)


def torch_threads(cfg: DictConfig, processes: int) -> tuple[int, str]:
    """torch threads for each of ``processes`` processes sharing this one's cores, and why.

    ``run.threads`` where given; else ``OMP_NUM_THREADS`` where set (the user's or the
    cluster's choice); else the allotted cores divided among the processes (at least 1), so
    that processes never fight over cores.
    """
    given = cfg.run.get("threads")
    if given is not None:
        return int(given), f"run.threads={given}"
    omp = omp_threads()
    if omp is not None:
        return omp, f"OMP_NUM_THREADS={omp}"
    cores = allotted_cores()
    threads = max(1, cores // max(1, processes))
    return threads, f"{cores} allotted core(s) / {processes} process(es)"


#: Memory each ``run.parallel=auto`` worker is allowed for, at least (a process with torch,
#: Lightning and PyG imported, a study's features and one cell): fewer workers where the
#: machine (or the job's cgroup) has less than this per core.
WORKER_MEMORY = 2 * 1024**3


def study_workers(cfg: DictConfig, cells: int) -> tuple[int, str]:
    """How many of a study's ``cells`` (unfinished) run at a time, each in its own process, and
    why: ``run.parallel`` where it is a number; for ``auto``:

    - 1 where models or metrics were registered in this process at run time
      (:func:`registered_in_process`): worker processes would not know them;
    - 1 where each cell trains on several processes (``trainer.devices``/``num_nodes`` above 1,
      an srun job step or torchrun with several tasks);
    - with CUDA, one per visible GPU (each worker gets its own,
      :func:`sergraph.training.study.worker_devices`);
    - on the CPU, the allotted cores (:func:`allotted_cores`) divided by the torch threads of a
      cell (``run.threads``, else ``OMP_NUM_THREADS``, else 1): small cells gain far more from
      running side by side than from threads inside one (``docs/benchmarks.md``), and the
      cores in use are the same; fewer where memory is short (:data:`WORKER_MEMORY` each).
    """
    given = cfg.run.get("parallel", "auto")
    if cells <= 1:
        return 1, f"run.parallel={given}, one cell to run"
    in_process = registered_in_process()
    if in_process and given != "auto" and int(given) > 1:
        raise ConfigError(
            f"run.parallel={given}: {', '.join(in_process)} registered in this process only; "
            "its worker processes would not know them. Register them in a module the workers "
            "import (a plugin's entry point, see docs/how-to/add-a-baseline.md), or run the "
            "cells one at a time (run.parallel=1)"
        )
    if given != "auto":
        return max(1, min(int(given), cells)), f"run.parallel={given}"
    if in_process:
        return 1, f"run.parallel=auto, {', '.join(in_process)} registered in this process only"
    from sergraph.training.distributed import trainer_topology

    devices, nodes = trainer_topology(cfg)
    if nodes > 1 or devices not in (1, "1", "auto"):
        return 1, "run.parallel=auto, each cell trains on several processes"
    if cfg.trainer.accelerator in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            gpus = torch.cuda.device_count()
            return min(gpus, cells), f"run.parallel=auto, {gpus} visible GPU(s)"
        if cfg.trainer.accelerator != "auto":
            return 1, f"run.parallel=auto, trainer.accelerator={cfg.trainer.accelerator}"
    elif cfg.trainer.accelerator != "cpu":
        return 1, f"run.parallel=auto, trainer.accelerator={cfg.trainer.accelerator}"
    threads = cell_threads(cfg.run.get("threads"))
    cores = allotted_cores()
    by_cores = min(cores // threads, cells)
    memory = machine_memory()
    by_memory = max(1, memory // WORKER_MEMORY)
    why = f"run.parallel=auto, {cores} allotted core(s) / {threads} thread(s) per cell"
    if by_memory < by_cores:
        why += f", {memory / 1024**3:.0f} GiB of memory"
    return max(1, min(by_cores, by_memory)), why


#: What a study's CPU worker imports before it is forked (the fork server's preload, see
#: :mod:`sergraph.processes`): the study and training code (torch, Lightning) and PyG's layers,
#: which every graph family uses.
WORKER_PRELOAD = ("sergraph.training.study", "sergraph.training.module", "torch_geometric.nn")


def may_use_workers(overrides: list[str] | tuple[str, ...]) -> bool:
    """Whether ``sergraph train`` with these command-line overrides may run cells in worker
    processes, told before the configuration is composed (composing imports torch, Lightning
    and PyG: seconds), so that the workers' fork server can import them beside this process
    (:func:`sergraph.processes.prestart`). :func:`study_workers` decides; a wrong yes here costs
    an idle server. No: fewer than 2 allotted cores, or threads that fill them
    (``OMP_NUM_THREADS``, ``run.threads``), ``run.parallel=1``, ``run.cell``, a GPU accelerator,
    or a process of a launcher with several (srun tasks, torchrun).
    """
    given = None
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        value = value.strip().strip("'\"")
        if key == "run.cell" or (key == "run.parallel" and value == "1"):
            return False
        if key == "trainer.accelerator" and value in ("gpu", "cuda"):
            return False
        if key == "run.threads" and value.isdigit():
            given = int(value)
    several = os.environ.get("SLURM_NTASKS", "1").strip() not in ("", "1") and (
        "SLURM_STEP_ID" in os.environ
    )
    if several or os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        return False
    return allotted_cores() // max(1, cell_threads(given)) >= 2


def registered_in_process() -> list[str]:
    """Models and metrics this process registered at run time (``@register`` in a notebook or a
    script, an entry of ``sergraph.metrics.METRICS``): a worker process, started afresh, would
    not have them. Built-in ones and installed plugins (entry points) are found by any process.
    """
    from sergraph.metrics import BUILT_IN_METRICS, METRICS
    from sergraph.models.registry import CLASSIC, MODELS, importable_names

    models = sorted({*MODELS, *CLASSIC} - importable_names())
    metrics = sorted(set(METRICS) - BUILT_IN_METRICS)
    return [f"model {name}" for name in models] + [f"metric {name}" for name in metrics]
