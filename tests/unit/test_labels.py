"""Variant labels made of settings, multirun grids and the folder of a standalone run."""

from __future__ import annotations

import json

import pytest

from sergraph.config import ConfigError, compose, compose_study, identity
from sergraph.config.composition import run_settings
from sergraph.config.labels import (
    MAX_LABEL,
    grid_of,
    grid_variants,
    settings_label,
    split_values,
)
from sergraph.results.layout import own_folder, run_root

# ---------------------------------------------------------------------------------------------
# labels


def test_label_is_short_readable_and_sorted_by_key():
    assert settings_label({"model.params.readout": "sum", "graph.k": 2}) == "k=2,readout=sum"
    # the same settings in another order: the same label
    assert settings_label({"graph.k": 2, "model.params.readout": "sum"}) == "k=2,readout=sum"
    # group choices first, then dotted keys
    assert settings_label({"optim.lr": 0.0003, "model": "gcn"}) == "model=gcn,lr=0.0003"
    assert settings_label({"trainer.early_stopping": False, "graph.max_nodes": None}) == (
        "max_nodes=null,early_stopping=false"
    )


def test_label_uses_the_full_key_where_two_keys_share_their_last_part():
    label = settings_label({"model.params.hidden": 64, "model.params.lstm_hidden": 32})
    assert label == "hidden=64,lstm_hidden=32"
    clash = settings_label({"model.params.dropout": 0.1, "features.dropout": 0.2})
    assert clash == "features.dropout=0.2,model.params.dropout=0.1"


def test_labels_of_different_settings_differ():
    settings = [
        {"graph.k": 2},
        {"graph.k": 4},
        {"graph.k": "2"},  # the same text: the same label (a label is written text)
        {"optim.lr": 0.0001},
        {"optim.lr": 0.00010000000000000002},  # a different float: a different label
        {"features.ssl.model": "org/model"},
        {"features.ssl.model": "org%2Fmodel"},
        {"graph.dilations": [1, 2]},
    ]
    labels = [settings_label(item) for item in settings]
    assert labels[0] == labels[2] == "k=2"
    assert labels[3] == "lr=0.0001" and labels[4] == "lr=0.00010000000000000002"
    # "/" would make a sub-folder; it and "%" are escaped, so the two stay apart
    assert labels[5] == "model=org%2Fmodel" and labels[6] == "model=org%252Fmodel"
    assert labels[7] == "dilations=[1,2]"
    assert len(set(labels)) == len(labels) - 1


def test_long_label_keeps_its_head_and_ends_in_a_hash_of_the_whole():
    first = settings_label({"data.options.comment": "x" * 200})
    second = settings_label({"data.options.comment": "x" * 199 + "y"})
    assert len(first) == len(second) == MAX_LABEL
    assert first.startswith("comment=xxx") and first[-11] == "~" and first != second


