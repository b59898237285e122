"""Cells per hour of a fixed small study, and where each cell's time goes.

Runs ``sergraph train experiment=recommended`` (the no-graph recipe: 10 folds of EmoDB, or the
8 folds of the built-in synthetic corpus when EmoDB is absent), one seed, serially, into a
temporary folder, and prints:

- the study's wall time and cells per hour;
- per cell, the mean wall seconds of each phase ``metrics.json`` records (``timing``: data,
  setup, training, validation, checkpointing, test; see :mod:`sergraph.training.timing`) and the
  rest of the cell (fold check, scores, provenance);
- the part of the study outside its cells' clocks: process start-up, corpus and feature
  preparation (a warm feature cache unless ``--cold``), writing each cell's files, summaries.

The fixed costs are the phases that do not scale with epochs (data, setup, checkpointing, test);
training and validation do. Nothing is asserted; on a shared machine compare the
shares, not the seconds, between runs.

    python benchmarks/bench_cells.py                 # EmoDB if found, 1 seed, all folds
    python benchmarks/bench_cells.py --folds 0,1     # two cells
    python benchmarks/bench_cells.py --synthetic     # the built-in corpus
    python benchmarks/bench_cells.py --against ../old --rounds 2   # side by side with a checkout

``--against CHECKOUT`` runs the same study with another checkout of sergraph (its own Python,
``CHECKOUT/.venv/bin/python`` unless ``--against-python`` says otherwise), alternating round by
round with this one, and prints both studies' wall and CPU seconds per cell, the ratio
(other / this, median over rounds) and each side's mean UA over the cells (the same figure on
both sides means both did the same work). The other checkout needs no ``timing`` in its
``metrics.json``: only whole-study figures are compared.

By default both sides run one cell at a time with one torch thread (``run.parallel=1``,
``OMP_NUM_THREADS=1`` unless set): the cost of a cell's work. ``--defaults`` runs each side as
a user's plain ``sergraph train`` would on this machine: no ``run.parallel``, no
``OMP_NUM_THREADS``, so each checkout chooses its own cells at a time and threads.

    python benchmarks/bench_cells.py --against ../old --rounds 2 --defaults
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, emodb_root, machine, table

PHASES = ("data", "setup", "training", "validation", "checkpointing", "test")


def adopt_orphans() -> None:
    """Become the subreaper of this benchmark's descendants (Linux): a study's fork server
    outlives its main process by a moment and is then re-parented here instead of to init, so
    that reaping it (:func:`reap_orphans`) counts its CPU time and its workers' in
    ``RUSAGE_CHILDREN``. Elsewhere nothing: the CPU figure then misses forked workers."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(seconds: float = 30.0) -> None:
    """Wait for the descendants re-parented to this process (see :func:`adopt_orphans`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:
            time.sleep(0.02)


def run_study(
    overrides: list[str],
    out: Path,
    env: dict,
    python: str = sys.executable,
    checkout: Path = REPO,
) -> tuple[float, list[dict], float]:
    """Wall seconds, the cells' ``metrics.json`` and the CPU seconds of one study run."""
    command = [python, "-m", "sergraph.cli", "train", *overrides, f"run.out_dir={out}"]
    print("$ " + " ".join(command[2:]) + f"   # in {checkout.name}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    reap_orphans()  # the study's fork server and its workers: their CPU time too
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cells = [json.loads(path.read_text()) for path in sorted(out.rglob("fold-*/metrics.json"))]
    return wall, cells, cpu


def compare(args, overrides: list[str], env: dict) -> None:
    """This checkout and ``args.against`` alternately, ``args.rounds`` rounds each."""
    other = Path(args.against).resolve()
    python = args.against_python or str(other / ".venv" / "bin" / "python")
    sides = {"this": (sys.executable, REPO), "other": (python, other)}
    rows, ratios = [], {"wall": [], "cpu": []}
    with tempfile.TemporaryDirectory(prefix="sergraph-cells-") as folder:
        for round_ in range(args.rounds):
            # the other side first in odd rounds: neither always runs on a warmer machine
            order = ["other", "this"] if round_ % 2 else ["this", "other"]
            seen = {}
            for side in order:
                out = Path(folder) / f"{side}-{round_}"
                wall, cells, cpu = run_study(overrides, out, env, *sides[side])
                if not cells:
                    sys.exit(f"the study in {sides[side][1]} wrote no finished cell")
                n = len(cells)
                seen[side] = (wall / n, cpu / n)
                rows.append(
                    {
                        "round": round_,
                        "checkout": side,
                        "cells": n,
                        "wall s per cell": wall / n,
                        "CPU s per cell": cpu / n,
                        "mean UA": 100 * statistics.mean(cell["ua"] for cell in cells),
                        "load": os.getloadavg()[0],
                    }
                )
            ratios["wall"].append(seen["other"][0] / seen["this"][0])
            ratios["cpu"].append(seen["other"][1] / seen["this"][1])
    how = "each side's defaults" if args.defaults else "one cell at a time, 1 thread"
    print(f"\n## experiment=recommended ({how}), this checkout against {other}\n")
    print(table(rows))
    print(
        f"\nother / this, median over {args.rounds} rounds: wall per cell "
        f"{statistics.median(ratios['wall']):.2f}x, CPU per cell "
        f"{statistics.median(ratios['cpu']):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="the built-in corpus")
    parser.add_argument("--folds", help="fold indices, comma-separated (default all)")
    parser.add_argument("--cold", action="store_true", help="extract features, no warm cache")
    parser.add_argument("--against", help="another checkout to run side by side with this one")
    parser.add_argument("--against-python", help="its Python (default CHECKOUT/.venv/bin/python)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds with --against")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="no run.parallel and no OMP_NUM_THREADS: each checkout's own defaults",
    )
    args = parser.parse_args()
    root = None if args.synthetic else emodb_root()
    data = ["data=emodb", f"data.root={root}"] if root else ["data=synthetic"]
    overrides = [
        "experiment=recommended",
        *data,
        "run.seeds=[0]",
        "logger.kind=none",
        "trainer.accelerator=cpu",
    ]
    if not args.defaults:
        overrides.append("run.parallel=1")
    if args.folds:
        overrides.append(f"folds.only=[{args.folds}]")
    if args.defaults:
        env = {
            k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
        }
    else:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(machine(), flush=True)
    adopt_orphans()
    if args.against:
        compare(args, overrides, env)
        return
    with tempfile.TemporaryDirectory(prefix="sergraph-cells-") as folder:
        if args.cold:
            env["SERGRAPH_CACHE"] = str(Path(folder) / "cache")
        wall, cells, _ = run_study(overrides, Path(folder) / "runs", env)
        if not cells:
            sys.exit("the study wrote no finished cell")
        cell_seconds = [cell["seconds"] for cell in cells]
        row = {
            "cells": len(cells),
            "study wall s": wall,
            "cells per hour": 3600 * len(cells) / wall,
        }
        phases = {}
        for phase in PHASES:
            phases[phase] = statistics.mean(cell["timing"].get(phase, 0.0) for cell in cells)
        phases["rest of the cell"] = statistics.mean(
            cell["seconds"] - sum(cell["timing"].values()) for cell in cells
        )
    per_cell = statistics.mean(cell_seconds)
    outside = wall - sum(cell_seconds)
    epochs = statistics.mean(cell.get("epochs", 0) for cell in cells)
    print(
        f"\n## {len(cells)} cells of experiment=recommended ({'EmoDB' if root else 'synthetic'})\n"
    )
    print(table([row]))
    print(f"\nmean epochs per cell {epochs:.1f}; per cell (mean over cells):\n")
    shares = [
        {"phase": name, "s per cell": seconds, "share of a cell": seconds / per_cell}
        for name, seconds in phases.items()
    ]
    print(table(shares))
    print(
        f"\noutside the cells' clocks (start-up, corpus and features, cell files, summaries): "
        f"{outside:.1f} s, "
        f"{outside / wall:.0%} of the study"
    )


if __name__ == "__main__":
    main()
