"""The model registry as a plugin point: discovery, classic baselines, presets, model.family.

Loading families from another installed package (entry points) is tested for real, in
subprocesses, in ``tests/integration/test_plugins.py``.
"""

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from torch import nn

import sergraph.models
from sergraph.config import ConfigError, compose, identity, model_spec, resolve_model
from sergraph.models import (
    CLASSIC,
    MODELS,
    build_baseline,
    build_model,
    get_model_class,
    is_classic,
    model_inputs,
    model_parameters,
    register,
)
from sergraph.models.classic import ClassicBaseline
from sergraph.models.svm import SVM_C_GRID

MODELS_DIR = Path(sergraph.models.__file__).parent


@pytest.fixture
def registry():
    """The registry's tables, restored after the test (which may register made-up families)."""
    saved = dict(MODELS), dict(CLASSIC)
    yield
    for table, before in zip((MODELS, CLASSIC), saved, strict=True):
        table.clear()
        table.update(before)


# --- discovery -------------------------------------------------------------------------------


def registered_in_source() -> dict[str, Path]:
    """Model name -> the file of ``sergraph/models/`` with its ``@register("NAME")`` line: an
    independent route to the registry's contents, the source read as text."""
    written: dict[str, Path] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        for name in re.findall(r'^@register\("(\w+)"\)', path.read_text(), re.MULTILINE):
            assert name not in written, f"@register({name!r}) in {written[name]} and {path}"
            written[name] = path
    return written


#: Every family of the package, from the registry (a family added by the documented recipe, a
#: file ``sergraph/models/NAME.py``, is covered with no edit here).
FAMILIES = sorted(set(MODELS) | set(CLASSIC))


