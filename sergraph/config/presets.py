"""Which registered model family (and parameters) builds a configuration's model: a family
named directly or a preset of ``configs/model/``."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sergraph.config.files import config_dir, group_choices, load_yaml
from sergraph.config.schema import ConfigError


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
        if not is_family(family):
            raise ConfigError(
                f"model.family={family!r} is not a registered model family; choose one of "
                f"{model_names()}"
            )
        return family, dict(params)
    if is_family(name):
        return name, dict(params)
    path = config_dir() / "model" / f"{name}.yaml"
    preset = load_yaml(path) if path.is_file() else None
    if preset is None or not preset.get("family") or not is_family(str(preset.family)):
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


def is_family(name: str) -> bool:
    """Whether ``name`` is a registered model family (loading its plugin if it is one)."""
    from sergraph.models import PluginError, family

    try:
        family(name)
    except PluginError as error:
        raise ConfigError(str(error)) from None
    except ValueError:
        return False
    return True
