"""A fast path for batches of banded temporal graphs: neighbour sums as shifted adds, no scatter.

Every graph that :func:`sergraph.data.graphs.build_graph` makes joins node ``t`` to the nodes
``t - k/2 .. t + k/2`` (itself excluded) of the same utterance. Its adjacency matrix is a band,
so what PyG computes with a gather over ``E = k N`` edges and a scatter back to ``N`` nodes is a
sum of ``k`` shifted copies of the node features:

    (A h)_t = sum_{0 < |o| <= k/2, 0 <= t + o < n} h_{t + o}

and the degree of a node is known in closed form, ``min(t, k/2) + min(n - 1 - t, k/2)``. A
:class:`Band` describes one batch of such graphs and computes these sums; one function per
graph layer (``gin``, ``gcn``, ``sage_mean``, ``gat``, ``cheb``) evaluates the layer of a PyG
module with that module's own parameters, so a model's state dict, initialisation and
checkpoints are the same on both paths. ``tests/unit/test_fast_path.py`` checks that outputs and
parameter gradients equal those of PyG's message passing (float64, padded and true-length
batches).

When it is used (:func:`detect`): the batch carries the :class:`~sergraph.data.collate.BandMark`
that the collater attached when it built the batch (:mod:`sergraph.data.collate`: the collated
split checks each graph's edges against the band once; PyG's collation path and
:func:`~sergraph.data.collate.mark_band` check each batch, on the CPU), and its node and edge
counts still agree with the mark. The model trusts the mark: nothing is read back from the
device, so a training step on a GPU never waits for the previous one. Anything unmarked (edges
dropped, added or permuted, graphs from another source, a ``Batch`` without ``ptr``) runs
PyG's message passing. ``SERGRAPH_FAST_PATH=check`` also compares every marked batch's edges
with the band, element by element (a debugging aid: it reads the edges back from the device),
and raises if the mark is wrong. The fast path can be switched off for every model with
``SERGRAPH_FAST_PATH=off`` (read at every forward; it reaches the worker processes of
``run.parallel``), in code with :func:`fast_path` (a context manager), or per model instance
with ``model.fast_path = False``.

On a uniform band (padded graphs, every graph ``T`` nodes) node features are the ``[B, T, C]``
view: the shifted adds run a few graphs at a time on the CPU (:meth:`Band.chunks`, so a chunk's
passes stay in the core's cache), and LSTM-GIN computes each GIN layer's input and the sum
readout of that layer's input in one autograd node (:func:`gin_input`), whose backward adds
the readout's gradient by broadcasting; both give the same values bit for bit as the sums
written out one by one.

Two differences that are not differences of the function computed:

* floating-point rounding (neighbours are added in another order than PyG's scatter, GAT's
  attention logits are one matrix product instead of two); in float64 the tests see
  differences of order 1e-13;
* GAT's attention dropout (``attn_dropout > 0``, training only) draws its mask in another
  layout, so with dropout on the two paths draw different (equally distributed) masks.

(Above the usual 450 lines: the band, its recognition and the closed form of each graph layer
are one piece of reasoning, read against each other and against PyG's layers.)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from sergraph.data.collate import band_mark

FAST_PATH_ENV = "SERGRAPH_FAST_PATH"
_ON = ("", "auto", "on", "1", "true", "yes", "check")
_OFF = ("off", "0", "false", "no", "pyg")
_override: bool | None = None

#: Bytes of node features in one chunk of :meth:`Band.chunks` (CPU).
CHUNK_BYTES = 1 << 19

#: Signature of a banded layer: ``layer(conv, h [N, C_in], band) -> [N, C_out]``.
BandLayer = Callable[..., Tensor]


def fast_path_enabled() -> bool:
    """Whether models may take the fast path (:func:`fast_path` wins over the environment)."""
    if _override is not None:
        return _override
    value = os.environ.get(FAST_PATH_ENV, "auto").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(
        f"{FAST_PATH_ENV}={value!r} is not valid; use one of {list(_ON[1:])} (fast path where it "
        f"applies) or {list(_OFF)} (always PyG message passing)"
    )


@contextlib.contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    """Force the fast path on (where it applies) or off inside a ``with`` block."""
    global _override
    previous, _override = _override, bool(enabled)
    try:
        yield
    finally:
        _override = previous


# --------------------------------------------------------------------------------------------
# the band of one batch


class _BandSum(torch.autograd.Function):
    """``A h`` for the symmetric band adjacency ``A``; its backward is ``A g`` (``A = A^T``)."""

    @staticmethod
    def forward(ctx, h: Tensor, band: Band) -> Tensor:
        ctx.band = band
        return band._sum(h)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _BandSum.apply(grad, ctx.band), None


class Band:
    """A batch of banded temporal graphs, nodes of each graph contiguous and in time order.

    Args:
        k: neighbours of an interior node (``k/2`` each side).
        lengths: nodes of each graph ``[B]`` (long, on the nodes' device).

    Attributes:
        k, radius: ``k`` and ``k/2``.
        num_graphs, max_length: ``B`` and the largest graph size ``T``.
        uniform: every graph has ``T`` nodes, so ``[N, C]`` node features are a ``[B, T, C]``
            view and the sums need no masks.
        position: ``[N]`` index of each node within its graph.
        length: ``[N]`` size of the graph of each node.
    """

    def __init__(
        self,
        k: int,
        lengths: Tensor,
        *,
        num_nodes: int | None = None,
        max_length: int | None = None,
        uniform: bool | None = None,
        graph: Tensor | None = None,
        cpu_lengths: Tensor | None = None,
    ) -> None:
        # num_nodes, max_length, uniform and cpu_lengths are known on the CPU when the batch
        # comes with a BandMark; computed from ``lengths`` otherwise (a device read-back).
        self.k, self.radius = int(k), int(k) // 2
        self.lengths = lengths
        self.num_graphs = lengths.numel()
        self.cpu_lengths = cpu_lengths if cpu_lengths is not None else lengths.cpu()
        if num_nodes is None:
            num_nodes = int(self.cpu_lengths.sum())
        if max_length is None:
            max_length = int(self.cpu_lengths.max()) if self.num_graphs else 0
        if uniform is None:
            uniform = bool((self.cpu_lengths == max_length).all())
        self.num_nodes, self.max_length, self.uniform = num_nodes, max_length, uniform
        device = lengths.device
        if graph is None:
            graph = torch.repeat_interleave(
                torch.arange(self.num_graphs, device=device), lengths, output_size=num_nodes
            )
        self.graph = graph
        starts = torch.cumsum(lengths, 0) - lengths
        self.position = torch.arange(num_nodes, device=device) - starts[graph]
        self.length = lengths[graph]
        self._cache: dict = {}

    @classmethod
    def from_mark(cls, mark, data) -> Band:
        """The band of a marked batch, without reading anything back from its device."""
        ptr = data.ptr
        graph = getattr(data, "batch", None)
        if graph is not None and graph.size(0) != mark.num_nodes:
            graph = None
        return cls(
            mark.k,
            ptr.diff(),
            num_nodes=mark.num_nodes,
            max_length=mark.max_length,
            uniform=mark.uniform,
            graph=graph,
            cpu_lengths=mark.lengths,
        )

    # ---- closed forms

    def offsets(self) -> list[int]:
        """Neighbour offsets ``-k/2 .. k/2`` without 0, ascending (the order of PyG's edges)."""
        return [o for o in range(-self.radius, self.radius + 1) if o]

    def valid(self) -> Tensor:
        """``[N, k + 1]`` bool: node ``n + o`` is in the graph of ``n``, for ``o = -k/2 .. k/2``."""
        if "valid" not in self._cache:
            offsets = torch.arange(-self.radius, self.radius + 1, device=self.position.device)
            target = self.position[:, None] + offsets[None, :]
            self._cache["valid"] = (target >= 0) & (target < self.length[:, None])
        return self._cache["valid"]

    def degree(self, dtype: torch.dtype) -> Tensor:
        """``[N, 1]`` band neighbours of each node: ``min(t, k/2) + min(n - 1 - t, k/2)``."""
        key = ("degree", dtype)
        if key not in self._cache:
            r = self.radius
            before = self.position.clamp(max=r)
            after = (self.length - 1 - self.position).clamp(max=r)
            self._cache[key] = (before + after).to(dtype).unsqueeze(-1)
        return self._cache[key]

    def _mask(self, offset: int, dtype: torch.dtype) -> Tensor:
        key = ("mask", offset, dtype)
        if key not in self._cache:
            self._cache[key] = self.valid()[:, offset + self.radius].to(dtype).unsqueeze(-1)
        return self._cache[key]

    def edge_index(self) -> Tensor:
        """``[2, E]`` band edges in the layout of ``Batch.from_data_list`` of ``build_graph``
        graphs: graphs one after another, each sorted by source then target."""
        device = self.lengths.device
        if self.uniform and self.num_graphs:
            return _uniform_edge_index(self.num_graphs, self.max_length, self.k, str(device))
        valid = self.valid()[:, [o + self.radius for o in self.offsets()]]
        offsets = torch.tensor(self.offsets(), device=device)
        nodes = torch.arange(self.num_nodes, device=device)
        source = nodes[:, None].expand_as(valid)[valid]
        target = (nodes[:, None] + offsets[None, :])[valid]
        return torch.stack([source, target])

    # ---- sums over the band

    def sum(self, h: Tensor) -> Tensor:
        """``(A h)_n``: the sum of each node's band neighbours ``[N, C]`` (differentiable)."""
        if torch.jit.is_tracing():  # ONNX export (sergraph.deploy.onnx): plain tensor ops
            return self._traced_sum(h) if self.uniform else self._sum(h)
        return _BandSum.apply(h, self)

    def _traced_sum(self, h: Tensor) -> Tensor:
        """:meth:`_sum` of a uniform band without in-place writes into slices (which the
        tracer records wrongly): each node reads its zero-padded shifts ``t - o`` and ``t + o``."""
        r, length = self.radius, self.max_length
        h3 = h.reshape(self.num_graphs, length, -1)
        padded = torch.nn.functional.pad(h3, (0, 0, r, r))
        out = torch.zeros_like(h3)
        for o in range(1, min(r, length - 1) + 1):
            out = out + padded[:, r - o : r - o + length] + padded[:, r + o : r + o + length]
        return out.reshape(h.shape)

    def sequence(self, h: Tensor) -> Tensor:
        """Node features ``[N, C]`` of a uniform band as ``[B, T, C]`` (a view where the
        strides allow; a ``[B, T, C]`` tensor is returned as it is)."""
        if h.dim() == 3:
            return h
        return h.reshape(self.num_graphs, self.max_length, -1)

    def chunks(self, h3: Tensor) -> list[slice]:
        """Slices of whole graphs of ``h3 [B, T, C]``, :data:`CHUNK_BYTES` or less each (at least
        one graph; one slice for all off the CPU): the passes of a chunk over its nodes stay in
        the core's cache."""
        step = self.num_graphs
        if h3.device.type == "cpu":
            row = h3.size(-1) * h3.element_size()
            step = max(1, CHUNK_BYTES // max(1, self.max_length * row))
        count = self.num_graphs
        return [slice(i, min(i + step, count)) for i in range(0, count, step)] or [slice(0, 0)]

    def _uniform_sum(self, h3: Tensor, out: Tensor) -> Tensor:
        """``A h`` of a uniform band, ``h3 [B, T, C]``, written into ``out [B, T, C]``."""
        r, length = self.radius, self.max_length
        if length < 2:
            return out.zero_()
        # Graph boundaries fall on the T axis of the [B, T, C] view: slices stop at them.
        # The first shift written as 0 + h (not a zero fill, then an add): the same values
        # bit for bit, -0.0 + 0 = +0.0 included, in one pass instead of two.
        out[:, 0].zero_()
        torch.add(h3[:, :-1], 0.0, out=out[:, 1:])
        out[:, :-1].add_(h3[:, 1:])
        for o in range(2, min(r, length - 1) + 1):
            # add_ on the slice, not ``out[:, o:] += ...``: the augmented assignment also
            # copies the slice onto itself (__setitem__), a full extra pass per shift
            out[:, o:].add_(h3[:, :-o])
            out[:, :-o].add_(h3[:, o:])
        return out

    def _sum(self, h: Tensor) -> Tensor:
        r = self.radius
        if self.uniform:
            h3 = h.reshape(self.num_graphs, self.max_length, -1)
            out = torch.empty_like(h3)
            for part in self.chunks(h3):
                self._uniform_sum(h3[part], out[part])
            return out.view_as(h)
        out = torch.zeros_like(h)
        for o in range(1, r + 1):
            if o >= h.size(0):
                break
            # node n reads n - o (mask: n is not among the first o of its graph) and n + o
            out[o:].addcmul_(h[:-o], self._mask(-o, h.dtype)[o:])
            out[:-o].addcmul_(h[o:], self._mask(o, h.dtype)[:-o])
        return out

    def pool(self, h: Tensor, readout: str) -> Tensor:
        """Readout ``[B, C]`` of each graph's nodes, ``sum`` or ``mean``.

        (``max`` is left to PyG's ``global_max_pool``: where the maximum is exactly 0 and tied,
        its gradient counts one tie more than ``amax`` does, and the paths must agree.)
        """
        if readout not in ("sum", "mean"):
            raise ValueError(f"Band.pool: readout {readout!r} is not 'sum' or 'mean'")
        if self.uniform:
            h3 = self.sequence(h)
            return h3.sum(dim=1) if readout == "sum" else h3.mean(dim=1)
        from torch_geometric.utils import segment

        ptr = torch.cat([self.lengths.new_zeros(1), torch.cumsum(self.lengths, 0)])
        return segment(h, ptr, reduce=readout)


# --------------------------------------------------------------------------------------------
# recognising a banded batch


@lru_cache(maxsize=64)
def _uniform_edge_index(num_graphs: int, length: int, k: int, device: str) -> Tensor:
    from sergraph.data.graphs import temporal_edge_index

    one = temporal_edge_index(length, k).to(device)
    shift = (torch.arange(num_graphs, device=device) * length).view(-1, 1, 1)
    return (one.unsqueeze(0) + shift).permute(1, 0, 2).reshape(2, -1)


def band_edge_index(lengths: Tensor, k: int) -> Tensor:
    """The ``edge_index`` PyG's ``Batch`` holds for ``build_graph`` graphs of these sizes.

    Sorted by source then target within each graph, graphs one after another, as
    :func:`sergraph.data.graphs.temporal_edge_index` and ``Batch.from_data_list`` lay it out.
    """
    return Band(k, lengths).edge_index().clone()


def band_edge_count(lengths: Tensor, k: int) -> int:
    """Number of directed band edges of graphs with these sizes."""
    return sum(2 * int((lengths - o).clamp(min=0).sum()) for o in range(1, k // 2 + 1))


def marked(data):
    """The :class:`~sergraph.data.collate.BandMark` of a batch that qualifies for the fast path,
    or ``None``: :func:`detect`'s decision, made from shapes alone (no :class:`Band` is built,
    nothing is read from any device, so it may be asked of a batch still on the host).

    A batch qualifies when it carries a mark, has ``ptr`` (a PyG ``Batch``), 2-D ``x`` and node
    and edge counts equal to the mark's.
    """
    mark = band_mark(data)
    if mark is None:
        return None
    edge_index = getattr(data, "edge_index", None)
    x = getattr(data, "x", None)
    ptr = getattr(data, "ptr", None)
    if edge_index is None or x is None or ptr is None or x.dim() != 2:
        return None
    if x.size(0) != mark.num_nodes or edge_index.size(1) != mark.num_edges:
        return None
    if ptr.numel() != mark.num_graphs + 1:
        return None
    return mark


def verifying() -> bool:
    """Whether ``SERGRAPH_FAST_PATH=check`` is set: the fast path then reads the edges too."""
    return os.environ.get(FAST_PATH_ENV, "").strip().lower() == "check"


def detect(data) -> Band | None:
    """The :class:`Band` of a batch marked by the collater, or ``None`` to use PyG.

    A batch qualifies as :func:`marked` says (shapes only: nothing is read back from the
    device). With ``SERGRAPH_FAST_PATH=check`` the edges are also compared with the band
    (:func:`verify`).
    """
    mark = marked(data)
    if mark is None:
        return None
    band = Band.from_mark(mark, data)
    if verifying() and verify(data) is None:
        raise RuntimeError(
            f"{FAST_PATH_ENV}=check: a batch is marked as banded graphs (k={mark.k}, "
            f"{mark.num_graphs} graphs) but its edge_index is not that band; the code that "
            "changed the batch after collation must remove the mark "
            "(sergraph.data.collate.set_band_mark(batch, None))"
        )
    return band


def verify(data) -> Band | None:
    """The :class:`Band` of a batch checked from its edges (element by element), or ``None``.

    What the collater decides on the CPU, decided again from the batch itself: the ``band_k``
    marker has one value for every graph, the batch has ``ptr`` and its ``edge_index`` equals
    :func:`band_edge_index` for its graph sizes. It reads the batch back from its device.
    """
    marker = getattr(data, "band_k", None)
    edge_index = getattr(data, "edge_index", None)
    x = getattr(data, "x", None)
    if marker is None or edge_index is None or x is None or x.dim() != 2:
        return None
    if isinstance(marker, Tensor):
        if marker.numel() == 0 or not bool((marker == marker.view(-1)[0]).all()):
            return None
        k = int(marker.view(-1)[0])
    else:
        k = int(marker)
    if k < 2 or k % 2:
        return None
    ptr = getattr(data, "ptr", None)
    if ptr is None:
        return None
    lengths = ptr.diff()
    if int(lengths.sum()) != x.size(0):
        return None
    if edge_index.size(1) != band_edge_count(lengths, k):
        return None
    band = Band(k, lengths)
    if not torch.equal(edge_index, band.edge_index()):
        return None
    return band


# --------------------------------------------------------------------------------------------
# graph layers over a band (each uses the PyG module's own parameters)


def gin(conv, h: Tensor, band: Band) -> Tensor:
    """:class:`~torch_geometric.nn.GINConv`: ``nn((1 + eps) h_i + sum_{j in N(i)} h_j)``."""
    return conv.nn(band.sum(h) + (1 + conv.eps) * h)


class _GinInput(torch.autograd.Function):
    """GIN's aggregation ``z = A h + scale * h`` on a uniform band and the sum readout
    ``sum_t h_t`` of its input, as one autograd node (:func:`gin_input`)."""

    @staticmethod
    def forward(ctx, h: Tensor, scale: Tensor, band: Band):
        h3 = band.sequence(h)
        z = h3.new_empty(band.num_nodes, h3.size(-1))
        z3 = z.view(h3.shape)
        pooled = h3.new_empty(band.num_graphs, h3.size(-1))
        parts = band.chunks(h3)
        scaled = z3.new_empty((parts[0].stop - parts[0].start, *z3.shape[1:]))
        for part in parts:
            hc, zc = h3[part], z3[part]
            band._uniform_sum(hc, zc)
            # A h + (1 + eps) h: the sum, then the scaled node, as gin() adds them
            zc.add_(torch.mul(scale, hc, out=scaled[: zc.size(0)]))
            torch.sum(hc, dim=1, out=pooled[part])
        ctx.save_for_backward(h, scale)
        ctx.band = band
        ctx.set_materialize_grads(False)
        return z, pooled

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_z: Tensor | None, grad_pooled: Tensor | None):
        h, scale = ctx.saved_tensors
        band = ctx.band
        h3 = band.sequence(h)
        grad_h = grad_scale = None
        if grad_z is not None:
            g3 = grad_z.reshape(h3.shape)
            product = None
            if ctx.needs_input_grad[1]:
                product = torch.mul(g3, h3)
                grad_scale = product.sum().reshape(scale.shape)
            if ctx.needs_input_grad[0]:
                # ((readout + scale * g) + A g): the order in which autograd sums the three
                # uses of h in gin() followed by the readout, so the result is the same bit
                # for bit; the readout's [B, C] gradient is added by broadcasting, never
                # expanded into an [N, C] tensor of its own. Written over the product
                # (read above): one buffer fewer.
                if product is None or not product.is_contiguous():
                    product = torch.empty_like(g3, memory_format=torch.contiguous_format)
                grad_h = product
                parts = band.chunks(g3)
                shifted = g3.new_empty((parts[0].stop - parts[0].start, *g3.shape[1:]))
                for part in parts:
                    gc, out = g3[part], grad_h[part]
                    torch.mul(gc, scale, out=out)
                    if grad_pooled is not None:
                        out.add_(grad_pooled[part].unsqueeze(1))
                    out.add_(band._uniform_sum(gc, shifted[: out.size(0)]))
        elif grad_pooled is not None and ctx.needs_input_grad[0]:
            grad_h = grad_pooled.unsqueeze(1).expand(h3.shape)
        if grad_h is not None and h.dim() == 2:
            grad_h = grad_h.reshape(h.shape)
        return grad_h, grad_scale, None


def gin_input(conv, h: Tensor, band: Band) -> tuple[Tensor, Tensor]:
    """The input of a :class:`~torch_geometric.nn.GINConv`'s MLP on a uniform band,
    ``(1 + eps) h + A h`` ``[N, C]``, and the sum readout of ``h`` ``[B, C]``, as
    ``conv.nn``'s argument in :func:`gin` and ``band.pool(h, "sum")`` compute them (the same
    values bit for bit, gradients included), with fewer passes over the nodes: forward, the
    scaled ``h`` is added into the sum in place; backward, the three uses of ``h`` are added in
    place and the readout's gradient is broadcast, not materialised as an ``[N, C]`` tensor.
    ``h`` is ``[N, C]`` (or its ``[B, T, C]`` view)."""
    if not band.uniform:
        raise ValueError("gin_input: the band's graphs differ in size (use gin and Band.pool)")
    return _GinInput.apply(h, 1 + conv.eps, band)


def gin_supported(conv) -> bool:
    from torch_geometric.nn import GINConv
    from torch_geometric.nn.aggr import SumAggregation

    return type(conv) is GINConv and type(conv.aggr_module) is SumAggregation


def gcn(conv, h: Tensor, band: Band) -> Tensor:
    """:class:`~torch_geometric.nn.GCNConv`: ``D^-1/2 (A + I) D^-1/2 h W + b``, ``D = deg + 1``."""
    scale = (band.degree(h.dtype) + 1).rsqrt()
    y = conv.lin(h) * scale
    out = (band.sum(y) + y) * scale
    return out + conv.bias if conv.bias is not None else out


def gcn_supported(conv) -> bool:
    from torch_geometric.nn import GCNConv
    from torch_geometric.nn.aggr import SumAggregation

    return (
        type(conv) is GCNConv
        and conv.normalize
        and conv.add_self_loops
        and not conv.improved
        and not conv.cached
        and type(conv.aggr_module) is SumAggregation
    )


def sage_mean(conv, h: Tensor, band: Band) -> Tensor:
    """:class:`~torch_geometric.nn.SAGEConv` (mean): ``W_l mean_{j in N(i)} h_j + W_r h_i``."""
    mean = band.sum(h) / band.degree(h.dtype).clamp(min=1)
    out = conv.lin_l(mean)
    if conv.root_weight:
        out = out + conv.lin_r(h)
    return out


def sage_mean_supported(conv) -> bool:
    from torch_geometric.nn import SAGEConv
    from torch_geometric.nn.aggr import MeanAggregation

    return (
        type(conv) is SAGEConv
        and type(conv.aggr_module) is MeanAggregation
        and not conv.project
        and not conv.normalize
    )


def gat(conv, h: Tensor, band: Band) -> Tensor:
    """:class:`~torch_geometric.nn.GATConv` with self-loops: attention is a softmax over each
    node's window ``t - k/2 .. t + k/2`` of its own graph (``[N, k + 1, heads]``).

    The attention logits ``a . (W h)`` are computed as ``(a^T W) . h`` (the same number, one
    small matrix product instead of a pass over ``[N, heads, channels]``).
    """
    heads, channels, r = conv.heads, conv.out_channels, band.radius
    num_nodes = h.size(0)
    res = conv.res(h) if conv.res is not None else None
    x = conv.lin(h).view(-1, heads, channels)
    weight = conv.lin.weight.view(heads, channels, -1)
    att_src = (weight * conv.att_src.view(heads, channels, 1)).sum(dim=1)  # [H, F_in]
    att_dst = (weight * conv.att_dst.view(heads, channels, 1)).sum(dim=1)
    alpha_src = F.pad(h @ att_src.t(), (0, 0, r, r))  # [N + 2r, H]
    alpha_dst = h @ att_dst.t()  # [N, H]
    # window position i holds neighbour n + i - r; padded rows and other graphs are masked
    scores = alpha_src.unfold(0, 2 * r + 1, 1).transpose(1, 2)  # [N, W, H]
    scores = F.leaky_relu(scores + alpha_dst.unsqueeze(1), conv.negative_slope)
    scores = scores.masked_fill(~band.valid().unsqueeze(-1), float("-inf"))
    weights = torch.softmax(scores, dim=1)
    weights = F.dropout(weights, p=conv.dropout, training=conv.training)
    padded = F.pad(x, (0, 0, 0, 0, r, r))  # [N + 2r, H, C]: row n + r is node n
    out = None
    for i in range(2 * r + 1):
        term = weights[:, i].unsqueeze(-1) * padded[i : i + num_nodes]
        out = term if out is None else out + term
    out = out.reshape(-1, heads * channels) if conv.concat else out.mean(dim=1)
    if res is not None:
        out = out + res
    return out + conv.bias if conv.bias is not None else out


def gat_supported(conv) -> bool:
    from torch_geometric.nn import GATConv

    return (
        type(conv) is GATConv
        and isinstance(conv.lin, torch.nn.Module)
        and getattr(conv.lin, "bias", None) is None
        and conv.add_self_loops
        and conv.lin_edge is None
    )


def cheb(conv, h: Tensor, band: Band) -> Tensor:
    """:class:`~torch_geometric.nn.ChebConv` (``sym``, ``lambda_max = 2``): Chebyshev terms of
    ``L~ = -D^-1/2 A D^-1/2`` (no self-loops; nodes without neighbours get 0)."""
    degree = band.degree(h.dtype)
    scale = torch.where(degree > 0, degree.clamp(min=1).rsqrt(), torch.zeros_like(degree))

    def laplacian(v: Tensor) -> Tensor:
        return -(band.sum(v * scale) * scale)

    tx0, tx1 = h, h
    out = conv.lins[0](tx0)
    if len(conv.lins) > 1:
        tx1 = laplacian(h)
        out = out + conv.lins[1](tx1)
    for lin in conv.lins[2:]:
        tx2 = 2.0 * laplacian(tx1) - tx0
        out = out + lin(tx2)
        tx0, tx1 = tx1, tx2
    return out + conv.bias if conv.bias is not None else out


def cheb_supported(conv) -> bool:
    from torch_geometric.nn import ChebConv

    return type(conv) is ChebConv and conv.normalization == "sym"
