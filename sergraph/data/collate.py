"""Batches cut from a split collated once, instead of rebuilt from ``Data`` objects every step.

PyG's ``DataLoader`` builds each batch with ``Batch.from_data_list``: a Python loop over the
graphs and their attributes, every step, every epoch. A fold's graphs never change after
:meth:`~sergraph.data.datamodule.FoldDataModule.setup`, so :class:`CollatedGraphs` concatenates each
attribute of the whole split once; a batch is then a few ``index_select`` calls with
vectorised index arithmetic, whatever the batch size.

The result is the same ``Batch`` that ``Batch.from_data_list`` makes from the same graphs in the
same order: the same attributes with the same values and dtypes, ``batch``, ``ptr``,
``num_graphs`` and the bookkeeping that ``Batch.get_example``/``to_data_list`` use
(``tests/unit/test_fastdata.py`` compares them). :func:`graph_loader` is a plain
``torch.utils.data.DataLoader`` over the split (``shuffle``, ``generator``, ``sampler``, workers
as usual), so with the same generator it visits the graphs in the same order as PyG's loader.
Splits whose graphs this module cannot reproduce exactly (attributes that PyG stacks instead of
concatenating, custom ``__inc__``, differing attribute sets) use PyG's own collation.

Both routes also decide, on the CPU and once, whether a batch may take the models' banded fast
path (:mod:`sergraph.models.banded`): :class:`BandMark` records the band's ``k``, the graph sizes
and whether they are all equal, as Python ints and a CPU tensor, so the model decides without
reading anything back from the accelerator. :class:`CollatedGraphs` checks each graph's edges
against :func:`~sergraph.data.graphs.temporal_edge_index` once per split; the PyG fallback
(:class:`MarkingCollater`) and :func:`mark_band` check the graphs of each batch.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Batch, Data
from torch_geometric.loader.dataloader import Collater

from sergraph.data.graphs import temporal_edge_index

# Where the mark lives: the Batch object's own __dict__, not its storage, so PyG's attribute
# machinery (keys, to_data_list, .to(device), collation) never sees or moves it; copy.copy,
# clone, deepcopy and pickling (DataLoader workers) keep it.
_MARK_KEY = "_sergraph_band_mark"


@dataclass(frozen=True, eq=False)
class BandMark:
    """What the collater knows about a batch of :func:`~sergraph.data.graphs.build_graph`
    graphs whose edges are exactly their temporal band (same ``k`` for every graph).

    Attributes:
        k: neighbours of an interior node.
        lengths: nodes of each graph ``[B]``, a CPU long tensor (never moved to a device).
        num_graphs, num_nodes, num_edges: ``B``, ``N`` and ``E`` of the batch.
        max_length: the largest graph size ``T``.
        uniform: every graph has ``T`` nodes (padded graphs).
    """

    k: int
    lengths: Tensor
    num_graphs: int
    num_nodes: int
    num_edges: int
    max_length: int
    uniform: bool

    @classmethod
    def of(cls, k: int, lengths: Tensor) -> BandMark:
        """The mark of a batch of band graphs with these (CPU) sizes."""
        lengths = lengths.to("cpu", torch.long)
        count = lengths.numel()
        max_length = int(lengths.max()) if count else 0
        num_edges = sum(2 * int((lengths - o).clamp(min=0).sum()) for o in range(1, k // 2 + 1))
        return cls(
            k=int(k),
            lengths=lengths,
            num_graphs=count,
            num_nodes=int(lengths.sum()),
            num_edges=num_edges,
            max_length=max_length,
            uniform=bool((lengths == max_length).all()),
        )


def band_mark(batch) -> BandMark | None:
    """The :class:`BandMark` a collater attached to ``batch``, or ``None``."""
    state = getattr(batch, "__dict__", None)
    return state.get(_MARK_KEY) if state is not None else None


def set_band_mark(batch, mark: BandMark | None) -> None:
    """Attach ``mark`` to ``batch`` (``None`` removes it: the models then use PyG's path).

    Code that changes a marked batch's ``edge_index`` or nodes must remove or renew the mark.
    """
    if mark is None:
        batch.__dict__.pop(_MARK_KEY, None)
    else:
        batch.__dict__[_MARK_KEY] = mark


def graph_band_k(graph: Data) -> int:
    """``k`` when ``graph`` carries ``build_graph``'s ``band_k`` marker and its ``edge_index``
    is exactly that band (same edges, same order), else 0. A CPU check of one graph."""
    k = getattr(graph, "band_k", None)
    edge_index = getattr(graph, "edge_index", None)
    if isinstance(k, Tensor):
        k = int(k.view(-1)[0]) if k.numel() == 1 else None
    if not isinstance(k, int) or k < 2 or k % 2 or not isinstance(edge_index, Tensor):
        return 0
    num_nodes = graph.num_nodes
    if num_nodes is None or edge_index.device.type != "cpu":
        return 0
    return k if torch.equal(edge_index, temporal_edge_index(num_nodes, k)) else 0


def mark_band(batch: Batch, graphs: Sequence[Data] | None = None) -> Batch:
    """Mark a CPU ``batch`` for the banded fast path when its graphs are band graphs with one
    ``k`` (the check that :class:`CollatedGraphs` makes once per split, made for one batch).

    Args:
        batch: a PyG ``Batch`` on the CPU (as ``Batch.from_data_list`` makes it).
        graphs: the graphs it was made from, in order; each is checked with
            :func:`graph_band_k`. Without them the batch's ``band_k`` and ``edge_index`` are
            compared with the band of its graph sizes.

    Returns:
        ``batch``, marked (:func:`band_mark`) or, when it does not qualify, unmarked.
    """
    set_band_mark(batch, None)
    ptr = getattr(batch, "ptr", None)
    edge_index = getattr(batch, "edge_index", None)
    if ptr is None or edge_index is None or ptr.device.type != "cpu" or ptr.numel() < 2:
        return batch
    if graphs is not None:
        ks = {graph_band_k(graph) for graph in graphs}
    else:
        marker = getattr(batch, "band_k", None)
        ks = set(marker.view(-1).tolist()) if isinstance(marker, Tensor) else {marker}
    if len(ks) != 1:
        return batch
    k = ks.pop()
    if not isinstance(k, int) or k < 2 or k % 2:
        return batch
    mark = BandMark.of(k, ptr.diff())
    if edge_index.size(1) != mark.num_edges or edge_index.device.type != "cpu":
        return batch
    if graphs is None:
        starts = ptr[:-1].tolist()
        expected = torch.cat(
            [
                temporal_edge_index(n, k) + start
                for n, start in zip(mark.lengths.tolist(), starts, strict=True)
            ],
            dim=1,
        )
        if not torch.equal(edge_index, expected):
            return batch
    set_band_mark(batch, mark)
    return batch


class MarkingCollater(Collater):
    """PyG's ``Collater`` that also marks band batches (:func:`mark_band`)."""

    def __call__(self, batch: list):
        out = super().__call__(batch)
        if isinstance(out, Batch) and all(isinstance(graph, Data) for graph in batch):
            mark_band(out, batch)
        return out


class _Unsupported(Exception):
    pass


def _ranges(starts: Tensor, sizes: Tensor) -> Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, sizes)])`` without a Python loop."""
    total = int(sizes.sum())
    if total == 0:
        return starts.new_zeros(0)
    ends = torch.cumsum(sizes, 0)
    return torch.arange(total) + torch.repeat_interleave(starts - (ends - sizes), sizes)


@dataclass
class _Column:
    """One tensor attribute of every graph, concatenated along ``cat_dim``."""

    storage: Tensor
    cat_dim: int
    sizes: Tensor  # [G] extent of each graph along cat_dim
    starts: Tensor  # [G] offset of each graph in storage
    incremented: bool  # shifted by the node offset when batched (edge_index)
    same: Tensor | None = None  # the common value when every graph holds the same one


class CollatedGraphs(Dataset):
    """A list of ``Data`` graphs, every attribute concatenated once over the whole list.

    ``graphs[i]`` (``__getitem__``) is the original ``Data``; ``__getitems__(indices)``, which
    ``DataLoader`` calls for a whole batch, returns the ``Batch`` of those graphs directly.
    When every graph has the same size along an attribute (padded graphs: ``x``; per-graph
    ``y``) a batch takes one ``index_select`` of a ``[G, size, ...]`` view; when every graph has
    the same ``edge_index`` (padded temporal graphs) the batched one is cached per batch size.

    Args:
        graphs: graphs with the same attributes: tensors that PyG concatenates (node-level
            ``x``, ``edge_index`` incremented by the node count, per-graph ``[1]`` tensors),
            Python numbers and strings.

    Raises:
        ValueError: when the graphs cannot be batched here (see :func:`graph_loader`, which
            then falls back to PyG's collation).
    """

    def __init__(self, graphs: Sequence[Data]) -> None:
        if len(graphs) == 0:
            raise ValueError("CollatedGraphs needs at least one graph")
        self.graphs = graphs
        self.keys = list(graphs[0].keys())
        self.num_nodes = torch.tensor([g.num_nodes for g in graphs], dtype=torch.long)
        self.same_num_nodes = bool((self.num_nodes == self.num_nodes[0]).all())
        self.columns: dict[str, _Column] = {}
        self.numbers: dict[str, Tensor] = {}
        self.other: dict[str, list] = {}
        self._cache: dict[tuple, Tensor] = {}
        try:
            if any(set(g.keys()) != set(self.keys) for g in graphs):
                raise _Unsupported("graphs differ in their attributes")
            for key in self.keys:
                self._collate_key(key)
        except _Unsupported as error:
            raise ValueError(f"cannot collate these graphs once: {error}") from None
        # The band of each graph, checked once per split (0: not a band graph).
        self.band_k = torch.tensor([graph_band_k(g) for g in graphs], dtype=torch.long)
        # a split of one band and one graph size (padded graphs): a batch's mark depends on its
        # graph count only, and is made once per count (a mark is never changed)
        same = bool(len(graphs)) and bool((self.band_k == self.band_k[0]).all())
        self._one_band = same and int(self.band_k[0]) > 0 and self.same_num_nodes
        self._marks: dict[int, BandMark] = {}

    def _collate_key(self, key: str) -> None:
        graphs = self.graphs
        first = graphs[0][key]
        if isinstance(first, Tensor):
            values = [g[key] for g in graphs]
            cat_dim = graphs[0].__cat_dim__(key, first)
            if cat_dim is None or first.dim() == 0:
                raise _Unsupported(f"attribute {key!r} is stacked, not concatenated")
            cat_dim = cat_dim % first.dim()
            incs = [g.__inc__(key, v) for g, v in zip(graphs, values, strict=True)]
            if any(isinstance(inc, Tensor) and inc.numel() != 1 for inc in incs):
                raise _Unsupported(f"attribute {key!r} has a tensor increment")
            incs = [int(inc) if isinstance(inc, Tensor | int) else inc for inc in incs]
            # Data increments index attributes (edge_index) by the node count, others by 0
            incremented = incs[0] != 0
            expected = self.num_nodes.tolist() if incremented else [0] * len(graphs)
            if incs != expected:
                raise _Unsupported(f"attribute {key!r} has an increment other than 0 or N")
            sizes = torch.tensor([v.size(cat_dim) for v in values], dtype=torch.long)
            column = _Column(
                torch.cat(values, dim=cat_dim),
                cat_dim,
                sizes,
                torch.cumsum(sizes, 0) - sizes,
                incremented,
            )
            if incremented and self.same_num_nodes and all(torch.equal(first, v) for v in values):
                column.same = first
            self.columns[key] = column
        elif isinstance(first, int | float):  # bool is an int; PyG makes torch.tensor(values)
            values = [g[key] for g in graphs]
            if any(type(v) is not type(first) for v in values):
                raise _Unsupported(f"attribute {key!r} mixes number types")
            self.numbers[key] = torch.tensor(values)
        elif isinstance(first, str):
            self.other[key] = [g[key] for g in graphs]
        else:
            raise _Unsupported(f"attribute {key!r} of type {type(first).__name__}")

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Data:
        return self.graphs[index]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        return self.batch(indices)

    def _select(self, key: str, column: _Column, index: Tensor, node_ptr: Tensor) -> Tensor:
        count = index.numel()
        selected_sizes = column.sizes[index]
        if column.same is not None:
            cache_key = (key, count)
            if cache_key not in self._cache:
                shift = node_ptr[:-1].view(*([1] * column.cat_dim), -1, 1)
                stacked = column.same.unsqueeze(column.cat_dim) + shift
                self._cache[cache_key] = stacked.flatten(column.cat_dim, column.cat_dim + 1)
            return self._cache[cache_key].clone()
        if column.cat_dim == 0 and bool((column.sizes == column.sizes[0]).all()):
            size = int(column.sizes[0])
            rows = column.storage.view(len(self.graphs), size, *column.storage.shape[1:])
            return rows.index_select(0, index).flatten(0, 1)
        value = column.storage.index_select(
            column.cat_dim, _ranges(column.starts[index], selected_sizes)
        )
        if column.incremented and value.numel():
            shift = torch.repeat_interleave(node_ptr[:-1], selected_sizes)
            value = value + shift.view(*([1] * column.cat_dim), -1)
        return value

    def batch(self, indices: Sequence[int] | Tensor) -> Batch:
        """``Batch.from_data_list([graphs[i] for i in indices])``, from the collated tensors."""
        index = torch.as_tensor(indices, dtype=torch.long).view(-1)
        count = index.numel()
        num_nodes = self.num_nodes[index]
        node_ptr = torch.cat([num_nodes.new_zeros(1), torch.cumsum(num_nodes, 0)])
        values: dict = {}
        slice_dict: dict[str, Tensor] = {}
        inc_dict: dict[str, Tensor | None] = {}
        graph_slices = torch.arange(count + 1)
        for key in self.keys:
            if key in self.columns:
                column = self.columns[key]
                values[key] = self._select(key, column, index, node_ptr)
                sizes = column.sizes[index]
                slice_dict[key] = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes, 0)])
                inc_dict[key] = (
                    node_ptr[:-1].clone() if column.incremented else torch.zeros_like(index)
                )
            elif key in self.numbers:
                values[key] = self.numbers[key][index]
                slice_dict[key] = graph_slices
                inc_dict[key] = torch.zeros_like(index)
            else:
                strings = self.other[key]
                values[key] = [strings[i] for i in index.tolist()]
                slice_dict[key] = graph_slices
                inc_dict[key] = None
        values["batch"] = torch.repeat_interleave(torch.arange(count), num_nodes)
        values["ptr"] = node_ptr
        # PyG's Batch(_base_cls=Data, **values), without its metaclass's per-call class
        # creation and signature inspection (a third of this method): the same class, the
        # same constructor
        batch = type.__call__(_data_batch_class(), **values)
        batch._num_graphs = count
        batch._slice_dict = slice_dict
        batch._inc_dict = inc_dict
        if self._one_band and count:
            if count not in self._marks:
                self._marks[count] = BandMark.of(int(self.band_k[0]), num_nodes)
            set_band_mark(batch, self._marks[count])
            return batch
        ks = self.band_k[index]
        if count and bool((ks == ks[0]).all()) and int(ks[0]) > 0:
            set_band_mark(batch, BandMark.of(int(ks[0]), num_nodes))
        return batch


def batch_to_device(batch: Batch, device, keys) -> Batch:
    """A shallow copy of ``batch`` whose tensor attributes named in ``keys`` are on ``device``.

    Every other attribute (tensors, strings) is the host batch's own object, and the copy keeps
    the batch's :class:`BandMark` (whose ``lengths`` stay on the CPU by design); ``batch`` itself
    is left as it was. Names in ``keys`` that the batch lacks, or whose value is not a tensor,
    are skipped. The copies are made with ``non_blocking=True``: asynchronous to the host only
    when the source is in pinned memory (a CUDA device and a loader with ``pin_memory=True``);
    from ordinary memory they are the usual synchronous copies.
    """
    moved = copy.copy(batch)  # PyG's __copy__: a store of its own, the same tensors
    for key in keys:
        value = batch[key] if key in batch else None
        if isinstance(value, Tensor):
            moved[key] = value.to(device, non_blocking=True)
    return moved


@functools.cache
def _data_batch_class() -> type:
    """PyG's batch class of ``Data`` graphs (``DataBatch``), made once."""
    return type(Batch(_base_cls=Data))


def _first(items):
    """``collate_fn`` of a :class:`CollatedGraphs` loader: ``__getitems__`` already batched."""
    return items


class ReplayLoader(DataLoader):
    """A ``DataLoader`` that keeps the batches of its first complete pass and yields the same
    objects on every later pass instead of cutting them again.

    For a split evaluated every epoch in the same order (the validation split of a one-process
    run on the CPU): its batches never change, and cutting them was about a fifth of the
    recommended recipe's validation (``benchmarks/bench_cell_step.py``). A pass that stops
    early keeps nothing. Consumers must not change a batch in place (the project's steps copy
    a batch before replacing an attribute, and :func:`batch_to_device` moves a shallow copy).
    Its constructor is ``DataLoader``'s, so Lightning can re-create it as one.
    """

    _replay: list | None = None

    def __iter__(self):
        if self._replay is not None:
            return iter(self._replay)
        return self._recorded()

    def _recorded(self):
        batches = []
        for batch in super().__iter__():
            batches.append(batch)
            yield batch
        self._replay = batches


def graph_loader(graphs: Sequence[Data], replay: bool = False, **loader_kwargs) -> DataLoader:
    """A ``DataLoader`` of PyG batches of ``graphs``, cut from one collation of the split.

    Takes the arguments of ``torch.utils.data.DataLoader`` (``batch_size``, ``shuffle``,
    ``generator``, ``sampler``, ``num_workers``, ``persistent_workers``, ``pin_memory``, ...)
    except ``collate_fn``. With the same ``generator`` it yields the graphs in the order PyG's
    ``DataLoader`` would, and each batch equals PyG's. Graphs that :class:`CollatedGraphs`
    cannot reproduce exactly are batched by PyG's own collation instead. Either way, batches
    of band graphs carry a :class:`BandMark` (:func:`band_mark`). ``replay``: a
    :class:`ReplayLoader` (for an unshuffled split without worker processes), whose later
    passes yield the first pass's batches.
    """
    if "collate_fn" in loader_kwargs:
        raise TypeError("graph_loader sets collate_fn itself")
    if replay and (loader_kwargs.get("shuffle") or loader_kwargs.get("num_workers")):
        raise ValueError("replay=True is for an unshuffled split without worker processes")
    kind = ReplayLoader if replay else DataLoader
    try:
        dataset = CollatedGraphs(graphs)
    except ValueError:
        return kind(graphs, collate_fn=MarkingCollater(graphs), **loader_kwargs)
    return kind(dataset, collate_fn=_first, **loader_kwargs)
