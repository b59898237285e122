"""Fit one neural cell: the Trainer, its checkpoints and resume, then test and predict once.

A fold interrupted after at least one epoch (killed, or preempted and requeued by SLURM)
resumes from its ``checkpoints/last.ckpt`` and ends with the same results as an uninterrupted
run. Checkpoints are written to a temporary file and renamed (:func:`atomic_checkpoint_io`), so a
kill never leaves a partial one; a ``last.ckpt`` that cannot be read anyway (a disk that filled
up, a file copied in part) is moved aside and the cell starts afresh. These checkpoint and resume
helpers live in :mod:`sergraph.training.checkpoints`.

A training or validation loss that is not finite stops the cell at the end of that epoch
(:func:`non_finite_guard`), before any checkpoint or result of the diverged model is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sergraph.config import model_spec, normalization_of, protocol_of
from sergraph.console import configure as configure_console
from sergraph.console import detail, log
from sergraph.data.features.ssl import stacked_layers
from sergraph.data.folds import Fold
from sergraph.data.prepared import PreparedData
from sergraph.metrics import BEST_VALIDATION, primary, scores_from_labels
from sergraph.results.layout import CellPaths, predictions_frame
from sergraph.training.checkpoints import (
    atomic_checkpoint_io,
    attempt_dir,
    resume_checkpoint,
    set_aside_csv_log,
)
from sergraph.training.distributed import gather_from_ranks, is_global_zero, trainer_topology


def fit_neural(
    cfg: DictConfig, study: PreparedData, fold: Fold, seed: int, directory: Path, loggers: list
):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from sergraph.training.callbacks import (
        CellProgress,
        RankStatesCheckpoint,
        ResumePoint,
        SharedStorageCheck,
    )
    from sergraph.training.timing import PhaseClock, ValidationClock

    configure_console()  # after importing Lightning, which adds its own console handler
    L.seed_everything(seed, workers=True, verbose=False)
    clock = PhaseClock()
    clock.start("data")
    datamodule = fold_datamodule(cfg, study, fold, seed)
    datamodule.setup()
    clock.stop("data")
    clock.start("setup")
    module = cell_module(cfg, study, fold, datamodule)
    has_val = bool(fold.val_speakers)
    paths = CellPaths(directory)
    # Lightning adds the ".ckpt" of the layout's names to the stems given here.
    # best.ckpt: the best validation score of the primary metric (val/ua) so far (every rank
    # logs the same synchronised value).
    monitored = primary()
    checkpoint = RankStatesCheckpoint(
        dirpath=paths.best.parent,
        filename=paths.best.stem,
        monitor=f"val/{monitored.name}" if has_val else None,
        mode=monitored.mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    # last.ckpt: at the end of an epoch where best.ckpt was written, and otherwise at most every
    # trainer.resume_every_s seconds (ResumePoint), after early stopping and best.ckpt have
    # decided, with their states: a cell resumed from it makes the same best-checkpoint and
    # stopping decisions.
    resume_point = ResumePoint(
        dirpath=paths.last.parent,
        filename=paths.last.stem,
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        best=checkpoint,
        every_s=cfg.trainer.get("resume_every_s", 0.0),
    )
    label = cfg.run.label or cfg.model.name
    progress = CellProgress(f"{label} seed {seed} {fold.name}")
    callbacks = [
        SharedStorageCheck(directory, cfg.run.out_dir),
        non_finite_guard(cfg, directory),
        checkpoint,
        resume_point,
        keep_early_stop_callback(),
    ]
    if has_val and cfg.trainer.early_stopping:
        callbacks.append(
            EarlyStopping(
                monitor=f"val/{monitored.name}",
                mode=monitored.mode,
                patience=cfg.trainer.patience,
            )
        )
    callbacks.append(ValidationClock(clock))
    callbacks.append(progress)  # last: it reads what the others logged, changes nothing
    devices, num_nodes = trainer_topology(cfg)
    pin_rnn_math(cfg.trainer.deterministic)
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        min_epochs=cfg.trainer.min_epochs,
        accelerator=cfg.trainer.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic,
        callbacks=callbacks,
        plugins=[atomic_checkpoint_io(clock)],
        logger=loggers,
        default_root_dir=attempt_dir(directory),
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
    )
    if cfg.model.get("fusion") and trainer.world_size > 1:  # e.g. inside srun: refuse at once
        raise ValueError(
            f"{directory}: model.fusion={cfg.model.fusion} runs in one process only; this run "
            f"has {trainer.world_size} (use one device and one node, outside srun)"
        )
    resume = resume_checkpoint(cfg, directory)
    if resume is not None and is_global_zero():
        log(f"{directory}: resuming from {resume.relative_to(directory)}")
        # merged back by restore_csv_log once the cell's loggers are closed
        set_aside_csv_log(paths.csv_log)
    clock.stop("setup")
    with clock.phase("fit"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    best = checkpoint.best_model_path
    with clock.phase("test"):
        predictions, tested, probabilities = test_and_predict(
            trainer, module, datamodule, best, study.classes
        )
    # Independent route: scores from the predictions file must equal the torchmetrics ones.
    check = scores_from_labels(
        predictions["true"].map(study.classes.index),
        predictions["predicted"].map(study.classes.index),
        len(study.classes),
    )
    if check["confusion"] != tested["confusion"]:
        raise RuntimeError(
            f"{directory}: torchmetrics and predictions disagree; please report this"
        )
    fusion = None
    if cfg.model.get("fusion"):
        predictions, fusion = fuse_with_svm(
            trainer, module, datamodule, best, probabilities, study.classes, directory
        )
    best_score = checkpoint.best_model_score
    extra = {
        "epochs": int(trainer.current_epoch),
        BEST_VALIDATION: float(best_score) if best_score is not None else None,
        "checkpoint": str(Path(best).resolve().relative_to(directory.resolve())) if best else None,
    }
    extra["timing"] = clock.neural_record()
    if trainer.world_size > 1:
        extra["world_size"] = int(trainer.world_size)
    if fusion is not None:
        extra["fusion"] = fusion
        # what `sergraph select` ranks: the validation UA of the model whose test predictions
        # are reported (the fused one); the neural model's own is kept beside it
        extra["model_best_val_ua"] = extra[BEST_VALIDATION]
        extra[BEST_VALIDATION] = fusion["val_ua"][f"{fusion['weight']:.1f}"]
    return predictions, extra


def fuse_with_svm(
    trainer, module, datamodule, checkpoint: str, test_probabilities, classes, directory: Path
):
    """``model.fusion=svm``: the fused test predictions frame and the ``fusion`` record (see
    :mod:`sergraph.training.fusion`); the parts go to ``fusion.csv`` in the cell's folder.

    ``test_probabilities`` are the checkpoint's test probabilities from :func:`test_and_predict`
    (one process: :func:`fit_neural` refuses fusion on several before training); the
    validation ones are predicted here.
    """
    from sergraph.io import atomic_write_csv
    from sergraph.training.fusion import FUSION_PARTS, fuse

    if not datamodule.datasets["val"]:
        raise ValueError(
            f"{directory}: model.fusion=svm chooses its weight on the validation speakers, and "
            f"{datamodule.fold.name} has none; set folds.val_speakers >= 1"
        )
    validation = predict_split(trainer, module, datamodule, checkpoint, "val")[3]
    graph = {
        "val": validation.astype(np.float64),
        "test": np.asarray(test_probabilities).astype(np.float64),
    }
    scores, record, parts = fuse(datamodule, graph)
    graphs = datamodule.datasets["test"]
    predictions = predictions_frame(
        [g.utterance for g in graphs],
        [g.speaker for g in graphs],
        [int(g.y) for g in graphs],
        scores,
        classes,
    )
    if is_global_zero():
        atomic_write_csv(directory / FUSION_PARTS, parts)
    weight = record["weight"]
    shown = primary().display
    detail(
        f"{datamodule.fold.name}: fused with the SVM, weight {weight:.1f} of the neural model "
        f"(validation {shown} {record['val_ua'][f'{weight:.1f}']:.3f}; test {shown} neural "
        f"{record['graph_test_ua']:.3f}, SVM {record['svm_test_ua']:.3f})"
    )
    return predictions, record


def pin_rnn_math(deterministic: bool) -> str | None:
    """With ``trainer.deterministic=true``, cuDNN's recurrent layers compute in IEEE fp32.

    Lightning's ``deterministic=True`` picks deterministic kernels but leaves cuDNN RNNs free
    to use TF32 on Ampere and newer GPUs (``torch.backends.cudnn.rnn.fp32_precision``, "tf32"
    by default in recent torch), which moves BiLSTM probabilities by ~3e-4: the same seed would
    then give different numbers on different GPU generations and on the CPU. Returns the
    setting applied, or ``None`` (not deterministic, or a torch without that attribute).
    Without ``deterministic`` torch's default is left alone.
    """
    if not deterministic:
        return None
    import torch

    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        return None
    rnn.fp32_precision = "ieee"
    return rnn.fp32_precision


@contextlib.contextmanager
def ieee_rnn_math() -> Iterator[str | None]:
    """cuDNN's recurrent layers in IEEE fp32 inside the block, the previous setting after it.

    For prediction with a trained model (bundles, export's verification, ``sergraph predict``):
    a TF32 LSTM moves probabilities by 5e-4 to 8e-4 on Ampere and newer GPUs, close to export's
    1e-3 tolerance, and makes a bundle's answer depend on the GPU generation. Yields the setting
    applied (``None`` on a torch without ``torch.backends.cudnn.rnn.fp32_precision``).
    """
    import torch

    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is None or not hasattr(rnn, "fp32_precision"):
        yield None
        return
    previous = rnn.fp32_precision
    rnn.fp32_precision = "ieee"
    try:
        yield rnn.fp32_precision
    finally:
        rnn.fp32_precision = previous


def cell_module(cfg: DictConfig, study: PreparedData, fold: Fold, datamodule):
    """The LightningModule a cell trains: the model, loss, optimiser and augmentation of ``cfg``
    for the set-up ``datamodule`` of ``fold`` (its feature counts and class weights)."""
    from sergraph.training.module import SERModule

    family, model_params = model_spec(cfg)
    adversary = float(cfg.optim.get("speaker_adversary", 0.0))
    return SERModule(
        model=family,
        model_params=model_params,
        in_channels=datamodule.num_features,
        class_names=study.classes,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        class_weights=datamodule.class_weights if cfg.optim.class_weights else None,
        label_smoothing=cfg.optim.label_smoothing,
        global_channels=datamodule.num_global_features,
        optimizer=cfg.optim.optimizer,
        schedule=cfg.optim.schedule,
        warmup_epochs=cfg.optim.warmup_epochs,
        augment=OmegaConf.to_container(cfg.augment),
        input_layers=stacked_layers(cfg),
        speaker_adversary=adversary,
        # the speaker head's classes: the fold's training speakers (never val/test ones)
        train_speakers=[str(s) for s in fold.train_speakers] if adversary > 0 else None,
    )


def fold_datamodule(cfg: DictConfig, study: PreparedData, fold: Fold, seed: int):
    """The fold's data module; its checkpointed state carries what export needs."""
    from sergraph.data.datamodule import FoldDataModule
    from sergraph.data.prepared import corpus_sample_rates
    from sergraph.training.provenance import run_provenance

    return FoldDataModule(
        study.table,
        study.features,
        fold,
        study.classes,
        k=cfg.graph.k,
        max_nodes=cfg.graph.max_nodes,
        pad=cfg.graph.pad,
        normalize=normalization_of(cfg),
        batch_size=cfg.optim.batch_size,
        num_workers=cfg.trainer.num_workers,
        seed=seed,
        utterance_features=study.functionals
        if cfg.features.get("concat_functionals", False)
        else None,
        provenance=run_provenance(cfg, corpus_sample_rates(study)),
        protocol=protocol_of(cfg),
        enrollment=cfg.eval.enrollment,
        enrollment_seed=cfg.eval.enrollment_seed,
        dilations=cfg.graph.get("dilations"),
        sampler=cfg.optim.get("sampler", "shuffle"),
    )


def test_and_predict(trainer, module, datamodule, checkpoint: str, classes: list[str]):
    """Test scores (torchmetrics, synchronised over ranks) and the predictions of every rank.

    Returns the predictions frame in test-table order (the same on every rank), the test
    scores of :class:`~sergraph.training.module.SERModule` and the test probabilities
    ``[n, classes]`` (float32 numpy, the frame's order, unrounded).
    """
    trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    tested = trainer.lightning_module.test_result
    utterances, speakers, true, probabilities = predict_split(
        trainer, module, datamodule, checkpoint, "test"
    )
    predictions = predictions_frame(utterances, speakers, true, probabilities, classes)
    return predictions, tested, probabilities


def predict_split(trainer, module, datamodule, checkpoint: str, split: str):
    """``(utterances, speakers, true, probabilities)`` of a split (``val`` or ``test``),
    predicted by ``checkpoint`` on every rank and gathered, in the data module's order;
    ``probabilities`` is float32 numpy ``[n, classes]``.

    Raises :class:`NonFiniteLossError` when a probability is nan or inf (the model diverged).
    """
    import torch

    loader = {"val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    outputs = gather_from_ranks(trainer.predict(module, dataloaders=loader, ckpt_path=checkpoint))
    probabilities = torch.cat([o["probabilities"] for o in outputs]).float()
    if not bool(torch.isfinite(probabilities).all()):
        bad = int((~torch.isfinite(probabilities)).any(dim=1).sum())
        raise NonFiniteLossError(
            f"{datamodule.fold.name}: {bad} of {len(probabilities)} {split} predictions of "
            f"{checkpoint} are not finite (nan or inf); the model diverged. No metrics.json was "
            "written. Lower optim.lr (or use trainer.precision=32) and train again."
        )
    utterances = [u for o in outputs for u in o["utterance"]]
    # The evaluation shards are disjoint; keeping each utterance's first prediction guards the
    # invariant that every utterance is counted exactly once whatever the sampler did.
    first: dict[str, int] = {}
    for row, utterance in enumerate(utterances):
        first.setdefault(utterance, row)
    keep = list(first.values())
    expected = [graph.utterance for graph in datamodule.datasets[split]]
    if list(first) != expected:
        raise RuntimeError(
            f"{datamodule.fold.name}: predictions of {len(first)} utterances, expected "
            f"the {len(expected)} {split} utterances in order; please report this"
        )
    speakers = [s for o in outputs for s in o["speaker"]]
    true = torch.cat([o["true"] for o in outputs]).numpy()
    return list(first), [speakers[i] for i in keep], true[keep], probabilities.numpy()[keep]


def evaluate_checkpoint(
    cfg: DictConfig, study: PreparedData, fold: Fold, seed: int, checkpoint: str | Path
) -> tuple[pd.DataFrame, dict]:
    """Test a fold's checkpoint in this process alone: (predictions frame, test scores).

    The same evaluation as at the end of training, on one device; a DDP run's results equal it.
    """
    import lightning as L

    from sergraph.training.module import SERModule

    datamodule = fold_datamodule(cfg, study, fold, seed)
    datamodule.setup()
    module = SERModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    pin_rnn_math(cfg.trainer.deterministic)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        num_nodes=1,
        precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=Path(checkpoint).parent,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    predictions, tested, _ = test_and_predict(
        trainer, module, datamodule, str(checkpoint), study.classes
    )
    return predictions, tested


class NonFiniteLossError(RuntimeError):
    """The training or validation loss of a cell is nan or infinite: the model diverged."""


def non_finite_guard(cfg: DictConfig, directory: Path):
    """A callback that stops the cell when an epoch's training or validation loss is not finite.

    It runs before the checkpoint callbacks of that epoch, so that no checkpoint, prediction or
    metrics.json of a diverged model is written; the error names the cell, the epoch and the
    settings most likely at fault.
    """
    import torch
    from lightning.pytorch.callbacks import Callback

    def suspects() -> str:
        lr = float(cfg.optim.lr)
        text = f"optim.lr={lr:g} is the most likely cause (try optim.lr={lr / 10:g})"
        if str(cfg.trainer.precision).startswith("16"):
            text += f", or trainer.precision={cfg.trainer.precision} overflowed (try 32)"
        if cfg.optim.warmup_epochs == 0:
            text += "; a warm-up (optim.warmup_epochs) can also help"
        return text

    class StopOnNonFiniteLoss(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.check(trainer, "train/loss")

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self.check(trainer, "val/loss")

        def check(self, trainer, key: str) -> None:
            value = trainer.callback_metrics.get(key)
            if value is None or bool(torch.isfinite(torch.as_tensor(value)).all()):
                return
            stage = {"train/loss": "training", "val/loss": "validation"}[key]
            raise NonFiniteLossError(
                f"{directory}: the {stage} loss is {float(value)} at epoch "
                f"{trainer.current_epoch}; the model diverged and the cell was stopped (no "
                f"metrics.json, nothing to report or export). {suspects()}. A changed setting "
                "is a new configuration: rerun with it and this cell starts afresh."
            )

    return StopOnNonFiniteLoss()


def keep_early_stop_callback():
    from sergraph.training.callbacks import KeepEarlyStop

    return KeepEarlyStop()
