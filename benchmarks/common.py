"""Helpers shared by the benchmark scripts: machine description, timing, synthetic graphs.

The benchmarks measure and print; nothing here asserts a time. Every script prints the machine
line first, because numbers from a shared or loaded machine only compare within one run.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> str:
    """One line: CPU model and count, load, torch/PyG versions, threads, CUDA device."""
    import torch
    import torch_geometric

    from sergraph.results.provenance import cpu_name

    cpu = cpu_name()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, load average {load}; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torch_geometric {torch_geometric.__version__}, torch threads {torch.get_num_threads()}; "
        f"CUDA: {cuda}"
    )


def emodb_root() -> Path | None:
    """EmoDB from $SERGRAPH_EMODB or ../shared/data/emodb beside the repository."""
    for candidate in (os.environ.get("SERGRAPH_EMODB"), REPO.parent / "shared" / "data" / "emodb"):
        if candidate and (Path(candidate) / "wav").is_dir():
            return Path(candidate)
    return None


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mib()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def repeat(fn, runs: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Wall seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def paired_ratio(fn_a, fn_b, rounds: int, device: str = "cpu") -> tuple[float, float, float]:
    """Median time of A, of B, and the median of the per-round ratios B/A (A, B alternate, so a
    drift of the machine's speed hits both)."""
    fn_a()
    fn_b()
    sync(device)
    times_a, times_b, ratios = [], [], []
    for _ in range(rounds):
        (a,) = repeat(fn_a, 1, warmup=0, device=device)
        (b,) = repeat(fn_b, 1, warmup=0, device=device)
        times_a.append(a)
        times_b.append(b)
        ratios.append(b / a)
    return median(times_a), median(times_b), median(ratios)


def synthetic_graphs(
    count: int,
    nodes: int,
    features: int = 76,
    k: int = 4,
    pad: bool = True,
    seed: int = 0,
    lengths=None,
):
    """``count`` graphs as the pipeline builds them (``build_graph``) from random features.

    Lengths are ``nodes`` (padded) or drawn around EmoDB's (about 56 pooled frames, 2.8 s).
    """
    import numpy as np

    from sergraph.data.graphs import build_graph

    rng = np.random.default_rng(seed)
    if lengths is None:
        lengths = np.clip(rng.normal(0.47 * nodes, 0.2 * nodes, count), 5, 2 * nodes).astype(int)
    return [
        build_graph(
            rng.normal(size=(int(n), features)).astype(np.float32),
            k,
            nodes,
            pad,
            i % 4,
            f"u{i}",
            f"s{i % 10}",
        )
        for i, n in enumerate(lengths)
    ]


def build_named(model_name: str, num_features: int, num_classes: int):
    """The model ``model=NAME`` trains: a registered family or a preset of ``configs/model/``
    (``gin``, ``lstm_gat``, ...) with its defaults."""
    from sergraph.config import resolve_model
    from sergraph.models import build_model

    family, params = resolve_model(model_name, {})
    return build_model(family, num_features, num_classes, **params)


def adam_step(model_name: str, num_features: int, num_classes: int):
    """A registered model or preset (seeded with 0) and one Adam training step on a batch:
    ``step(batch)`` runs forward, cross-entropy, backward and the update."""
    import torch

    torch.manual_seed(0)
    model = build_named(model_name, num_features, num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(batch), batch.y).backward()
        optimizer.step()

    return step


def number(value: float) -> str:
    """3 significant digits without exponent notation for everyday magnitudes."""
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts), columns in first-seen order."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            cells.append(number(value) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
