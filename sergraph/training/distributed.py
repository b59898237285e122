"""Distributed helpers: which process writes, the topology from the launcher, the shared-storage
check of multi-node runs, gathering."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from omegaconf import DictConfig

from sergraph.console import log
from sergraph.io import atomic_write_text


def is_global_zero() -> bool:
    """Whether this process writes files: global rank zero of a DDP run, or the only process.

    Known before the Trainer exists from the variables that Lightning's launcher (LOCAL_RANK,
    NODE_RANK), torchrun (RANK) and srun (SLURM_PROCID) set; from torch.distributed once running.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if "LOCAL_RANK" in os.environ or "NODE_RANK" in os.environ:
        return (
            int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0
        )
    if in_slurm_step():
        return int(os.environ.get("SLURM_PROCID", 0)) == 0
    return True


def in_slurm_step() -> bool:
    """Lightning's ``SLURMEnvironment.detect()`` (a process of an srun job step), asked only
    where ``SLURM_NTASKS`` is set: elsewhere it is ``False``, and this answer costs no import
    of Lightning (seconds, which a study's main process need not pay)."""
    if "SLURM_NTASKS" not in os.environ:
        return False
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def trainer_topology(cfg: DictConfig) -> tuple[object, int]:
    """(devices, num_nodes) for the Trainer, from the launcher where one says them.

    - Inside a SLURM job step (srun, detected by Lightning's ``SLURMEnvironment``): processes
      per node from ``--ntasks-per-node`` (one task per GPU), nodes from ``--nodes``.
    - Under ``torchrun`` (``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` set): ``LOCAL_WORLD_SIZE``
      processes per node on ``WORLD_SIZE / LOCAL_WORLD_SIZE`` nodes.
    - Otherwise (one process, Lightning's own launcher, or one command per node with
      ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set by hand): ``trainer.devices`` and
      ``trainer.num_nodes``; a ``NODE_RANK`` outside ``0..trainer.num_nodes-1`` is refused.

    Lightning itself does not take them from SLURM or torchrun (``devices="auto"`` means every
    visible GPU, and it refuses a ``num_nodes`` that differs from the launcher's), so they are
    read here instead of being written twice, in the job script and in the configuration.
    """
    configured = (cfg.trainer.devices, cfg.trainer.num_nodes)
    if in_slurm_step():
        nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
        if per_node:
            devices = int(per_node.split("(")[0].split(",")[0])
        else:
            devices = max(1, int(os.environ.get("SLURM_NTASKS", "1")) // nodes)
        launcher = "SLURM job step"
    elif "WORLD_SIZE" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        world, devices = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
        if devices < 1 or world % devices:
            raise RuntimeError(
                f"torchrun: WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={devices}; "
                "start the same number of processes on every node (--nproc-per-node)"
            )
        nodes = world // devices
        launcher = "torchrun"
    else:
        node_rank = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
        if not 0 <= node_rank < cfg.trainer.num_nodes:
            raise RuntimeError(
                f"NODE_RANK={node_rank} but trainer.num_nodes={cfg.trainer.num_nodes}: set "
                "trainer.num_nodes to the number of nodes (node ranks 0..num_nodes-1), the same "
                "on every node"
            )
        return configured
    if configured != (devices, nodes) and is_global_zero():
        log(
            f"{launcher}: {devices} process(es) per node on {nodes} node(s) from the launcher "
            f"(trainer.devices={configured[0]!r}, trainer.num_nodes={configured[1]} are not used)"
        )
    return devices, nodes


SHARED_TOKEN = ".sergraph-shared-storage-check"


def check_shared_storage(directory: Path, out_dir: str | Path, wait_s: float = 10.0) -> None:
    """Under multi-process DDP: every rank must see the files rank zero writes in ``directory``.

    Every rank of a run loads ``best.ckpt`` to test it and reads the resume checkpoint, and only
    global rank zero writes them, so a multi-node run needs ``run.out_dir`` on storage that all
    nodes see. Rank zero writes a random token into ``directory`` (a cell folder under
    ``out_dir``), all ranks meet at a barrier, every rank reads the token back, and the ranks
    exchange what they found (a rank that does not see it at once retries for ``wait_s``
    seconds, for file systems whose metadata reaches other nodes late): on every rank the same
    clear error names the folder and the nodes that did not see it, before any training
    (without it, another node fails only at the end with "checkpoint not found" and rank zero
    with a lost connection). A no-op without an initialised process group or with one process.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    rank = dist.get_rank()
    token = [secrets.token_hex(16) if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    # A new name each time: no node can hold a cached "no such file" for it (NFS caches those).
    path = Path(directory) / f"{SHARED_TOKEN}-{token[0]}"
    if rank == 0:
        atomic_write_text(path, token[0])
    dist.barrier()
    seen = _read_token(path, token[0], wait_s)
    found: list = [None] * dist.get_world_size()
    dist.all_gather_object(found, (rank, socket.gethostname(), seen, str(out_dir)))
    dist.barrier()  # every rank has read it before it goes
    if rank == 0:
        path.unlink(missing_ok=True)
    missing = [
        f"rank {r} on {host} (run.out_dir={where})" for r, host, ok, where in found if not ok
    ]
    if missing:
        _, host, _, where = found[0]
        raise RuntimeError(
            f"{', '.join(missing)} cannot see the file {path.name} that rank 0 on {host} "
            f"(run.out_dir={where}) wrote into this cell's folder, {directory} on this rank. "
            "Multi-node runs need run.out_dir on storage that all nodes see (a shared file "
            "system such as NFS, Lustre or GPFS, not a node-local disk or /tmp), under the same "
            "path on every node"
        )


def _read_token(path: Path, token: str, wait_s: float) -> bool:
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def from_every_rank(value) -> list:
    """``[value of rank 0, value of rank 1, ...]`` (a collective under DDP); ``[value]`` alone."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_from_ranks(outputs: list) -> list:
    """The prediction batches of every DDP rank, concatenated in rank order (as is without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return outputs
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outputs)
    return [batch for rank_outputs in gathered for batch in rank_outputs]
