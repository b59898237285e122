"""The model registry: short name -> model family, filled by ``@register``.

Two kinds of family share one registry and one decorator:

- a **neural encoder**: a ``torch.nn.Module`` built as ``cls(in_channels, num_classes, **params)``
  whose ``forward(data)`` takes a PyG ``Batch`` and returns logits ``[num_graphs, num_classes]``;
  it is trained by the LightningModule on frame-level node features;
- a **classic baseline**: a :class:`~sergraph.models.classic.ClassicBaseline` built as
  ``cls(**params)``, fitted with plain numpy arrays (one vector per utterance).

Families come from the modules of :mod:`sergraph.models` and from other installed packages
through the entry-point group :data:`ENTRY_POINT_GROUP`: an entry point ``NAME = package.module``
(or ``package.module:Class``) is loaded the first time model ``NAME`` is asked for, and must
register a family under ``NAME`` (a class given directly is registered under ``NAME`` if it is
not already). Presets (a family with other defaults) are YAML files in ``configs/model/``, not
classes.

A family of the package is known before its module is imported: :func:`built_in_families` reads
the ``@register("NAME")`` lines and the ``__init__`` signatures from the source of
``sergraph/models/*.py`` (with :mod:`ast`), which is all that validating a configuration needs
(names, kind, inputs, parameters and their defaults). So the verbs that only compose a
configuration import neither torch nor PyG; the module of a family is imported when its class is
asked for (:func:`get_model_class`, :func:`build_model`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from sergraph.data.prepared import INPUTS
from sergraph.models.classic import ClassicBaseline

if TYPE_CHECKING:
    from torch import nn

#: The entry-point group through which other packages add model families.
ENTRY_POINT_GROUP = "sergraph.models"

#: Neural encoders by name, as registered so far (``sergraph.models.MODELS``: every built-in one).
MODELS: dict[str, type[nn.Module]] = {}
#: Classic (non-neural) baselines by name, as registered so far (``sergraph.models.CLASSIC``:
#: every built-in one).
CLASSIC: dict[str, type[ClassicBaseline]] = {}

#: What a family is fitted on (see :func:`model_inputs`): frame-level node features per
#: utterance (a graph per utterance) or one vector of utterance functionals per utterance.
FRAMES, FUNCTIONALS = INPUTS

_PACKAGE = "sergraph.models"
#: The base class of every neural encoder, as the source of a model module spells it.
_NEURAL_ROOT = "torch.nn.Module"
_CLASSIC_ROOT = f"{_PACKAGE}.classic.ClassicBaseline"
#: Constructor arguments that come from the data, never from ``model.params``.
_FROM_DATA = ("self", "in_channels", "num_classes")


class PluginError(ImportError):
    """An entry point of group ``sergraph.models`` that cannot be loaded or registers nothing."""


@dataclass(frozen=True)
class Family:
    """What validation needs of a model family, without building it.

    Attributes:
        name: the registered name.
        module: the module that defines (and registers) its class.
        classic: a classic baseline (else a neural encoder).
        inputs: :data:`FRAMES` or :data:`FUNCTIONALS`.
        accepted: every keyword argument of its constructor chain, with its default
            (``inspect.Parameter.empty`` for none), ``global_channels`` included.
    """

    name: str
    module: str
    classic: bool
    inputs: str
    accepted: dict[str, object]


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a model family to the registry under ``name``.

    The class is either a ``torch.nn.Module`` (a neural encoder) or a subclass of
    :class:`~sergraph.models.classic.ClassicBaseline`.
    """

    def decorator(cls: type) -> type:
        if isinstance(cls, type) and issubclass(cls, ClassicBaseline):
            table = CLASSIC
        elif isinstance(cls, type) and _is_module(cls):
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


def _is_module(cls: type) -> bool:
    from torch import nn

    return issubclass(cls, nn.Module)


# --- the families of the package, read from its source ---------------------------------------


class _Unreadable(Exception):
    """A family whose metadata the source alone does not give (its module is imported)."""


