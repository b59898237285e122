"""Validation of a composed configuration: every impossible value is refused before any work,
naming the key and the accepted values."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from sergraph.config.presets import model_spec
from sergraph.config.schema import (
    FUSIONS,
    GRAPH_NORMALIZE,
    ON_ERROR_CHOICES,
    ConfigError,
)
from sergraph.data.features.config import FeatureConfig
from sergraph.optim import OPTIMIZERS, SAMPLERS, SCHEDULES, lr_factor


def validate(cfg: DictConfig, build_model: bool = True) -> None:
    """Reject impossible values before any work, naming the key and the accepted values.

    With ``build_model`` (the default) a tiny instance of the configured model checks the values
    of ``model.params`` as its constructor does. Without it, a neural model's parameter names are
    checked but not their values, and neither torch nor PyG is imported: for the verbs that only
    show a configuration (``sergraph config``, ``sergraph folds``); a classic baseline, built
    without torch, is checked in full either way.
    """
    from sergraph.data.corpora import CORPORA
    from sergraph.data.features import FEATURE_SETS, FUNCTIONAL_SETS
    from sergraph.data.folds import SCHEMES
    from sergraph.data.graphs import check_dilations, check_k
    from sergraph.data.protocol import check_enrollment_amount
    from sergraph.models import FUNCTIONALS, build_baseline, check_params, is_classic, model_inputs
    from sergraph.models import build_model as build_neural

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
    validate_protocol(cfg.eval.protocol, cfg.graph.normalize)
    try:
        check_enrollment_amount(cfg.eval.enrollment)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if cfg.graph.max_nodes is not None:
        positive("graph.max_nodes", cfg.graph.max_nodes)
    try:
        check_k(cfg.graph.k, cfg.graph.max_nodes)
        check_dilations(cfg.graph.get("dilations"), cfg.graph.max_nodes)
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
    choice("optim.sampler", cfg.optim.get("sampler", "shuffle"), SAMPLERS)
    positive("optim.warmup_epochs", cfg.optim.warmup_epochs, strict=False)
    try:  # the schedule itself says what it needs of the epochs
        lr_factor(cfg.optim.schedule, cfg.optim.warmup_epochs, cfg.trainer.max_epochs)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    positive("augment.noise", cfg.augment.noise, strict=False)
    positive("augment.time_mask", cfg.augment.time_mask, strict=False)
    positive("augment.feature_mask", cfg.augment.feature_mask, strict=False)
    positive("augment.mixup", cfg.augment.mixup, strict=False)
    positive("optim.speaker_adversary", cfg.optim.speaker_adversary, strict=False)
    positive("trainer.max_epochs", cfg.trainer.max_epochs)
    _validate_topology(cfg)
    _validate_slurm(cfg)
    positive("trainer.patience", cfg.trainer.patience)
    positive("trainer.resume_every_s", cfg.trainer.resume_every_s, strict=False)
    parallel = cfg.run.parallel
    if parallel != "auto":
        if isinstance(parallel, bool) or not isinstance(parallel, int):
            raise ConfigError(f"run.parallel={parallel!r} must be a number of cells (> 0) or auto")
        positive("run.parallel", parallel)
    if cfg.run.get("threads") is not None:
        positive("run.threads", cfg.run.threads)
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
    _validate_fusion(cfg, is_classic(family))
    feature_set = cfg.features.feature_set
    if feature_set in ("ssl", "precomputed") and model_inputs(family) == FUNCTIONALS:
        raise ConfigError(
            f"model={cfg.model.name} is fitted on utterance functionals (features.functionals), "
            f"not on features.feature_set={feature_set}; choose a model fitted on frame-level "
            "features (a neural model)"
        )
    try:  # a tiny instance checks parameter names and values without touching data
        if is_classic(family):
            build_baseline(family, **params)
        elif build_model:
            build_neural(family, 4, 2, **params)
        else:
            check_params(family, params)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


#: Why an old ``graph.normalize`` value is refused, and what to write instead.
_REMOVED_NORMALIZE = {
    "train": "write graph.normalize=zscore with eval.protocol=inductive (the default; what "
    "graph.normalize=train meant)",
    "speaker": "write graph.normalize=zscore with eval.protocol=transductive (what "
    "graph.normalize=speaker alone meant: a held-out speaker normalised with the very "
    "utterances it is scored on) or eval.protocol=enrollment (a held-aside, never-scored part "
    "of each held-out speaker; deployable)",
}


def validate_protocol(protocol, normalize) -> None:
    """``eval.protocol`` is the one key for whose unlabelled audio shapes normalisation;
    ``graph.normalize`` says only whether to z-score. Refuse old spellings and contradictions,
    naming both keys and what would be accepted."""
    from sergraph.data.protocol import PROTOCOLS

    if protocol is None:
        raise ConfigError(
            "eval.protocol=null is no longer accepted: name the protocol, one of "
            f"{list(PROTOCOLS)} (inductive is the default). null used to mean transductive "
            "under graph.normalize=speaker and inductive otherwise"
        )
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"eval.protocol={protocol!r} is not valid; choose one of {list(PROTOCOLS)}"
        )
    if normalize in _REMOVED_NORMALIZE:
        raise ConfigError(
            f"graph.normalize={normalize} was removed: whose statistics normalise a speaker is "
            f"now eval.protocol's alone, and graph.normalize is {' or '.join(GRAPH_NORMALIZE)}; "
            + _REMOVED_NORMALIZE[normalize]
        )
    if normalize not in GRAPH_NORMALIZE:
        raise ConfigError(
            f"graph.normalize={normalize!r} is not valid; choose one of {list(GRAPH_NORMALIZE)} "
            "(whose statistics: eval.protocol)"
        )
    if normalize == "none" and protocol != "inductive":
        used = (
            "a held-aside part of each held-out speaker"
            if protocol == "enrollment"
            else "a held-out speaker's own audio"
        )
        raise ConfigError(
            f"eval.protocol={protocol} with graph.normalize=none: {protocol} lets {used} shape "
            "normalisation statistics, and graph.normalize=none computes none"
            + (
                " (its held-aside utterances would go unscored for nothing)"
                if protocol == "enrollment"
                else ""
            )
            + f"; accepted: eval.protocol={protocol} with graph.normalize=zscore, or "
            "graph.normalize=none with eval.protocol=inductive"
        )


def _validate_fusion(cfg: DictConfig, classic: bool) -> None:
    """``model.fusion``: null or one of :data:`FUSIONS`, on a neural model that gets the
    utterance functionals, with validation speakers to weigh it on, in one process."""
    fusion = cfg.model.get("fusion")
    if fusion is None:
        return
    if fusion not in FUSIONS:
        raise ConfigError(
            f"model.fusion={fusion!r} is not valid; choose null (no fusion) or one of "
            f"{list(FUSIONS)}"
        )
    if classic:
        raise ConfigError(
            f"model.fusion={fusion} fuses a neural model with the SVM; model {cfg.model.name!r} "
            "is a classic baseline itself (drop model.fusion)"
        )
    if not cfg.features.get("concat_functionals", False):
        raise ConfigError(
            f"model.fusion={fusion} fits the SVM on the utterance functionals the neural model "
            "gets: set features.concat_functionals=true (features.functionals names the set)"
        )
    if cfg.folds.val_speakers < 1:
        raise ConfigError(
            f"model.fusion={fusion} chooses the fusion weight on the validation speakers: set "
            f"folds.val_speakers >= 1 (it is {cfg.folds.val_speakers})"
        )
    if str(cfg.trainer.devices) != "1" or cfg.trainer.num_nodes != 1:
        raise ConfigError(
            f"model.fusion={fusion} runs in one process only: set trainer.devices=1 and "
            f"trainer.num_nodes=1 (they are {cfg.trainer.devices} and {cfg.trainer.num_nodes})"
        )


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
    if several and cfg.run.parallel != "auto" and cfg.run.parallel > 1:
        raise ConfigError(
            f"run.parallel={cfg.run.parallel} with trainer.devices={devices!r}, "
            f"trainer.num_nodes={cfg.trainer.num_nodes}: run cells one at a time (run.parallel=1) "
            "when each cell trains on several processes"
        )
    if several and cfg.optim.get("sampler", "shuffle") == "speaker_balanced":
        # (inside a SLURM job step the data module refuses it too, when training starts)
        raise ConfigError(
            f"optim.sampler=speaker_balanced is single-process only; trainer.devices={devices!r}, "
            f"trainer.num_nodes={cfg.trainer.num_nodes} train on several processes. Use "
            "trainer.devices=1 trainer.num_nodes=1, or optim.sampler=shuffle"
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
