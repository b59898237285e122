"""The model registry: short name -> model family, filled by ``@register``.

Two kinds of family share one registry and one decorator:

- a **neural encoder**: a ``torch.nn.Module`` built as ``cls(in_channels, num_classes, **params)``
  whose ``forward(data)`` takes a PyG ``Batch`` and returns logits ``[num_graphs, num_classes]``;
  it is trained by the LightningModule on frame-level node features;
- a **classic baseline**: a :class:`~sergraph.models.classic.ClassicBaseline` built as
  ``cls(**params)``, fitted with plain numpy arrays (one vector per utterance).

Families come from the modules of :mod:`sergraph.models` (each imported once by the package,
whatever its file name) and from other installed packages through the entry-point group
:data:`ENTRY_POINT_GROUP`: an entry point ``NAME = package.module`` (or
``package.module:Class``) is loaded the first time model ``NAME`` is asked for, and must register
a family under ``NAME`` (a class given directly is registered under ``NAME`` if it is not
already). Presets (a family with other defaults) are YAML files in ``configs/model/``, not
classes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib import metadata

from torch import nn

from sergraph.data.prepared import INPUTS
from sergraph.models.classic import ClassicBaseline

#: The entry-point group through which other packages add model families.
ENTRY_POINT_GROUP = "sergraph.models"

#: Neural encoders by name.
MODELS: dict[str, type[nn.Module]] = {}
#: Classic (non-neural) baselines by name.
CLASSIC: dict[str, type[ClassicBaseline]] = {}

#: What a family is fitted on (see :func:`model_inputs`): frame-level node features per
#: utterance (a graph per utterance) or one vector of utterance functionals per utterance.
FRAMES, FUNCTIONALS = INPUTS


class PluginError(ImportError):
    """An entry point of group ``sergraph.models`` that cannot be loaded or registers nothing."""


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a model family to the registry under ``name``.

    The class is either a ``torch.nn.Module`` (a neural encoder) or a subclass of
    :class:`~sergraph.models.classic.ClassicBaseline`.
    """

    def decorator(cls: type) -> type:
        if isinstance(cls, type) and issubclass(cls, ClassicBaseline):
            table = CLASSIC
        elif isinstance(cls, type) and issubclass(cls, nn.Module):
            table = MODELS
        else:
            raise TypeError(
                f"@register({name!r}) decorates {cls!r}; register a torch.nn.Module subclass "
                "(a neural encoder) or a sergraph.models.classic.ClassicBaseline subclass"
            )
        known = MODELS.get(name) or CLASSIC.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"model name {name!r} is already registered to {known}")
        table[name] = cls
        return cls

    return decorator


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {point.name: point for point in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _describe(point: metadata.EntryPoint) -> str:
    dist = getattr(point, "dist", None)
    where = f" of distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point '{point.name} = {point.value}' (group {ENTRY_POINT_GROUP}{where})"


def _load_plugin(name: str) -> bool:
    """Load the entry point named ``name``, if any; raise :class:`PluginError` if it is broken."""
    point = _entry_points().get(name)
    if point is None:
        return False
    try:
        loaded = point.load()
    except Exception as error:  # noqa: BLE001 - any import-time failure of a plugin
        raise PluginError(
            f"model {name!r}: {_describe(point)} failed to load: {type(error).__name__}: {error}"
        ) from error
    if name not in MODELS and name not in CLASSIC and isinstance(loaded, type):
        try:
            register(name)(loaded)
        except TypeError as error:
            raise PluginError(f"model {name!r}: {_describe(point)}: {error}") from None
    if name not in MODELS and name not in CLASSIC:
        raise PluginError(
            f"model {name!r}: {_describe(point)} loaded but registered no model named {name!r}; "
            f"decorate its class with @sergraph.models.register({name!r}) or point the entry "
            "point at the class"
        )
    return True


def model_names() -> list[str]:
    """Every family name: built in, registered so far, and offered by installed entry points."""
    return sorted(set(MODELS) | set(CLASSIC) | set(_entry_points()))


def get_model_class(name: str) -> type:
    """Resolve a family name (loading its entry point if it comes from another package); an
    unknown name raises with the valid names listed."""
    if name not in MODELS and name not in CLASSIC and not _load_plugin(name):
        raise ValueError(
            f"model.name={name!r} is not a registered model; choose one of {model_names()} "
            "(or a preset in configs/model/ with model=NAME)"
        )
    return MODELS.get(name) or CLASSIC[name]


def is_classic(name: str) -> bool:
    """Whether family ``name`` is a classic baseline (fitted by numpy code, not by Lightning)."""
    return issubclass(get_model_class(name), ClassicBaseline)


def model_inputs(name: str) -> str:
    """What family ``name`` is fitted on: :data:`FRAMES` (node features per utterance; every
    neural encoder) or :data:`FUNCTIONALS` (one functionals vector per utterance)."""
    cls = get_model_class(name)
    return cls.inputs if issubclass(cls, ClassicBaseline) else FRAMES


def _accepted(name: str) -> dict[str, object]:
    """Every keyword argument a family's constructor chain accepts, with its default."""
    skip = {"self", "in_channels", "num_classes"}
    params: dict[str, object] = {}
    # A subclass that forwards **kwargs to its parent accepts the parent's parameters too.
    for cls in get_model_class(name).__mro__:
        if "__init__" not in vars(cls) or cls in (nn.Module, object):
            continue
        signature = inspect.signature(cls.__init__)
        for p in signature.parameters.values():
            if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def model_parameters(name: str) -> dict[str, object]:
    """The configurable keyword arguments of a family and their defaults (``global_channels``
    comes from the data, not from ``model.params``)."""
    params = _accepted(name)
    params.pop("global_channels", None)
    return params


def accepts_global(name: str) -> bool:
    """Whether a model can concatenate an utterance vector ``u`` with its graph embedding."""
    return not is_classic(name) and "global_channels" in _accepted(name)


def _check_params(name: str, params: dict) -> None:
    valid = model_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no parameter(s) {unknown}; valid model.params keys: {sorted(valid)}"
        )


def build_model(
    name: str, in_channels: int, num_classes: int, global_channels: int = 0, **params
) -> nn.Module:
    """Instantiate a registered neural family; unknown parameters raise with the valid ones.

    ``global_channels`` (from the data, like ``in_channels``) is the size of the utterance vector
    ``u`` of each graph (``features.concat_functionals``); 0 means none.
    """
    if is_classic(name):
        raise ValueError(
            f"model {name!r} is a classic baseline, not a neural network; build it with "
            "build_baseline"
        )
    _check_params(name, params)
    if global_channels:
        if not accepts_global(name):
            able = sorted(n for n in MODELS if accepts_global(n))
            raise ValueError(
                f"model {name!r} cannot use utterance functionals "
                f"(features.concat_functionals=true); models that can: {able}"
            )
        params["global_channels"] = global_channels
    return get_model_class(name)(in_channels, num_classes, **params)


def build_baseline(name: str, **params) -> ClassicBaseline:
    """Instantiate a registered classic baseline; unknown parameters raise with the valid ones."""
    if not is_classic(name):
        raise ValueError(f"model {name!r} is a neural network; build it with build_model")
    _check_params(name, params)
    return get_model_class(name)(**params)
