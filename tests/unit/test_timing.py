"""Where a cell's time goes: the phases in ``metrics.json`` (``timing``)."""

from __future__ import annotations

import json
import time

from sergraph.training.study import run_study
from sergraph.training.timing import NEURAL_PHASES, PhaseClock
from tests.cli import tiny_study


def test_training_is_fit_less_what_ran_inside_it():
    clock = PhaseClock()
    clock.seconds.update(data=0.5, setup=0.25, fit=10.0, validation=2.0, checkpointing=1.5)
    clock.seconds["test"] = 0.75
    assert clock.neural_record() == {
        "data": 0.5,
        "setup": 0.25,
        "training": 6.5,  # 10 - 2 - 1.5
        "validation": 2.0,
        "checkpointing": 1.5,
        "test": 0.75,
    }


def test_a_phase_entered_twice_adds_up_and_an_unstarted_stop_adds_nothing():
    clock = PhaseClock()
    for _ in range(2):
        clock.start("validation")
        time.sleep(0.02)
        clock.stop("validation")
    clock.stop("checkpointing")
    with clock.phase("fit"):
        time.sleep(0.01)
    assert clock.seconds["validation"] >= 0.04
    assert "checkpointing" not in clock.seconds
    assert clock.seconds["fit"] >= 0.01


def cell_metrics(tmp_path, *more):
    run_study(tiny_study(tmp_path, *more))
    (path,) = (tmp_path / "runs").rglob("metrics.json")
    return json.loads(path.read_text())


def test_a_neural_cell_records_its_phases_within_its_seconds(tmp_path):
    metrics = cell_metrics(tmp_path, "trainer.max_epochs=2", "trainer.min_epochs=2")
    timing = metrics["timing"]
    assert tuple(timing) == NEURAL_PHASES
    assert all(seconds >= 0 for seconds in timing.values())
    # two epochs with a validation speaker: two validation passes, a best and a last
    # checkpoint written at least once each, a test of the best one
    assert timing["validation"] > 0 and timing["checkpointing"] > 0 and timing["test"] > 0
    assert timing["training"] > 0 and timing["data"] > 0
    assert sum(timing.values()) <= metrics["seconds"]


def test_a_classic_cell_records_one_fit_phase(tmp_path):
    metrics = cell_metrics(tmp_path, "model=svm")
    assert list(metrics["timing"]) == ["fit"]
    assert 0 < metrics["timing"]["fit"] <= metrics["seconds"] + 1e-3
