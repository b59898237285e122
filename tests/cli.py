"""Running the real command line in a subprocess, for the integration tests."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


def run_cli(args, env=None, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m sergraph.cli ARGS`` with ``env`` in ``cwd``; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "sergraph.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_study(tmp_path, *more: str) -> list[str]:
    """Overrides of the smallest study the tests train: a synthetic corpus of 3 speakers x 4
    classes x 2 utterances under ``tmp_path``, fold 0 only, one epoch on the CPU, its own
    feature cache and run folder, no logger; ``more`` overrides follow (and win)."""
    return [
        f"data.root={tmp_path / 'corpus'}",
        "data.options.n_speakers=3",
        "data.options.n_per_class=2",
        "folds.only=[0]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "features.workers=1",
        f"features.cache_dir={tmp_path / 'features'}",
        f"run.out_dir={tmp_path / 'runs'}",
        "logger.kind=none",
        *more,
    ]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """This process's torch threads set to ``count`` inside the block (as the CLI subprocesses
    of a test run with ``OMP_NUM_THREADS``): oneDNN's LSTM splits its sums by thread count, so
    results compared byte for byte across processes need the same count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