def test_split_values_keeps_brackets_and_quotes_whole():
    assert split_values("2,4") == ["2", "4"]
    assert split_values("[0,1],[2,3]") == ["[0,1]", "[2,3]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert split_values("sum") == ["sum"]


# ---------------------------------------------------------------------------------------------
# grids


def test_grid_of_splits_grid_keys_from_fixed_overrides():
    fixed, grid = grid_of(["graph.k=2,4", "folds.only=[0,1]", "model.params.readout=sum,mean"])
    assert fixed == ["folds.only=[0,1]"]
    assert grid == {"graph.k": ["2", "4"], "model.params.readout": ["sum", "mean"]}


def test_grid_of_keeps_a_label_whole():
    fixed, grid = grid_of(["graph.k=2,4", "reference=k=4", "run.label=a,b"])
    assert fixed == ["reference=k=4", "run.label=a,b"] and grid == {"graph.k": ["2", "4"]}


def test_grid_of_one_point_makes_every_setting_a_key():
    # a W&B agent's run: sergraph train -m logger.kind=wandb graph.k=2 model.params.readout=sum
    fixed, grid = grid_of(["logger.kind=wandb", "graph.k=2", "model.params.readout=sum"])
    assert fixed == ["logger.kind=wandb"]
    assert grid == {"graph.k": ["2"], "model.params.readout": ["sum"]}


@pytest.mark.parametrize(
    "item, words",
    [
        ("run.seeds=0,1", "run.seeds cannot be a grid key"),
        ("folds.only=0,1", "folds.only cannot be a grid key"),
        ("data=emodb,iemocap", "data cannot be a grid key"),
        ("logger.kind=csv,wandb", "logger.kind cannot be a grid key"),
        ("graph.k=2,2", "each value must be given once"),
        ("graph.k=2,", "each value must be given once"),
    ],
)
def test_grid_of_refuses_keys_that_cannot_be_swept(item, words):
    with pytest.raises(ConfigError, match=words):
        grid_of([item])


def test_grid_variants_are_the_cross_product_in_grid_order():
    variants = grid_variants({"graph.k": [2, 4], "model.params.readout": ["sum", "mean"]})
    assert variants == {
        "k=2,readout=sum": ["graph.k=2", "model.params.readout=sum"],
        "k=2,readout=mean": ["graph.k=2", "model.params.readout=mean"],
        "k=4,readout=sum": ["graph.k=4", "model.params.readout=sum"],
        "k=4,readout=mean": ["graph.k=4", "model.params.readout=mean"],
    }
    # a key with one value applies to every point and is left out of the labels
    assert list(grid_variants({"graph.k": [2, 4], "optim.lr": [0.001]})) == ["k=2", "k=4"]


SMALL = ["data.options.n_speakers=3", "data.options.n_per_class=2", "trainer.max_epochs=1"]


def test_multirun_composes_one_study_with_a_declared_reference():
    configs = compose_study(["-m", *SMALL, "graph.k=2,6", "model.params.readout=sum,mean"])
    assert list(configs) == [
        "k=2,readout=sum",
        "k=2,readout=mean",
        "k=6,readout=sum",
        "k=6,readout=mean",
    ]
    cfg = configs["k=6,readout=mean"]
    assert cfg.graph.k == 6 and cfg.model.params.readout == "mean"
    assert cfg.trainer.max_epochs == 1 and cfg.run.label == "k=6,readout=mean"
    assert cfg.reference == "k=2,readout=sum"
    # every point is a declared variant (what report reads to name undeclared differences)
    assert list(cfg.variants["k=6,readout=mean"]) == ["graph.k=6", "model.params.readout=mean"]
    assert {run_root(c).parent for c in configs.values()} == {run_root(cfg).parent}
    chosen = compose_study(["-m", *SMALL, "graph.k=2,6", "reference=k=6"])
    assert next(iter(chosen.values())).reference == "k=6"
    assert compose(["experiment=graph_value", "reference=null"]).reference is None
    assert compose(["experiment=graph_value"]).reference == "graph"  # as its file declares
    with pytest.raises(ConfigError, match=r"reference='k=4' is not a variant.*\['k=2', 'k=6'\]"):
        compose_study(["-m", *SMALL, "graph.k=2,6", "reference=k=4"])


def test_grid_in_an_experiment_file(tmp_path, monkeypatch):
    from sergraph.config import files

    configs = tmp_path / "configs"
    import shutil

    shutil.copytree(files.config_dir(), configs)
    (configs / "experiment" / "sweep.yaml").write_text(
        "run:\n  name: sweep\nvariants:\n  no_graph: [model=bigru_attn]\n"
        "grid:\n  graph.k: [2, 4]\n  optim.lr: [1.0e-4]\n"
    )
    monkeypatch.setattr("sergraph.config.composition.config_dir", lambda: configs)
    monkeypatch.setattr("sergraph.config.files.config_dir", lambda: configs)
    studied = compose_study(["experiment=sweep"])
    assert list(studied) == ["no_graph", "k=2", "k=4"]
    assert studied["k=4"].graph.k == 4 and studied["k=4"].optim.lr == 1e-4
    assert studied["k=2"].reference == "k=2"  # the grid's first point
    # the command line adds keys to the file's grid (or replaces one)
    more = compose_study(["-m", "experiment=sweep", "graph.k=6,8"])
    assert list(more) == ["no_graph", "k=6", "k=8"]


def test_grid_ids_match_the_same_settings_written_as_variants():
    """A grid point is a variant like any other: the id of its cells is that of the same
    overrides under the same label (run.label is part of the id)."""
    grid = compose_study(["-m", *SMALL, "graph.k=2,6"])["k=6"]
    by_hand = compose([*SMALL, "graph.k=6", "run.label=k=6"])
    assert identity(grid) == identity(by_hand)


# ---------------------------------------------------------------------------------------------
# a standalone run's folder


def fake_cell(cfg, config_id, fold="fold-00"):
    cell = run_root(cfg) / "seed-0" / fold
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps({"config_id": config_id}))


