"""The one LightningModule: any registered encoder, cross-entropy, Adam, WA/UA metrics."""

from __future__ import annotations

import random
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from sergraph.metrics import EmotionScores
from sergraph.models import build_model

# Evaluation scores and losses are logged from torchmetrics states that are already summed over
# the DDP ranks; Lightning's advice to reduce them once more does not apply.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True"
)


class SERModule(L.LightningModule):
    """Wraps a registered encoder for training and evaluation.

    Args:
        model: registered model name (see ``sergraph.models.MODELS``).
        model_params: keyword arguments of that model.
        in_channels: node feature size, taken from the data module.
        class_names: emotion names in class-index order (their count sizes the classifier).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 1e-8).
        class_weights: optional per-class loss weights computed on the training fold only.
        label_smoothing: cross-entropy label smoothing.

    Logged keys: ``train/loss``, ``val/loss``, ``val/wa``, ``val/ua``, ``test/wa``, ``test/ua``
    and ``{val,test}/recall_<class>``. Scores are computed from a torchmetrics confusion matrix
    on the model's device; under DDP its counts are summed over the ranks, so with the data
    module's unpadded evaluation shards WA/UA/recall equal a single-process evaluation exactly.
    The evaluation loss is a torchmetrics mean (sum and count summed over ranks) for the same
    reason.

    Checkpoints also hold the global random states (torch, numpy, Python; CUDA when used), so
    that training resumed from an end-of-epoch checkpoint continues as the uninterrupted run.
    """

    def __init__(
        self,
        model: str,
        model_params: dict,
        in_channels: int,
        class_names: list[str],
        lr: float = 1e-4,
        weight_decay: float = 1e-8,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        self.model = build_model(model, in_channels, num_classes, **dict(model_params))
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.val_scores = EmotionScores(num_classes)
        self.test_scores = EmotionScores(num_classes)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = self._loss(logits, batch.y)
        self.log(
            "train/loss",
            loss,
            batch_size=batch.num_graphs,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        return loss

    def _eval_step(self, batch, scores: EmotionScores, loss: MeanMetric) -> None:
        logits = self(batch)
        loss.update(self._loss(logits, batch.y), weight=batch.num_graphs)
        scores.update(logits.argmax(dim=-1), batch.y)

    def _log_scores(self, scores: EmotionScores, loss: MeanMetric, stage: str) -> dict:
        # Both are synchronised over DDP ranks by torchmetrics (sum of counts), so every rank
        # logs the same global value and no further reduction is wanted.
        self.log(f"{stage}/loss", loss.compute(), sync_dist=False)
        loss.reset()
        result = scores.scores()
        self.log(f"{stage}/wa", result["wa"], sync_dist=False)
        self.log(f"{stage}/ua", result["ua"], sync_dist=False)
        for name, recall in zip(self.class_names, result["recall"], strict=True):
            if recall == recall:  # nan for classes without targets: not logged
                self.log(f"{stage}/recall_{name}", recall, sync_dist=False)
        scores.reset()
        return result

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_scores, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_scores, self.val_loss, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_scores, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self.test_result = self._log_scores(self.test_scores, self.test_loss, "test")

    def predict_step(self, batch, batch_idx):
        probabilities = torch.softmax(self(batch), dim=-1)
        return {
            "utterance": list(batch.utterance),
            "speaker": list(batch.speaker),
            "true": batch.y.cpu(),
            "probabilities": probabilities.cpu(),
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["sergraph_rng"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Only when training resumes: testing a checkpoint leaves the random state alone.
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            states = checkpoint.get("sergraph_rng")
            if states is not None:
                _set_rng_states(states)

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )


def _rng_states() -> dict:
    """Global random states as tensors and plain values (loadable with ``weights_only``)."""
    # the legacy global state is the one seed_everything seeds
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        if len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
