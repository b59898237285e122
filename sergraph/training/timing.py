"""Where a cell's time goes: wall seconds per phase, recorded in ``metrics.json`` as ``timing``.

Phases of a neural cell (the process's own attempt; a resumed cell counts only its last one):

- ``data``: the fold's datamodule (graphs of its splits, normalisation statistics);
- ``setup``: the module, callbacks and trainer;
- ``training``: ``trainer.fit`` less ``validation`` and ``checkpointing``;
- ``validation``: every validation pass (Lightning's ``on_validation_start`` to ``_end``);
- ``checkpointing``: writing ``best.ckpt``/``last.ckpt`` (inside ``trainer.fit``);
- ``test``: testing the best checkpoint and predicting the test split.

A classic baseline's cell has one phase, ``fit`` (nested selection, fit and prediction). What
the cell's ``seconds`` holds beyond the phases is the fold check, the scores and provenance.
Writing the cell's files comes after ``metrics.json`` is complete and is not in it; nor is the
process's start-up or the study's data preparation (``benchmarks/bench_cells.py`` measures
those as the rest of the study's wall time).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback

#: Neural phases in the order a cell runs them (``training`` is derived, see the docstring).
NEURAL_PHASES = ("data", "setup", "training", "validation", "checkpointing", "test")


class PhaseClock:
    """Seconds per named phase; a phase may be entered many times (they add up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def start(self, name: str) -> None:
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        started = self._open.pop(name, None)
        if started is not None:
            self.seconds[name] += time.perf_counter() - started

    def neural_record(self) -> dict[str, float]:
        """The ``timing`` of a neural cell: ``training`` is ``fit`` less what ran inside it."""
        seconds = dict(self.seconds)
        fit = seconds.pop("fit", 0.0)
        inside = seconds.get("validation", 0.0) + seconds.get("checkpointing", 0.0)
        seconds["training"] = max(fit - inside, 0.0)
        return {name: round(seconds.get(name, 0.0), 4) for name in NEURAL_PHASES}


class ValidationClock(Callback):
    """Adds every validation pass's wall time to the clock's ``validation`` phase."""

    def __init__(self, clock: PhaseClock) -> None:
        self.clock = clock

    def on_validation_start(self, trainer, pl_module) -> None:
        self.clock.start("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        self.clock.stop("validation")
