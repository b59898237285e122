"""Lightning callbacks of a neural cell: staying stopped after a resume, reporting progress,
checking shared storage under DDP, checkpoints with every rank's random states and the resume
point's schedule."""

from __future__ import annotations

import time
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


class ResumePoint(RankStatesCheckpoint):
    """``last.ckpt``: the end-of-epoch checkpoint a cell resumes from after a stop or a fault,
    written at the end of an epoch when

    - the best checkpoint (``best``, a :class:`RankStatesCheckpoint` that runs first, as
      Lightning orders checkpoint callbacks) was written at this epoch, so that a resume point
      is never older than ``best.ckpt`` (a resume then never meets a ``best.ckpt`` from epochs
      it has not trained yet), or
    - at least ``every_s`` seconds have passed since the last resume point (or since training
      started); 0: every epoch.

    A stop or a fault loses at most the epochs since the last one: about ``every_s`` seconds,
    or one epoch where epochs are longer. A resumed cell gives the same results whichever epoch
    it resumes from. Under DDP rank zero's clock decides for every rank (the save is a
    collective). Without the data module's export state (``export_state=False``), which a
    resume does not read.
    """

    def __init__(self, *args, best: ModelCheckpoint, every_s: float = 0.0, **kwargs) -> None:
        super().__init__(*args, export_state=False, **kwargs)
        self.best = best
        self.every_s = float(every_s)
        self._since: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._since = time.monotonic()

    def _save_topk_checkpoint(self, trainer, monitor_candidates) -> None:
        if self.every_s > 0 and self.best._last_global_step_saved != trainer.global_step:
            since = self._since if self._since is not None else time.monotonic()
            due = trainer.strategy.broadcast(time.monotonic() - since >= self.every_s, src=0)
            if not due:
                return
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        self._since = time.monotonic()
