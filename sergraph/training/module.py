"""The one LightningModule: any registered encoder, cross-entropy, Adam, the registered metrics."""

from __future__ import annotations

import copy
import functools
import random
import warnings

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch_geometric.data import Batch
from torchmetrics import MeanMetric

from sergraph.config import resolve_model
from sergraph.console import detail, log
from sergraph.data.collate import band_mark, batch_to_device
from sergraph.metrics import METRICS, EmotionScores
from sergraph.models import banded, build_model
from sergraph.models.layers import LayerWeightedSum
from sergraph.optim import build_optimizer, lr_factor
from sergraph.training.distributed import from_every_rank
from sergraph.training.levers import (
    SpeakerHead,
    classifier_input,
    classifier_widths,
    draw_mixup,
    emotion_classifier,
    mix,
    speaker_targets,
)

# Evaluation scores and losses are logged from torchmetrics states that are already summed over
# the DDP ranks; Lightning's advice to reduce them once more does not apply.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True"
)


#: What the module itself reads on the device besides the model's keys: the targets (loss,
#: metrics; not in prediction, which returns them to the host) and, in training steps with
#: node augmentation, the graph offsets and real-node counts (:func:`augment_nodes`).
TARGET_KEYS = frozenset({"y"})
AUGMENT_KEYS = frozenset({"ptr", "n_valid"})


def model_device_keys(model: torch.nn.Module, batch) -> frozenset[str] | None:
    """The attributes of a host ``batch`` that ``model``'s forward reads on its device.

    A family declares them as class attributes: ``batch_keys`` (PyG's message-passing path) and,
    with a banded fast path, ``band_batch_keys`` (that path, chosen by the model's
    ``uses_fast_path``, which looks at shapes and the collater's mark only). Under
    ``SERGRAPH_FAST_PATH=check`` the fast path also reads ``edge_index`` and ``band_k``
    (:func:`~sergraph.models.banded.verify`). ``None``: the model declares nothing (a plugin
    family), so every tensor is moved.
    """
    keys = getattr(model, "batch_keys", None)
    if keys is None:
        return None
    band_keys = getattr(model, "band_batch_keys", None)
    if band_keys is not None and model.uses_fast_path(batch):
        checked = {"edge_index", "band_k"} if banded.verifying() else set()
        return frozenset(band_keys) | checked
    return frozenset(keys)


