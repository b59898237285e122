"""Multi-node DDP emulated on this machine: 2 "nodes" x 1 process (gloo), one command per node
with ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT``, as a user starts them by hand or a launcher
does. With ``run.out_dir`` seen by both, the results are those of 1 node x 2 processes and of a
single-process evaluation of the same checkpoint; with a node on its own ``run.out_dir``, every
node stops before training with an error that says why.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest

from tests.cli import run_cli, torch_threads
from tests.integration.test_ddp import DDP, SMALL

CELL = ("synthetic", "lstm_gin", "seed-0", "fold-00")
TWO_NODES = ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_nodes(overrides_per_node: list[list[str]], env: dict, cwd) -> list[tuple[int, str]]:
    """One ``sergraph train`` per emulated node, all at once: [(exit code, stderr)] by node."""
    port = str(free_port())
    processes = []
    for node, overrides in enumerate(overrides_per_node):
        node_env = {**env, "NODE_RANK": str(node), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sergraph.cli", "train", *overrides],
                env=node_env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outcomes = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=600)
            outcomes.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outcomes


@pytest.fixture
def env(tmp_path_factory) -> dict:
    environment = {
        **os.environ,
        # One synthetic corpus and feature cache for the session's tests of this kind.
        "SERGRAPH_CACHE": str(tmp_path_factory.getbasetemp() / "shared-sergraph-cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
    }
    for name in ("WANDB_API_KEY", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        environment.pop(name, None)
    # Prepare the corpus and features once, before two processes would both do it.
    result = run_cli(["features", *SMALL], environment, tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


@pytest.mark.slow
def test_two_nodes_equal_one_node_with_two_processes_and_one_process(tmp_path, env, monkeypatch):
    from sergraph.training.fit import evaluate_checkpoint
    from sergraph.training.study import plan, study_data

    shared = [*SMALL, *TWO_NODES, f"run.out_dir={tmp_path / 'two-nodes'}"]
    outcomes = run_nodes([shared, shared], env, tmp_path)
    for node, (code, stderr) in enumerate(outcomes):
        assert code == 0, f"node {node}: {stderr[-3000:]}"
    study_log = tmp_path / "two-nodes" / "synthetic" / "sergraph.log"  # Lightning's chatter
    assert "Starting with 2 processes" in study_log.read_text()
    nodes_cell = tmp_path.joinpath("two-nodes", *CELL)
    metrics = json.loads((nodes_cell / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["n_test"] == 9
    # The check's token file is gone; only the results and the best checkpoint stay.
    assert sorted(p.name for p in nodes_cell.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "logs",
        "metrics.json",
        "predictions.csv",
    ]

    one_node = [*SMALL, *DDP, f"run.out_dir={tmp_path / 'one-node'}"]
    result = run_cli(["train", *one_node], env, tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    node_cell = tmp_path.joinpath("one-node", *CELL)
    written = (nodes_cell / "predictions.csv").read_text()
    assert written == (node_cell / "predictions.csv").read_text()  # byte for byte

    monkeypatch.setenv("SERGRAPH_CACHE", env["SERGRAPH_CACHE"])
    configs, cells = plan(shared)
    cfg = configs[cells[0].label]
    study = study_data(cfg)
    with torch_threads(1):  # the nodes' one thread (OMP_NUM_THREADS in env)
        single, tested = evaluate_checkpoint(
            cfg, study, study.folds[0], 0, nodes_cell / "checkpoints" / "best.ckpt"
        )
    assert single.to_csv(index=False) == written
    predictions = pd.read_csv(nodes_cell / "predictions.csv")
    for key in ("wa", "ua", "confusion"):
        assert metrics[key] == tested[key], key
    assert metrics["wa"] == pytest.approx((predictions["true"] == predictions["predicted"]).mean())


def test_a_node_on_its_own_out_dir_stops_before_training(tmp_path, env):
    node0 = [*SMALL, *TWO_NODES, f"run.out_dir={tmp_path / 'node0-disk'}"]
    node1 = [*SMALL, *TWO_NODES, f"run.out_dir={tmp_path / 'node1-disk'}"]
    outcomes = run_nodes([node0, node1], env, tmp_path)
    folder = tmp_path.joinpath("node0-disk", *CELL)
    for node, (code, stderr) in enumerate(outcomes):
        assert code == 2, f"node {node}: {stderr[-3000:]}"
        assert f"rank 1 on {socket.gethostname()} (run.out_dir={tmp_path / 'node1-disk'})" in stderr
        assert f"(run.out_dir={tmp_path / 'node0-disk'}) wrote into this cell's folder" in stderr
        assert "Multi-node runs need run.out_dir on storage that all nodes see" in stderr
    assert str(folder) in outcomes[0][1]
    assert str(tmp_path.joinpath("node1-disk", *CELL)) in outcomes[1][1]
    # Stopped before the first epoch: no checkpoint, no metrics, no token left behind.
    assert not (folder / "checkpoints").exists()
    assert not (folder / "metrics.json").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith(".sergraph")] == []
    assert not tmp_path.joinpath("node1-disk", *CELL).exists()


def test_node_rank_outside_num_nodes_is_refused(monkeypatch):
    from sergraph.config import compose
    from sergraph.training.distributed import trainer_topology

    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NODE_RANK", "1")
    with pytest.raises(RuntimeError, match="NODE_RANK=1 but trainer.num_nodes=1"):
        trainer_topology(compose([]))
    assert trainer_topology(compose(TWO_NODES)) == (1, 2)


def test_torchrun_topology_comes_from_its_variables(monkeypatch):
    from sergraph.config import compose
    from sergraph.training.distributed import trainer_topology

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    # torchrun --nnodes=3 --nproc-per-node=4, this process: node 2, local rank 1.
    for name, value in {"WORLD_SIZE": "12", "LOCAL_WORLD_SIZE": "4", "RANK": "9"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GROUP_RANK", "2")
    assert trainer_topology(compose(["trainer.devices=1"])) == (4, 3)
    monkeypatch.setenv("WORLD_SIZE", "10")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=10 is not a multiple of LOCAL_WORLD_SIZE=4"):
        trainer_topology(compose([]))
