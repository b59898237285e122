"""Training-step throughput of every registered model, and the fast path against PyG's.

Part 1: graphs per second of one training step (forward, backward, Adam step) for every
registered model at batch sizes 32/64/128 of padded 120-node IS10 graphs (76 features, k=4),
on CPU and on CUDA when available, with the peak memory of a step per graph (CPU: each
configuration runs in a freshly forked process whose peak resident memory counter is reset,
and the growth of that peak over the steps is reported; CUDA:
``torch.cuda.max_memory_allocated``).

Part 2: fast path (sergraph.models.banded) against PyG message passing, alternating the two
in one process: the graph layers alone (forward + backward of the layer stack on the hidden
features) and the whole training step. Ratio = PyG time / fast time (> 1: fast path faster).

Part 3: the project's LSTM-GIN step (and plain GIN's, its preset) against the shipped dense
reference (``benchmarks/dense_reference.py``: the same function as plain dense PyTorch on
``[B, T, C]``, built with the model's weights), alternating the two in one process with the same
batch and Adam. Ratio = reference time / project time (> 1: the project's step is faster).

Part 1 can also run each configuration under automatic mixed precision (``--precision``:
``32`` = fp32, ``bf16-mixed``, ``16-mixed`` = torch.autocast around forward and loss, with a
GradScaler for fp16, as Lightning does) and with the fast path forced off (``--fast-path``).

    python benchmarks/bench_train_step.py            # everything (long on a 2-core CPU)
    python benchmarks/bench_train_step.py --quick    # batch size 32, fewer steps
    python benchmarks/bench_train_step.py --device cuda --batch-sizes 32,128 \
        --precision 32,16-mixed,bf16-mixed --fast-path on,off --skip-ratios --skip-packing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # Large tensors mmap'd and unmapped when freed, so resident memory follows live memory
    # (glibc otherwise raises the threshold and keeps freed blocks): re-run with it set.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

from common import (  # noqa: E402
    build_named,
    machine,
    median,
    paired_ratio,
    repeat,
    synthetic_graphs,
    table,
)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def in_fresh_child(fn, *args):
    """``fn(*args)`` in a forked child (Linux), so its peak memory is its own: the parent has
    imported everything but run nothing, and the child's allocations start from there. Falls
    back to this process where ``fork`` is missing. Not for CUDA (CUDA does not survive fork).
    """
    if not hasattr(os, "fork"):
        return fn(*args)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            payload = json.dumps(fn(*args)).encode()
        except BaseException as error:  # report, never return into the parent's code
            payload = json.dumps({"error": repr(error)}).encode()
        with os.fdopen(write, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as source:
        payload = source.read()
    os.waitpid(pid, 0)
    result = json.loads(payload) if payload else {"error": "child died without a result"}
    if "error" in result:
        raise RuntimeError(f"{fn.__name__}{args}: {result['error']}")
    return result


def make_batch(batch_size: int, nodes: int, device: str, pad: bool = True):
    """A batch as the datamodule serves it (collated split, marked for the fast path)."""
    from sergraph.data.collate import CollatedGraphs

    graphs = synthetic_graphs(batch_size, nodes, pad=pad)
    return CollatedGraphs(graphs).batch(range(batch_size)).to(device)


PRECISIONS = {"32": None, "bf16-mixed": "bfloat16", "16-mixed": "float16"}


def step_fn(model, batch, optimizer, precision: str = "32", fast_path: bool | None = None):
    """One training step; under ``precision`` (autocast dtype; fp16 with a GradScaler) and with
    the fast path forced on/off (``None``: as configured)."""
    import contextlib

    import torch

    from sergraph.models import banded

    dtype = PRECISIONS[precision]
    device_type = batch.x.device.type
    scaler = torch.amp.GradScaler(device_type) if precision == "16-mixed" else None

    def path():  # a new context manager each step (one made by contextmanager is single-use)
        return banded.fast_path(fast_path) if fast_path is not None else contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with (
            path(),
            torch.autocast(device_type, getattr(torch, dtype or "float32"), dtype is not None),
        ):
            loss = torch.nn.functional.cross_entropy(model(batch), batch.y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def lacks_cpu_kernel(name: str, precision: str) -> str | None:
    """Why ``name`` cannot step under ``precision`` autocast on this CPU (no LSTM kernel)."""
    from sergraph.training.capabilities import cpu_autocast_lstm_error, holds_an_lstm

    error = cpu_autocast_lstm_error(PRECISIONS[precision])
    if error is None:
        return None
    if not holds_an_lstm(build_named(name, 76, 4)):
        return None
    return f"skipped: this CPU has no {precision} LSTM kernel ({error})"


def throughput(
    name: str,
    batch_size: int,
    device: str,
    steps: int,
    nodes: int = 120,
    precision: str = "32",
    fast_path: bool = True,
) -> dict:
    import torch

    from sergraph.models import banded

    torch.manual_seed(0)
    model = build_named(name, 76, 4).to(device)
    batch = make_batch(batch_size, nodes, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = step_fn(model, batch, optimizer, precision, fast_path)
    with banded.fast_path(fast_path):
        fast = bool(getattr(model, "uses_fast_path", lambda _: False)(batch))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = _reset_peak()
        base = _status_kib("VmRSS") if reset else None
    times = repeat(step, steps, warmup=1, device=device)
    if device.startswith("cuda"):
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        hwm = _status_kib("VmHWM")
        peak_mib = (hwm - base) / 1024 if base is not None and hwm is not None else float("nan")
    seconds = median(times)
    return {
        "model": name,
        "device": device,
        "batch": batch_size,
        "precision": precision,
        "path": "fast" if fast else "pyg",
        "ms/step": 1000 * seconds,
        "graphs/s": batch_size / seconds,
        "peak MiB/graph": peak_mib / batch_size,
    }


def layer_and_step_ratios(name: str, batch_size: int, device: str, rounds: int) -> dict | None:
    import torch

    from sergraph.models import banded

    torch.manual_seed(0)
    model = build_named(name, 76, 4).to(device)
    batch = make_batch(batch_size, 120, device)
    if not hasattr(model, "uses_fast_path") or not model.uses_fast_path(batch):
        return None
    if not hasattr(model, "convs"):  # no graph layers to compare (bigru_attn: its GRU only)
        return None
    band = banded.detect(batch)
    width = model.front.out_channels if model.front is not None else 76
    hidden = torch.randn(batch.num_nodes, width, device=device, requires_grad=True)

    def layers(fast: bool):
        def run():
            h = hidden
            for conv in model.convs:
                if fast:
                    h = model.band_layer(conv)(conv, h, band)
                else:
                    h = conv(h, batch.edge_index)
            h.sum().backward()

        return run

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = step_fn(model, batch, optimizer)

    def whole(fast: bool):
        def run():
            with banded.fast_path(fast):
                step()

        return run

    fast_layers, pyg_layers, layer_ratio = paired_ratio(layers(True), layers(False), rounds, device)
    fast_step, pyg_step, step_ratio = paired_ratio(whole(True), whole(False), rounds, device)
    return {
        "model": name,
        "device": device,
        "batch": batch_size,
        "layers fast ms": 1000 * fast_layers,
        "layers PyG ms": 1000 * pyg_layers,
        "layers PyG/fast": layer_ratio,
        "step fast ms": 1000 * fast_step,
        "step PyG ms": 1000 * pyg_step,
        "step PyG/fast": step_ratio,
    }


def aggregation_ratio(batch_size: int, channels: int, device: str, rounds: int) -> dict:
    """The neighbour sum alone: gather + scatter over the edges (what PyG's sum aggregation
    does) against the band's shifted adds, forward + backward, on ``[N, channels]``."""
    import torch
    from torch_geometric.utils import scatter

    from sergraph.models import banded

    batch = make_batch(batch_size, 120, device)
    band = banded.detect(batch)
    source, target = batch.edge_index
    h = torch.randn(batch.num_nodes, channels, device=device, requires_grad=True)

    def pyg():
        scatter(
            h.index_select(0, source), target, 0, batch.num_nodes, reduce="sum"
        ).sum().backward()

    def fast():
        band.sum(h).sum().backward()

    fast_s, pyg_s, ratio = paired_ratio(fast, pyg, rounds, device)
    return {
        "device": device,
        "batch": batch_size,
        "channels": channels,
        "band sum ms": 1000 * fast_s,
        "gather+scatter ms": 1000 * pyg_s,
        "PyG/fast": ratio,
    }


