"""Typed configuration: an OmegaConf structured schema, YAML config groups and CLI overrides.

Composition order (later wins):

1. the schema defaults (:mod:`sergraph.config.schema`);
2. ``configs/default.yaml``;
3. one file per config group (``data``, ``model``, ``trainer``), chosen by ``group=name`` on the
   command line (defaults: ``data=synthetic model=lstm_gin trainer=default``);
4. ``experiment=name``: a top-level file from ``configs/experiment/`` that may set any key
   (``extends: other`` in it starts from experiment ``other``);
5. dotted overrides ``key.sub=value`` (``data.root=/path``, ``model.params.readout=mean``).

Every mistyped key or value raises :class:`ConfigError` before any work, naming the key and the
valid choices.

Modules: ``schema`` (the dataclasses and choices), ``files`` (the shipped YAML folder),
``presets`` (model family of a configuration), ``validation``, ``composition`` (``compose``,
``compose_study``) and ``run_id`` (``identity``, the keys left out of it, ``to_yaml``). Every
public name is importable from ``sergraph.config`` itself (``file_sha256``, formerly of
``files``, is :func:`sergraph.io.file_sha256`).
"""

from sergraph.config.composition import compose, compose_study
from sergraph.config.files import config_dir, group_choices
from sergraph.config.presets import model_family, model_spec, resolve_model
from sergraph.config.run_id import (
    LATER_KEYS,
    LEGACY_NORMALIZE,
    RUNTIME_KEYS,
    SSL_RUNTIME_KEYS,
    identity,
    normalization_of,
    protocol_of,
    to_yaml,
    upgrade_saved,
)
from sergraph.config.schema import (
    DEFAULT_GROUPS,
    GRAPH_NORMALIZE,
    GROUPS,
    ON_ERROR_CHOICES,
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    FeatureConfig,
    FeaturesConfig,
    FoldsConfig,
    GraphConfig,
    LoggerConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SlurmConfig,
    TrainerConfig,
)
from sergraph.config.validation import (
    PRECISIONS,
    STRATEGIES,
    check_precision,
    validate,
    validate_protocol,
)
from sergraph.io import file_sha256

__all__ = [
    "DEFAULT_GROUPS",
    "GRAPH_NORMALIZE",
    "GROUPS",
    "LATER_KEYS",
    "LEGACY_NORMALIZE",
    "ON_ERROR_CHOICES",
    "PRECISIONS",
    "RUNTIME_KEYS",
    "SSL_RUNTIME_KEYS",
    "STRATEGIES",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FeatureConfig",
    "FeaturesConfig",
    "FoldsConfig",
    "GraphConfig",
    "LoggerConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SlurmConfig",
    "TrainerConfig",
    "check_precision",
    "compose",
    "compose_study",
    "config_dir",
    "file_sha256",
    "group_choices",
    "identity",
    "model_family",
    "model_spec",
    "normalization_of",
    "protocol_of",
    "resolve_model",
    "to_yaml",
    "upgrade_saved",
    "validate",
    "validate_protocol",
]
