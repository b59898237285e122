"""The optimiser step with multi-tensor updates (``foreach``, what ``optim.optimizer`` builds)
against torch's per-parameter loop (torch's default on the CPU), alternating in one process.

Both update the same parameters with the same gradients (the values are equal bit for bit:
``tests/unit/test_optim.py``); this prints the time of one ``optimizer.step()`` of each model at
its default size on 64 IS10 node features, median over rounds, and the ratio loop / foreach.

    python benchmarks/bench_optimizer.py --threads 1
    python benchmarks/bench_optimizer.py --quick --models lstm_gin,gin
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine, table

DEFAULT_MODELS = "lstm_gin,gin,gcn,gat,lstm_gat"


def step_seconds(optimizer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    import torch

    from sergraph.config import resolve_model
    from sergraph.models import build_model
    from sergraph.optim import OPTIMIZERS, build_optimizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model names")
    parser.add_argument("--optimizers", default=",".join(sorted(OPTIMIZERS)))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rounds, steps = (5, 20) if args.quick else (11, 50)
    print(machine(), flush=True)
    rows = []
    for name in args.models.split(","):
        family, params = resolve_model(name, {})
        model = build_model(family, 64, 7, **params)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        for kind in args.optimizers.split(","):
            multi = build_optimizer(kind, model.parameters(), lr=1e-3, weight_decay=1e-2)
            loop = build_optimizer(kind, model.parameters(), lr=1e-3, weight_decay=1e-2)
            for group in loop.param_groups:
                group["foreach"] = False
            times = {"foreach": [], "loop": []}
            step_seconds(multi, 3), step_seconds(loop, 3)  # state allocated, caches warm
            for _ in range(rounds):
                times["foreach"].append(step_seconds(multi, steps))
                times["loop"].append(step_seconds(loop, steps))
            ratios = [b / a for a, b in zip(times["foreach"], times["loop"], strict=True)]
            rows.append(
                {
                    "model": name,
                    "optimizer": kind,
                    "parameter tensors": len(list(model.parameters())),
                    "loop ms": 1e3 * statistics.median(times["loop"]),
                    "foreach ms": 1e3 * statistics.median(times["foreach"]),
                    "loop / foreach": statistics.median(ratios),
                }
            )
    print(f"\n## one optimiser step, {rounds} alternating rounds of {steps} steps\n")
    print(table(rows))


if __name__ == "__main__":
    main()
