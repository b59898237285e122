"""Lightning callbacks of a neural cell: staying stopped after a resume, reporting progress."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from sergraph.console import progress


class KeepEarlyStop(Callback):
    """Resumed from a checkpoint saved after early stopping fired: stay stopped."""

    def on_train_start(self, trainer, pl_module) -> None:
        if any(callback.stopped_epoch > 0 for callback in trainer.early_stopping_callbacks):
            trainer.should_stop = True


class CellProgress(Callback):
    """Shows the running cell's epoch and validation UA on the study's progress bar.

    Reads logged values only; it changes no state, so results do not depend on it.
    """

    def __init__(self, name: str):
        self.name = name

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        bar = progress()
        if bar is None or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get("val/ua")
        bar.epoch(self.name, trainer.current_epoch + 1, float(value) if value is not None else None)
