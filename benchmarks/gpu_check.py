"""Python parts of ``benchmarks/gpu_check.sh``: every model under autocast, and comparisons of
predictions files. Prints what it finds; exits 1 when a check fails.

    python benchmarks/gpu_check.py autocast --device cuda        # every model, fp16 and bf16
    python benchmarks/gpu_check.py same A/predictions.csv B/predictions.csv
    python benchmarks/gpu_check.py diff A/predictions.csv B/predictions.csv
"""

from __future__ import annotations

import argparse
import sys

from common import machine, synthetic_graphs  # noqa: F401 - common puts the repository on sys.path


def autocast(device: str, dtypes: list[str], batch_size: int) -> int:
    """Forward + backward of every registered model under ``torch.autocast`` on ``device``:
    padded and true-length batches, fast path on and off. Returns the number of failures."""
    import torch

    from sergraph.data.collate import CollatedGraphs
    from sergraph.models import MODELS, banded, build_model
    from sergraph.training.capabilities import cpu_autocast_lstm_error, holds_an_lstm

    missing = {}
    if device == "cpu":  # a CPU without the LSTM kernel: its LSTM models are skipped, saying so
        missing = {d: cpu_autocast_lstm_error(d) for d in dtypes}
        for dtype, error in missing.items():
            if error is not None:
                print(
                    f"SKIPPED models with an LSTM under {dtype}: this CPU has no kernel ({error})"
                )
    failures = 0
    for name in sorted(MODELS):
        for pad in (True, False):
            graphs = synthetic_graphs(batch_size, 60, pad=pad)
            batch = CollatedGraphs(graphs).batch(range(batch_size)).to(device)  # marked, as served
            for fast in (True, False):
                for dtype in dtypes:
                    torch.manual_seed(0)
                    model = build_model(name, 76, 4).to(device)
                    if missing.get(dtype) and holds_an_lstm(model):
                        continue
                    label = f"{name:14s} {'padded' if pad else 'true-length':11s} "
                    label += f"fast path {'on ' if fast else 'off'} {dtype:8s}"
                    try:
                        with banded.fast_path(fast), torch.autocast(device, getattr(torch, dtype)):
                            taken = bool(getattr(model, "uses_fast_path", lambda _: False)(batch))
                            label += f" ({'fast' if taken else 'pyg'})"
                            logits = model(batch)
                            loss = torch.nn.functional.cross_entropy(logits, batch.y)
                        loss.backward()
                        grads = [p.grad for p in model.parameters() if p.grad is not None]
                        finite = bool(torch.isfinite(loss)) and all(
                            bool(torch.isfinite(g).all()) for g in grads
                        )
                        status = "ok" if finite else "NOT FINITE"
                        failures += not finite
                        print(
                            f"{label} logits {str(logits.dtype):14s} loss {loss.item():.4f} {status}"
                        )
                    except Exception as error:  # noqa: BLE001 - reported, counted, next model
                        failures += 1
                        print(
                            f"{label} FAILED: {type(error).__name__}: {str(error).splitlines()[0]}"
                        )
    print(f"autocast on {device}: {failures} failure(s)")
    return failures


def read_predictions(path: str):
    import pandas as pd

    return pd.read_csv(path)


def same(a: str, b: str) -> int:
    """Byte-identical predictions files (what deterministic reruns must give)."""
    with open(a, "rb") as first, open(b, "rb") as second:
        identical = first.read() == second.read()
    print(f"{'IDENTICAL' if identical else 'DIFFERENT'}: {a} vs {b}")
    if not identical:
        diff(a, b)
    return 0 if identical else 1


def diff(a: str, b: str) -> int:
    """How far two predictions files are apart: predicted labels and probabilities."""
    first, second = read_predictions(a), read_predictions(b)
    if first["utterance"].tolist() != second["utterance"].tolist():
        print("the files hold different utterances")
        return 1
    probabilities = [c for c in first.columns if c.startswith("p_")]
    gap = (first[probabilities] - second[probabilities]).abs().to_numpy().max()
    changed = int((first["predicted"] != second["predicted"]).sum())
    print(
        f"max |probability difference| {gap:.3g}; {changed} of {len(first)} predicted labels "
        f"differ ({a} vs {b})"
    )
    return 0


def within(a: str, b: str, tolerance: float) -> int:
    """Two predictions files of the same cell on two devices: every probability within
    ``tolerance`` (fails otherwise)."""
    first, second = read_predictions(a), read_predictions(b)
    if first["utterance"].tolist() != second["utterance"].tolist():
        print("the files hold different utterances")
        return 1
    probabilities = [c for c in first.columns if c.startswith("p_")]
    gap = float((first[probabilities] - second[probabilities]).abs().to_numpy().max())
    verdict = "WITHIN" if gap <= tolerance else "BEYOND"
    print(f"{verdict} {tolerance:g}: max |probability difference| {gap:.3g} ({a} vs {b})")
    return 0 if gap <= tolerance else 1


def results(table: str, out: str, mode: str) -> int:
    """``results.json`` from the check's table (name, status, seconds per line, tab-separated):
    the machine, each check and the failures."""
    import json
    import platform

    import torch

    checks = []
    with open(table) as rows:
        for row in rows:
            name, status, seconds = row.rstrip("\n").split("\t")
            checks.append({"name": name, "status": status, "seconds": int(seconds)})
    record = {
        "mode": mode,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "checks": checks,
        "failed": [c["name"] for c in checks if c["status"] == "FAIL"],
    }
    with open(out, "w") as handle:
        json.dump(record, handle, indent=1)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("autocast")
    run.add_argument("--device", default="cuda")
    run.add_argument("--dtypes", default="float16,bfloat16")
    run.add_argument("--batch-size", type=int, default=8)
    for verb in ("same", "diff", "within"):
        compare = verbs.add_parser(verb)
        compare.add_argument("a")
        compare.add_argument("b")
        if verb == "within":
            compare.add_argument("--tolerance", type=float, default=1e-3)
    table = verbs.add_parser("results")
    table.add_argument("table")
    table.add_argument("out")
    table.add_argument("--mode", default="gpu")
    args = parser.parse_args()
    if args.verb == "results":
        return results(args.table, args.out, args.mode)
    if args.verb == "within":
        return within(args.a, args.b, args.tolerance)
    if args.verb == "autocast":
        print(machine(), flush=True)
        return 1 if autocast(args.device, args.dtypes.split(","), args.batch_size) else 0
    return same(args.a, args.b) if args.verb == "same" else diff(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