def _imported_names(tree: ast.Module, module: str) -> dict[str, str]:
    """Local name -> dotted name, for the top-level imports and classes of a module."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ClassDef):
            names[node.name] = f"{module}.{node.name}"
    return names


def _dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value, names)
        return f"{owner}.{node.attr}" if owner else None
    return None


def _registered_name(decorator: ast.expr, names: dict[str, str]) -> str | None:
    """``NAME`` of a decorator ``@register("NAME")`` (however ``register`` was imported)."""
    if not (isinstance(decorator, ast.Call) and len(decorator.args) == 1):
        return None
    target = _dotted(decorator.func, names)
    if target not in (f"{_PACKAGE}.registry.register", f"{_PACKAGE}.register"):
        return None
    argument = decorator.args[0]
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return argument.value
    raise _Unreadable(f"@register with a computed name: {ast.unparse(decorator)}")


@dataclass(frozen=True)
class _ClassSource:
    bases: tuple[str | None, ...]
    init: ast.FunctionDef | None
    inputs: ast.expr | None  # a class-level ``inputs = ...``


def _signature(init: ast.FunctionDef) -> tuple[dict[str, object], bool]:
    """The keyword arguments of an ``__init__`` with their defaults, and whether it takes
    ``**kwargs`` (then its parent's arguments are accepted too)."""
    arguments = init.args
    positional = arguments.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(arguments.defaults))
    defaults += [ast.literal_eval(node) for node in arguments.defaults]
    accepted = dict(zip((a.arg for a in positional), defaults, strict=True))
    for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        accepted[argument.arg] = (
            inspect.Parameter.empty if default is None else ast.literal_eval(default)
        )
    return accepted, arguments.kwarg is not None


