"""``TemporalGNN``: the skeleton shared by the graph baselines (front end, graph layers, head).

A graph baseline is a subclass that says how one graph layer is built::

    @register("gcn")
    class GCN(TemporalGNN):
        def make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
            return GCNConv(in_channels, out_channels)

Everything else (the optional BiLSTM front end, ``num_layers`` layers each followed by
BatchNorm and an activation, the readout of every layer including the input layer, the
classifier) comes from the base class, so baselines differ only in their graph layer.

A family whose layer has a closed form on the pipeline's banded temporal graphs may also define
:meth:`TemporalGNN.band_layer` (see :mod:`sergraph.models.banded`); batches of such graphs then
skip PyG's gather/scatter. It is optional: without it every batch uses message passing.

``virtual_node=True`` adds a virtual global node per graph (OGB style, Gilmer et al. 2017; Hu
et al. 2020), on both paths. With ``h^(0)`` the layer-0 input and ``vn_0`` a learned vector
(initialised to zeros) of its width, layer ``l = 1 .. L`` computes::

    g     = h^(l-1) + vn_(l-1)[batch]                        # every node gets its graph's vn
    h^(l) = act(norm(conv_l(g, edge_index)))
    vn_l  = ReLU(LayerNorm(Linear(sum_pool(g) + vn_(l-1))))  # for l < L only: the next input

``Linear`` maps the width of layer ``l``'s input to that of layer ``l+1``'s (``hidden``). The
readouts and the classifier see ``h^(0) .. h^(L)`` as without the virtual node (``h^(0)``
without ``vn_0``). LayerNorm rather than BatchNorm: its rows are graphs, and a training batch
of one graph (the last of an epoch) would make BatchNorm fail. ``sum_pool`` counts padding
nodes as the readout does. ``False`` (the default) adds no parameters and changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import global_add_pool, global_mean_pool

from sergraph.models import banded
from sergraph.models.common import BiLSTMFront, ReadoutHead, check_choice

# Readouts computed without a scatter on the fast path (max keeps PyG's, see Band.pool).
_READOUT_NAMES = {global_add_pool: "sum", global_mean_pool: "mean"}

ACTIVATIONS = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


class TemporalGNN(nn.Module):
    """Optional BiLSTM front end, ``num_layers`` graph layers, per-layer readout, classifier.

    Layer ``l`` computes ``h^(l) = act(norm(conv_l(h^(l-1), edge_index)))`` where ``conv_l`` is
    built by :meth:`make_conv`; ``h^(0)`` is the BiLSTM output (or the raw features without the
    front end). The readouts of ``h^(0) .. h^(num_layers)`` are concatenated and classified.

    Subclasses override :meth:`make_conv` (and :meth:`make_front` for another front end). One
    that needs options there (``K``, ``heads``) takes them as keyword arguments, stores them as
    plain attributes *before* calling ``super().__init__`` (which calls ``make_conv``), and
    forwards ``**kwargs`` so that the registry lists the base parameters too.

    Args:
        in_channels: node feature size F (from the data).
        num_classes: number of emotion classes (from the data).
        use_lstm: run the BiLSTM front end before the graph layers.
        lstm_hidden: LSTM cells per direction (paper: 128).
        hidden: output width of every graph layer.
        num_layers: number of graph layers (paper: 5 for every graph baseline); 0 reads out the
            (front-end) node features directly, which ablates the graph away.
        activation: applied after each layer; one of :data:`ACTIVATIONS`.
        batch_norm: BatchNorm over the nodes after each layer (before the activation). On by
            default: LSTM-GIN normalises inside every GIN layer, and without it five attention
            layers smooth the nodes so much that GAT's target-side attention vector gets no
            gradient at initialisation (every score of a node falls on one side of LeakyReLU).
        readout: ``sum``, ``mean`` or ``max`` over each graph's nodes, for every layer.
        classifier_hidden: hidden width of the classifier.
        dropout: dropout in the classifier.
        global_channels: size of the utterance vector ``u`` concatenated with the graph
            embedding (set from the data by ``features.concat_functionals``; 0: none).
        virtual_node: a virtual global node per graph, added to every node before each graph
            layer and updated after it (module docstring); no effect with ``num_layers=0``.

    Shapes:
        - input: PyG ``Batch`` with ``x [N, F]``, ``edge_index [2, E]``, ``batch [N]`` (and
          ``u [B, D]`` with ``global_channels=D``).
        - output: logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        use_lstm: bool = False,
        lstm_hidden: int = 128,
        hidden: int = 128,
        num_layers: int = 5,
        activation: str = "relu",
        batch_norm: bool = True,
        readout: str = "sum",
        classifier_hidden: int = 128,
        dropout: float = 0.0,
        global_channels: int = 0,
        virtual_node: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(
                f"model.params.num_layers={num_layers} must be >= 0 (0: no graph layers, the "
                "readout of the (BiLSTM) node features alone: an ablation without the graph)"
            )
        check_choice("activation", activation, ACTIVATIONS)
        self.front = self.make_front(in_channels, lstm_hidden) if use_lstm else None
        channels = self.front.out_channels if use_lstm else in_channels
        layer_channels = [channels]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(num_layers):
            self.convs.append(self.make_conv(channels, hidden))
            self.norms.append(nn.BatchNorm1d(hidden) if batch_norm else nn.Identity())
            channels = hidden
            layer_channels.append(hidden)
        self.activation = ACTIVATIONS[activation]()
        self.virtual_node = bool(virtual_node)
        if self.virtual_node and num_layers > 0:
            # created only when asked for: without it the state dict is unchanged
            self.vn_embedding = nn.Parameter(torch.zeros(layer_channels[0]))
            # MLP_i maps the input width of layer i to that of layer i + 1 (i < L - 1)
            self.vn_mlps = nn.ModuleList(
                nn.Sequential(nn.Linear(c_in, c_out), nn.LayerNorm(c_out), nn.ReLU())
                for c_in, c_out in zip(layer_channels[:-2], layer_channels[1:-1], strict=True)
            )
        self.head = ReadoutHead(
            layer_channels, num_classes, readout, classifier_hidden, dropout, global_channels
        )

    def make_front(self, in_channels: int, hidden: int) -> nn.Module:
        """The node encoder run before the graph layers when ``use_lstm`` is set.

        Called as ``front(x, batch)``; it must have an ``out_channels`` attribute.
        """
        return BiLSTMFront(in_channels, hidden)

    def make_conv(self, in_channels: int, out_channels: int) -> nn.Module:
        """One graph layer mapping ``[N, in_channels]`` to ``[N, out_channels]``.

        It is called as ``conv(h, edge_index)`` (see :meth:`conv_forward`).
        """
        raise NotImplementedError(f"{type(self).__name__} must define make_conv")

    def conv_forward(self, conv: nn.Module, h, edge_index, batch):
        """One graph layer on message passing: ``conv(h, edge_index)``. A family whose layer
        needs the ``batch`` vector too (attention over each graph's nodes) overrides this."""
        return conv(h, edge_index)

    #: Set to ``False`` on an instance to always use PyG message passing (see also the
    #: ``SERGRAPH_FAST_PATH`` environment variable in :mod:`sergraph.models.banded`).
    fast_path: bool = True

    def band_layer(self, conv: nn.Module) -> banded.BandLayer | None:
        """Optional fast path: a function ``f(conv, h, band)`` equal to ``conv(h, edge_index)``
        on a batch of banded temporal graphs, or ``None`` (the default) when there is none.
        """
        return None

    #: The batch attributes :meth:`forward` reads as tensors on the model's device, on PyG's
    #: message-passing path (``u`` where the batch has it). The LightningModule moves these
    #: to the device and leaves every other attribute on the host
    #: (:meth:`~sergraph.training.module.SERModule.transfer_batch_to_device`). A subclass
    #: whose forward reads more declares more.
    batch_keys: frozenset[str] = frozenset({"x", "edge_index", "batch", "u"})
    #: The same on the banded fast path: there the graph sizes come from ``ptr`` and
    #: ``edge_index`` is only counted (its shape, known on the host), never read.
    band_batch_keys: frozenset[str] = frozenset({"x", "ptr", "batch", "u"})

    def _has_band_layers(self) -> bool:
        if not self.fast_path or not banded.fast_path_enabled():
            return False
        return all(self.band_layer(conv) is not None for conv in self.convs)

    def band_of(self, data) -> banded.Band | None:
        """The band of ``data`` when this forward will take the fast path, else ``None``."""
        return banded.detect(data) if self._has_band_layers() else None

    def uses_fast_path(self, data) -> bool:
        """Whether a forward on ``data`` takes the banded fast path (decided from shapes and
        the collater's mark: ``data`` may still be on the host)."""
        return self._has_band_layers() and banded.marked(data) is not None

    def forward(self, data):
        band = self.band_of(data)
        if band is not None:
            return self._forward_band(data, band)
        x, edge_index, batch = data.x, data.edge_index, data.batch
        h = self.front(x, batch) if self.front is not None else x
        layers = [h]
        vn = self._vn_start(data.num_graphs)
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if vn is not None:
                h = h + vn[batch]
                vn = self._vn_next(index, global_add_pool(h, batch, size=data.num_graphs), vn)
            h = self.activation(norm(self.conv_forward(conv, h, edge_index, batch)))
            layers.append(h)
        return self.head(layers, batch, data.num_graphs, getattr(data, "u", None))

    def _vn_start(self, num_graphs: int):
        """``vn_0`` of every graph ``[B, C_0]``, or ``None`` without a virtual node."""
        if not hasattr(self, "vn_embedding"):
            return None
        return self.vn_embedding.unsqueeze(0).expand(num_graphs, -1)

    def _vn_next(self, index: int, pooled, vn):
        """``vn`` after layer ``index`` from the sum of its inputs (``None`` after the last)."""
        if index >= len(self.vn_mlps):
            return None
        return self.vn_mlps[index](pooled + vn)

    def _forward_band(self, data, band: banded.Band):
        """:meth:`forward` on a banded batch: the same modules, no edge gather/scatter."""
        x = data.x
        if self.front is None:
            h = x
        elif (
            isinstance(self.front, BiLSTMFront) and type(self.front).forward is BiLSTMFront.forward
        ):
            # the band's sizes are known on the CPU: no dense/mask copies, no read-back
            h = self.front.forward_band(x, band)
        else:
            h = self.front(x, data.batch)
        layers = [h]
        vn = self._vn_start(band.num_graphs)
        for index, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if vn is not None:
                h = h + vn[data.batch]
                vn = self._vn_next(index, band.pool(h, "sum"), vn)
            h = self.activation(norm(self.band_layer(conv)(conv, h, band)))
            layers.append(h)
        u = getattr(data, "u", None)
        readout = _READOUT_NAMES.get(getattr(self.head, "pool", None))
        if type(self.head) is not ReadoutHead or readout is None:
            return self.head(layers, data.batch, data.num_graphs, u)
        return self.head.classify([band.pool(h, readout) for h in layers], u)