def padded_vs_packed(batch_size: int, steps: int) -> list[dict]:
    """LSTM-GIN on the same utterances as padded 120-node graphs (one unpacked BiLSTM call over
    120 steps) and as true-length graphs (``graph.pad=false``: the BiLSTM runs packed over the
    real frames only, lengths around EmoDB's 56). Not the same computation: a config choice."""
    import torch

    from sergraph.models import build_model

    rows = []
    for pad in (True, False):
        torch.manual_seed(0)
        model = build_model("lstm_gin", 76, 4)
        batch = make_batch(batch_size, 120, "cpu", pad=pad)
        step = step_fn(model, batch, torch.optim.Adam(model.parameters(), lr=1e-4))
        seconds = median(repeat(step, steps))
        rows.append(
            {
                "graphs": "padded to 120" if pad else "true length (packed BiLSTM)",
                "nodes in batch": batch.num_nodes,
                "fast path": model.uses_fast_path(batch),
                "ms/step": 1000 * seconds,
                "graphs/s": batch_size / seconds,
            }
        )
    return rows


def reference_ratio(name: str, batch_size: int, rounds: int, nodes: int = 120, k: int = 4) -> dict:
    """The project's training step of ``name`` (an ``lstm_gin``-family model or preset) against
    the dense reference with the same weights, alternating (CPU)."""
    import torch
    from dense_reference import DenseLSTMGIN

    torch.manual_seed(0)
    batch = make_batch(batch_size, nodes, "cpu")
    model = build_named(name, batch.x.size(1), 4)
    reference = DenseLSTMGIN.from_model(model, nodes, k)
    x = batch.x.reshape(batch.num_graphs, nodes, -1)
    project = step_fn(model, batch, torch.optim.Adam(model.parameters(), lr=1e-4))
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-4)

    def dense():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(reference(x), batch.y).backward()
        optimizer.step()

    project_s, dense_s, ratio = paired_ratio(project, dense, rounds)
    return {
        "model": name,
        "batch": batch_size,
        "project graphs/s": batch_size / project_s,
        "dense reference graphs/s": batch_size / dense_s,
        "project speed / reference (median of rounds)": ratio,
    }


