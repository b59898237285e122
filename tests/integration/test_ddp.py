"""Real DDP on CPU (gloo, 2 processes) through the real CLI: the same numbers as one process.

The test set of the fold has an odd number of utterances, so a plain ``DistributedSampler``
would pad it with a repeated utterance and count it twice in WA/UA; the evaluation must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from torch.utils.data.distributed import DistributedSampler

from sergraph.data.datamodule import EvaluationSampler
from tests.cli import torch_threads
from tests.wandb_records import run_contents

# 4 speakers x 3 classes x 3 utterances: 9 test utterances (odd), 9 validation utterances;
# batch size 4 gives each process several evaluation batches of unequal sizes.
SMALL = [
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "data.classes=[neutral,happy,sad]",
    "folds.only=[0]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "optim.lr=3e-3",
    "optim.batch_size=4",
]
DDP = ["trainer.devices=2", "trainer.strategy=ddp"]


@pytest.mark.parametrize(("size", "world"), [(9, 2), (15, 4), (4, 4), (10, 3)])
def test_evaluation_sampler_covers_every_row_once_in_order(size, world):
    dataset = list(range(size))
    shards = [list(EvaluationSampler(dataset, world, rank)) for rank in range(world)]
    assert [i for shard in shards for i in shard] == dataset  # rank order = original order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(shard) for shard in shards] == [
        len(EvaluationSampler(dataset, world, r)) for r in range(world)
    ]
    # What the sampler replaces: the plain one repeats rows whenever size % world != 0.
    plain = [i for r in range(world) for i in DistributedSampler(dataset, world, r, shuffle=False)]
    assert len(plain) - size == (-size) % world


def test_ddp_results_equal_a_single_process_evaluation_of_the_same_checkpoint(
    tmp_path, tmp_path_factory, monkeypatch
):
    from sergraph.training.fit import evaluate_checkpoint
    from sergraph.training.study import plan, study_data

    env = {
        **os.environ,
        # One synthetic corpus and feature cache for the session's tests of this kind.
        "SERGRAPH_CACHE": str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    env.pop("WANDB_API_KEY", None)
    overrides = [*SMALL, *DDP, f"run.out_dir={tmp_path / 'runs'}"]
    wandb = ["logger.kind=wandb", "logger.offline=true", "logger.group=ddp"]
    result = subprocess.run(
        [sys.executable, "-m", "sergraph.cli", "train", *overrides, *wandb],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # Lightning's chatter goes to the study's log file (the console stays quiet).
    assert (
        "Starting with 2 processes"
        in (tmp_path / "runs" / "synthetic" / "sergraph.log").read_text()
    )
    cell = tmp_path / "runs" / "synthetic" / "lstm_gin" / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    written = (cell / "predictions.csv").read_text()
    predictions = pd.read_csv(cell / "predictions.csv")
    assert metrics["world_size"] == 2 and metrics["n_test"] == len(predictions) == 9
    assert predictions["utterance"].is_unique
    assert set(predictions["speaker"]) == set(metrics["test_speakers"])
    # The finished cell keeps only its results and best checkpoint.
    assert sorted(p.name for p in (cell / "checkpoints").iterdir()) == ["best.ckpt"]

    # Rank zero alone made W&B runs: the cell, the variant and the study summary, once each.
    runs = [run_contents(p) for p in (tmp_path / "runs").rglob("offline-run-*/run-*.wandb")]
    kinds = sorted(run["config"].get("run_kind", run["run"]["job_type"]) for run in runs)
    assert kinds == ["cell", "summary", "variant"]

    # The same checkpoint evaluated by one process, in this process.
    monkeypatch.setenv("SERGRAPH_CACHE", env["SERGRAPH_CACHE"])  # the run's corpus and features
    configs, cells = plan(overrides)
    cfg = configs[cells[0].label]
    study = study_data(cfg)
    with torch_threads(1):  # the DDP processes' one thread (OMP_NUM_THREADS above)
        single, tested = evaluate_checkpoint(
            cfg, study, study.folds[0], 0, cell / "checkpoints" / "best.ckpt"
        )
    assert single.to_csv(index=False) == written  # byte for byte, probabilities included
    for key in ("wa", "ua", "recall", "confusion"):
        assert metrics[key] == tested[key], key
    # ... and by hand from the predictions file.
    correct = predictions["true"] == predictions["predicted"]
    assert metrics["wa"] == pytest.approx(correct.mean(), abs=1e-12)
    recalls = correct.groupby(predictions["true"]).mean()
    assert metrics["ua"] == pytest.approx(recalls.mean(), abs=1e-12)


def test_ddp_keys_are_checked_before_any_work():
    from sergraph.config import ConfigError, compose

    for bad, named in (
        (["trainer.strategy=ddp_spawn"], "trainer.strategy"),
        (["trainer.num_nodes=0"], "trainer.num_nodes"),
        (["trainer.devices=0"], "trainer.devices"),
        (["trainer.devices=2", "run.parallel=2"], "run.parallel=2"),
    ):
        with pytest.raises(ConfigError, match=named):
            compose(bad)
    assert compose(DDP).trainer.devices == 2


@pytest.mark.gpu
@pytest.mark.parametrize("devices", [1, 2])
def test_cuda_training_equals_a_single_process_evaluation(
    devices, tmp_path, tmp_path_factory, monkeypatch
):
    """On CUDA (one GPU, or DDP over two): the same scores as one process on one GPU."""
    import torch

    from sergraph.training.fit import evaluate_checkpoint
    from sergraph.training.study import plan, study_data

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if torch.cuda.device_count() < devices:
        pytest.skip(f"needs {devices} CUDA devices, found {torch.cuda.device_count()}")
    cache = str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache")
    overrides = [
        *[item for item in SMALL if not item.startswith("trainer.accelerator")],
        "trainer.accelerator=gpu",
        f"trainer.devices={devices}",
        *(["trainer.strategy=ddp"] if devices > 1 else []),
        f"run.out_dir={tmp_path / 'runs'}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sergraph.cli", "train", *overrides],
        env={**os.environ, "SERGRAPH_CACHE": cache, "WANDB_MODE": "offline"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    cell = tmp_path / "runs" / "synthetic" / "lstm_gin" / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    predictions = pd.read_csv(cell / "predictions.csv")
    assert metrics["n_test"] == len(predictions) == 9 and predictions["utterance"].is_unique

    monkeypatch.setenv("SERGRAPH_CACHE", cache)
    configs, cells = plan(overrides)
    cfg = configs[cells[0].label]
    study = study_data(cfg)
    single, tested = evaluate_checkpoint(
        cfg, study, study.folds[0], 0, cell / "checkpoints" / "best.ckpt"
    )
    for key in ("wa", "ua", "confusion"):
        assert metrics[key] == tested[key], key
    assert single["predicted"].tolist() == predictions["predicted"].tolist()
    probabilities = single.filter(like="p_").to_numpy()
    assert abs(probabilities - predictions.filter(like="p_").to_numpy()).max() < 1e-4
