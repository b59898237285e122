"""Where a cell's training step goes: the step of a study's cell taken apart, against Lightning.

Builds fold 0 of a study exactly as a cell does (``fold_datamodule``, ``cell_module``: the same
graphs, model, loss, optimiser and augmentation) and times one training epoch, round by round
in turn, as:

- ``batches``: iterating the training loader only;
- ``+ augmentation``: and the node augmentation of the recipe (noise and masks);
- ``manual step``: and forward, loss, backward and the optimiser step in a plain loop;
- ``Lightning``: an epoch of ``Trainer.fit`` (no validation, checkpoints or logger), timed
  between its epoch hooks; the other three run between its epochs, so all alternate.

Each row's difference to the one above is that part's cost; ``Lightning`` minus ``manual step``
is what the training loop around the step costs. It also times, alone, the random draws the
recipe makes per step (the classifier's dropout, with the model's layers and with torch's, which
draw the same masks, and the feature noise), which no reordering of the step can avoid without
changing the numbers. Nothing is asserted.

    python benchmarks/bench_cell_step.py                        # experiment=recommended, EmoDB
    python benchmarks/bench_cell_step.py --synthetic --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from common import emodb_root, machine, table


def epoch_seconds(loader, step=None) -> float:
    start = time.perf_counter()
    for batch in loader:
        if step is not None:
            step(batch)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="the built-in corpus")
    parser.add_argument("--experiment", default="recommended")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import lightning as L
    import torch

    from sergraph.config import compose
    from sergraph.optim import build_optimizer
    from sergraph.training.fit import cell_module, fold_datamodule
    from sergraph.training.study import study_data

    torch.set_num_threads(1)
    root = None if args.synthetic else emodb_root()
    data = ["data=emodb", f"data.root={root}"] if root else ["data=synthetic"]
    cfg = compose([f"experiment={args.experiment}", *data, "eval.protocol=inductive"])
    print(machine(), flush=True)
    study = study_data(cfg)
    fold = study.folds[0]
    L.seed_everything(0, verbose=False)
    datamodule = fold_datamodule(cfg, study, fold, 0)
    datamodule.setup()
    module = cell_module(cfg, study, fold, datamodule)
    module.train()
    hparams = module.hparams
    optimizer = build_optimizer(
        hparams.optimizer, module.parameters(), lr=hparams.lr, weight_decay=hparams.weight_decay
    )
    loader = datamodule.train_dataloader()
    steps = len(loader)
    augmented = module.augmented  # what training_step does first

    def manual(batch):
        batch = augmented(batch)
        loss = module._loss(module(batch), batch.y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    parts = {
        "batches": lambda: epoch_seconds(loader),
        "+ augmentation": lambda: epoch_seconds(loader, augmented),
        "manual step": lambda: epoch_seconds(loader, manual),
    }
    times = {name: [] for name in [*parts, "Lightning"]}

    class Alternate(L.Callback):
        """Times each Lightning epoch and, between epochs, one epoch of every other part."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 0:  # warm-up epoch: first-use allocations
                for run in parts.values():
                    run()
                return
            times["Lightning"].append((time.perf_counter() - self.start) / steps)
            for name, run in parts.items():
                times[name].append(run() / steps)

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,  # the learning-rate schedule's span, as in a cell
        max_steps=steps * (args.rounds + 1),
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[Alternate()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    medians = {name: statistics.median(values) for name, values in times.items()}

    # the random draws of one step, alone: dropout's Bernoulli masks on the classifier inputs
    # (the model's own Dropout layers, and torch's for the same masks) and the N(0, 1) feature
    # noise, at this batch's shapes
    batch = next(iter(loader))
    classifier = list(module.model.head.classifier)
    dropouts = [
        (layer, nxt.in_features)
        for layer, nxt in zip(classifier[:-1], classifier[1:], strict=True)
        if isinstance(layer, torch.nn.Dropout) and isinstance(nxt, torch.nn.Linear)
    ]
    draws = {
        "dropout masks (the model's)": lambda: [
            layer.train()(torch.ones(batch.num_graphs, width)) for layer, width in dropouts
        ],
        "dropout masks (torch's, the same)": lambda: [
            torch.nn.functional.dropout(torch.ones(batch.num_graphs, width), layer.p, True)
            for layer, width in dropouts
        ],
        "feature noise": lambda: torch.randn_like(batch.x),
    }
    draw_ms = {}
    for name, draw in draws.items():
        draw()
        start = time.perf_counter()
        for _ in range(50):
            draw()
        draw_ms[name] = 1e3 * (time.perf_counter() - start) / 50

    total = medians["Lightning"]
    rows, previous = [], 0.0
    for name, seconds in medians.items():
        rows.append(
            {
                "epoch as": name,
                "ms per step": 1e3 * seconds,
                "this part ms": 1e3 * (seconds - previous),
                "share of the Lightning step": (seconds - previous) / total,
            }
        )
        previous = seconds
    print(
        f"\n## experiment={args.experiment}, fold 0 ({'EmoDB' if root else 'synthetic'}), "
        f"{steps} steps per epoch, median of {args.rounds} rounds\n"
    )
    print(table(rows))
    print("\nrandom draws of one step, timed alone:\n")
    print(
        table(
            [
                {"draw": name, "ms": ms, "share of the Lightning step": ms / (1e3 * total)}
                for name, ms in draw_ms.items()
            ]
        )
    )


if __name__ == "__main__":
    main()
