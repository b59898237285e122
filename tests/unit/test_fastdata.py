"""Batches cut from a collated split (sergraph.data.collate) equal PyG's, in PyG's order."""

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader as PyGDataLoader

from sergraph.data.collate import CollatedGraphs, graph_loader
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import make_folds
from sergraph.data.graphs import build_graph


def graphs(count, pad, seed=0, k=4, max_nodes=20):
    rng = np.random.default_rng(seed)
    return [
        build_graph(
            rng.normal(size=(int(rng.integers(1, 30)), 5)).astype(np.float32),
            k,
            max_nodes,
            pad,
            i % 3,
            f"u{i}",
            f"s{i % 4}",
        )
        for i in range(count)
    ]


def assert_same_batch(ours, theirs):
    assert type(ours) is type(theirs)
    assert set(ours.keys()) == set(theirs.keys())
    for key in theirs.keys():
        a, b = ours[key], theirs[key]
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a == b, key
    assert ours.num_graphs == theirs.num_graphs
    assert ours._slice_dict.keys() == theirs._slice_dict.keys()
    for key, value in theirs._slice_dict.items():
        assert torch.equal(ours._slice_dict[key], value), key
    for key, value in theirs._inc_dict.items():
        if value is None:
            assert ours._inc_dict[key] is None, key
        else:
            assert torch.equal(ours._inc_dict[key], value), key


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
def test_batch_equals_from_data_list(pad):
    items = graphs(40, pad)
    collated = CollatedGraphs(items)
    rng = np.random.default_rng(1)
    for indices in ([0], [39, 0, 5], rng.permutation(40)[:17].tolist(), list(range(40))):
        batch = collated.batch(indices)
        assert_same_batch(batch, Batch.from_data_list([items[i] for i in indices]))
        # the bookkeeping works: PyG can split the batch into the original graphs again
        for i, graph in zip(indices, batch.to_data_list(), strict=True):
            assert torch.equal(graph.x, items[i].x)
            assert torch.equal(graph.edge_index, items[i].edge_index)
            assert graph.utterance == items[i].utterance and graph.band_k == items[i].band_k


def test_padded_graphs_share_one_cached_edge_index_that_callers_cannot_corrupt():
    collated = CollatedGraphs(graphs(10, pad=True))
    assert collated.columns["edge_index"].same is not None
    first = collated.batch([0, 1, 2])
    first.edge_index.zero_()
    assert_same_batch(collated.batch([3, 4, 5]), Batch.from_data_list(collated.graphs[3:6]))
    assert collated.columns["edge_index"].same is not None
    assert CollatedGraphs(graphs(10, pad=False)).columns["edge_index"].same is None


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_yields_pyg_batches_in_pyg_order(pad, shuffle, num_workers):
    items = graphs(23, pad)

    def loader(make):
        generator = torch.Generator().manual_seed(7) if shuffle else None
        return make(
            items, batch_size=5, shuffle=shuffle, generator=generator, num_workers=num_workers
        )

    ours, theirs = loader(graph_loader), loader(PyGDataLoader)
    assert isinstance(ours.dataset, CollatedGraphs)
    for _ in range(2):  # two epochs: the generator moves on identically
        pairs = list(zip(ours, theirs, strict=True))
        assert len(pairs) == 5
        for a, b in pairs:
            assert_same_batch(a, b)


def test_distributed_sampler_over_the_collated_split():
    items = graphs(11, pad=True)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(items, num_replicas=2, rank=rank, shuffle=False)
        for batch in graph_loader(items, batch_size=4, sampler=sampler):
            seen += batch.utterance
    assert sorted(set(seen)) == sorted(g.utterance for g in items)


def test_graphs_it_cannot_reproduce_fall_back_to_pyg_collation():
    items = graphs(6, pad=True)
    odd = [Data(**{**dict(g), "extra": [1, 2]}) for g in items]  # a list attribute
    with pytest.raises(ValueError, match="extra"):
        CollatedGraphs(odd)
    loader = graph_loader(odd, batch_size=4)
    assert not isinstance(loader.dataset, CollatedGraphs)
    assert_same_batch(next(iter(loader)), Batch.from_data_list(odd[:4]))
    mixed = items[:3] + [Data(x=items[3].x, edge_index=items[3].edge_index)]
    with pytest.raises(ValueError, match="differ"):
        CollatedGraphs(mixed)


def test_datamodule_batches_equal_pyg_loader(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[1]
    dm = FoldDataModule(
        toy_table, toy_features, fold, ["angry", "neutral", "sad"], k=4, max_nodes=20, batch_size=5
    )
    dm.setup()
    reference = PyGDataLoader(
        dm.datasets["train"],
        batch_size=5,
        shuffle=True,
        generator=torch.Generator().manual_seed(dm.seed),
    )
    for a, b in zip(dm.train_dataloader(), reference, strict=True):
        assert_same_batch(a, b)
    for a, b in zip(
        dm.test_dataloader(), PyGDataLoader(dm.datasets["test"], batch_size=5), strict=True
    ):
        assert_same_batch(a, b)
