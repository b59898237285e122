"""Model families by short name: the registry, one file per family, and plugins of other packages.

Every module of this package is imported when the package is (found with :mod:`pkgutil`, so a
new file ``sergraph/models/NAME.py`` with an ``@register("NAME")`` class needs no import line);
another package adds families through the entry-point group ``sergraph.models`` (see
:mod:`sergraph.models.registry` and the README, "Add a baseline"). Presets of a family (other
defaults) are YAML files in ``configs/model/``.
"""

from __future__ import annotations

import importlib
import pkgutil

from sergraph.models.registry import (
    CLASSIC,
    ENTRY_POINT_GROUP,
    FRAMES,
    FUNCTIONALS,
    MODELS,
    PluginError,
    accepts_global,
    build_baseline,
    build_model,
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
    "PluginError",
    "accepts_global",
    "build_baseline",
    "build_model",
    "get_model_class",
    "is_classic",
    "model_inputs",
    "model_names",
    "model_parameters",
    "register",
]

# Import every module of the package once, so that its @register classes are in the registry.
for _module in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
