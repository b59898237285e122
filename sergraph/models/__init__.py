"""Model families by short name: the registry, one file per family, and plugins of other packages.

A new file ``sergraph/models/NAME.py`` with an ``@register("NAME")`` class needs no import line:
the registry reads the ``@register`` lines of the package's source, and imports a family's module
when its class is first asked for (validating a configuration imports none of them; see
:mod:`sergraph.models.registry`). Another package adds families through the entry-point group
``sergraph.models`` (see the README, "Add a baseline"). Presets of a family (other defaults) are
YAML files in ``configs/model/``.

``MODELS`` and ``CLASSIC`` (name -> class) import every family module of the package when read.
"""

from __future__ import annotations

from sergraph.models.registry import (
    ENTRY_POINT_GROUP,
    FRAMES,
    FUNCTIONALS,
    Family,
    PluginError,
    accepts_global,
    build_baseline,
    build_model,
    check_params,
    family,
    get_model_class,
    is_classic,
    model_inputs,
    model_names,
    model_parameters,
    register,
)

__all__ = [
    "CLASSIC",
    "ENTRY_POINT_GROUP",
    "FRAMES",
    "FUNCTIONALS",
    "MODELS",
    "Family",
    "PluginError",
    "accepts_global",
    "build_baseline",
    "build_model",
    "check_params",
    "family",
    "get_model_class",
    "is_classic",
    "model_inputs",
    "model_names",
    "model_parameters",
    "register",
]


def __getattr__(name: str):
    # The full tables of classes need every family module (and so torch): imported on first read.
    if name in ("MODELS", "CLASSIC"):
        from sergraph.models import registry

        registry.load_built_in()
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
