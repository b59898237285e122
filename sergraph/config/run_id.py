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
    "trainer.resume_every_s",
    "run.name",
    "run.out_dir",
    "run.seeds",
    "run.parallel",
    "run.threads",
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
    """The evaluation protocol a configuration runs under: ``eval.protocol``. Configurations
    saved before protocols were named (``eval.protocol`` absent or null) resolve from their
    ``graph.normalize``: ``speaker`` then meant transductive, anything else inductive."""
    protocol = OmegaConf.select(cfg, "eval.protocol", default=None)
    if protocol is None:
        normalize = OmegaConf.select(cfg, "graph.normalize", default="train")
        return "transductive" if normalize == "speaker" else "inductive"
    return str(protocol)


def normalization_of(cfg: DictConfig) -> str:
    """How the node (and functional) features are normalised, in the data module's terms:
    ``train`` (one statistic of the training side), ``speaker`` (each speaker its own; a
    held-out speaker's from the part of its audio ``eval.protocol`` allows) or ``none``.

    ``graph.normalize=zscore`` leaves whose statistics to the protocol: ``train`` under
    ``inductive``, ``speaker`` under ``enrollment`` and ``transductive``. A configuration saved
    before the protocol was the one key spells the mode itself (``train``/``speaker``)."""
    normalize = str(OmegaConf.select(cfg, "graph.normalize", default="train"))
    if normalize in LEGACY_NORMALIZE or normalize == "none":
        return normalize
    return "train" if protocol_of(cfg) == "inductive" else "speaker"


#: ``graph.normalize`` values of configurations saved before ``eval.protocol`` was the one key
#: (they named whose statistics: the training side's or each speaker's own).
LEGACY_NORMALIZE = ("train", "speaker")


def upgrade_saved(cfg: DictConfig) -> DictConfig:
    """A saved configuration (``config.yaml`` of a cell) in today's spelling: ``eval.protocol``
    named, ``graph.normalize`` ``zscore`` or ``none``. Its identity is unchanged.

    Raises:
        ValueError: a saved combination today's keys cannot express (``eval.protocol=
            enrollment`` with the training side's statistics: its enrollment audio was unused).
    """
    cfg = cfg.copy()
    protocol, mode = protocol_of(cfg), normalization_of(cfg)
    if mode == "train" and protocol != "inductive":
        raise ValueError(
            f"this configuration ran eval.protocol={protocol} with graph.normalize=train (the "
            "training side's statistics, so its enrollment audio was never used); that "
            "combination is no longer accepted: re-run with eval.protocol=inductive or "
            f"eval.protocol={protocol} graph.normalize=zscore"
        )
    OmegaConf.update(cfg, "eval.protocol", protocol, force_add=True)
    OmegaConf.update(cfg, "graph.normalize", "none" if mode == "none" else "zscore", force_add=True)
    return cfg


def identity(cfg: DictConfig) -> str:
    """A short hash of everything that determines one fold's results (seed and fold excluded)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in RUNTIME_KEYS:
        section, key = dotted.split(".")
        container.get(section, {}).pop(key, None)
    container.pop("logger", None)
    container.pop("variants", None)
    container.pop("grid", None)
    container.pop("slurm", None)
    container.pop("reference", None)
    container.pop("controls", None)
    # cross_corpus (added later): left out when unset, so that within-corpus runs keep their id
    block = container.get("cross_corpus") or {}
    if block.get("test") is None and not block.get("corpora") and block.get("classes") is None:
        container.pop("cross_corpus", None)
    # The protocol enters the identity only where it changes behaviour: a configuration that
    # runs as it did before protocols were named (inductive, or transductive: once spelled
    # graph.normalize=speaker alone) keeps its id.
    if protocol_of(cfg) != "enrollment":
        container.pop("eval", None)
    else:
        container["eval"]["protocol"] = "enrollment"
    # graph.normalize enters in the spelling it had before eval.protocol became the one key
    # (train | speaker | none: the mode), so that runs whose meaning is unchanged keep their id.
    if "graph" in container:
        container["graph"]["normalize"] = normalization_of(cfg)
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
