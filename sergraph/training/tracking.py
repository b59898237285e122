"""Experiment tracking: a CSV log per cell always, Weights & Biases runs when ``logger.kind=wandb``.

The W&B runs of a study share one group (``logger.group``, default the study's name:
``run.name`` or the corpus) and are typed by their variant (job type = label):

- a run per cell (variant x seed x fold), named ``LABEL/seed-S/fold-XX``: its epochs' curves,
  summary ``val/ua`` the best epoch's (the checkpoint tested), the test scores ``test/<metric>``
  of every metric of :data:`sergraph.metrics.METRICS` (``test/wa``, ``test/ua``, ``test/f1``);
- a run per variant, named ``LABEL``, when its cells are finished: summary ``val/ua`` (the mean
  over its cells of each cell's best validation score of the primary metric, UA: what a sweep
  may optimise, never a test score), ``test/<metric>_pooled`` (over all test predictions) and
  ``test/<metric>_mean`` (the mean over cells) of every metric;
- one ``summary`` run with the study's table.

Every run's config is the resolved configuration flat (``graph.k``, ``model.params.readout``:
the names a W&B sweep's parameters have) with ``label`` and, for a cell, ``seed``, ``fold`` and
the test speakers. Under a W&B agent (``WANDB_SWEEP_ID`` set) each process is one sweep run: the
variant's run is that run, so no cell or summary runs are made (the cells' curves stay in their
CSV logs). W&B's terminal lines go to the study's log file unless ``sergraph -v``.
``wandb.finish()`` is always reached, with exit code 1 when the cell failed. Use
``logger.offline=true`` (or ``WANDB_MODE=offline``) where there is no network and ``wandb sync``
the folders later.

In a multi-process (DDP) run only global rank zero makes W&B runs (and writes the CSV log, as
Lightning's loggers do); the other ranks get no W&B logger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sergraph.config import protocol_of
from sergraph.data.protocol import protocol_record
from sergraph.metrics import BEST_VALIDATION, METRICS, PRIMARY
from sergraph.results.layout import CellPaths, seed_name

#: Configuration keys not logged to W&B: the study's other variants, its config files' hashes
#: and its cluster settings (they say nothing about one run).
UNLOGGED = ("variants", "grid", "controls", "reference", "run.sources", "slurm")


def flat_config(cfg: DictConfig, label: str) -> dict:
    """The configuration as W&B logs it: dotted keys (``graph.k``), ``label`` and the variant's
    declared ``settings`` (its overrides in ``variants``: a grid point's swept keys)."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))
    out = {
        key: value
        for key, value in flat.items()
        if not any(key == name or key.startswith(f"{name}.") for name in UNLOGGED)
    }
    out["label"] = label
    out["settings"] = list(cfg.variants.get(label, [])) if cfg.variants else []
    return out


def _flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()}