def main() -> int:
    """Returns the number of configurations that failed (the exit status is 1 if any)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch size 32, fewer steps")
    parser.add_argument(
        "--models", help="comma-separated model names or presets (default: every family)"
    )
    parser.add_argument("--batch-sizes", default="32,64,128")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per ratio")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="auto: CPU, and CUDA if any",
    )
    parser.add_argument(
        "--precision",
        default="32",
        help=f"comma-separated, of {','.join(PRECISIONS)} (throughput part only)",
    )
    parser.add_argument(
        "--fast-path", default="on", help="on, off or on,off (throughput part only)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-ratios", action="store_true")
    parser.add_argument("--skip-packing", action="store_true")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--reference-models",
        default="lstm_gin,gin",
        help="models compared with the dense reference (lstm_gin family or its presets)",
    )
    parser.add_argument(
        "--reference-rounds", type=int, default=0, help="alternating rounds (0: 3 x --rounds)"
    )
    args = parser.parse_args()

    import torch

    from sergraph.models import MODELS

    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    steps, rounds = args.steps, args.rounds
    if args.quick:
        batch_sizes, steps, rounds = [32], 2, 3
    names = args.models.split(",") if args.models else sorted(MODELS)  # families; presets by name
    precisions = args.precision.split(",")
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        parser.error(f"--precision {','.join(unknown)}: choose from {', '.join(PRECISIONS)}")
    paths = [{"on": True, "off": False}[p] for p in args.fast_path.split(",")]
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device is available")
    devices = {"auto": ["cpu"] + (["cuda"] if cuda else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    print(machine(), flush=True)

    failed = 0
    if not args.skip_reference:
        reference_rounds = args.reference_rounds or 3 * rounds
        rows = []
        for name in args.reference_models.split(","):
            rows.append(reference_ratio(name, batch_sizes[0], reference_rounds))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        print(
            f"\n## project step vs the dense reference (benchmarks/dense_reference.py), CPU, "
            f"same weights, alternating, {reference_rounds} rounds\n"
        )
        print(table(rows))

    if not args.skip_throughput:
        rows = []
        configurations = [
            (device, name, batch_size, precision, fast)
            for device in devices
            for name in names
            for batch_size in batch_sizes
            for precision in precisions
            for fast in paths
        ]
        for device, name, batch_size, precision, fast in configurations:
            arguments = (name, batch_size, device, steps, 120, precision, fast)
            try:
                if device == "cpu" and PRECISIONS[precision] and lacks_cpu_kernel(name, precision):
                    raise RuntimeError(lacks_cpu_kernel(name, precision))
                if device == "cpu":
                    rows.append(in_fresh_child(throughput, *arguments))
                else:
                    rows.append(throughput(*arguments))
            except Exception as error:  # noqa: BLE001 - a failing configuration is a result too
                rows.append(
                    {
                        "model": name,
                        "device": device,
                        "batch": batch_size,
                        "precision": precision,
                        "path": "fast" if fast else "pyg",
                        "error": " ".join(str(error).split())[-160:],
                    }
                )
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        print("\n## training step throughput (forward + backward + Adam), 120-node graphs\n")
        print(table(rows))
        failed = sum("error" in row for row in rows)

    if not args.skip_packing:
        print("\n## LSTM-GIN: padded graphs vs true-length graphs (packed BiLSTM), CPU\n")
        print(table(padded_vs_packed(batch_sizes[0], steps)))

    if not args.skip_ratios:
        rows = []
        for device in devices:
            for name in names:
                row = layer_and_step_ratios(name, batch_sizes[0], device, rounds)
                if row is not None:
                    rows.append(row)
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        aggregation = [aggregation_ratio(batch_sizes[0], 128, d, rounds) for d in devices]
        print("\n## neighbour sum alone, forward + backward\n")
        print(table(aggregation))
        print("\n## fast path vs PyG message passing (same process, alternating; ratio of medians")
        print("## is the median over rounds of PyG time / fast time)\n")
        print(table(rows))
    return failed


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
