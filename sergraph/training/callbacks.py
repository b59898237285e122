"""Lightning callbacks of a neural cell: staying stopped after a resume, reporting progress,
checking shared storage under DDP, checkpoints with every rank's random states."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from sergraph.console import progress
from sergraph.metrics import primary
from sergraph.training.distributed import check_shared_storage


class KeepEarlyStop(Callback):
    """Resumed from a checkpoint saved after early stopping fired: stay stopped."""

    def on_train_start(self, trainer, pl_module) -> None:
        if any(callback.stopped_epoch > 0 for callback in trainer.early_stopping_callbacks):
            trainer.should_stop = True


class CellProgress(Callback):
    """Shows the running cell's epoch and validation score (the primary metric, UA) on the
    study's progress bar.

    Reads logged values only; it changes no state, so results do not depend on it.
    """

    def __init__(self, name: str):
        self.name = name

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        bar = progress()
        if bar is None or not trainer.is_global_zero:
            return
        monitored = primary()
        value = trainer.callback_metrics.get(f"val/{monitored.name}")
        score = (monitored.display, float(value)) if value is not None else None
        bar.epoch(self.name, trainer.current_epoch + 1, score)


class SharedStorageCheck(Callback):
    """Before fitting, once the process group exists (and before a checkpoint is restored or an
    epoch trained): every rank sees rank zero's files in the cell folder
    (:func:`~sergraph.training.distributed.check_shared_storage`)."""

    def __init__(self, directory: Path, out_dir):
        self.directory = directory
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            check_shared_storage(self.directory, self.out_dir)


class RankStatesCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose checkpoints hold the random states of every rank.

    Its saves are made by every rank at the same point (its decisions are synchronised), which
    is where the module gathers the states of all ranks
    (:meth:`~sergraph.training.module.SERModule.gather_rng_states`).

    ``export_state=False``: its checkpoints leave out the data module's export state (the fold's
    statistics and test inputs, :meth:`~sergraph.data.datamodule.FoldDataModule.export_state`),
    which a resume does not read: for ``last.ckpt``, written every epoch (on EmoDB about a third
    of its bytes; it grows with the test split).
    """

    def __init__(self, *args, export_state: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.export_state = export_state

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        trainer.lightning_module.gather_rng_states()
        datamodule = trainer.datamodule
        keep = getattr(datamodule, "export_in_state", None)
        if keep is not None:
            datamodule.export_in_state = self.export_state
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            if keep is not None:
                datamodule.export_in_state = keep
