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


# ---------------------------------------------------------------------------------------------
# the fast-path mark: decided on the CPU, the same on both collation routes


def test_batches_of_band_graphs_are_marked_on_both_routes():
    import pickle

    from sergraph.data.collate import MarkingCollater, band_mark

    lengths = [12, 5, 1, 9, 2, 12, 7]
    items = [
        build_graph(np.ones((n, 3), np.float32) * i, 4, 12, False, i % 2, f"u{i}", "s")
        for i, n in enumerate(lengths)
    ]
    collated = CollatedGraphs(items).batch([3, 0, 4])
    pyg = MarkingCollater(items)([items[3], items[0], items[4]])
    for batch in (collated, pyg):
        mark = band_mark(batch)
        assert mark is not None
        assert (mark.k, mark.num_graphs, mark.num_nodes, mark.max_length) == (4, 3, 23, 12)
        assert mark.lengths.tolist() == [9, 12, 2] and not mark.uniform
        assert mark.num_edges == batch.edge_index.size(1)
        # what travels: copies, pickles (DataLoader workers) and .to() keep it, unmoved
        unpickled = band_mark(pickle.loads(pickle.dumps(batch)))
        assert unpickled.lengths.tolist() == mark.lengths.tolist()
        assert (unpickled.k, unpickled.num_edges) == (mark.k, mark.num_edges)
        assert band_mark(batch.clone()) is mark and band_mark(batch.to("cpu")) is mark
        assert "_sergraph_band_mark" not in batch.keys()
    padded = CollatedGraphs(
        [build_graph(np.ones((n, 3), np.float32), 2, 12, True, 0, "u", "s") for n in lengths]
    ).batch([0, 1])
    assert band_mark(padded).uniform and band_mark(padded).k == 2


def test_batches_that_are_not_one_band_are_not_marked():
    from sergraph.data.collate import band_mark

    k4 = [build_graph(np.ones((6, 3), np.float32), 4, 12, True, 0, "u", "s") for _ in range(2)]
    k2 = build_graph(np.ones((6, 3), np.float32), 2, 12, True, 0, "u", "s")
    moved = k4[0].clone()
    moved.edge_index = moved.edge_index.flip(1)  # same edges, another order
    split = CollatedGraphs([*k4, k2, moved])
    assert band_mark(split.batch([0, 1])) is not None
    assert band_mark(split.batch([0, 2])) is None  # two values of k
    assert band_mark(split.batch([0, 3])) is None  # edges not in the band's order
    unmarked = k4[0].clone()
    del unmarked.band_k
    # attributes differ: PyG's collation route, which checks each batch
    (batch,) = graph_loader([unmarked, k4[1]], batch_size=2)
    assert band_mark(batch) is None
    (batch,) = graph_loader([moved.clone(), k4[1]], batch_size=2)
    assert band_mark(batch) is None


# ---------------------------------------------------------------------------------------------
# replayed validation batches: cut once, the same objects every later pass


def test_a_replay_loader_yields_its_first_complete_pass_again():
    data = graphs(23, pad=True)
    loader = graph_loader(data, replay=True, batch_size=5)
    broken = iter(loader)
    next(broken)  # a pass that stops early keeps nothing
    del broken
    first = list(loader)
    again = list(loader)
    assert len(first) == len(loader) == 5
    assert all(a is b for a, b in zip(first, again, strict=True))
    for ours, theirs in zip(again, PyGDataLoader(data, batch_size=5), strict=True):
        assert_same_batch(ours, theirs)
    with pytest.raises(ValueError, match="unshuffled"):
        graph_loader(data, replay=True, batch_size=5, shuffle=True)


def test_the_datamodule_replays_validation_batches_on_a_cpu_trainer_only(toy_table, toy_features):
    import lightning as L

    from sergraph.data.collate import ReplayLoader

    fold = make_folds(toy_table, "loso", val_speakers=1)[1]
    classes = ["angry", "neutral", "sad"]
    dm = FoldDataModule(toy_table, toy_features, fold, classes, k=4, max_nodes=20, batch_size=5)
    dm.setup()
    assert type(dm.val_dataloader()) is not ReplayLoader  # no Trainer: nothing assumed
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    loader = dm.val_dataloader()
    assert isinstance(loader, ReplayLoader)
    assert type(dm.train_dataloader()) is not ReplayLoader
    assert type(dm.test_dataloader()) is not ReplayLoader
    reference = PyGDataLoader(dm.datasets["val"], batch_size=5)
    for ours, theirs in zip(list(loader), reference, strict=True):
        assert_same_batch(ours, theirs)
    # each graph carries its own row's label, utterance and speaker
    rows = toy_table.set_index("utterance")
    for split, graphs_of_split in dm.datasets.items():
        for graph in graphs_of_split:
            row = rows.loc[graph.utterance]
            assert graph.speaker == str(row["speaker"]), split
            assert classes[int(graph.y)] == row["label"], split
