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


def sweep_argv(sweep: dict, values: dict) -> list[str]:
    """The command line a W&B agent runs for one grid point of a sweep file (after the
    program): ``${args_no_hyphens}`` replaced by ``key=value`` of each parameter."""
    argv = []
    for item in sweep["command"][1:]:  # the first is ${program}
        if item == "${args_no_hyphens}":
            argv += [f"{key}={value}" for key, value in values.items()]
        else:
            argv.append(item)
    return argv


def test_sweep_grid_points_are_distinct_variants_of_one_study():
    from sergraph.cli import study_overrides
    from sergraph.cli_parser import build_parser, hoist_study_options
    from sergraph.results.layout import run_root

    sweep = yaml.safe_load((config_dir() / "sweep_neighbours_readout.yaml").read_text())
    names = list(sweep["parameters"])
    grids = [sweep["parameters"][name]["values"] for name in names]
    folders = set()
    for values in itertools.product(*grids):
        argv = sweep_argv(sweep, dict(zip(names, values, strict=True)))
        args = build_parser().parse_args(hoist_study_options(argv))
        ((label, cfg),) = compose_study(study_overrides(args)).items()
        assert cfg.graph.k == values[0] and cfg.model.params.readout == values[1]
        assert label == cfg.run.label == f"k={values[0]},readout={values[1]}"
        assert cfg.logger.kind == "wandb" and cfg.reference is None  # one point: none
        folders.add(run_root(cfg))
    assert len(folders) == 12 and {f.parent.name for f in folders} == {"sweep_neighbours_readout"}


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