def test_run_settings_differ_from_the_base():
    overrides = [*SMALL, "graph.k=4", "model.params.readout=mean", "folds.only=[0]"]
    differing, given = run_settings(compose(overrides), overrides)
    # graph.k=4 is the base's value; folds.only and max_epochs... max_epochs differs (200 -> 1)
    assert differing == {
        "data.options.n_speakers": 3,
        "data.options.n_per_class": 2,
        "trainer.max_epochs": 1,
        "model.params.readout": "mean",
    }
    assert given == {**differing, "graph.k": 4}


def test_run_settings_compare_with_the_same_model_preset():
    # gcn's preset has use_lstm: false; the default model (lstm_gin) has none: not a difference
    overrides = ["model=gcn", "model.params.use_lstm=false", "model.params.num_layers=2"]
    differing, given = run_settings(compose(overrides), overrides)
    assert differing == {"model": "gcn", "model.params.num_layers": 2}
    assert given == {**differing, "model.params.use_lstm": False}
    assert settings_label(differing) == "model=gcn,num_layers=2"


def test_standalone_run_moves_to_its_own_folder_only_when_another_config_is_there(tmp_path):
    first = [f"run.out_dir={tmp_path}", "graph.k=2", "model.params.readout=sum"]
    configs = compose_study(first)
    assert own_folder(configs, first) == configs  # nothing there yet: the model's name
    fake_cell(configs["lstm_gin"], identity(configs["lstm_gin"]))
    assert own_folder(compose_study(first), first)["lstm_gin"].run.label is None  # its own
    second = [f"run.out_dir={tmp_path}", "graph.k=6", "model.params.readout=sum"]
    moved = own_folder(compose_study(second), second)
    assert list(moved) == ["k=6"] and moved["k=6"].run.label == "k=6"
    assert run_root(moved["k=6"]) == tmp_path / "synthetic" / "k=6"
    # the base's own value, given explicitly: labelled by all its settings
    third = [f"run.out_dir={tmp_path}", "graph.k=4", "model.params.readout=sum"]
    assert list(own_folder(compose_study(third), third)) == ["k=4,readout=sum"]
    # nothing given at all: nothing to label a folder with, refused naming run.label
    with pytest.raises(RuntimeError, match="holds results of a different configuration.*run.label"):
        own_folder(compose_study([f"run.out_dir={tmp_path}"]), [f"run.out_dir={tmp_path}"])


def test_an_unfinished_cell_of_another_config_also_keeps_its_folder(tmp_path):
    from sergraph.config import to_yaml

    other = compose([f"run.out_dir={tmp_path}", "graph.k=2"])
    cell = run_root(other) / "seed-0" / "fold-00"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text(to_yaml(other))
    mine = [f"run.out_dir={tmp_path}", "graph.k=6"]
    assert list(own_folder(compose_study(mine), mine)) == ["k=6"]


def test_an_explicit_label_is_kept_for_the_identity_guard(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "run.label=mine", "graph.k=6"]
    configs = compose_study(overrides)
    fake_cell(configs["mine"], "another-id")
    assert own_folder(configs, overrides) == configs


def test_a_grid_refuses_one_label_for_all_its_points():
    with pytest.raises(ConfigError, match="run.label cannot be given with a grid.*run.name"):
        compose_study(["-m", "graph.k=2,4", "run.label=mine"])


def test_command_line_options_of_a_study_may_stand_anywhere():
    from sergraph.cli import study_overrides
    from sergraph.cli_parser import build_parser, hoist_study_options

    argv = ["train", "graph.k=2,4", "-m", "optim.lr=1e-3", "--reference", "k=4", "x.y=1"]
    hoisted = hoist_study_options(argv)
    assert hoisted == ["train", "-m", "--reference", "k=4", "graph.k=2,4", "optim.lr=1e-3", "x.y=1"]
    args = build_parser().parse_args(hoisted)
    assert study_overrides(args) == ["-m", "graph.k=2,4", "optim.lr=1e-3", "x.y=1", "reference=k=4"]
    # report has its own --reference (a label of the run folder), left where it is
    report = ["report", "runs/x", "--reference", "k=4"]
    assert hoist_study_options(report) == report


def test_candidate_labels_holding_commas_are_split_on_known_labels():
    from sergraph.cli import split_labels

    known = {"k=2", "k=2,readout=sum", "k=4,readout=sum", "svm"}
    assert split_labels("k=2,readout=sum,k=4,readout=sum", known) == [
        "k=2,readout=sum",
        "k=4,readout=sum",
    ]
    assert split_labels("k=2,svm", known) == ["k=2", "svm"]
    # an unknown name stays as written (select then names it)
    assert split_labels("svm,nope", known) == ["svm", "nope"]
