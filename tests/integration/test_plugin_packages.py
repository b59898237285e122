"""Model families from another package, through the entry-point group ``sergraph.models``.

Each test writes a tiny installed distribution into ``tmp_path`` (its modules and a
``*.dist-info`` folder with ``entry_points.txt``, exactly what ``pip install`` leaves in
site-packages) and runs Python or the command line in a subprocess with ``tmp_path`` on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from tests.cli import run_cli as sergraph

PLUGIN = '''
"""A package of its own with a neural family and a classic baseline."""
import numpy as np
from torch import nn
from torch_geometric.nn import global_mean_pool

from sergraph.models import register
from sergraph.models.classic import ClassicBaseline


@register("toy_mean")
class ToyMean(nn.Module):
    """Mean of each graph's node features times ``scale``, then a linear classifier."""

    def __init__(self, in_channels, num_classes, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, data):
        return self.linear(self.scale * global_mean_pool(data.x, data.batch))


class Prior(ClassicBaseline):
    """Scores every test utterance with the class frequencies of the training rows."""

    def fit_predict(self, values, labels, speakers, train_rows, test_rows, *, num_classes,
                    seed, normalize):
        counts = np.bincount(labels[train_rows], minlength=num_classes).astype(float)
        scores = np.tile(counts / counts.sum(), (len(test_rows), 1))
        return scores, {"n_train": int(len(train_rows)), "n_values": int(values.shape[0])}
'''

ENTRY_POINTS = """
[sergraph.models]
toy_mean = sergraph_toy_plugin
toy_prior = sergraph_toy_plugin:Prior
broken = sergraph_toy_broken
"""

SMALL = [
    "data.options.n_speakers=4",
    "data.options.n_per_class=4",
    "folds.only=[0]",
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
]


@pytest.fixture
def plugin_env(env, tmp_path):
    """The CLI environment with a tiny 'installed' plugin distribution on the path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sergraph_toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (site / "sergraph_toy_broken.py").write_text(
        'raise ImportError("this plugin needs the package not_installed_anywhere")\n'
    )
    dist_info = site / "sergraph_toy_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sergraph-toy-plugin\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    path = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path}


def python(code: str, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_plugin_family_is_listed_built_and_configured_by_name(plugin_env):
    result = python(
        """
        from sergraph.config import ConfigError, compose
        from sergraph.models import MODELS, build_model, model_names, model_parameters

        names = model_names()
        assert {"toy_mean", "toy_prior", "broken"} <= set(names), names
        assert "toy_mean" not in MODELS  # listed from the entry points, loaded when asked for
        model = build_model("toy_mean", 6, 3, scale=2.0)
        print(type(model).__module__, model.linear.in_features, model.scale)
        print(sorted(model_parameters("toy_mean").items()))
        for bad in (lambda: build_model("toy_mean", 6, 3, scal=2.0),
                    lambda: compose(["model=toy_mean", "model.params.size=3"])):
            try:
                bad()
            except ValueError as error:
                print("error:", error)
        # model=NAME of a family without a file in configs/model/: its own defaults
        cfg = compose(["model=toy_mean", "model.params.scale=3"])
        print(cfg.model.name, cfg.model.family, dict(cfg.model.params))
        # an installed broken plugin breaks nothing else, only its own name
        print(compose(["model=lstm_gin"]).model.name, compose(["model=gin"]).model.family)
        """,
        plugin_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "sergraph_toy_plugin 6 2.0"
    assert lines[1] == "[('scale', 1.0)]"
    assert "no parameter(s) ['scal']" in lines[2] and "['scale']" in lines[2]
    assert "no parameter(s) ['size']" in lines[3] and "['scale']" in lines[3]
    assert lines[4] == "toy_mean None {'scale': 3}"
    assert lines[5] == "lstm_gin lstm_gin"


def test_cells_finds_a_plugin_family(plugin_env, tmp_path):
    cells = sergraph(
        ["cells", "model=toy_mean", "data.options.n_speakers=4", "data.options.n_per_class=4"],
        plugin_env,
        tmp_path,
    )
    assert cells.returncode == 0, cells.stderr[-3000:]
    # 4 speakers: 4 leave-one-speaker-out folds of one seed, labelled by the model name
    assert cells.stdout.splitlines() == [
        "index\tlabel\tseed\tfold",
        *(f"{i}\ttoy_mean\t0\t{i}" for i in range(4)),
    ]


def test_a_broken_plugin_is_named(plugin_env, tmp_path):
    result = sergraph(["cells", "model=broken"], plugin_env, tmp_path)
    assert result.returncode == 2
    assert "entry point 'broken = sergraph_toy_broken'" in result.stderr
    assert "group sergraph.models" in result.stderr and "sergraph-toy-plugin 0.1" in result.stderr
    assert "needs the package not_installed_anywhere" in result.stderr


def test_a_plugin_classic_baseline_trains_through_the_study(plugin_env, tmp_path):
    result = sergraph(
        ["train", "model=toy_prior", *SMALL, f"run.out_dir={tmp_path}"], plugin_env, tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cell = tmp_path / "synthetic" / "toy_prior" / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    # 4 speakers x 4 classes x 4 utterances: 48 training+validation rows, 16 test rows. Balanced
    # training classes give every class 1/4, so every test row is predicted as the first class:
    # WA = 4/16, UA = (1 + 0 + 0 + 0) / 4.
    assert metrics["n_train"] == 48 and metrics["n_values"] == 64 and metrics["n_test"] == 16
    assert metrics["epochs"] == 0
    assert metrics["wa"] == pytest.approx(0.25) and metrics["ua"] == pytest.approx(0.25)
    predictions = pd.read_csv(cell / "predictions.csv")
    assert (predictions["predicted"] == metrics["classes"][0]).all()


@pytest.mark.slow
def test_a_plugin_neural_family_trains_through_the_study(plugin_env, tmp_path):
    result = sergraph(
        ["train", "model=toy_mean", *SMALL, f"run.out_dir={tmp_path}"], plugin_env, tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(
        (tmp_path / "synthetic" / "toy_mean" / "seed-0" / "fold-00" / "metrics.json").read_text()
    )
    assert metrics["model"] == "toy_mean" and metrics["n_test"] == 16
