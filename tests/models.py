"""Building a model by the name a user writes after ``model=``: a family or a preset."""

from __future__ import annotations

from sergraph.config import config_dir, resolve_model
from sergraph.models import MODELS, build_model, is_classic

# Every model with a fast path. A model that silently loses its fast path fails
# test_fast_path.py::test_fast_path_models_are_the_expected_ones.
FAST_MODELS = [
    "cheb",
    "ga_gru",
    "gat",
    "gcn",
    "gin",
    "lstm_gat",
    "lstm_gin",
    "lstm_sage_lstm",
    "lstm_sage_mean",
    "sage_lstm",
    "sage_mean",
]


def build_named(name: str, in_channels: int, num_classes: int, **params):
    """``build_model`` of a registered family, or of a preset in ``configs/model/`` (its family,
    with the preset's params under ``params``)."""
    family, merged = resolve_model(name, params)
    return build_model(family, in_channels, num_classes, **merged)


def neural_names() -> list[str]:
    """Every name ``model=NAME`` accepts that builds a neural network: registered families and
    the presets of ``configs/model/``."""
    files = [path.stem for path in (config_dir() / "model").glob("*.yaml")]
    return sorted(name for name in {*MODELS, *files} if not is_classic(resolve_model(name, {})[0]))
