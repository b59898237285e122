"""Composition of a configuration: schema defaults, ``default.yaml``, config groups,
experiments (``extends:``, ``variants:``) and dotted overrides, then validation."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sergraph.config.cross_corpus import resolve_cross_corpus
from sergraph.config.files import config_dir, group_choices, load_yaml
from sergraph.config.labels import format_value, grid_of, grid_variants, split_multirun
from sergraph.config.presets import is_family
from sergraph.config.schema import DEFAULT_GROUPS, GROUPS, Config, ConfigError
from sergraph.config.validation import validate
from sergraph.io import file_sha256


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


def _source(path: Path, sources: dict[str, str] | None) -> None:
    """Record a composing file's SHA-256 under its path relative to the config folder."""
    if sources is not None:
        sources[path.relative_to(config_dir()).as_posix()] = file_sha256(path)


def _load_experiment(
    name: str, chain: tuple[str, ...] = (), sources: dict[str, str] | None = None
) -> DictConfig:
    """An experiment file; ``extends: other`` at its top merges it over experiment ``other``
    (whose ``variants`` and ``controls`` are not inherited)."""
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
    cfg = load_yaml(path)
    _source(path, sources)
    parent = cfg.pop("extends", None)
    if parent is None:
        return cfg
    base = _load_experiment(str(parent), (*chain, name), sources)
    base.pop("variants", None)
    base.pop("controls", None)
    base.pop("grid", None)
    return OmegaConf.merge(base, cfg)


def compose(
    overrides: list[str] | tuple[str, ...] = (),
    variant: str | None = None,
    build_model: bool = True,
) -> DictConfig:
    """Build and validate the configuration from ``group=name`` and ``key=value`` overrides.

    Args:
        overrides: command-line overrides; a multirun's start with
            :data:`~sergraph.config.labels.MULTIRUN` and may list several values of a key
            (``graph.k=2,4``): the grid's points become variants (see :func:`study_variants`).
        variant: for an experiment with ``variants`` (or a grid), the label whose overrides to
            apply. Its group choices win over the command line's; its dotted overrides come
            before the command line's, so ``trainer.max_epochs=5`` still applies to every
            variant.
        build_model: check ``model.params`` with a tiny instance of the model (see
            :func:`~sergraph.config.validation.validate`; ``False`` imports no torch).
    """
    cfg = _compose(overrides, variant)
    validate(cfg, build_model)
    return cfg


def _compose(overrides, variant: str | None = None) -> DictConfig:
    """:func:`compose` without the validation of the result."""
    multirun, overrides = split_multirun(overrides)
    overrides, cli_grid = grid_of(overrides) if multirun else (overrides, {})
    groups, experiment, dotted = _split_overrides(overrides)
    groups = {**DEFAULT_GROUPS, **groups}
    sources: dict[str, str] = {}
    experiment_cfg = _load_experiment(experiment, (), sources) if experiment is not None else None
    variants, grid, first_point = study_variants(experiment_cfg, cli_grid)
    if grid and any(item.startswith("run.label=") for item in dotted):
        raise ConfigError(
            "run.label cannot be given with a grid: each point is labelled by its settings "
            f"({', '.join(list(variants)[:2])}, ...); name the study with run.name instead"
        )
    if variant is not None:
        if variant not in variants:
            raise ConfigError(
                f"variant {variant!r} is not in this experiment; choose one of {sorted(variants)}"
            )
        variant_groups, _, variant_dotted = _split_overrides(list(variants[variant]))
        groups.update(variant_groups)
        # the label is set after the merge below (a label such as k=2,readout=sum is no
        # dotlist value); a run.label on the command line still wins, as it always did
        explicit_label = any(item.startswith("run.label=") for item in dotted)
        dotted = list(variant_dotted) + dotted

    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, load_yaml(config_dir() / "default.yaml"), "configs/default.yaml")
    _source(config_dir() / "default.yaml", sources)
    for group, choice in groups.items():
        path = config_dir() / group / f"{choice}.yaml"
        if group == "model" and not path.is_file() and is_family(choice):
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
        cfg = _merge(cfg, {group: load_yaml(path)}, f"configs/{group}/{choice}.yaml")
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
        if key == "reference":  # a label (k=2,readout=sum), taken as written; null: none
            value = item.split("=", 1)[1]
            cfg.reference = None if value in ("null", "~", "") else value
            continue
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
    if variant is not None and not explicit_label:
        cfg.run.label = variant
    cfg.run.sources = dict(sorted(sources.items()))
    resolve_cross_corpus(cfg)
    if grid:
        # The study records its grid and every point as a declared variant (what report and
        # select read); the first point is the reference unless one is declared.
        cfg.grid = grid
        cfg.variants = variants
        if cfg.reference is None:
            cfg.reference = first_point
        if cfg.reference is not None and cfg.reference not in variants:
            raise ConfigError(
                f"reference={cfg.reference!r} is not a variant of this study; choose one of "
                f"{list(variants)}"
            )
    return cfg


