"""Start-up: the verbs that only read configs or results do not import the training stack.

Each verb runs in a fresh interpreter (``python -c``) and the test reads ``sys.modules`` at the
end: what a verb imports, not how long it takes (times are measured by
``benchmarks/bench_startup.py``, never asserted). The training stack (Lightning, torchmetrics)
and openSMILE are imported by the verbs that train or extract, and only by them.

``config`` and ``folds`` import neither torch nor PyG: the registry describes the families of
the package from their source, and these verbs check ``model.params`` names without building the
model (every other verb builds a tiny instance, which checks the values too).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_report import config_yaml, perfect, write_cell

TRAINING_STACK = ("lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics", "opensmile")

PROBE = """
import contextlib, io, json, sys
from sergraph.cli import main
code = None
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as stop:
        code = stop.code
names = ("pandas", "torch", "torch_geometric", "scipy.signal", {stack})
imported = [m for m in names if m in sys.modules]
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "imported": imported}}))
"""


def imported_by(argv: list[str], cwd: Path) -> dict:
    probe = PROBE.format(stack=", ".join(repr(m) for m in TRAINING_STACK))
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(argv)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup") / "study"
    for fold in range(2):
        write_cell(root, "A", 0, fold, perfect(fold), 1.0, 1.0, config_yaml("A", 4, "sum", "[0]"))
        write_cell(root, "B", 0, fold, perfect(fold), 1.0, 1.0, config_yaml("B", 4, "mean", "[0]"))
    return root


def test_help_imports_neither_pandas_nor_torch_nor_the_training_stack(tmp_path):
    result = imported_by(["--help"], tmp_path)
    assert result["code"] == 0
    assert "train" in result["out"]
    assert result["imported"] == []


@pytest.mark.parametrize("model", ["lstm_gin", "svm"])
@pytest.mark.parametrize("verb", ["config", "folds"])
def test_config_and_folds_import_neither_torch_nor_pyg_nor_the_training_stack(
    verb, model, tmp_path
):
    argv = [verb, f"model={model}", "data.options.n_speakers=3", "data.options.n_per_class=2"]
    if verb == "folds":
        # on a fresh cache the first `folds` synthesises the corpus (scipy.signal's filters);
        # start-up is measured on a corpus that exists, as every later command finds it
        imported_by(argv, tmp_path)
    result = imported_by(argv, tmp_path)
    assert result["code"] in (0, None)
    assert result["out"].strip()  # printed the config / the fold table
    heavy = {"torch", "torch_geometric", "scipy.signal", *TRAINING_STACK}
    assert not heavy & set(result["imported"]), result["imported"]


def test_config_still_refuses_an_unknown_parameter_naming_the_valid_ones(tmp_path):
    result = imported_by(["config", "model=gat", "model.params.hiden=8"], tmp_path)
    assert result["code"] == 2
    assert "no parameter(s) ['hiden']" in result["err"]
    assert "'heads'" in result["err"] and "'hidden'" in result["err"]  # GAT's and its base's
    assert "torch" not in result["imported"]


def test_report_imports_neither_pyg_nor_the_training_stack(run_dir, tmp_path):
    result = imported_by(["report", str(run_dir), "--out", str(tmp_path / "out")], tmp_path)
    assert result["code"] == 0
    assert "A" in result["out"] and "B" in result["out"]
    assert not {"torch_geometric", *TRAINING_STACK} & set(result["imported"]), result["imported"]


def test_emotion_scores_is_one_torchmetrics_class():
    """The class defined on first use is the same object on every access, and pickles by name."""
    import pickle

    from torchmetrics.classification import MulticlassConfusionMatrix

    import sergraph.metrics as metrics

    first = metrics.EmotionScores
    assert metrics.EmotionScores is first
    assert issubclass(first, MulticlassConfusionMatrix)
    assert (first.__module__, first.__qualname__) == ("sergraph.metrics", "EmotionScores")
    metric = first(3)
    assert type(pickle.loads(pickle.dumps(metric))) is first
    with pytest.raises(AttributeError):
        metrics.NoSuchName  # noqa: B018
