"""Experiment tracking: a CSV log per cell always, Weights & Biases runs when ``logger.kind=wandb``.

Each cell (variant x seed x fold) is one W&B run in the study's group (``logger.group``,
default ``run.name``); ``label``, ``seed``, ``fold`` and the test speakers are config fields, so
W&B's grouping and parallel-coordinates views work. A study also gets one ``summary`` run with the
aggregated table. ``wandb.finish()`` is always reached, with exit code 1 when the cell failed.
Use ``logger.offline=true`` (or ``WANDB_MODE=offline``) where there is no network and
``wandb sync`` the folders later.

In a multi-process (DDP) run only global rank zero makes W&B runs (and writes the CSV log, as
Lightning's loggers do); the other ranks get no W&B logger.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sergraph.config import protocol_of
from sergraph.data.protocol import protocol_record


def _wandb_settings(cfg: DictConfig) -> dict:
    return {
        "project": cfg.logger.project,
        "entity": cfg.logger.entity,
        "group": cfg.logger.group or cfg.run.name or cfg.data.name,
        "tags": list(cfg.logger.tags),
        "mode": "offline" if cfg.logger.offline else None,
    }


@contextmanager
def cell_loggers(cfg: DictConfig, directory: Path, label: str, seed: int, fold) -> Iterator[list]:
    """Lightning loggers for one cell; the W&B run (if any) is finished on exit, also on error."""
    from lightning.pytorch.loggers import CSVLogger

    from sergraph.training.distributed import is_global_zero

    loggers: list = [CSVLogger(save_dir=directory, name="logs", version="")]
    wandb_logger = None
    if cfg.logger.kind == "wandb" and is_global_zero():
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        settings = _wandb_settings(cfg)
        config = OmegaConf.to_container(cfg, resolve=True)
        protocol = protocol_record(protocol_of(cfg), cfg.eval.enrollment, cfg.eval.enrollment_seed)
        config.update(
            label=label,
            seed=seed,
            fold=fold.index,
            test_speakers=",".join(fold.test_speakers),
            protocol=protocol["name"],
            protocol_note=protocol["note"],
        )
        settings["tags"] = [*settings.get("tags", []), f"protocol:{protocol['name']}"]
        wandb_logger = WandbLogger(
            name=f"{label}/seed-{seed}/{fold.name}",
            save_dir=str(directory),
            job_type="cell",
            config=config,
            reinit="finish_previous",
            **{k: v for k, v in settings.items() if v is not None},
        )
        loggers.append(wandb_logger)
    failed = True
    try:
        yield loggers
        failed = False
    finally:
        if wandb_logger is not None:
            wandb.finish(exit_code=1 if failed else 0)


def log_test_result(loggers: list, result: dict) -> None:
    """Test scores and the confusion matrix of a finished cell, into the cell's W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    from sergraph.training.distributed import is_global_zero

    if not is_global_zero():
        return

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        classes = result["classes"]
        table = wandb.Table(
            columns=["true", "predicted", "count"],
            data=[
                [classes[i], classes[j], int(n)]
                for i, row in enumerate(result["confusion"])
                for j, n in enumerate(row)
            ],
        )
        recalls = {
            f"test/recall_{c}": r for c, r in zip(classes, result["recall"], strict=True) if r == r
        }
        run.log({"test/confusion": table})
        run.summary.update({"test/wa": result["wa"], "test/ua": result["ua"], **recalls})
        if "protocol" in result:
            run.summary.update(
                {
                    "protocol": result["protocol"]["name"],
                    "protocol_note": result["protocol"]["note"],
                }
            )


def log_study_summary(cfg: DictConfig, summaries: dict[str, dict]) -> None:
    """One W&B run per study holding the aggregated table (mean ± std over folds, pooled)."""
    from sergraph.training.distributed import is_global_zero

    if cfg.logger.kind != "wandb" or not summaries or not is_global_zero():
        return
    import wandb

    settings = _wandb_settings(cfg)
    run = wandb.init(
        name=f"{settings['group']}/summary",
        job_type="summary",
        dir=str(Path(cfg.run.out_dir) / (cfg.run.name or cfg.data.name)),
        config={"labels": list(summaries)},
        reinit="finish_previous",
        **{k: v for k, v in settings.items() if v is not None},
    )
    failed = True
    try:
        columns = [
            "label",
            "protocol",
            "folds",
            "wa_mean",
            "wa_std",
            "ua_mean",
            "ua_std",
            "wa_pooled",
            "ua_pooled",
        ]
        rows = [
            [
                label,
                s.get("protocol", {}).get("note", "unknown"),
                len(s["folds"]),
                s["fold_mean"]["wa"],
                s["fold_std"]["wa"],
                s["fold_mean"]["ua"],
                s["fold_std"]["ua"],
                s["pooled"]["wa"],
                s["pooled"]["ua"],
            ]
            for label, s in summaries.items()
        ]
        run.log({"study/results": wandb.Table(columns=columns, data=rows)})
        for row in rows:
            run.summary.update({f"{row[0]}/ua_pooled": row[8], f"{row[0]}/wa_pooled": row[7]})
        failed = False
    finally:
        wandb.finish(exit_code=1 if failed else 0)
