"""Model registry: short name -> encoder class.

Every registered class is a ``torch.nn.Module`` built as ``cls(in_channels, num_classes, **params)``
whose ``forward(data)`` takes a PyG ``Batch`` and returns logits ``[num_graphs, num_classes]``.
Register a new baseline with :func:`register` in one file under ``sergraph/models/`` and import
that file at the bottom of this module (see README, "Add a baseline").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

MODELS: dict[str, type[nn.Module]] = {}

#: Models that are not neural networks and are trained by the runner's own code path.
NON_NEURAL = ("svm",)


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a model to the registry under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {MODELS[name]}")
        MODELS[name] = cls
        return cls

    return decorator


def model_names() -> list[str]:
    return sorted(list(MODELS) + list(NON_NEURAL))


def get_model_class(name: str) -> type[nn.Module]:
    """Resolve a short name; an unknown name raises with the valid names listed."""
    if name not in MODELS:
        raise ValueError(
            f"model.name={name!r} is not a registered model; choose one of {model_names()}"
        )
    return MODELS[name]


def _accepted(name: str) -> dict[str, object]:
    """Every keyword argument a model's constructor chain accepts, with its default."""
    skip = {"self", "in_channels", "num_classes"}
    params: dict[str, object] = {}
    # A subclass that forwards **kwargs to its parent accepts the parent's parameters too.
    for cls in get_model_class(name).__mro__:
        if "__init__" not in vars(cls) or cls is nn.Module:
            continue
        signature = inspect.signature(cls.__init__)
        for p in signature.parameters.values():
            if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def model_parameters(name: str) -> dict[str, object]:
    """The configurable keyword arguments of a model and their defaults (``global_channels``
    comes from the data, not from ``model.params``)."""
    params = _accepted(name)
    params.pop("global_channels", None)
    return params


def accepts_global(name: str) -> bool:
    """Whether a model can concatenate an utterance vector ``u`` with its graph embedding."""
    return "global_channels" in _accepted(name)


def build_model(
    name: str, in_channels: int, num_classes: int, global_channels: int = 0, **params
) -> nn.Module:
    """Instantiate a registered model; unknown parameters raise with the valid ones listed.

    ``global_channels`` (from the data, like ``in_channels``) is the size of the utterance vector
    ``u`` of each graph (``features.concat_functionals``); 0 means none.
    """
    valid = model_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} has no parameter(s) {unknown}; valid model.params keys: {sorted(valid)}"
        )
    if global_channels:
        if not accepts_global(name):
            able = sorted(n for n in MODELS if accepts_global(n))
            raise ValueError(
                f"model {name!r} cannot use utterance functionals "
                f"(features.concat_functionals=true); models that can: {able}"
            )
        params["global_channels"] = global_channels
    return get_model_class(name)(in_channels, num_classes, **params)


# Populate the registry (import order does not matter).
from sergraph.models import gat, gcn, gin, recurrent, sage  # noqa: E402,F401
