"""Typed configuration: an OmegaConf structured schema, YAML config groups and CLI overrides.

Composition order (later wins):

1. the schema defaults below;
2. ``configs/default.yaml``;
3. one file per config group (``data``, ``model``, ``trainer``), chosen by ``group=name`` on the
   command line (defaults: ``data=synthetic model=lstm_gin trainer=default``);
4. ``experiment=name``: a top-level file from ``configs/experiment/`` that may set any key
   (``extends: other`` in it starts from experiment ``other``);
5. dotted overrides ``key.sub=value`` (``data.root=/path``, ``model.params.readout=mean``).

Every mistyped key or value raises :class:`ConfigError` before any work, naming the key and the
valid choices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sergraph.data.features.config import FeatureConfig

GROUPS = ("data", "model", "trainer")
ON_ERROR_CHOICES = ("stop", "skip")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
DEFAULT_GROUPS = {"data": "synthetic", "model": "lstm_gin", "trainer": "default"}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str | None = None
    classes: list[str] | None = None
    merge: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


# The one features configuration: the same class the extractors and the cache take.
FeaturesConfig = FeatureConfig


@dataclass
class GraphConfig:
    k: int = 4
    max_nodes: int | None = 120
    pad: bool = True
    normalize: str = "train"


@dataclass
class EvalConfig:
    """The evaluation protocol (see :mod:`sergraph.data.protocol`)."""

    # inductive | enrollment | transductive; null: inductive, or transductive when
    # graph.normalize=speaker is given alone (its meaning before protocols were named).
    protocol: str | None = None
    # enrollment: per validation/test speaker, a fraction in (0, 1) or a count >= 1 of its
    # utterances held aside (label-free, seeded), used unlabelled for its statistics, never scored.
    enrollment: float = 0.2
    enrollment_seed: int = 0


@dataclass
class FoldsConfig:
    scheme: str = "loso"
    val_speakers: int = 1
    n_groups: int = 5
    seed: int = 0
    only: list[int] | None = None
    # scheme=predefined: the corpus column holding each utterance's test fold (0, 1, ...).
    column: str = "fold"
    # scheme=predefined: accept folds whose speakers overlap between train/val/test (benchmark
    # splits that are not speaker-independent; every output then says so).
    allow_speaker_overlap: bool = False


@dataclass
class ModelConfig:
    # The run's model name (run folders, labels); a registered family or a preset's own name.
    name: str = "lstm_gin"
    # The registered family that builds it (null: the family named ``name``). A preset in
    # configs/model/ names its family here and writes out the defaults it changes in params.
    family: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-8
    batch_size: int = 32
    class_weights: bool = False
    label_smoothing: float = 0.0
    optimizer: str = "adam"  # adam (L2 weight decay, the paper) | adamw (decoupled)
    schedule: str = "constant"  # constant | cosine (to 0 at trainer.max_epochs), per epoch
    warmup_epochs: int = 0  # linear warm-up from lr/(warmup+1) before the schedule


@dataclass
class AugmentConfig:
    """Training-fold augmentation of the node features (never applied to val/test)."""

    noise: float = 0.0  # std of Gaussian noise added to the (normalised) node features
    time_mask: int = 0  # zero one span of up to this many nodes per training graph
    feature_mask: int = 0  # zero one band of up to this many node features per training graph


@dataclass
class TrainerConfig:
    max_epochs: int = 200
    min_epochs: int = 1
    patience: int = 20
    # false: no early stopping; the last epoch's model is tested (needed with
    # folds.val_speakers=0, where there is no validation to stop on or to choose the best epoch)
    early_stopping: bool = True
    accelerator: str = "auto"
    # Processes per node and nodes. Inside a SLURM job step (srun) both are taken from SLURM
    # (--ntasks-per-node, --nodes) instead, see sergraph.training.distributed.trainer_topology.
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_find_unused_parameters_true | ...
    precision: str = "32-true"
    deterministic: bool = True
    num_workers: int = 0
    progress_bar: bool = False


@dataclass
class RunConfig:
    name: str | None = None
    label: str | None = None
    out_dir: str = "runs"
    seeds: list[int] = field(default_factory=lambda: [0])
    parallel: int = 1
    cell: int | None = None
    # Only these variants of an experiment (all when null): run part of a committed study
    # without editing its file.
    variants: list[str] | None = None
    # Set by compose (never by hand): config file (relative to the config folder) -> SHA-256 of
    # every file that composed this configuration; recorded in each result's provenance.
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    kind: str = "csv"
    project: str = "sergraph"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    offline: bool = False


@dataclass
class SlurmConfig:
    """What `sergraph slurm` writes into the sbatch scripts (never part of a run's identity)."""

    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # per job (array task, DDP job); HH:MM:SS or D-HH:MM:SS
    gpus: int = 1  # GPUs per array task; GPUs per node for train_ddp (0: CPU only)
    nodes: int = 1  # nodes of train_ddp
    tasks_per_node: int | None = None  # processes per node of train_ddp; default: one per GPU
    cpus_per_task: int = 4
    mem: str | None = None  # e.g. 32G; null: the partition's default
    # A shell line run before sergraph, e.g. "conda activate sergraph" or ". ~/sg/.venv/bin/activate"
    activate: str | None = None
    signal_seconds: int = 90  # SIGUSR1 this many seconds before the time limit: save and requeue
    max_running: int | None = None  # array throttle (%N): at most N cells at a time
    feature_shards: int = 8  # array size of features.sbatch
    log_dir: str | None = None  # job scripts and output files; default: <study dir>/slurm
    extra: list[str] = field(default_factory=list)  # more #SBATCH options, e.g. ["--qos=long"]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    variants: dict[str, list[str]] = field(default_factory=dict)
    # The study's declared baseline label: `sergraph report` pairs every row with it (never a
    # row chosen by a test score). Not part of any run's identity.
    reference: str | None = None


def config_dir() -> Path:
    """The folder holding ``default.yaml`` and the group folders (shipped with the package)."""
    return Path(str(resources.files("sergraph.configs")))


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ConfigError(f"cannot read config file {path}: {error}") from error


def _merge(base: DictConfig, other, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        valid = _valid_keys(base, parent)
        hint = f"; valid keys under '{parent or '<top>'}': {valid}" if valid else ""
        raise ConfigError(
            f"{source}: {error.msg if hasattr(error, 'msg') else error}{hint}"
        ) from None


def _valid_keys(cfg: DictConfig, dotted: str) -> list[str]:
    node = OmegaConf.select(cfg, dotted) if dotted else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _split_overrides(overrides) -> tuple[dict[str, str], str | None, list[str]]:
    groups: dict[str, str] = {}
    experiment = None
    dotted: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key in GROUPS:
            groups[key] = value
        elif key == "experiment":
            experiment = value
        else:
            dotted.append(item)
    return groups, experiment, dotted


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _source(path: Path, sources: dict[str, str] | None) -> None:
    """Record a composing file's SHA-256 under its path relative to the config folder."""
    if sources is not None:
        sources[path.relative_to(config_dir()).as_posix()] = file_sha256(path)


def _load_experiment(
    name: str, chain: tuple[str, ...] = (), sources: dict[str, str] | None = None
) -> DictConfig:
    """An experiment file; ``extends: other`` at its top merges it over experiment ``other``
    (whose ``variants`` are not inherited)."""
    path = config_dir() / "experiment" / f"{name}.yaml"
    if not path.is_file():
        where = f" (extended by {chain[-1]!r})" if chain else ""
        raise ConfigError(
            f"experiment={name!r}{where} is not known; choose one of {group_choices('experiment')}"
        )
    if name in chain:
        raise ConfigError(
            f"experiment files extend each other in a cycle: {' -> '.join(chain + (name,))}"
        )
    cfg = _load_yaml(path)
    _source(path, sources)
    parent = cfg.pop("extends", None)
    if parent is None:
        return cfg
    base = _load_experiment(str(parent), (*chain, name), sources)
    base.pop("variants", None)
    return OmegaConf.merge(base, cfg)


def compose(overrides: list[str] | tuple[str, ...] = (), variant: str | None = None) -> DictConfig:
    """Build and validate the configuration from ``group=name`` and ``key=value`` overrides.

    Args:
        overrides: command-line overrides.
        variant: for an experiment with ``variants``, the label whose overrides to apply. Its
            group choices win over the command line's; its dotted overrides come before the
            command line's, so ``trainer.max_epochs=5`` still applies to every variant.
    """
    groups, experiment, dotted = _split_overrides(overrides)
    groups = {**DEFAULT_GROUPS, **groups}
    sources: dict[str, str] = {}
    experiment_cfg = _load_experiment(experiment, (), sources) if experiment is not None else None
    if variant is not None:
        variants = experiment_cfg.get("variants", {}) if experiment_cfg is not None else {}
        if variant not in variants:
            raise ConfigError(
                f"variant {variant!r} is not in this experiment; choose one of {sorted(variants)}"
            )
        variant_groups, _, variant_dotted = _split_overrides(list(variants[variant]))
        groups.update(variant_groups)
        dotted = list(variant_dotted) + [f"run.label={variant}"] + dotted

    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, _load_yaml(config_dir() / "default.yaml"), "configs/default.yaml")
    _source(config_dir() / "default.yaml", sources)
    for group, choice in groups.items():
        path = config_dir() / group / f"{choice}.yaml"
        if group == "model" and not path.is_file() and _is_family(choice):
            # A family without a preset file (e.g. from another package): its own defaults.
            cfg = _merge(cfg, {"model": {"name": choice}}, f"model={choice}")
            continue
        if not path.is_file():
            more = ""
            if group == "model":
                from sergraph.models import model_names

                more = f" or a registered model family {model_names()}"
            raise ConfigError(
                f"{group}={choice!r} is not known; choose one of {group_choices(group)}{more}"
            )
        cfg = _merge(cfg, {group: _load_yaml(path)}, f"configs/{group}/{choice}.yaml")
        _source(path, sources)
    if experiment_cfg is not None:
        cfg = _merge(cfg, experiment_cfg, f"configs/experiment/{experiment}.yaml")
    for item in dotted:
        key = item.split("=", 1)[0]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not _is_free_dict(
            cfg, parent
        ):
            raise ConfigError(
                f"unknown config key {key!r}; valid keys under '{parent or '<top>'}': "
                f"{_valid_keys(cfg, parent) or sorted(cfg.keys())}"
            )
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
    cfg.run.sources = dict(sorted(sources.items()))
    validate(cfg)
    return cfg


def compose_study(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, DictConfig]:
    """One validated configuration per study variant, keyed by label (in file order).

    Without ``variants`` the study has one variant labelled ``run.label`` or the model name.
    Every variant is composed (and so validated) before any work starts.
    """
    base = compose(overrides)
    if not base.variants:
        if base.run.variants:
            raise ConfigError(
                f"run.variants={list(base.run.variants)}: this configuration has no variants "
                "(they come from an experiment file with a variants: section)"
            )
        return {base.run.label or base.model.name: base}
    labels = list(base.variants)
    if base.run.variants:
        unknown = [label for label in base.run.variants if label not in base.variants]
        if unknown:
            raise ConfigError(
                f"run.variants: {unknown} are not variants of this experiment; choose from {labels}"
            )
        labels = [label for label in labels if label in base.run.variants]
    return {label: compose(overrides, variant=label) for label in labels}


def resolve_model(name: str, params: dict, family: str | None = None) -> tuple[str, dict]:
    """``(family, params)`` that build model ``name`` (of a config, a checkpoint or a bundle).

    With ``family`` given (``model.family``) or ``name`` a registered family, that family and
    ``params``. Otherwise ``name`` must be a preset in ``configs/model/`` that names its family:
    that family, with the preset's params under ``params``. This keeps configs, checkpoints and
    bundles written before presets existed (``model.name: gin`` without a family, when ``gin``,
    ``lstm_gat``, ``lstm_sage_mean``, ``lstm_sage_lstm`` and ``sage_lstm`` were classes) building
    the same model with the same config id.
    """
    from sergraph.models import model_names

    if family:
        if not _is_family(family):
            raise ConfigError(
                f"model.family={family!r} is not a registered model family; choose one of "
                f"{model_names()}"
            )
        return family, dict(params)
    if _is_family(name):
        return name, dict(params)
    path = config_dir() / "model" / f"{name}.yaml"
    preset = _load_yaml(path) if path.is_file() else None
    if preset is None or not preset.get("family") or not _is_family(str(preset.family)):
        raise ConfigError(
            f"model.name={name!r} is not a registered model family; choose one of "
            f"{model_names()}, or a preset of configs/model/ {group_choices('model')} (model=NAME)"
        )
    return str(preset.family), {**OmegaConf.to_container(preset.get("params") or {}), **params}


def model_spec(cfg: DictConfig) -> tuple[str, dict]:
    """``(family, params)`` of a configuration's model (see :func:`resolve_model`)."""
    params = OmegaConf.to_container(cfg.model.params, resolve=True)
    return resolve_model(cfg.model.name, params, cfg.model.get("family"))


def model_family(cfg: DictConfig) -> str:
    """The registered model family of a configuration (see :func:`resolve_model`)."""
    return model_spec(cfg)[0]


def _is_family(name: str) -> bool:
    """Whether ``name`` is a registered model family (loading its plugin if it is one)."""
    from sergraph.models import PluginError, get_model_class

    try:
        get_model_class(name)
    except PluginError as error:
        raise ConfigError(str(error)) from None
    except ValueError:
        return False
    return True


def _is_free_dict(cfg: DictConfig, dotted: str) -> bool:
    """Keys under these nodes are free-form (checked later against the model/corpus)."""
    return dotted in ("model.params", "data.options", "data.merge")


def validate(cfg: DictConfig) -> None:
    """Reject impossible values before any work, naming the key and the accepted values."""
    from sergraph.data.corpora import CORPORA
    from sergraph.data.features import FEATURE_SETS, FUNCTIONAL_SETS
    from sergraph.data.folds import SCHEMES
    from sergraph.data.graphs import NORMALIZE_CHOICES, check_k
    from sergraph.data.protocol import check_enrollment_amount, resolve_protocol
    from sergraph.models import build_baseline, build_model, is_classic

    def choice(key: str, value, choices) -> None:
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {sorted(choices)}")

    def positive(key: str, value, strict: bool = True) -> None:
        if value is None or (value <= 0 if strict else value < 0):
            raise ConfigError(f"{key}={value!r} must be {'>' if strict else '>='} 0")

    choice("data.name", cfg.data.name, CORPORA)
    choice("features.feature_set", cfg.features.feature_set, FEATURE_SETS)
    positive("features.pool", cfg.features.pool)
    _validate_features(cfg)
    choice("features.functionals", cfg.features.functionals, FUNCTIONAL_SETS)
    positive("features.workers", cfg.features.workers)
    choice("features.on_error", cfg.features.on_error, ON_ERROR_CHOICES)
    choice("graph.normalize", cfg.graph.normalize, NORMALIZE_CHOICES)
    try:
        resolve_protocol(cfg.eval.protocol, cfg.graph.normalize)
        check_enrollment_amount(cfg.eval.enrollment)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.graph.max_nodes is not None:
        positive("graph.max_nodes", cfg.graph.max_nodes)
    try:
        check_k(cfg.graph.k, cfg.graph.max_nodes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    choice("folds.scheme", cfg.folds.scheme, SCHEMES)
    positive("folds.val_speakers", cfg.folds.val_speakers, strict=False)
    positive("optim.lr", cfg.optim.lr)
    positive("optim.weight_decay", cfg.optim.weight_decay, strict=False)
    positive("optim.batch_size", cfg.optim.batch_size)
    if not 0 <= cfg.optim.label_smoothing < 1:
        raise ConfigError(f"optim.label_smoothing={cfg.optim.label_smoothing} must be in [0, 1)")
    choice("optim.optimizer", cfg.optim.optimizer, OPTIMIZERS)
    choice("optim.schedule", cfg.optim.schedule, SCHEDULES)
    positive("optim.warmup_epochs", cfg.optim.warmup_epochs, strict=False)
    if cfg.optim.schedule == "cosine" and cfg.trainer.max_epochs <= cfg.optim.warmup_epochs:
        raise ConfigError(
            f"optim.schedule=cosine needs trainer.max_epochs ({cfg.trainer.max_epochs}) > "
            f"optim.warmup_epochs ({cfg.optim.warmup_epochs}); lower the warm-up or use "
            "optim.schedule=constant"
        )
    positive("augment.noise", cfg.augment.noise, strict=False)
    positive("augment.time_mask", cfg.augment.time_mask, strict=False)
    positive("augment.feature_mask", cfg.augment.feature_mask, strict=False)
    positive("trainer.max_epochs", cfg.trainer.max_epochs)
    _validate_topology(cfg)
    _validate_slurm(cfg)
    positive("trainer.patience", cfg.trainer.patience)
    positive("run.parallel", cfg.run.parallel)
    choice("trainer.accelerator", cfg.trainer.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
    check_precision(cfg.trainer.precision)
    choice("logger.kind", cfg.logger.kind, ("csv", "wandb", "none"))
    if not cfg.run.seeds:
        raise ConfigError("run.seeds must list at least one seed")
    family, params = model_spec(cfg)
    if cfg.folds.val_speakers == 0 and cfg.trainer.early_stopping and not is_classic(family):
        raise ConfigError(
            "folds.val_speakers=0 leaves no validation speakers: nothing to stop early on or to "
            "choose the best epoch with, so the model of the last epoch would be tested. Keep "
            "folds.val_speakers >= 1 (default 1), or say so with trainer.early_stopping=false"
        )
    try:  # a tiny instance checks parameter names and values without touching data
        if is_classic(family):
            build_baseline(family, **params)
        else:
            build_model(family, 4, 2, **params)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


def _validate_features(cfg: DictConfig) -> None:
    try:
        config = FeatureConfig.from_any(cfg.features)
    except (ValueError, TypeError) as error:
        message = str(error)
        if not message.startswith("features."):
            message = f"features.{message}"
        raise ConfigError(message) from None
    if config.feature_set == "ssl":
        from sergraph.data.features.ssl import require_transformers

        try:
            require_transformers()
        except ImportError as error:
            raise ConfigError(str(error)) from None
    if config.feature_set in ("ssl", "precomputed") and cfg.model.name == "svm":
        raise ConfigError(
            f"model=svm uses utterance functionals (features.functionals), not "
            f"features.feature_set={config.feature_set}; choose a neural model"
        )


#: ``trainer.precision`` values sergraph runs: fp32, or fp32 weights with fp16/bf16 autocast.
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed")
_TRUE_LOW = (
    "keeps the weights themselves in {dtype}, but Lightning converts only plain tensors to it, "
    "not the PyG batches sergraph trains on, so the first recurrent layer stops with 'RNN "
    "input dtype (torch.float32) does not match weight dtype'; "
)
_REFUSED_PRECISION = {
    "16-true": _TRUE_LOW.format(dtype="float16")
    + "in float16, BatchNorm statistics and Adam's steps would also lose the small updates "
    "that training needs. Use trainer.precision=16-mixed (fp32 weights, fp16 autocast)",
    "bf16-true": _TRUE_LOW.format(dtype="bfloat16")
    + "bfloat16 weights keep 8 significant bits, too few for the small steps of "
    "lr=1e-4. Use trainer.precision=bf16-mixed (fp32 weights, bf16 autocast)",
    "64-true": _TRUE_LOW.format(dtype="float64")
    + "use trainer.precision=32-true (the models' float64 equality with PyG is tested "
    "directly, not through the Trainer)",
    "16": "is Lightning's old name of 16-mixed; write trainer.precision=16-mixed",
    "bf16": "is Lightning's old name of bf16-mixed; write trainer.precision=bf16-mixed",
}
_REFUSED_PRECISION["64"] = _REFUSED_PRECISION["64-true"]
_REFUSED_PRECISION["16-true"] += " or 32-true"


def check_precision(precision) -> None:
    """Refuse a ``trainer.precision`` outside :data:`PRECISIONS`, saying why and what to use."""
    value = str(precision)
    if value in PRECISIONS:
        return
    why = _REFUSED_PRECISION.get(value)
    if why is not None:
        raise ConfigError(f"trainer.precision={value!r} is not supported: it {why}")
    raise ConfigError(
        f"trainer.precision={value!r} is not valid; choose one of {list(PRECISIONS)} "
        "(16-mixed/bf16-mixed: fp32 weights with half-precision autocast on a GPU)"
    )


# Strategies whose processes all run the whole command (Lightning's own launcher or srun), so
# every rank sees the test results; ddp_spawn/ddp_fork would keep them in their workers.
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true", "single_device")


def _valid_devices(devices) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices > 0 or devices == -1
    if isinstance(devices, str):
        parts = [part.strip() for part in devices.split(",")]
        return devices in ("auto", "-1") or all(part.isdigit() for part in parts)
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices) > 0 and all(isinstance(d, int) and d >= 0 for d in devices)
    return False


def _validate_topology(cfg: DictConfig) -> None:
    if not _valid_devices(cfg.trainer.devices):
        raise ConfigError(
            f"trainer.devices={cfg.trainer.devices!r} is not valid; use a count (1, 2, -1 for "
            "all), 'auto', a list of device indices [0,1] or a string '0,1'"
        )
    if not isinstance(cfg.trainer.num_nodes, int) or cfg.trainer.num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes={cfg.trainer.num_nodes!r} must be an integer >= 1")
    if cfg.trainer.strategy not in STRATEGIES:
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy!r} is not valid; choose one of {list(STRATEGIES)}"
        )
    devices = cfg.trainer.devices
    if isinstance(devices, str):
        devices = -1 if devices.strip() == "-1" else len(devices.split(","))
    several = cfg.trainer.num_nodes > 1 or (
        len(devices) > 1
        if isinstance(devices, ListConfig | list)
        else devices in (-1,) or devices > 1
    )
    if several and cfg.run.parallel > 1:
        raise ConfigError(
            f"run.parallel={cfg.run.parallel} with trainer.devices={devices!r}, "
            f"trainer.num_nodes={cfg.trainer.num_nodes}: run cells one at a time (run.parallel=1) "
            "when each cell trains on several processes"
        )


