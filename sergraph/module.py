"""The one LightningModule: any registered encoder, cross-entropy, Adam, WA/UA metrics."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from sergraph.metrics import EmotionScores
from sergraph.models import build_model


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
    on the model's device (synchronised across DDP ranks).
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

    def forward(self, batch) -> torch.Tensor:
        return self.model(batch)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )

    def training_step(self, batch, batch_idx):
        logits = self(batch)
        loss = self._loss(logits, batch.y)
        self.log("train/loss", loss, batch_size=batch.num_graphs, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch, scores: EmotionScores, stage: str) -> None:
        logits = self(batch)
        self.log(
            f"{stage}/loss",
            self._loss(logits, batch.y),
            batch_size=batch.num_graphs,
            on_epoch=True,
            sync_dist=True,
        )
        scores.update(logits.argmax(dim=-1), batch.y)

    def _log_scores(self, scores: EmotionScores, stage: str) -> dict:
        result = scores.scores()
        self.log(f"{stage}/wa", result["wa"], sync_dist=False)
        self.log(f"{stage}/ua", result["ua"], sync_dist=False)
        for name, recall in zip(self.class_names, result["recall"], strict=True):
            if recall == recall:  # nan for classes without targets: not logged
                self.log(f"{stage}/recall_{name}", recall, sync_dist=False)
        scores.reset()
        return result

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_scores, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_scores, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_scores, "test")

    def on_test_epoch_end(self) -> None:
        self.test_result = self._log_scores(self.test_scores, "test")

    def predict_step(self, batch, batch_idx):
        probabilities = torch.softmax(self(batch), dim=-1)
        return {
            "utterance": list(batch.utterance),
            "speaker": list(batch.speaker),
            "true": batch.y.cpu(),
            "probabilities": probabilities.cpu(),
        }

    def configure_optimizers(self):
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
