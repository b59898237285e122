"""How much of a training step waits for data, with PyG's loader and with sergraph.data.collate.

An EmoDB-sized fold (535 utterances, 10 speakers, 7 classes, pooled IS10 lengths around 56
nodes, padded to 120; random features, so no audio is needed) is served by the datamodule's
loader (``graph_loader``: batches cut from one collation of the split) and by PyG's
``DataLoader`` over the same graphs. For each, one epoch of training steps is run and the time
spent in ``next(loader)`` is split from the time of the step itself (second epoch, so worker
start-up is not counted). Also printed: the time to make one batch alone, which is what a fast
GPU step would wait for without worker processes.

    python benchmarks/bench_data_path.py            # lstm_gin and gin, workers 0 and 2
    python benchmarks/bench_data_path.py --quick    # gin only, workers 0, 20 steps
"""

from __future__ import annotations

import argparse
import time

from common import adam_step, machine, median, repeat, table


def emodb_like_fold(seed: int = 0, scale: int = 1):
    import numpy as np
    import pandas as pd

    from sergraph.data.folds import make_folds

    rng = np.random.default_rng(seed)
    classes = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    rows, features = [], []
    for i in range(535 * scale):
        speaker = f"s{i % 10:02d}"
        label = classes[int(rng.integers(len(classes)))]
        rows.append((f"u{i:05d}", f"/x/u{i}.wav", speaker, label))
        length = int(np.clip(rng.normal(56, 20), 8, 200))
        features.append(rng.normal(size=(length, 76)).astype(np.float32))
    table_ = pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])
    return table_, features, classes, make_folds(table_, "loso")[0]


def datamodule(batch_size: int, num_workers: int, scale: int = 1):
    from sergraph.data.datamodule import FoldDataModule

    table_, features, classes, fold = emodb_like_fold(scale=scale)
    dm = FoldDataModule(
        table_,
        features,
        fold,
        classes,
        k=4,
        max_nodes=120,
        batch_size=batch_size,
        num_workers=num_workers,
    )
    dm.setup()
    return dm


def pyg_loader(dm):
    import torch
    from torch_geometric.loader import DataLoader

    return DataLoader(
        dm.datasets["train"],
        batch_size=dm.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(dm.seed),
        num_workers=dm.num_workers,
        persistent_workers=dm.num_workers > 0,
    )


def epoch_split(loader, step, max_steps: int | None) -> tuple[float, float, int]:
    """Seconds waiting for batches and seconds in steps over one epoch (or max_steps)."""
    wait = compute = 0.0
    steps = 0
    iterator = iter(loader)
    while max_steps is None or steps < max_steps:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        middle = time.perf_counter()
        step(batch)
        end = time.perf_counter()
        wait += middle - start
        compute += end - middle
        steps += 1
    return wait, compute, steps


def one_batch(batch_size: int) -> dict:
    """Time to make one batch: Batch.from_data_list against the collated split."""
    from torch_geometric.data import Batch

    dm = datamodule(batch_size, 0)
    indices = list(range(batch_size))
    start = time.perf_counter()
    collated = dm.train_dataloader().dataset  # collates the split once
    once = time.perf_counter() - start
    fast = repeat(lambda: collated.__getitems__(indices), 20)
    graphs = dm.datasets["train"]
    slow = repeat(lambda: Batch.from_data_list([graphs[i] for i in indices]), 20)
    return {
        "batch": batch_size,
        "Batch.from_data_list ms": 1000 * median(slow),
        "collated ms": 1000 * median(fast),
        "ratio": median(slow) / median(fast),
        "collating the split once ms": 1000 * once,
    }


def waiting_share(name: str, batch_size: int, num_workers: int, max_steps) -> list[dict]:
    """One epoch with each loader: time in next(loader) against time in the step."""
    dm = datamodule(batch_size, num_workers)
    step = adam_step(name, dm.num_features, dm.num_classes)
    rows = []
    for label, loader in (("PyG DataLoader", pyg_loader(dm)), ("collated", dm.train_dataloader())):
        epoch_split(loader, step, 2 if num_workers else 1)  # start workers, warm up
        wait, compute, steps = epoch_split(loader, step, max_steps)
        rows.append(
            {
                "model": name,
                "workers": num_workers,
                "loader": label,
                "steps": steps,
                "wait ms/step": 1000 * wait / steps,
                "step ms": 1000 * compute / steps,
                "waiting %": 100 * wait / (wait + compute),
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="lstm_gin,gin")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",")
    workers = [int(w) for w in args.workers.split(",")]
    max_steps = None
    if args.quick:
        models, workers, max_steps = ["gin"], [0], 20
    print(machine(), flush=True)

    rows = [one_batch(batch_size) for batch_size in (32, 128)]
    print("\n## making one batch of padded 120-node graphs (no model)\n")
    print(table(rows))

    rows = []
    for name in models:
        for num_workers in workers:
            rows += waiting_share(name, args.batch_size, num_workers, max_steps)
    print(f"\n## share of a training step spent waiting for data (batch {args.batch_size})\n")
    print(table(rows))


if __name__ == "__main__":
    main()