def test_every_register_line_of_the_package_is_registered_without_an_import_list():
    written = registered_in_source()
    assert set(written) == set(FAMILIES)
    assert {"lstm_gin", "svm"} <= set(written)  # the reference model and baseline, at least
    # the package names none of its family modules: they are found by walking the folder
    tree = ast.parse((MODELS_DIR / "__init__.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    family_modules = {f"sergraph.models.{path.stem}" for path in written.values()}
    assert not imported & family_modules


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_its_files_class_and_runs_by_name_with_its_defaults(name):
    cls = get_model_class(name)
    # the class under the @register line of its file, not one registered elsewhere
    assert Path(inspect.getfile(cls)) == registered_in_source()[name]
    assert is_classic(name) == issubclass(cls, ClassicBaseline)
    assert model_inputs(name) == (cls.inputs if is_classic(name) else "frames")
    # model=NAME composes (validation builds a small instance) and names the family itself;
    # every parameter it takes has a default, so the name alone is a working model
    family, params = model_spec(compose([f"model={name}"]))
    assert family == name
    missing = [
        key for key, value in model_parameters(name).items() if value is inspect.Parameter.empty
    ]
    assert not missing, f"model {name!r}: parameters without a default: {missing}"
    if is_classic(name):
        assert isinstance(build_baseline(name, **params), cls)
    else:
        assert type(build_model(name, 6, 3, **params)) is cls


@pytest.mark.parametrize("name", FAMILIES)
def test_the_family_read_from_the_source_is_the_imported_class(name):
    """What validation reads without importing (the @register line and the __init__ signatures,
    parsed) equals what the imported class says through inspect, its own MRO walked."""
    from sergraph.models.registry import built_in_families

    cls = get_model_class(name)
    read = built_in_families()[name]
    assert read.module == cls.__module__
    assert read.classic == issubclass(cls, ClassicBaseline)
    assert read.inputs == (cls.inputs if read.classic else "frames")
    accepted = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (nn.Module, object):
            continue
        signature = inspect.signature(klass.__init__)
        for p in signature.parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                accepted.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            break
    for data_argument in ("self", "in_channels", "num_classes"):
        accepted.pop(data_argument, None)
    assert read.accepted == accepted


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"'lstm_gim' is not a registered model.*'lstm_gin'"):
        get_model_class("lstm_gim")
    with pytest.raises(ConfigError, match=r"model='lstm_gim'.*'gin'.*'lstm_gin'.*'svm'"):
        compose(["model=lstm_gim"])


# --- registering -----------------------------------------------------------------------------


def test_register_takes_modules_and_classic_baselines_only(registry):
    with pytest.raises(TypeError, match="ClassicBaseline"):
        register("plain")(object)

    @register("tiny_linear")
    class TinyLinear(nn.Module):
        def __init__(self, in_channels, num_classes, bias: bool = True):
            super().__init__()
            self.linear = nn.Linear(in_channels, num_classes, bias=bias)

    @register("constant")
    class Constant(ClassicBaseline):
        def __init__(self, column: int = 0):
            self.column = column

    assert MODELS["tiny_linear"] is TinyLinear and CLASSIC["constant"] is Constant
    assert model_parameters("tiny_linear") == {"bias": True}
    assert model_parameters("constant") == {"column": 0}
    assert build_model("tiny_linear", 5, 2, bias=False).linear.bias is None
    assert build_baseline("constant", column=2).column == 2
    assert (model_inputs("tiny_linear"), model_inputs("constant")) == ("frames", "functionals")
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['colum'\].*\['column'\]"):
        build_baseline("constant", colum=1)
    with pytest.raises(ValueError, match="already registered"):
        register("constant")(TinyLinear)


def test_svm_is_a_classic_baseline_fitted_on_functionals():
    assert is_classic("svm") and not is_classic("lstm_gin")
    assert model_inputs("svm") == "functionals" and model_inputs("lstm_gin") == "frames"
    assert model_parameters("svm") == {"class_weight": "nested"}
    assert model_parameters("svm_linearsvc") == {"class_weight": None}
    with pytest.raises(ValueError, match="build_baseline"):
        build_model("svm", 6, 3)
    with pytest.raises(ValueError, match="build_model"):
        build_baseline("gcn")


def test_svm_through_the_interface_separates_separable_speakers():
    # 3 speakers x 3 classes; class c sits at 10 * e_c (+ a speaker offset), class 3 never
    # occurs: its column must be 0. Speaker "c" is the test speaker.
    rows, labels, speakers = [], [], []
    for offset, speaker in ((0.0, "a"), (0.3, "b"), (-0.2, "c")):
        for label in range(3):
            for take in range(2):
                vector = np.full(4, offset) + take * 0.1
                vector[label] += 10.0
                rows.append(vector)
                labels.append(label)
                speakers.append(speaker)
    values, labels, speakers = np.array(rows), np.array(labels), np.array(speakers)
    train, test = np.flatnonzero(speakers != "c"), np.flatnonzero(speakers == "c")
    scores, extra = build_baseline("svm").fit_predict(
        values, labels, speakers, train, test, num_classes=4, seed=0, normalize="train"
    )
    assert scores.shape == (6, 4)
    assert np.allclose(scores.sum(axis=1), 1.0) and np.all(scores[:, 3] == 0.0)
    assert list(scores.argmax(axis=1)) == [0, 0, 1, 1, 2, 2]
    assert extra["svm_C"] in SVM_C_GRID and extra["inner_cv_ua"] == 1.0


# --- presets and model.family ----------------------------------------------------------------


def test_a_preset_names_its_family_and_writes_out_what_it_changes():
    cfg = compose(["model=gin"])
    assert (cfg.model.name, cfg.model.family, cfg.model.params.use_lstm) == (
        "gin",
        "lstm_gin",
        False,
    )
    family, params = model_spec(cfg)
    assert family == "lstm_gin" and params["use_lstm"] is False and params["hidden"] == 128
    assert model_spec(compose(["model=sage_lstm"]))[0] == "sage_mean"


def test_family_equal_to_the_name_leaves_the_config_id_alone():
    assert identity(compose(["model=gat", "model.family=gat"])) == identity(compose(["model=gat"]))
    # the same network under its preset name is another run (its folder and id differ)
    preset = compose(["model=lstm_gat"])
    by_hand = compose(["model=gat", "model.params.use_lstm=true"])
    assert model_spec(preset) == model_spec(by_hand)
    assert identity(preset) != identity(by_hand)


def test_a_preset_name_without_family_builds_the_preset_as_before():
    # How experiment files written before presets had families say "GIN": model.name only, over
    # the default model group's params (lstm_gin.yaml has no use_lstm); the preset supplies it.
    cfg = compose(["model.name=gin"])
    assert cfg.model.family is None and "use_lstm" not in cfg.model.params
    family, params = model_spec(cfg)
    assert family == "lstm_gin" and params["use_lstm"] is False
    assert resolve_model("gin", {"use_lstm": True}) == (
        "lstm_gin",
        {"use_lstm": True, "hidden": 128, "num_layers": 5, "train_eps": True, "readout": "sum"},
    )
    assert resolve_model("gcn", {"hidden": 8}) == ("gcn", {"hidden": 8})


def test_unknown_family_and_unknown_saved_name_list_the_families():
    with pytest.raises(ConfigError, match=r"model.family='gim'.*'lstm_gin'"):
        compose(["model=gin", "model.family=gim"])
    with pytest.raises(ConfigError, match=r"model.name='gcnn'.*'gcn'"):
        resolve_model("gcnn", {})
    with pytest.raises(ConfigError, match="model.params"):
        compose(["model=svm", "model.params.C=1"])


def test_a_checkpoint_naming_a_preset_rebuilds_the_preset():
    # Checkpoints written while GIN was a class store model="gin" and the config's params only.
    from sergraph.training.module import SERModule

    module = SERModule(
        model="gin", model_params={"hidden": 8, "num_layers": 2}, in_channels=6, class_names="ab"
    )
    assert type(module.model).__name__ == "LSTMGIN" and module.model.front is None
    assert len(module.model.convs) == 2 and module.model.convs[0].nn[0].out_features == 8