def study_variants(
    experiment_cfg: DictConfig | None, cli_grid: dict[str, list[str]]
) -> tuple[dict[str, list[str]], dict[str, list[str]], str | None]:
    """(label -> overrides of every variant, the grid: key -> value texts, the label of the
    grid's first point) of a study.

    The variants are the experiment's ``variants:``, then the points of its ``grid:`` with the
    command line's multirun keys (``-m KEY=a,b``) added to (or replacing) the file's.
    """
    variants: dict[str, list[str]] = {}
    grid: dict[str, list[str]] = {}
    if experiment_cfg is not None:
        variants = {
            str(label): list(items) for label, items in experiment_cfg.get("variants", {}).items()
        }
        file_grid = experiment_cfg.get("grid")
        if file_grid is None:
            file_grid = {}
        elif not isinstance(file_grid, DictConfig):
            raise ConfigError(
                "grid: expected a mapping of keys to lists of values, e.g. "
                "grid: {graph.k: [2, 4], model.params.readout: [sum, mean]}"
            )
        for key, values in file_grid.items():
            values = OmegaConf.to_container(values) if not isinstance(values, str) else values
            if not isinstance(values, list):
                raise ConfigError(f"grid: {key} must be a list of values, e.g. {key}: [2, 4]")
            grid[str(key)] = values
    grid.update(cli_grid)
    points = grid_variants(grid)
    clash = sorted(set(points) & set(variants))
    if clash:
        raise ConfigError(f"grid points {clash} have the labels of variants; rename the variants")
    texts = {key: [format_value(value) for value in values] for key, values in grid.items()}
    # a grid of one point (a W&B agent's run) has nothing to compare within it: no reference
    return {**variants, **points}, texts, next(iter(points)) if len(points) > 1 else None


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
    for label, control in base.controls.items():
        missing = [name for name in (label, control) if name not in base.variants]
        if missing:
            raise ConfigError(
                f"controls: {label}: {control} names {missing}, not variants of this experiment; "
                f"choose from {labels}"
            )
    if base.run.variants:
        unknown = [label for label in base.run.variants if label not in base.variants]
        if unknown:
            raise ConfigError(
                f"run.variants: {unknown} are not variants of this experiment; choose from {labels}"
            )
        labels = [label for label in labels if label in base.run.variants]
    configs = {label: compose(overrides, variant=label) for label in labels}
    for label, cfg in configs.items():
        for key in ("name", "out_dir"):  # where the study lives: one place for all variants
            if cfg.run[key] != base.run[key]:
                raise ConfigError(
                    f"variants: {label}: run.{key}={cfg.run[key]!r}, but the study's is "
                    f"{base.run[key]!r}; a variant writes inside its study (so the study's "
                    f"summary and report include it), so set run.{key} for the whole study (the "
                    "experiment file's top level or the command line), not in a variant"
                )
    return configs


def run_settings(cfg: DictConfig, overrides) -> tuple[dict, dict]:
    """The settings a standalone run's command line gives: (those that differ from its base,
    all of them), each ``key -> value`` as in ``cfg`` (group choices ``group -> name``).

    The base is the composition of the same group choices and experiment without the
    command line's dotted overrides; a group choice other than the default is a setting too. Keys that change no result or name the study (``run.*``, ``logger.*``,
    ``folds.only``, ...) are no settings; nor is ``data=NAME`` unless ``run.name`` is given
    (the study folder is named after the corpus otherwise).
    """
    from sergraph.config.labels import labelled

    _, overrides = split_multirun(overrides)
    groups, experiment, dotted = _split_overrides(overrides)
    base_overrides = [f"{group}={choice}" for group, choice in groups.items()]
    base = _compose(base_overrides + ([f"experiment={experiment}"] if experiment else []))
    given: dict = {}
    differing: dict = {}
    for group, choice in groups.items():
        if group == "data" and cfg.run.name is None:
            continue
        given[group] = choice
        if choice != DEFAULT_GROUPS[group]:
            differing[group] = choice
    for item in dotted:
        key = item.split("=", 1)[0]
        if not labelled(key):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        given[key] = value
        before = OmegaConf.select(base, key, default="<absent>")
        if isinstance(before, (DictConfig, ListConfig)):
            before = OmegaConf.to_container(before, resolve=True)
        if value != before:
            differing[key] = value
        else:
            differing.pop(key, None)
    return differing, given


def _is_free_dict(cfg: DictConfig, dotted: str) -> bool:
    """Keys under these nodes are free-form (checked later against the model/corpus)."""
    return dotted in ("model.params", "data.options", "data.merge") or (
        dotted == "cross_corpus.test" or dotted.startswith("cross_corpus.test.")
    )
