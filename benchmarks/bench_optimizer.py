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

from common import build_named, machine, paired_ratio, table

DEFAULT_MODELS = "lstm_gin,gin,gcn,gat,lstm_gat"


def main() -> None:
    import torch

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
        model = build_named(name, 64, 7)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        for kind in args.optimizers.split(","):
            multi = build_optimizer(kind, model.parameters(), lr=1e-3, weight_decay=1e-2)
            loop = build_optimizer(kind, model.parameters(), lr=1e-3, weight_decay=1e-2)
            for group in loop.param_groups:
                group["foreach"] = False

            def steps_of(optimizer):
                def run():
                    for _ in range(steps):
                        optimizer.step()

                return run

            # alternating rounds of `steps` steps each; the ratio is loop / foreach
            multi_s, loop_s, ratio = paired_ratio(steps_of(multi), steps_of(loop), rounds)
            rows.append(
                {
                    "model": name,
                    "optimizer": kind,
                    "parameter tensors": len(list(model.parameters())),
                    "loop ms": 1e3 * loop_s / steps,
                    "foreach ms": 1e3 * multi_s / steps,
                    "loop / foreach": ratio,
                }
            )
    print(f"\n## one optimiser step, {rounds} alternating rounds of {steps} steps\n")
    print(table(rows))


if __name__ == "__main__":
    main()
