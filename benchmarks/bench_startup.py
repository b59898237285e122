"""Start-up time of the light verbs, as a ratio to a bare ``python -c pass``.

Each verb (``sergraph --help``, ``config``, ``folds``, ``report``) runs as a fresh process
(``python -m sergraph.cli VERB ...``, which is what the ``sergraph`` script runs), alternating
with the reference ``python -c pass``: round by round, reference then verb, so both see the same
machine; the figure is the median of the per-round ratios (wall time of the whole process), next
to the two medians in seconds. On a shared machine only the ratios compare between runs.

``report`` reads a small hand-written results folder (2 labels x 2 folds, made here);
``folds`` uses the built-in synthetic corpus.

    python benchmarks/bench_startup.py            # 7 rounds per verb
    python benchmarks/bench_startup.py --quick    # 3 rounds per verb
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

REPO = Path(__file__).resolve().parents[1]


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def _results_folder(root: Path) -> Path:
    """Two labels x two finished folds of the report tests' hand-written layout."""
    sys.path.insert(0, str(REPO))
    from tests.unit.test_report import config_yaml, perfect, write_cell

    study = root / "study"
    for fold in range(2):
        write_cell(study, "A", 0, fold, perfect(fold), 1.0, 1.0, config_yaml("A", 4, "sum", "[0]"))
        write_cell(study, "B", 0, fold, perfect(fold), 1.0, 1.0, config_yaml("B", 4, "mean", "[0]"))
    return study


def _wall(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds per verb")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per verb (default 7)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        study = _results_folder(cwd)
        synthetic = ["data.options.n_speakers=3", "data.options.n_per_class=2"]
        verbs = {
            "--help": ["--help"],
            "config": ["config", *synthetic],
            "folds": ["folds", *synthetic],
            "report": ["report", str(study), "--out", str(cwd / "report")],
        }
        reference = [sys.executable, "-c", "pass"]
        print(f"load average at start {_load()}; python {sys.version.split()[0]}; {rounds} rounds")
        print("| verb | python -c pass s | verb s | ratio (verb / python -c pass) |")
        print("|---|---|---|---|")
        rows = {}
        for name, argv in verbs.items():
            command = [sys.executable, "-m", "sergraph.cli", *argv]
            _wall(command, cwd, env)  # warm the file cache once, not counted
            base, verb, ratios = [], [], []
            for _ in range(rounds):
                base.append(_wall(reference, cwd, env))
                verb.append(_wall(command, cwd, env))
                ratios.append(verb[-1] / base[-1])
            rows[name] = statistics.median(ratios)
            print(
                f"| `sergraph {name}` | {statistics.median(base):.3f} | "
                f"{statistics.median(verb):.2f} | {statistics.median(ratios):.1f} |",
                flush=True,
            )
        print(f"load average at end {_load()}")
        print(json.dumps({"ratios": rows}))


if __name__ == "__main__":
    main()