class SERModule(L.LightningModule):
    """Wraps a registered encoder for training and evaluation.

    Args:
        model: registered model family (see ``sergraph.models.MODELS``).
        model_params: keyword arguments of that model.
        in_channels: node feature size, taken from the data module.
        class_names: emotion names in class-index order (their count sizes the classifier).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: 1e-8).
        class_weights: optional per-class loss weights computed on the training fold only.
        label_smoothing: cross-entropy label smoothing.
        global_channels: size of the utterance vector ``u`` each graph carries (0: none); passed
            to models that can concatenate it with the graph embedding.
        optimizer: ``adam`` (L2 weight decay, the paper) or ``adamw`` (decoupled weight decay).
        schedule: ``constant`` or ``cosine`` (to 0 at the Trainer's ``max_epochs``), stepped per
            epoch, after ``warmup_epochs`` epochs of linear warm-up.
        warmup_epochs: epochs of linear warm-up (epoch ``e`` uses ``lr * (e + 1) / (warmup + 1)``).
        augment: training-only node-feature augmentation (:func:`augment_nodes`): ``noise``
            (Gaussian std), ``time_mask`` and ``feature_mask`` (largest masked span); and
            ``mixup`` (``alpha``): mixup of the classifier inputs (see
            :mod:`sergraph.training.levers`).
        input_layers: ``L > 1``: each node holds ``L`` stacked hidden layers of a
            self-supervised model (``features.ssl.layer=all``); a learned
            :class:`~sergraph.models.layers.LayerWeightedSum` mixes them before the encoder,
            which then sees ``in_channels / L`` features.
        speaker_adversary: ``lambda > 0``: a :class:`~sergraph.training.levers.SpeakerHead`
            (``self.speaker_head``, training only, never exported) classifies the training
            speakers from the embedding through a gradient reversal scaled by ``lambda``; the
            training loss adds its cross-entropy.
        train_speakers: the fold's training speakers (needed with ``speaker_adversary``); the
            speaker head's classes, in this order.

    Logged keys: ``train/loss``, ``val/loss``, ``test/loss``, ``{val,test}/<metric>`` for every
    metric of :data:`sergraph.metrics.METRICS` (``val/wa``, ``val/ua``, ``val/f1``, ...) and
    ``{val,test}/recall_<class>`` (and ``train/speaker_loss`` with ``speaker_adversary``;
    ``train/loss`` is then the total loss, emotion + speaker). Scores are computed from a
    torchmetrics confusion matrix on the model's device; under DDP its counts are summed over the
    ranks, so with the data module's unpadded evaluation shards every metric and recall equal a
    single-process evaluation exactly.
    The evaluation loss is a torchmetrics mean (sum and count summed over ranks) for the same
    reason.

    Checkpoints also hold the global random states (torch, numpy, Python; CUDA when used) of
    every DDP rank, so that training resumed from an end-of-epoch checkpoint continues as the
    uninterrupted run on every rank: each rank draws its own dropout and augmentation stream.
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
        global_channels: int = 0,
        optimizer: str = "adam",
        schedule: str = "constant",
        warmup_epochs: int = 0,
        augment: dict | None = None,
        input_layers: int = 1,
        speaker_adversary: float = 0.0,
        train_speakers: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # the epoch's summed training loss and graph count so far (see _log_epoch_loss)
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        # A checkpoint written before presets had families names the preset (e.g. "gin").
        family, params = resolve_model(model, dict(model_params))
        self.layer_mix = LayerWeightedSum(input_layers) if input_layers > 1 else None
        self.model = build_model(
            family,
            in_channels // input_layers,
            num_classes,
            global_channels=global_channels,
            **params,
        )
        augment = dict(augment or {})
        self.mixup = float(augment.pop("mixup", 0.0))
        self.augment = {"noise": 0.0, "time_mask": 0, "feature_mask": 0, **augment}
        self.speaker_head = None
        if speaker_adversary > 0:
            option = "optim.speaker_adversary"
            if not train_speakers:
                raise ValueError(f"{option}={speaker_adversary} needs the training speakers")
            classifier = emotion_classifier(self.model, option)
            width, hidden = classifier_widths(classifier, option)
            self.speaker_index = {str(s): i for i, s in enumerate(train_speakers)}
            self.speaker_head = SpeakerHead(
                width, hidden, len(self.speaker_index), speaker_adversary
            )
            inside = {id(p) for p in classifier.parameters()}
            if not any(p.requires_grad and id(p) not in inside for p in self.model.parameters()):
                detail(
                    f"{option}={speaker_adversary}: nothing trainable comes before the "
                    "classifier's input (no graph layers, no front end), so the reversed "
                    "gradient changes no weight: the speaker head trains alone"
                )
        if self.mixup > 0:
            emotion_classifier(self.model, "augment.mixup")
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weight", weight, persistent=False)
        self.val_scores = EmotionScores(num_classes)
        self.test_scores = EmotionScores(num_classes)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def forward(self, batch) -> torch.Tensor:
        if self.layer_mix is not None:
            batch = copy.copy(batch)  # shallow: only x is replaced
            batch.x = self.layer_mix(batch.x)
        return self.model(batch)

    def device_keys(self, batch, stage: str = "train") -> frozenset[str] | None:
        """The attributes of a host ``batch`` that a ``stage`` step (``train``, ``eval`` or
        ``predict``) reads on the device: the model's (:func:`model_device_keys`), the targets
        outside prediction, ``ptr`` and ``n_valid`` in training with node augmentation.
        ``speaker`` and ``utterance`` are strings read on the host (the speaker adversary maps
        speakers to class indices there). ``None``: every tensor (the model declares nothing).
        """
        keys = model_device_keys(self.model, batch)
        if keys is None:
            return None
        if stage != "predict":
            keys |= TARGET_KEYS
        if stage == "train" and any(self.augment.values()):
            keys |= AUGMENT_KEYS
        return keys

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Only the attributes a step reads on the device (:meth:`device_keys`) are moved; the
        rest (the edges on the fast path, ``band_k``, per-graph counts, strings) stay on the
        host, and so does the collater's band mark (its ``lengths`` on the CPU by design).

        The copies are ``non_blocking``: asynchronous to the host when the loader pins memory
        (the data module does on CUDA), ordinary synchronous copies otherwise.
        """
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        trainer = self._trainer
        if trainer is None or trainer.training:
            stage = "train"
        else:
            stage = "predict" if trainer.predicting else "eval"
        keys = self.device_keys(batch, stage)
        if keys is None:
            return batch.to(device, non_blocking=True)
        return batch_to_device(batch, device, keys)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits, target, weight=self.class_weight, label_smoothing=self.hparams.label_smoothing
        )

    def augmented(self, batch):
        """``batch`` with its node features augmented (:func:`augment_nodes`) as configured; the
        batch itself when no augmentation is on."""
        if not any(self.augment.values()):
            return batch
        mark = band_mark(batch)  # CPU sizes: no read of ptr from the device
        batch = copy.copy(batch)  # shallow: only x is replaced
        batch.x = augment_nodes(
            batch.x,
            batch.ptr,
            getattr(batch, "n_valid", None),
            **self.augment,
            nodes_per_graph=mark.max_length if mark is not None and mark.uniform else None,
        )
        return batch

    def training_step(self, batch, batch_idx):
        batch = self.augmented(batch)
        if self.speaker_head is None and self.mixup <= 0:
            logits = self(batch)
            loss = self._loss(logits, batch.y)
        else:
            loss = self._lever_loss(batch)
        self._log_epoch_loss(loss, batch.num_graphs, batch_idx)
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = None, 0

    def _log_epoch_loss(self, loss: torch.Tensor, graphs: int, batch_idx: int) -> None:
        """``train/loss``: the epoch's training loss, the mean over its graphs (each batch's
        mean loss weighted by its graph count, over all ranks).

        Summed on the device step by step and handed to Lightning once, at the epoch's last
        batch: ``self.log`` on every step cost about as much as the recommended model's forward
        pass (``benchmarks/bench_cell_step.py``). Nothing is read back to the host here; the
        value is logged before the epoch-end callbacks read it (the non-finite guard)."""
        weighted = loss.detach().float() * graphs
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += graphs
        trainer = self._trainer
        if trainer is not None and batch_idx + 1 < trainer.num_training_batches:
            return
        self.log(
            "train/loss",
            self._loss_sum / self._loss_count,
            batch_size=self._loss_count,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )
        self._loss_sum, self._loss_count = None, 0

    def _lever_loss(self, batch) -> torch.Tensor:
        """The training loss with mixup and/or the speaker adversary (training batches only)."""
        mixing = None
        if self.mixup > 0:
            lam, perm = draw_mixup(self.mixup, batch.num_graphs)
            mixing = functools.partial(mix, lam=lam, perm=perm)
        with classifier_input(self.model.head.classifier, mixing) as seen:
            logits = self(batch)
        if len(seen) != 1:
            raise RuntimeError(
                f"the model's classifier ran {len(seen)} times in one forward; mixup and the "
                "speaker adversary need exactly one embedding per batch"
            )
        if mixing is None:
            loss = self._loss(logits, batch.y)
        else:
            perm = perm.to(batch.y.device)
            loss = lam * self._loss(logits, batch.y) + (1 - lam) * self._loss(logits, batch.y[perm])
        if self.speaker_head is not None:
            # the unmixed embedding: each row is one training utterance of one speaker
            target = speaker_targets(batch.speaker, self.speaker_index).to(logits.device)
            speaker_loss = F.cross_entropy(self.speaker_head(seen[0]), target)
            self.log(
                "train/speaker_loss",
                speaker_loss,
                batch_size=batch.num_graphs,
                on_step=False,
                on_epoch=True,
                sync_dist=True,
            )
            loss = loss + speaker_loss
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
        for name in METRICS:
            self.log(f"{stage}/{name}", result[name], sync_dist=False)
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
        # Softmax in float32: under bf16/16-mixed the logits are 16-bit, and 16-bit
        # probabilities would tie (and disagree with the test scores' argmax of the logits).
        probabilities = torch.softmax(self(batch).float(), dim=-1)
        return {
            "utterance": list(batch.utterance),
            "speaker": list(batch.speaker),
            "true": batch.y.cpu(),
            "probabilities": probabilities.cpu(),
        }

    def gather_rng_states(self) -> None:
        """Collect the random states of every rank for the next checkpoint save.

        A collective: every rank calls it at the same point, right before a checkpoint save
        that every rank makes (:class:`~sergraph.training.callbacks.RankStatesCheckpoint` does).
        """
        self.rank_rng_states = from_every_rank(_rng_states())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # One entry per rank, in global rank order. A save that is not preceded by
        # gather_rng_states (Lightning's SLURM signal handler, which runs on each rank at its own
        # moment, where a collective could deadlock) holds this rank's states only; such
        # mid-epoch checkpoints are never resumed from (see fit.resume_checkpoint).
        states = getattr(self, "rank_rng_states", None) or [_rng_states()]
        self.rank_rng_states = None
        checkpoint["sergraph_rng"] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Only when training resumes: testing a checkpoint leaves the random state alone.
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        states = checkpoint.get("sergraph_rng")
        if states is None:
            return
        if isinstance(states, dict):  # written before states were kept per rank
            states = [states]
        rank, world = trainer.global_rank, trainer.world_size
        if len(states) != world and rank == 0:
            log(
                f"the checkpoint holds the random states of {len(states)} process(es), this run "
                f"has {world}: the ranks' random streams differ from the interrupted run's"
            )
        _set_rng_states(states[rank] if rank < len(states) else states[0])

    def configure_optimizers(self):
        optimizer = build_optimizer(
            self.hparams.optimizer,
            self.parameters(),
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
        )
        warmup, schedule = self.hparams.warmup_epochs, self.hparams.schedule
        if schedule == "constant" and not warmup:
            return optimizer
        total = self.trainer.max_epochs if self.trainer is not None else None
        factor = lr_factor(schedule, warmup, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def masks_on_host(x: torch.Tensor) -> bool:
    """Whether :func:`augment_nodes` reads the masks' spans on the host and fills them as row
    and column slices of a padded batch: on the CPU, where reading costs nothing. On a GPU that
    would wait for the device at every step, so the masks stay broadcast there."""
    return x.device.type == "cpu"


def augment_nodes(
    x: torch.Tensor,
    ptr: torch.Tensor,
    n_valid: torch.Tensor | None = None,
    noise: float = 0.0,
    time_mask: int = 0,
    feature_mask: int = 0,
    nodes_per_graph: int | None = None,
) -> torch.Tensor:
    """A randomly perturbed copy of a batch's node features (training fold only).

    Args:
        x: node features ``[N, F]`` of a batch whose graph ``g`` holds rows
            ``ptr[g]:ptr[g + 1]`` in time order.
        ptr: ``[B + 1]`` graph offsets.
        n_valid: ``[B]`` real (unpadded) nodes per graph; masks start inside them.
        noise: add ``N(0, noise^2)`` to every feature.
        time_mask: per graph, zero the features of ``w ~ U{0..time_mask}`` consecutive nodes
            starting at a uniform position (SpecAugment-style time masking on graph nodes).
        feature_mask: per graph, zero ``w ~ U{0..feature_mask}`` consecutive feature columns
            starting at a uniform column, on all its nodes.
        nodes_per_graph: every graph's node count when they are all equal (padded batches; the
            caller knows it from the collater's band mark without reading ``ptr``): the masks
            are then drawn on the ``[B, T, F]`` view by broadcasting instead of gathering per
            node (on the CPU, filled as row and column slices). The same draws in the same
            order, the same output bit for bit.

    Draws from torch's global generator (seeded per cell, saved in checkpoints).
    """
    out = x.clone()
    num_graphs = ptr.numel() - 1
    uniform = nodes_per_graph is not None and nodes_per_graph * num_graphs == x.size(0)
    on_host = masks_on_host(x)
    if uniform:
        grid = out.view(num_graphs, nodes_per_graph, x.size(1))
        sizes = torch.full((num_graphs,), nodes_per_graph, dtype=ptr.dtype, device=x.device)
    else:
        sizes = ptr[1:] - ptr[:-1]
        # output_size and masked_fill: nothing is read back from the device (no host sync)
        graph = torch.repeat_interleave(
            torch.arange(num_graphs, device=x.device), sizes, output_size=x.size(0)
        )
    if time_mask > 0:
        lengths = sizes if n_valid is None else torch.minimum(n_valid.view(-1), sizes)
        width = torch.randint(0, time_mask + 1, (num_graphs,), device=x.device)
        width = torch.minimum(width, lengths)
        start = (torch.rand(num_graphs, device=x.device) * (lengths - width + 1)).long()
        if uniform:
            position = torch.arange(nodes_per_graph, device=x.device)[None, :]
            hit = (position >= start[:, None]) & (position < (start + width)[:, None])
            if on_host:  # the hit rows filled whole: a broadcast mask is read per value
                out.index_fill_(0, hit.view(-1).nonzero().view(-1), 0.0)
            else:
                grid.masked_fill_(hit.unsqueeze(-1), 0.0)
        else:
            position = torch.arange(x.size(0), device=x.device) - ptr[:-1][graph]
            hit = (position >= start[graph]) & (position < (start + width)[graph])
            out = out.masked_fill(hit.unsqueeze(-1), 0.0)
    if feature_mask > 0:
        features = x.size(1)
        width = torch.randint(0, min(feature_mask, features) + 1, (num_graphs,), device=x.device)
        start = (torch.rand(num_graphs, device=x.device) * (features - width + 1)).long()
        if uniform and on_host:  # each graph's band of columns, all filled by one index_put_
            total = int(width.sum())
            ends = torch.cumsum(width, 0)
            graphs = torch.repeat_interleave(torch.arange(num_graphs), width, output_size=total)
            columns = torch.arange(total) + torch.repeat_interleave(
                start - (ends - width), width, output_size=total
            )
            grid[graphs, :, columns] = 0.0
        else:
            column = torch.arange(features, device=x.device)
            hit = (column[None, :] >= start[:, None]) & (column[None, :] < (start + width)[:, None])
            if uniform:
                grid.masked_fill_(hit.unsqueeze(1), 0.0)
            else:
                out = out.masked_fill(hit[graph], 0.0)
    if noise > 0:
        # in place, the same bits as ``out + noise * torch.randn_like(out)``: the same product
        # per value, and float addition is commutative
        drawn = torch.randn_like(out)
        out = drawn.mul_(noise).add_(out)
    return out


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
