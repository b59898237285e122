"""Wall time of a full 10-fold EmoDB leave-one-speaker-out study of LSTM-GIN, serial and with
folds in parallel processes, at a fixed number of epochs per fold.

Runs ``sergraph train data=emodb ... trainer.max_epochs=E trainer.min_epochs=E`` (early
stopping cannot end a fold early, so runs compare) into a temporary folder, once serially and
once with ``run.parallel=2`` (each process then uses cores/2 torch threads), and prints the
wall time of the whole command, the per-fold seconds from ``metrics.json`` and an
extrapolation to 100 epochs per fold (per-fold time scaled by 100/E; the fixed per-fold costs
of testing and checkpointing are scaled too, so the extrapolation errs high). Needs a warm
feature cache for EmoDB (``sergraph features data=emodb data.root=...``) or it extracts first.

    python benchmarks/bench_loso.py                # 10 folds, 2 epochs, serial and parallel=2
    python benchmarks/bench_loso.py --quick        # 2 folds, 1 epoch
    python benchmarks/bench_loso.py --epochs 5 --variants serial
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emodb_root, machine, table

VARIANTS = {
    "serial": [],
    "serial-1-thread": [],  # OMP_NUM_THREADS=1: what a loaded machine gives one process
    "parallel=2": ["run.parallel=2"],
}


def run(root: Path, variant: str, epochs: int, folds: list[int] | None, out: Path) -> dict:
    overrides = [
        "data=emodb",
        f"data.root={root}",
        f"trainer.max_epochs={epochs}",
        f"trainer.min_epochs={epochs}",
        "trainer.patience=100000",
        "trainer.accelerator=cpu",
        "logger.kind=none",
        f"run.out_dir={out}",
        f"run.name={variant}",
        *VARIANTS[variant],
    ]
    if folds is not None:
        overrides.append(f"folds.only=[{','.join(map(str, folds))}]")
    env = dict(os.environ)
    if variant == "serial-1-thread":
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "sergraph.cli", "train", *overrides]
    print("$ " + " ".join(command[2:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = [
        json.loads(p.read_text()) for p in (out / variant).glob("*/seed-*/fold-*/metrics.json")
    ]
    fold_seconds = [m["seconds"] for m in metrics]
    epochs_run = sorted({m["epochs"] for m in metrics})
    extrapolated_fold = statistics.mean(fold_seconds) * 100 / epochs
    concurrency = 2 if variant.startswith("parallel") else 1
    return {
        "variant": variant,
        "folds": len(metrics),
        "epochs per fold": epochs,
        "wall s": wall,
        "mean fold s": statistics.mean(fold_seconds),
        "s per fold-epoch": statistics.mean(fold_seconds) / epochs,
        "100 epochs x 10 folds, est. min": extrapolated_fold * 10 / concurrency / 60,
        "epochs logged": ",".join(map(str, epochs_run)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="folds 0 and 1, one epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--variants", default="serial,parallel=2", help=f"comma-separated, from {list(VARIANTS)}"
    )
    args = parser.parse_args()
    root = emodb_root()
    if root is None:
        sys.exit("EmoDB not found: set SERGRAPH_EMODB or place it at ../shared/data/emodb")
    epochs, folds = args.epochs, None
    if args.quick:
        epochs, folds = 1, [0, 1]
    print(machine(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sergraph-loso-") as folder:
        for variant in args.variants.split(","):
            rows.append(run(root, variant, epochs, folds, Path(folder)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n## EmoDB LOSO of LSTM-GIN at a fixed epoch count\n")
    print(table(rows))


if __name__ == "__main__":
    main()