@lru_cache(maxsize=1)
def built_in_families() -> dict[str, Family]:
    """Every family registered in ``sergraph/models/*.py``, read from the source without
    importing it; a family whose metadata the source does not give plainly (a computed default,
    a base class from elsewhere) is described from its imported class instead."""
    classes: dict[str, _ClassSource] = {}
    registered: dict[str, tuple[str, str]] = {}  # name -> (module, dotted class)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem == "__init__":
            continue
        module = f"{_PACKAGE}.{path.stem}"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = _imported_names(tree, module)
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            body = {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
            inputs = next(
                (
                    item.value
                    for item in node.body
                    if isinstance(item, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "inputs" for t in item.targets)
                ),
                None,
            )
            dotted = f"{module}.{node.name}"
            classes[dotted] = _ClassSource(
                tuple(_dotted(base, names) for base in node.bases), body.get("__init__"), inputs
            )
            for decorator in node.decorator_list:
                try:
                    name = _registered_name(decorator, names)
                except _Unreadable:
                    continue  # found when its module is imported, as every family is
                if name is not None:
                    registered[name] = (module, dotted)
    families = {}
    for name, (module, dotted) in sorted(registered.items()):
        try:
            families[name] = _family_from_source(name, module, dotted, classes)
        except (_Unreadable, ValueError, SyntaxError):
            families[name] = _family_of_class(name, _import_family(name, module))
    return families


def _family_from_source(
    name: str, module: str, dotted: str, classes: dict[str, _ClassSource]
) -> Family:
    """Walk the class and its single chain of bases in the package, as :func:`_family_of_class`
    walks the ``__mro__`` of the imported class."""
    accepted: dict[str, object] = {}
    collecting, inputs, current = True, None, dotted
    while current not in (_NEURAL_ROOT, _CLASSIC_ROOT):
        source = classes.get(current)
        if source is None or len(source.bases) != 1:
            raise _Unreadable(f"{current}: not a class of {_PACKAGE} with one base class")
        if inputs is None and source.inputs is not None:
            inputs = ast.literal_eval(source.inputs)
        if collecting and source.init is not None:
            signature, forwards = _signature(source.init)
            for key, default in signature.items():
                if key not in _FROM_DATA:
                    accepted.setdefault(key, default)
            collecting = forwards
        current = source.bases[0]
    classic = current == _CLASSIC_ROOT
    if classic and inputs is None:
        inputs = ast.literal_eval(classes[_CLASSIC_ROOT].inputs)
    return Family(name, module, classic, inputs if classic else FRAMES, accepted)


def _family_of_class(name: str, cls: type) -> Family:
    """The same description, from an imported class (a plugin's, or one registered at run time)."""
    classic = issubclass(cls, ClassicBaseline)
    if classic:
        roots: tuple[type, ...] = (object,)
    else:
        from torch import nn

        roots = (nn.Module, object)
    accepted: dict[str, object] = {}
    # A subclass that forwards **kwargs to its parent accepts the parent's parameters too.
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in roots:
            continue
        signature = inspect.signature(klass.__init__)
        for p in signature.parameters.values():
            if p.name not in _FROM_DATA and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                accepted.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    inputs = cls.inputs if classic else FRAMES
    return Family(name, cls.__module__, classic, inputs, accepted)


def _import_family(name: str, module: str) -> type:
    importlib.import_module(module)
    cls = MODELS.get(name) or CLASSIC.get(name)
    if cls is None:
        raise ImportError(f"module {module} was imported but registered no model named {name!r}")
    return cls


def load_built_in() -> None:
    """Import the module of every family of the package (every ``@register`` class is then in
    :data:`MODELS` or :data:`CLASSIC`)."""
    for family in built_in_families().values():
        _import_family(family.name, family.module)


# --- plugins of other packages ---------------------------------------------------------------


def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The group's entry points of the distributions on ``sys.path``: read once per search
    path (reading them lists every installed distribution, about 6 ms, and a study asks for a
    preset's family several times per cell); a distribution installed into a running process's
    path is seen once ``sys.path`` changes, or in the next process."""
    return _entry_points_on(tuple(sys.path))


@lru_cache(maxsize=4)
def _entry_points_on(path: tuple[str, ...]) -> dict[str, metadata.EntryPoint]:
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


# --- lookups -----------------------------------------------------------------------------------


def importable_names() -> set[str]:
    """The family names a fresh process finds by name alone: built in, or offered by installed
    entry points (a class registered at run time, in a notebook say, is not among them)."""
    return set(built_in_families()) | set(_entry_points())


def model_names() -> list[str]:
    """Every family name: built in, registered so far, and offered by installed entry points."""
    return sorted(set(built_in_families()) | set(MODELS) | set(CLASSIC) | set(_entry_points()))


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"model.name={name!r} is not a registered model; choose one of {model_names()} "
        "(or a preset in configs/model/ with model=NAME)"
    )


def get_model_class(name: str) -> type:
    """Resolve a family name, importing its module (or loading its entry point if it comes
    from another package); an unknown name raises with the valid names listed."""
    if name not in MODELS and name not in CLASSIC:
        built_in = built_in_families().get(name)
        if built_in is not None:
            return _import_family(name, built_in.module)
        if not _load_plugin(name):
            raise _unknown(name)
    return MODELS.get(name) or CLASSIC[name]


def family(name: str) -> Family:
    """What validation needs of family ``name``: from the source for a family of the package
    (nothing imported), from its class otherwise (a plugin is loaded); an unknown name raises
    with the valid names listed."""
    cls = MODELS.get(name) or CLASSIC.get(name)
    if cls is None:
        built_in = built_in_families().get(name)
        if built_in is not None:
            return built_in
        cls = get_model_class(name)
    return _family_of_class(name, cls)


def is_classic(name: str) -> bool:
    """Whether family ``name`` is a classic baseline (fitted by numpy code, not by Lightning)."""
    return family(name).classic


def model_inputs(name: str) -> str:
    """What family ``name`` is fitted on: :data:`FRAMES` (node features per utterance; every
    neural encoder) or :data:`FUNCTIONALS` (one functionals vector per utterance)."""
    return family(name).inputs


def model_parameters(name: str) -> dict[str, object]:
    """The configurable keyword arguments of a family and their defaults (``global_channels``
    comes from the data, not from ``model.params``)."""
    params = dict(family(name).accepted)
    params.pop("global_channels", None)
    return params


def accepts_global(name: str) -> bool:
    """Whether a model can concatenate an utterance vector ``u`` with its graph embedding."""
    described = family(name)
    return not described.classic and "global_channels" in described.accepted


def check_params(name: str, params: dict) -> None:
    """Refuse parameter names that family ``name`` does not take, listing the valid ones."""
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
    check_params(name, params)
    if global_channels:
        if not accepts_global(name):
            neural = {*built_in_families(), *MODELS}
            able = sorted(n for n in neural if accepts_global(n))
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
    check_params(name, params)
    return get_model_class(name)(**params)