def under_sweep() -> bool:
    """Whether a W&B agent started this process (one sweep run per process)."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def quiet_wandb() -> None:
    """W&B's terminal lines (run links, sync notes, the run summary at finish, warnings) into
    the study's log file instead of the console, unless ``sergraph -v``.

    W&B prints them unless its ``silent`` setting is on, which hands them to a fallback logger
    instead; that logger here is ``sergraph.wandb``, which writes to the log file only.
    """
    from sergraph.console import verbose

    if verbose():
        return
    os.environ["WANDB_SILENT"] = "true"
    import wandb

    wandb.setup()
    try:
        from wandb.errors import term

        term._logger = logging.getLogger("sergraph.wandb")
    except (ImportError, AttributeError):  # another W&B version: silent is still silent
        pass


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

    # writes CellPaths(directory).csv_log
    logs = CellPaths(directory).logs
    loggers: list = [CSVLogger(save_dir=logs.parent, name=logs.name, version="")]
    wandb_logger = None
    if cfg.logger.kind == "wandb" and is_global_zero() and not under_sweep():
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        quiet_wandb()
        settings = _wandb_settings(cfg)
        config = flat_config(cfg, label)
        protocol = protocol_record(protocol_of(cfg), cfg.eval.enrollment, cfg.eval.enrollment_seed)
        config.update(
            run_kind="cell",
            seed=seed,
            fold=fold.index,
            test_speakers=",".join(fold.test_speakers),
            protocol=protocol["name"],
            protocol_note=protocol["note"],
        )
        settings["tags"] = [*settings.get("tags", []), f"protocol:{protocol['name']}"]
        wandb_logger = WandbLogger(
            name=f"{label}/{seed_name(seed)}/{fold.name}",
            save_dir=str(directory),
            job_type=label,
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
        scores = {f"test/{name}": result[name] for name in METRICS}
        run.summary.update({**scores, **recalls})
        if result.get(BEST_VALIDATION) is not None:  # the best epoch's (tested), not the last's
            run.summary.update({f"val/{PRIMARY}": result[BEST_VALIDATION]})
        if "protocol" in result:
            run.summary.update(
                {
                    "protocol": result["protocol"]["name"],
                    "protocol_note": result["protocol"]["note"],
                }
            )


def log_variant(cfg: DictConfig, label: str, summary: dict, best_val_ua: list[float]) -> None:
    """One W&B run per variant with its study-level numbers in the summary (see the module
    docstring); under a W&B agent this is the sweep's run."""
    import wandb

    quiet_wandb()
    settings = _wandb_settings(cfg)
    run = wandb.init(
        name=label,
        job_type=label,
        dir=str(Path(cfg.run.out_dir) / (cfg.run.name or cfg.data.name)),
        config={**flat_config(cfg, label), "run_kind": "variant"},
        reinit="finish_previous",
        **{k: v for k, v in settings.items() if v is not None},
    )
    failed = True
    try:
        numbers = {f"test/{name}_pooled": summary["pooled"][name] for name in METRICS}
        numbers |= {
            f"test/{name}_mean": summary["fold_mean"][name]
            for name in METRICS
            if summary["fold_mean"][name] is not None  # not recorded by some cells
        }
        numbers["cells"] = len(summary["folds"])
        if best_val_ua:  # the cells' best validation UA, averaged: a sweep's metric
            numbers[f"val/{PRIMARY}"] = sum(best_val_ua) / len(best_val_ua)
        run.summary.update(numbers)
        failed = False
    finally:
        wandb.finish(exit_code=1 if failed else 0)


def log_study_summary(
    cfg: DictConfig, summaries: dict[str, dict], configs: dict[str, DictConfig] | None = None
) -> None:
    """A W&B run per variant (``configs``: label -> configuration) and one per study holding the
    aggregated table (mean ± std over folds, pooled); under a W&B agent only the variant's."""
    from sergraph.results.layout import finished_cells, run_root
    from sergraph.training.distributed import is_global_zero

    if cfg.logger.kind != "wandb" or not summaries or not is_global_zero():
        return
    import wandb

    for label, variant in (configs or {}).items():
        if label in summaries:
            best = [
                float(record[BEST_VALIDATION])
                for _, record in finished_cells(run_root(variant))
                if record.get(BEST_VALIDATION) is not None
            ]
            log_variant(variant, label, summaries[label], best)
    if under_sweep():
        return
    quiet_wandb()
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
            *[f"{name}_{what}" for name in METRICS for what in ("mean", "std")],
            *[f"{name}_pooled" for name in METRICS],
        ]
        rows = [
            [
                label,
                s.get("protocol", {}).get("note", "unknown"),
                len(s["folds"]),
                *[s[f"fold_{what}"][name] for name in METRICS for what in ("mean", "std")],
                *[s["pooled"][name] for name in METRICS],
            ]
            for label, s in summaries.items()
        ]
        run.log({"study/results": wandb.Table(columns=columns, data=rows)})
        for label, s in summaries.items():
            run.summary.update({f"{label}/{name}_pooled": s["pooled"][name] for name in METRICS})
        failed = False
    finally:
        wandb.finish(exit_code=1 if failed else 0)
