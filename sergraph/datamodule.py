"""LightningDataModule serving one speaker-held-out fold as batched PyG graphs."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch_geometric.loader import DataLoader

from sergraph.folds import Fold, check_fold, split_indices
from sergraph.graphs import NORMALIZE_CHOICES, Normalizer, build_graph, check_k


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
            (each speaker z-scored with its own unlabelled features, a transductive option that
            is off by default) or ``none``.
        batch_size: graphs per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the training shuffle.

    Attributes set by :meth:`setup`: ``num_features``, ``num_classes``, ``class_weights``
    (inverse training-fold class frequency, mean 1), ``normalizer`` (``train`` mode).
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
    ) -> None:
        super().__init__()
        if len(table) != len(features):
            raise ValueError(f"{len(table)} table rows but {len(features)} feature arrays")
        if normalize not in NORMALIZE_CHOICES:
            raise ValueError(
                f"graph.normalize={normalize!r}; choose one of {list(NORMALIZE_CHOICES)}"
            )
        check_k(k, max_nodes)
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
        self.datasets: dict[str, list] = {}
        self.normalizer: Normalizer | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        check_fold(self.fold, self.table)
        rows = split_indices(self.table, self.fold)
        label_index = {c: i for i, c in enumerate(self.classes)}
        train_labels = self.table["label"].iloc[rows["train"]].map(label_index).to_numpy()
        counts = np.bincount(train_labels, minlength=self.num_classes).astype(np.float64)
        if (counts == 0).any():
            missing = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            raise ValueError(f"{self.fold.name}: training speakers have no utterances of {missing}")
        weights = counts.sum() / (self.num_classes * counts)
        self.class_weights = (weights / weights.mean()).tolist()

        normalizers: dict[str, Normalizer] = {}
        if self.normalize == "train":
            self.normalizer = Normalizer.fit([self.features[i] for i in rows["train"]])
        elif self.normalize == "speaker":
            # Transductive per-speaker statistics: each speaker's own unlabelled features only.
            for speaker, idx in self.table.groupby("speaker").indices.items():
                normalizers[str(speaker)] = Normalizer.fit([self.features[i] for i in idx])
        identity = Normalizer.identity(self.num_features)

        for split, idx in rows.items():
            graphs = []
            for i in idx:
                row = self.table.iloc[i]
                normalizer = self.normalizer or normalizers.get(str(row["speaker"]), identity)
                graphs.append(
                    build_graph(
                        normalizer(self.features[i]),
                        self.k,
                        self.max_nodes,
                        self.pad,
                        label_index[row["label"]],
                        str(row["utterance"]),
                        str(row["speaker"]),
                    )
                )
            self.datasets[split] = graphs

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
