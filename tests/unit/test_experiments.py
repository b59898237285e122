"""Every study file composes (and so validates) for every variant; the sweep's grid is valid."""

import itertools

import pytest
import yaml

from sergraph.config import compose_study, config_dir, group_choices


@pytest.mark.parametrize("experiment", group_choices("experiment"))
def test_every_variant_of_every_experiment_composes(experiment):
    configs = compose_study([f"experiment={experiment}"])
    assert configs
    for label, cfg in configs.items():
        assert cfg.run.label in (None, label)


def test_variant_overrides_apply_and_command_line_still_wins():
    configs = compose_study(["experiment=neighbours", "trainer.max_epochs=3"])
    assert [cfg.graph.k for cfg in configs.values()] == [2, 4, 6, 8]
    assert all(cfg.trainer.max_epochs == 3 for cfg in configs.values())
    table2 = compose_study(["experiment=table2"])
    assert table2["svm_egemaps"].features.functionals == "egemaps"
    assert table2["lstm_gin_mean"].model.params.readout == "mean"


def test_sweep_grid_points_are_valid_overrides():
    sweep = yaml.safe_load((config_dir() / "sweep_neighbours_readout.yaml").read_text())
    names = list(sweep["parameters"])
    grids = [sweep["parameters"][name]["values"] for name in names]
    for values in itertools.product(*grids):
        (cfg,) = compose_study([f"{n}={v}" for n, v in zip(names, values, strict=True)]).values()
        assert cfg.graph.k == values[0] and cfg.model.params.readout == values[1]


def test_run_variants_selects_part_of_an_experiment_without_changing_ids():
    from sergraph.config import ConfigError, compose_study, identity

    every = compose_study(["experiment=protocols_baselines"])
    part = compose_study(
        ["experiment=protocols_baselines", "run.variants=[svm_enrollment,svm_inductive]"]
    )
    # file order kept, only the named variants, each with the id it has in the whole study
    assert list(part) == ["svm_inductive", "svm_enrollment"]
    assert {label: identity(cfg) for label, cfg in part.items()} == {
        label: identity(every[label]) for label in part
    }
    with pytest.raises(ConfigError, match=r"\['nope'\] are not variants"):
        compose_study(["experiment=protocols_baselines", "run.variants=[nope]"])
    with pytest.raises(ConfigError, match="has no variants"):
        compose_study(["run.variants=[svm]"])