def _validate_slurm(cfg: DictConfig) -> None:
    import re

    shard = cfg.features.shard
    if shard is not None:
        match = re.fullmatch(r"(\d+)/(\d+)", str(shard))
        if not match or not int(match[1]) < int(match[2]):
            raise ConfigError(
                f"features.shard={shard!r} is not valid; write i/n with 0 <= i < n, e.g. 0/8"
            )
    slurm = cfg.slurm
    for key in ("gpus", "cpus_per_task", "feature_shards"):
        value = slurm[key]
        if not isinstance(value, int) or value < (0 if key == "gpus" else 1):
            raise ConfigError(f"slurm.{key}={value!r} must be an integer >= {int(key != 'gpus')}")
    if not isinstance(slurm.nodes, int) or slurm.nodes < 1:
        raise ConfigError(f"slurm.nodes={slurm.nodes!r} must be an integer >= 1")
    if not isinstance(slurm.signal_seconds, int) or slurm.signal_seconds < 0:
        raise ConfigError(f"slurm.signal_seconds={slurm.signal_seconds!r} must be >= 0")
    if slurm.tasks_per_node is not None and slurm.tasks_per_node < 1:
        raise ConfigError(f"slurm.tasks_per_node={slurm.tasks_per_node!r} must be >= 1 or null")
    if slurm.max_running is not None and slurm.max_running < 1:
        raise ConfigError(f"slurm.max_running={slurm.max_running!r} must be >= 1 or null")
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}|\d+", str(slurm.time)):
        raise ConfigError(
            f"slurm.time={slurm.time!r} is not a SLURM time; use MM, HH:MM:SS or D-HH:MM:SS"
        )


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
    text = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
