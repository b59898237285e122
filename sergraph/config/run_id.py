"""A run's identity: the short hash of everything that determines one fold's results, the keys
left out of it, and the configuration as YAML."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


#: Keys that change how fast a run goes, never its numbers; left out of the run identity.
RUNTIME_KEYS = (
    "features.workers",
    "features.cache_dir",
    "trainer.num_workers",
    "trainer.progress_bar",
    "run.name",
    "run.out_dir",
    "run.seeds",
    "run.parallel",
    "run.cell",
    "run.variants",
    "folds.only",
    "features.shard",
    "run.sources",
)


#: (section, key, default) of keys added after the first release (see :func:`identity`).
LATER_KEYS = (
    ("trainer", "num_nodes", 1),
    ("trainer", "strategy", "auto"),
    ("features", "on_error", "stop"),
    ("features", "concat_functionals", False),
    ("optim", "optimizer", "adam"),
    ("optim", "schedule", "constant"),
    ("optim", "warmup_epochs", 0),
    ("augment", "noise", 0.0),
    ("augment", "time_mask", 0),
    ("augment", "feature_mask", 0),
    ("trainer", "early_stopping", True),
    ("features", "sample_rate", None),
    ("features", "node_seconds", 0.05),
    ("features", "max_seconds", None),
    (
        "features",
        "ssl",
        {"model": None, "layer": -1, "chunk_seconds": 20.0, "context_seconds": 1.5},
    ),
    ("features", "precomputed", {"root": None, "column": None, "hop_seconds": None}),
    ("folds", "column", "fold"),
    ("folds", "allow_speaker_overlap", False),
    ("optim", "speaker_adversary", 0.0),
    ("augment", "mixup", 0.0),
    ("model", "fusion", None),
    ("optim", "sampler", "shuffle"),
    ("graph", "dilations", None),
)

#: Keys of ``features.ssl`` that change speed only (left out of the run identity).
SSL_RUNTIME_KEYS = ("device", "batch_size")


def protocol_of(cfg: DictConfig) -> str:
    """The evaluation protocol a configuration runs under (``eval.protocol`` resolved; see
    :func:`sergraph.data.protocol.resolve_protocol`). Configurations saved before protocols
    were named have no ``eval`` section and resolve from ``graph.normalize``."""
    from sergraph.data.protocol import resolve_protocol

    protocol = OmegaConf.select(cfg, "eval.protocol", default=None)
    return resolve_protocol(protocol, OmegaConf.select(cfg, "graph.normalize", default="train"))


def identity(cfg: DictConfig) -> str:
    """A short hash of everything that determines one fold's results (seed and fold excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in RUNTIME_KEYS:
        section, key = dotted.split(".")
        container.get(section, {}).pop(key, None)
    container.pop("logger", None)
    container.pop("variants", None)
    container.pop("slurm", None)
    container.pop("reference", None)
    container.pop("controls", None)
    # The protocol enters the identity only where it changes behaviour: a configuration that
    # runs as it did before protocols were named (inductive, or graph.normalize=speaker alone,
    # now spelled transductive) keeps its id.
    if protocol_of(cfg) != "enrollment":
        container.pop("eval", None)
    else:
        container["eval"]["protocol"] = "enrollment"
    for key in SSL_RUNTIME_KEYS:
        container.get("features", {}).get("ssl", {}).pop(key, None)
    # Keys added after the first release: at their defaults they are left out, so that runs
    # made before they existed keep their id.
    for section, key, default in LATER_KEYS:
        if container.get(section, {}).get(key, default) == default:
            container.get(section, {}).pop(key, None)
    if container.get("augment") == {}:
        container.pop("augment")
    # model.family (added later too): left out when it names the model itself.
    model = container.get("model", {})
    if model.get("family") in (None, model.get("name")):
        model.pop("family", None)
    # model.params.virtual_node (added later, every graph family): left out when off.
    params = model.get("params")
    if isinstance(params, dict) and params.get("virtual_node") is False:
        params.pop("virtual_node")
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
