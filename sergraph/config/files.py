"""The shipped YAML config folder: where it is, its group choices, reading one file."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sergraph.config.schema import ConfigError
from sergraph.io import shipped_folder


def config_dir() -> Path:
    """The folder holding ``default.yaml`` and the group folders: package data
    ``sergraph.configs`` of an installed sergraph (wheel or editable), else the ``configs/``
    folder of a source tree on the path (``PYTHONPATH=.`` on a machine that cannot install)."""
    folder, candidates = shipped_folder("sergraph.configs", "configs", "default.yaml")
    if folder is not None:
        return folder
    raise ConfigError(
        "sergraph's configs were not found: install sergraph (pip install -e .) or run from a "
        f"source tree with its configs/ folder (looked in {', '.join(map(str, candidates))})"
    )


def group_choices(group: str) -> list[str]:
    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_yaml(path: Path) -> DictConfig:
    try:
        return OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 - re-raised with the file named
        raise ConfigError(f"cannot read config file {path}: {error}") from error
