"""How far a reduced-precision run's predictions.csv is from its float32 bundle.

Trains small runs on the synthetic corpus under a training precision (default ``bf16-mixed``,
which also runs on the CPU), exports each model without verification, re-predicts every fold's
test inputs through the bundle (float32) and prints the largest |difference| of a probability
per model, seed and fold. The export verification's tolerance for 16-bit training
(``sergraph.deploy.export.REDUCED_PRECISION_TOLERANCE``) is chosen from these numbers.

    python benchmarks/bench_export_precision.py                      # bf16-mixed, 3 models
    python benchmarks/bench_export_precision.py --precision 16-mixed --models lstm_gin
    python benchmarks/bench_export_precision.py --models lstm_gin cheb --seeds 1 --folds [0] \
        --epochs 30 data=emodb data.root=PATH/emodb
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--models", nargs="+", default=["lstm_gin", "gin", "sage_lstm"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--folds", default="[0,1]")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument(
        "--pipeline-changes",
        action="store_true",
        help="also print the differences a wrong pipeline gives: another fold's statistics, k=2",
    )
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. data=emodb")
    args = parser.parse_args()
    print(machine())

    import numpy as np
    import pandas as pd

    from sergraph.deploy.export import (
        VERIFY_TOLERANCE,
        export_bundle,
        stored_test_inputs,
        verify_tolerance,
    )
    from sergraph.training.capabilities import missing_kernel_message
    from sergraph.training.study import run_study

    why = missing_kernel_message(args.precision)
    if why is not None:  # the models with an LSTM would stop at their first step
        print(f"SKIPPED: {why}")
        return
    largest = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for model in args.models:
            synthetic = [
                f"data.root={root / 'corpus'}",
                f"data.options.n_speakers={args.speakers}",
                "data.options.n_per_class=3",
            ]
            if any(o.startswith("data=") for o in args.overrides):
                synthetic = []  # another corpus: its data.root comes with the overrides
            run_study(
                [
                    f"model={model}",
                    *synthetic,
                    f"folds.only={args.folds}",
                    f"run.seeds={list(range(args.seeds))}",
                    f"trainer.max_epochs={args.epochs}",
                    "trainer.accelerator=cpu",
                    f"trainer.precision={args.precision}",
                    "features.workers=1",
                    f"features.cache_dir={root / 'features'}",
                    f"run.out_dir={root / 'runs'}",
                    "logger.kind=none",
                    *args.overrides,
                ]
            )
            model_dir = next((root / "runs").glob(f"*/{model}"))
            path, bundle = export_bundle(model_dir, root / f"{model}.sergraph", verify=False)
            import torch

            from sergraph.deploy.bundle import Bundle

            payload = torch.load(path, weights_only=True)
            other_k = Bundle(
                {**bundle.meta, "graph": {**bundle.meta["graph"], "k": 2}}, payload["members"]
            )

            for index, member in enumerate(bundle.members):
                cell = model_dir / Path(member["checkpoint"]).parents[1]
                checkpoint = torch.load(
                    cell / json.loads((cell / "metrics.json").read_text())["checkpoint"],
                    map_location="cpu",
                    weights_only=False,
                )
                inputs = stored_test_inputs(checkpoint["FoldDataModule"]["export"])
                saved = pd.read_csv(cell / "predictions.csv")
                mine = bundle.predict_features(
                    [inputs[str(u)] for u in saved["utterance"]], member=index
                )
                theirs = saved[[f"p_{c}" for c in bundle.classes]].to_numpy(dtype=np.float64)
                difference = float(np.abs(mine - theirs).max())
                largest = max(largest, difference)
                print(
                    f"{args.precision} {model} seed {member['seed']} fold {member['fold']}: "
                    f"{len(saved)} test utterances, max |p_csv - p_bundle| = {difference:.2e}"
                )
                if args.pipeline_changes:
                    arrays = [inputs[str(u)] for u in saved["utterance"]]
                    changes = {"k=2": other_k.predict_features(arrays, member=index)}
                    if len(bundle.members) > 1:
                        other = Bundle(bundle.meta, payload["members"])
                        swap = (index + 1) % len(bundle.members)
                        other.normalizers[index] = bundle.normalizers[swap]
                        changes["another fold's statistics"] = other.predict_features(
                            arrays, member=index
                        )
                    for name, changed in changes.items():
                        print(
                            f"    wrong pipeline ({name}): max |p_csv - p| = "
                            f"{float(np.abs(changed - theirs).max()):.2e}"
                        )
    print(
        f"largest {largest:.2e}; tolerance for {args.precision}: "
        f"{verify_tolerance(args.precision):g} (float32: {VERIFY_TOLERANCE:g})"
    )


if __name__ == "__main__":
    main()
