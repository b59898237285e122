"""``train/loss``: the epoch's mean training loss over its graphs, logged once per epoch and
visible to the epoch-end callbacks (the non-finite guard reads it there)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from sergraph.data.collate import graph_loader
from sergraph.data.graphs import build_graph
from sergraph.training.module import SERModule


class Record(L.Callback):
    """Each step's loss and graph count, and what an epoch-end callback sees as train/loss."""

    def __init__(self):
        self.steps: list[list[tuple[float, int]]] = []
        self.seen: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.steps.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[-1].append((float(outputs["loss"]), batch.num_graphs))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seen.append(float(trainer.callback_metrics["train/loss"]))


def test_the_epoch_loss_is_the_graph_weighted_mean_of_its_steps_and_callbacks_see_it():
    rng = np.random.default_rng(0)
    graphs = [
        build_graph(rng.normal(size=(n, 6)), 4, 8, True, i % 3, f"u{i}", "s")
        for i, n in enumerate([8, 3, 5, 8, 6, 2, 7, 4, 8, 5])
    ]
    # batches of 4, 4 and 2 graphs: an unweighted mean of the steps would differ
    loader = graph_loader(graphs, batch_size=4, shuffle=False)
    torch.manual_seed(0)
    module = SERModule("gin", {"num_layers": 1}, 6, ["a", "b", "c"], lr=1e-2)
    record = Record()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, train_dataloaders=loader)
    assert [len(steps) for steps in record.steps] == [3, 3, 3]
    for steps, seen in zip(record.steps, record.seen, strict=True):
        weighted = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
        unweighted = sum(loss for loss, _ in steps) / len(steps)
        assert abs(weighted - unweighted) > 1e-4  # the weighting is tested, not a tie
        assert seen == np.float32(weighted) or abs(seen - weighted) < 1e-6
    # each epoch's value, not the first epoch's kept or a running mean over epochs
    assert len(set(record.seen)) == 3
