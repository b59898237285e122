"""Distributed helpers: which process writes, the topology from the launcher, gathering."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from sergraph.console import log


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
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ.get("SLURM_PROCID", 0)) == 0
    return True


def trainer_topology(cfg: DictConfig) -> tuple[object, int]:
    """(devices, num_nodes) for the Trainer.

    Inside a SLURM job step (srun, detected by Lightning's ``SLURMEnvironment``) these come from
    SLURM: processes per node from ``--ntasks-per-node`` (one task per GPU), nodes from
    ``--nodes``. Lightning itself does not take them from SLURM (``devices="auto"`` means every
    visible GPU, and it refuses a ``num_nodes`` that differs from the job's), so they are read
    here instead of being written twice, in the job script and in the configuration.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return cfg.trainer.devices, cfg.trainer.num_nodes
    nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE")
    if per_node:
        devices = int(per_node.split("(")[0].split(",")[0])
    else:
        devices = max(1, int(os.environ.get("SLURM_NTASKS", "1")) // nodes)
    configured = (cfg.trainer.devices, cfg.trainer.num_nodes)
    if configured != (devices, nodes) and is_global_zero():
        log(
            f"SLURM job step: {devices} process(es) per node on {nodes} node(s) from SLURM "
            f"(trainer.devices={configured[0]!r}, trainer.num_nodes={configured[1]} are not used)"
        )
    return devices, nodes


def gather_from_ranks(outputs: list) -> list:
    """The prediction batches of every DDP rank, concatenated in rank order (as is without DDP)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return outputs
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, outputs)
    return [batch for rank_outputs in gathered for batch in rank_outputs]
