"""When a cell writes its resume point (last.ckpt): at every epoch that writes best.ckpt, and
otherwise once trainer.resume_every_s seconds have passed (0: every epoch). A real Trainer on
a tiny model whose validation score follows a given sequence."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sergraph.training.callbacks import RankStatesCheckpoint, ResumePoint

SCORES = [0.1, 0.05, 0.05, 0.2, 0.1, 0.1, 0.15]  # best at epochs 0 and 3 (mode max)


class Scripted(L.LightningModule):
    def __init__(self, slow_epoch: int | None = None, seconds: float = 0.0):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.slow_epoch, self.seconds = slow_epoch, seconds

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.slow_epoch and batch_idx == 0:
            time.sleep(self.seconds)
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/ua", SCORES[self.current_epoch])

    def gather_rng_states(self):  # what RankStatesCheckpoint asks of the project's module
        self.rank_rng_states = None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def loader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)

    train_dataloader = val_dataloader = loader


class Recorded:
    """Records the epoch of every checkpoint the callback writes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def _save_checkpoint(self, trainer, filepath):
        self.epochs.append(trainer.current_epoch)
        super()._save_checkpoint(trainer, filepath)


class Best(Recorded, RankStatesCheckpoint):
    pass


class Last(Recorded, ResumePoint):
    pass


def saves(tmp_path, every_s: float, module: Scripted) -> tuple[list[int], list[int]]:
    best = Best(dirpath=tmp_path, filename="best", monitor="val/ua", mode="max", save_top_k=1)
    last = Last(dirpath=tmp_path, filename="last", monitor=None, best=best, every_s=every_s)
    trainer = L.Trainer(
        max_epochs=len(SCORES),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[best, last],
    )
    trainer.fit(module)
    assert (tmp_path / "last.ckpt").is_file()
    return last.epochs, best.epochs


@pytest.mark.parametrize("every_s", [0.0, 3600.0])
def test_a_resume_point_every_epoch_or_where_the_best_checkpoint_was_written(tmp_path, every_s):
    resumed, best = saves(tmp_path, every_s, Scripted())
    assert best == [0, 3]
    assert resumed == (list(range(len(SCORES))) if every_s == 0 else [0, 3])
    kept = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert kept["epoch"] == resumed[-1]


def test_a_resume_point_once_the_interval_has_passed(tmp_path):
    # epoch 5 takes longer than the interval: a resume point there, the best ones stay
    resumed, _ = saves(tmp_path, 0.5, Scripted(slow_epoch=5, seconds=0.6))
    assert {0, 3, 5} <= set(resumed)
