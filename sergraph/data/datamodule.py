"""LightningDataModule serving one speaker-held-out fold as batched PyG graphs."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader

from sergraph.data.collate import graph_loader
from sergraph.data.folds import Fold, check_fold, split_indices
from sergraph.data.graphs import (
    NORMALIZE_CHOICES,
    Normalizer,
    build_graph,
    check_dilations,
    check_k,
)
from sergraph.data.protocol import (
    check_enrollment_amount,
    check_protocol,
    enrollment_rows,
    enrollment_speakers,
    resolve_protocol,
    statistic_rows,
)
from sergraph.data.sampling import SpeakerBalancedSampler
from sergraph.optim import SAMPLERS

#: Version of :meth:`FoldDataModule.export_state`'s layout (2: ``training_normalizer`` and
#: ``enrollment_normalizers`` under per-speaker normalisation, ``test.speakers``; 3:
#: ``graph.dilations``, written as 3 only by folds with dilated edges so that older versions
#: refuse to export them instead of building the k band).
EXPORT_STATE_FORMAT = 3


def _pick(normalizers: Normalizer | dict, speaker: str) -> Normalizer:
    return normalizers[speaker] if isinstance(normalizers, dict) else normalizers


def _tensors(normalizer: Normalizer | None) -> dict | None:
    """``{"mean", "std"}`` float32 tensors of a Normalizer (``None`` stays ``None``)."""
    if normalizer is None:
        return None
    return {
        "mean": torch.from_numpy(np.asarray(normalizer.mean, np.float32)),
        "std": torch.from_numpy(np.asarray(normalizer.std, np.float32)),
    }


class EvaluationSampler(DistributedSampler):
    """Contiguous, unpadded shards of an evaluation set, one per process of a DDP run.

    A plain :class:`~torch.utils.data.distributed.DistributedSampler` repeats samples so that
    every rank gets the same number, which would count those utterances twice in WA/UA. Here
    rank ``r`` of ``W`` gets rows ``[r * n // W, (r + 1) * n // W)``: every row exactly once,
    shard sizes differ by at most one, and concatenating the shards in rank order gives the
    original order. Being a ``DistributedSampler``, Lightning does not replace it.

    Args:
        dataset: the evaluation split.
        num_replicas: world size.
        rank: this process's global rank.
    """

    def __init__(self, dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.start = rank * len(dataset) // num_replicas
        self.stop = (rank + 1) * len(dataset) // num_replicas
        self.num_samples = self.stop - self.start
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples


class FoldDataModule(L.LightningDataModule):
    """Graphs of one fold: train (shuffled), val and test (in table order).

    Args:
        table: corpus table (``utterance``, ``speaker``, ``label`` columns), one row per utterance.
        features: pooled frame features ``[T_i, F]`` aligned with the table rows.
        fold: the split; checked against the table for speaker and file leaks.
        classes: class names in index order.
        k: temporal neighbours per node.
        max_nodes: nodes per graph (cut/pad length; the paper: 120).
        pad: zero-pad to ``max_nodes`` (paper) or keep true lengths.
        normalize: ``train`` (z-score with training-fold statistics, default), ``speaker``
            (each speaker z-scored with its own unlabelled features; for held-out speakers the
            protocol says which) or ``none``.
        protocol: ``inductive``, ``enrollment`` or ``transductive`` (see
            :mod:`sergraph.data.protocol`); ``None``: ``transductive`` under
            ``normalize="speaker"``, else ``inductive``.
        enrollment, enrollment_seed: the enrollment subset of each validation and test speaker
            (a fraction or a count; its seed), held aside under ``protocol="enrollment"``:
            used unlabelled for that speaker's statistics and never in a val/test dataset.
        batch_size: graphs per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training shuffle.
        utterance_features: optional ``[n_utterances, D]`` utterance-level vectors (openSMILE
            functionals) aligned with the table rows. Each graph then carries its row as
            ``u [1, D]`` (a batch holds ``u [B, D]``), normalised as ``normalize`` says with
            statistics of its own (non-finite values become 0 after normalisation).
        provenance: plain data about the run that uses this fold (configuration, audio
            pipeline, precision), stored as given in :meth:`export_state`.
        dilations: ``None`` (each node joined to its ``k`` nearest temporal neighbours) or
            offsets ``d``: node ``i`` joined to ``i +- d`` instead, ``k`` unused for edges
            (:func:`~sergraph.data.graphs.dilated_edge_index`).
        sampler: ``shuffle`` (a permutation of the training graphs each epoch) or
            ``speaker_balanced`` (:class:`~sergraph.data.sampling.SpeakerBalancedSampler`:
            ``len(train)`` draws with replacement, every training speaker equally likely;
            single-process only, refused under DDP). Both draw from the seeded training
            generator that checkpoints save.
        pin_memory: the loaders put each batch in pinned (page-locked) host memory, from which
            the LightningModule's non-blocking copies to the GPU are asynchronous; ``None``
            (default): when the attached Trainer's accelerator is CUDA, never on the CPU.

    Attributes set by :meth:`setup`: ``num_features``, ``num_classes``, ``num_global_features``
    (``D``, 0 without utterance features), ``class_weights`` (inverse training-fold class
    frequency, mean 1), ``normalizer`` and ``global_normalizer`` (``train`` mode),
    ``speaker_normalizers`` (``speaker`` mode: speaker -> Normalizer of the node features) and
    ``enrolled`` (row positions held aside for enrollment, ``None`` outside ``enrollment``).

    Under DDP the training loader is sharded by Lightning (a shuffling ``DistributedSampler``);
    validation, test and prediction loaders use :class:`EvaluationSampler` so every utterance is
    evaluated exactly once. The state of the training shuffle is saved in checkpoints, so a run
    resumed from an end-of-epoch checkpoint shuffles as the uninterrupted run would have.

    Checkpoints also carry :meth:`export_state` (normalisation statistics, classes, graph
    settings, the test inputs, ``provenance``), so that a model can be exported from its run
    folder alone, without the corpus or the feature cache.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        features: list[np.ndarray],
        fold: Fold,
        classes: list[str],
        k: int = 4,
        max_nodes: int | None = 120,
        pad: bool = True,
        normalize: str = "train",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        utterance_features: np.ndarray | None = None,
        provenance: dict | None = None,
        protocol: str | None = None,
        enrollment: float = 0.2,
        enrollment_seed: int = 0,
        dilations: list[int] | None = None,
        sampler: str = "shuffle",
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if len(table) != len(features):
            raise ValueError(f"{len(table)} table rows but {len(features)} feature arrays")
        if utterance_features is not None:
            utterance_features = np.asarray(utterance_features, dtype=np.float64)
            if utterance_features.ndim != 2 or len(utterance_features) != len(table):
                raise ValueError(
                    f"utterance_features must be [n_utterances={len(table)}, D]; got shape "
                    f"{utterance_features.shape}"
                )
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(
                f"graph.normalize={normalize!r}; choose one of {list(NORMALIZE_CHOICES)}"
            )
        check_k(k, max_nodes)
        check_dilations(dilations, max_nodes)
        if sampler not in SAMPLERS:
            raise ValueError(f"optim.sampler={sampler!r}; choose one of {list(SAMPLERS)}")
        self.dilations = None if dilations is None else [int(d) for d in dilations]
        self.sampler = sampler
        self.pin_memory = pin_memory
        self.protocol = resolve_protocol(protocol, normalize)
        check_enrollment_amount(enrollment)
        self.enrollment, self.enrollment_seed = enrollment, enrollment_seed
        self.enrolled: np.ndarray | None = None
        self.speaker_normalizers: dict[str, Normalizer] | None = None
        unknown = sorted(set(table["label"]) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the classes {classes}")
        self.table = table.reset_index(drop=True)
        self.features = features
        self.fold = fold
        self.classes = list(classes)
        self.k, self.max_nodes, self.pad = k, max_nodes, pad
        self.normalize = normalize
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.num_features = int(features[0].shape[1])
        self.num_classes = len(classes)
        self.utterance_features = utterance_features
        self.num_global_features = 0 if utterance_features is None else utterance_features.shape[1]
        self.datasets: dict[str, list] = {}
        self.normalizer: Normalizer | None = None
        self.global_normalizer: Normalizer | None = None
        self.speaker_global_normalizers: dict[str, Normalizer] | None = None
        self._train_generator: torch.Generator | None = None
        self._train_generator_state: torch.Tensor | None = None
        self.provenance = provenance
        self._export_state: dict | None = None
        #: whether :meth:`state_dict` carries :meth:`export_state`: off for a checkpoint that is
        #: only a resume point (``last.ckpt``, every epoch), where the test inputs it holds
        #: would be written each time and never read
        self.export_in_state = True

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        check_fold(self.fold, self.table)
        if self.protocol == "enrollment":
            self.enrolled = enrollment_rows(
                self.table, enrollment_speakers(self.fold), self.enrollment, self.enrollment_seed
            )
        rows = split_indices(self.table, self.fold, self.enrolled)
        statistics = statistic_rows(self.table, rows, self.protocol, self.normalize, self.enrolled)
        scored = np.concatenate([rows["val"], rows["test"]])
        check_protocol(self.protocol, scored, statistics, self.enrolled, where=self.fold.name)
        label_index = {c: i for i, c in enumerate(self.classes)}
        train_labels = self.table["label"].iloc[rows["train"]].map(label_index).to_numpy()
        counts = np.bincount(train_labels, minlength=self.num_classes).astype(np.float64)
        if (counts == 0).any():
            missing = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            raise ValueError(f"{self.fold.name}: training speakers have no utterances of {missing}")
        weights = counts.sum() / (self.num_classes * counts)
        self.class_weights = (weights / weights.mean()).tolist()

        node_norm = self._normalizers(self.features, statistics)
        self.normalizer = node_norm if isinstance(node_norm, Normalizer) else None
        self.speaker_normalizers = node_norm if isinstance(node_norm, dict) else None
        global_norm = None
        if self.utterance_features is not None:
            vectors = [row[None, :] for row in self.utterance_features]
            global_norm = self._normalizers(vectors, statistics)
            self.global_normalizer = global_norm if isinstance(global_norm, Normalizer) else None
            self.speaker_global_normalizers = global_norm if isinstance(global_norm, dict) else None

        # the table's columns read once: a pandas row per utterance (iloc) cost a quarter of this
        speakers = [str(s) for s in self.table["speaker"]]
        labels = self.table["label"].tolist()
        utterances = [str(u) for u in self.table["utterance"]]
        for split, idx in rows.items():
            graphs = []
            for i in idx:
                speaker = speakers[i]
                graph = build_graph(
                    _pick(node_norm, speaker)(self.features[i]),
                    self.k,
                    self.max_nodes,
                    self.pad,
                    label_index[labels[i]],
                    utterances[i],
                    speaker,
                    dilations=self.dilations,
                )
                if global_norm is not None:
                    u = _pick(global_norm, speaker)(self.utterance_features[i][None, :])
                    graph.u = torch.from_numpy(np.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0))
                graphs.append(graph)
            self.datasets[split] = graphs

    @staticmethod
    def _normalizers(arrays: list[np.ndarray], statistics) -> Normalizer | dict:
        """One Normalizer fitted on the rows of ``statistics`` (``train``), one per speaker
        fitted on that speaker's rows (``speaker``: see
        :func:`sergraph.data.protocol.statistic_rows`) or the identity (``None``)."""
        if statistics is None:
            return Normalizer.identity(arrays[0].shape[1])
        if isinstance(statistics, dict):
            return {
                speaker: Normalizer.fit([arrays[i] for i in rows])
                for speaker, rows in statistics.items()
            }
        return Normalizer.fit([arrays[i] for i in statistics])

    def _world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached Trainer; (1, 0) without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def pins_memory(self) -> bool:
        """Whether the loaders pin their batches: ``pin_memory`` when given, else whether the
        attached Trainer runs on CUDA (pinning is for copies to a GPU; on the CPU it would only
        copy every batch once more)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = self.trainer
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)

    def on_cpu(self) -> bool:
        """Whether the attached Trainer runs on the CPU (``False`` without one)."""
        trainer = self.trainer
        return trainer is not None and isinstance(trainer.accelerator, CPUAccelerator)

    def _loader(self, split: str, shuffle: bool, replay: bool = False) -> DataLoader:
        generator = None
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            if self._train_generator_state is not None:  # resumed from a checkpoint
                generator.set_state(self._train_generator_state)
                self._train_generator_state = None
            self._train_generator = generator
        sampler = None
        world_size, rank = self._world()
        if not shuffle and world_size > 1:
            if len(self.datasets[split]) < world_size:
                raise ValueError(
                    f"{self.fold.name}: the {split} split has {len(self.datasets[split])} "
                    f"utterance(s), fewer than the {world_size} processes of this run; use fewer "
                    "devices (every process needs at least one utterance to evaluate)"
                )
            sampler = EvaluationSampler(self.datasets[split], world_size, rank)
        if shuffle and self.sampler == "speaker_balanced":
            if world_size > 1:
                raise ValueError(
                    f"optim.sampler=speaker_balanced is single-process only; this run has "
                    f"{world_size} processes (use trainer.devices=1 trainer.num_nodes=1, or "
                    "optim.sampler=shuffle)"
                )
            speakers = [graph.speaker for graph in self.datasets[split]]
            sampler = SpeakerBalancedSampler(speakers, generator)
            shuffle = False
        # Same batches, in the same order, as PyG's DataLoader; cut from one collation of the
        # split instead of rebuilt from Data objects every step, and marked for the models'
        # fast path on the CPU (sergraph/data/collate.py). Pinned for a GPU: the loader calls
        # PyG's Batch.pin_memory, which pins every tensor attribute in place and keeps the mark.
        # replay: the validation batches of a one-process CPU run, cut once and evaluated
        # every epoch (sergraph.data.collate.ReplayLoader)
        replay = replay and world_size == 1 and self.num_workers == 0 and self.on_cpu()
        return graph_loader(
            self.datasets[split],
            replay=replay,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pins_memory(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, replay=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the training shuffle's random state and, once set up and
        unless :attr:`export_in_state` is off, :meth:`export_state` under ``"export"``."""
        state = {}
        if self._train_generator is not None:
            state["train_generator"] = self._train_generator.get_state()
        if self.datasets and self.export_in_state:
            state["export"] = self.export_state()
        return state

    def export_state(self) -> dict:
        """What export needs of this fold, as tensors and plain data (``weights_only``-safe).

        ``format`` (2, or :data:`EXPORT_STATE_FORMAT` with dilated edges), ``classes``,
        ``num_features``, ``graph`` (``k``, ``max_nodes``, ``pad``, ``normalize``;
        ``dilations`` when set), ``normalizer`` (``mean``/``std`` float32 tensors ``[F]``;
        ``None`` with per-speaker statistics), ``fold`` (name and the speakers of each split),
        ``corpus`` (``n_utterances``, ``speakers``), ``test`` (``utterances`` in test order,
        their raw node features concatenated as float32 ``features [sum T_i, F]`` with
        ``lengths [N]``, each cut to ``max_nodes`` since the graph never sees more; under
        ``enrollment`` the scored ones only, as in predictions.csv; their ``speakers``) and
        ``provenance``.

        With utterance features (``features.concat_functionals``) also ``num_global_features``
        (``D``), ``global_normalizer`` (``mean``/``std`` float32 tensors ``[D]`` of the
        training fold; ``None`` with per-speaker statistics) and ``test["functionals"]`` (the
        test inputs' raw vectors, float32 ``[N, D]``, in test order); without them
        ``num_global_features`` is 0 and the other two are absent.

        Under per-speaker normalisation (``normalize="speaker"``) also ``training_normalizer``
        (the statistics of all training rows: what a bundle falls back on for a speaker without
        enrollment audio) and, under ``protocol="enrollment"``, ``enrollment_normalizers``
        (held-out speaker -> ``mean``/``std``, fitted on that speaker's enrollment utterances
        only, without labels: what verification normalises its test inputs with); both ``None``
        otherwise. With utterance features under per-speaker normalisation the same two for
        the utterance vectors: ``training_global_normalizer`` and (``enrollment`` only)
        ``enrollment_global_normalizers``. Needs :meth:`setup`.
        """
        if self._export_state is None:
            if not self.datasets:
                raise RuntimeError("FoldDataModule.export_state() needs setup() first")
            split_rows = split_indices(self.table, self.fold, self.enrolled)
            rows = split_rows["test"]
            inputs = [
                np.asarray(self.features[i][: self.max_nodes], dtype=np.float32) for i in rows
            ]
            normalizer = _tensors(self.normalizer)
            training_normalizer = enrollment_normalizers = None
            if self.speaker_normalizers is not None:
                training_normalizer = _tensors(
                    Normalizer.fit([self.features[i] for i in split_rows["train"]])
                )
                if self.protocol == "enrollment":
                    held_out = [str(s) for s in self.fold.val_speakers + self.fold.test_speakers]
                    enrollment_normalizers = {
                        speaker: _tensors(self.speaker_normalizers[speaker])
                        for speaker in held_out
                        if speaker in self.speaker_normalizers
                    }
            self._export_state = {
                "format": 2 if self.dilations is None else EXPORT_STATE_FORMAT,
                "classes": list(self.classes),
                "num_features": self.num_features,
                "graph": {
                    "k": int(self.k),
                    "max_nodes": self.max_nodes,
                    "pad": bool(self.pad),
                    "normalize": self.normalize,
                    # only when set: the graph of runs without dilations is as before
                    **({} if self.dilations is None else {"dilations": list(self.dilations)}),
                },
                "normalizer": normalizer,
                "training_normalizer": training_normalizer,
                "enrollment_normalizers": enrollment_normalizers,
                "fold": {
                    "name": self.fold.name,
                    **{
                        f"{split}_speakers": [
                            str(s) for s in getattr(self.fold, f"{split}_speakers")
                        ]
                        for split in ("train", "val", "test")
                    },
                },
                "corpus": {
                    "n_utterances": len(self.table),
                    "speakers": sorted(self.table["speaker"].astype(str).unique()),
                },
                "test": {
                    "utterances": [str(self.table["utterance"].iloc[i]) for i in rows],
                    "speakers": [str(self.table["speaker"].iloc[i]) for i in rows],
                    "features": torch.from_numpy(
                        np.concatenate(inputs)
                        if inputs
                        else np.zeros((0, self.num_features), np.float32)
                    ),
                    "lengths": torch.tensor([len(x) for x in inputs], dtype=torch.long),
                },
                "provenance": self.provenance,
            }
            if self.utterance_features is not None:
                vectors = np.asarray(self.utterance_features[rows], dtype=np.float32)
                self._export_state["num_global_features"] = self.num_global_features
                self._export_state["global_normalizer"] = _tensors(self.global_normalizer)
                self._export_state["test"]["functionals"] = torch.from_numpy(
                    vectors.reshape(len(rows), self.num_global_features)
                )
                if self.speaker_normalizers is not None:  # the same two as for the nodes
                    self._export_state |= self._global_speaker_state(split_rows["train"])
        return self._export_state

    def _global_speaker_state(self, train_rows: np.ndarray) -> dict:
        """``training_global_normalizer`` (the utterance vectors of all training rows) and
        ``enrollment_global_normalizers`` (under ``enrollment``: held-out speaker -> the
        statistics its utterance vectors were normalised with in :meth:`setup`, fitted on its
        enrollment rows; else ``None``) of the export state."""
        vectors = [self.utterance_features[i][None, :] for i in train_rows]
        enrollment = None
        if self.protocol == "enrollment":
            fitted = self.speaker_global_normalizers
            held_out = [str(s) for s in self.fold.val_speakers + self.fold.test_speakers]
            enrollment = {
                speaker: _tensors(fitted[speaker]) for speaker in held_out if speaker in fitted
            }
        return {
            "training_global_normalizer": _tensors(Normalizer.fit(vectors)),
            "enrollment_global_normalizers": enrollment,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # "export" is for export only: this module rebuilds those values from its own data.
        state = state_dict.get("train_generator")
        if state is None:
            return
        if self._train_generator is not None:
            self._train_generator.set_state(state)
        else:  # applied when the training loader is made
            self._train_generator_state = state
