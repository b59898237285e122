"""A lower bound of the memory a study's padded graphs need, against this machine's, before any
work: ``graph.max_nodes=100000`` would otherwise pad every graph to that size and be killed by
the kernel with no message.

With ``graph.pad=true`` every utterance becomes ``max_nodes`` nodes of ``F`` float32 features, so
the data module's graphs hold ``N x max_nodes x F x 4`` bytes, and one training batch at least
``batch_size x max_nodes x (F + H x (2 + 4 L)) x 4`` bytes of activations kept for the backward
pass (``H`` the widest hidden size of the model, ``L`` its layers: a bidirectional recurrent
layer keeps ``2H`` per node, and each message-passing layer at least four ``H``-vectors: its
input, two linear outputs and the normalised one). Both are lower bounds: what a real run needs
is more. Without padding the graphs keep their true lengths, which are not known before the
features are, so nothing is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

GIB = 1024**3


def machine_memory() -> int:
    """Bytes of memory this process may use: the physical memory, or a smaller cgroup limit
    (a SLURM job's ``--mem``)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and 0 < int(value) < total:
            total = int(value)
    return total


def node_floats(model_params: dict, num_features: int) -> int:
    """float32 values per node kept for the backward pass, at least (see the module docstring)."""
    widths = [
        int(value)
        for key, value in model_params.items()
        if "hidden" in key and isinstance(value, int) and not isinstance(value, bool)
    ]
    layers = model_params.get("num_layers", 1)
    layers = layers if isinstance(layers, int) and layers > 0 else 1
    return int(num_features) + max(widths, default=0) * (2 + 4 * layers)


def padded_memory(cfg: DictConfig, n_utterances: int, num_features: int) -> dict[str, int]:
    """``{"graphs": bytes, "batch": bytes}``, lower bounds for a padded study (0 unpadded)."""
    from sergraph.config import model_spec

    if not cfg.graph.pad or cfg.graph.max_nodes is None:
        return {"graphs": 0, "batch": 0}
    nodes = int(cfg.graph.max_nodes)
    _, params = model_spec(cfg)
    per_node = node_floats(dict(params), num_features)
    return {
        "graphs": n_utterances * nodes * int(num_features) * 4,
        "batch": int(cfg.optim.batch_size) * nodes * per_node * 4,
    }


def check_memory(
    cfg: DictConfig, n_utterances: int, num_features: int, available: int | None = None
) -> None:
    """Refuse padded graphs whose memory (a lower bound) exceeds this machine's.

    Raises:
        ValueError: with the numbers: graphs, one batch, the machine's memory, and what to
            change.
    """
    need = padded_memory(cfg, n_utterances, num_features)
    available = machine_memory() if available is None else available
    total = need["graphs"] + need["batch"]
    if total <= available:
        return
    nodes = int(cfg.graph.max_nodes)
    raise ValueError(
        f"graph.max_nodes={nodes} with graph.pad=true needs at least {total / GIB:.1f} GiB: "
        f"{n_utterances} utterances padded to {nodes} nodes of {num_features} features "
        f"({need['graphs'] / GIB:.1f} GiB of graphs) and one batch of optim.batch_size="
        f"{cfg.optim.batch_size} graphs in training ({need['batch'] / GIB:.1f} GiB), more than "
        f"this machine's {available / GIB:.1f} GiB of memory. Lower graph.max_nodes (the paper "
        "uses 120: 6 s at 50 ms per node), set graph.pad=false (true lengths), or lower "
        "optim.batch_size"
    )
