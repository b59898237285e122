"""The run layout: the one owner of result paths, of what "finished" means and of cell iteration.

Layout of a run (``run.out_dir/run.name/label/``)::

    seed-0/fold-00/config.yaml        resolved configuration of the fold
    seed-0/fold-00/predictions.csv    utterance, speaker, true, predicted, p_<class> ...
    seed-0/fold-00/metrics.json       written last: its presence marks the fold finished
    seed-0/fold-00/checkpoints/best.ckpt
    seed-0/fold-00/checkpoints/last.ckpt   the resume point, removed once the fold finished
    seed-0/fold-00/logs/metrics.csv   the epochs' curves (Lightning's CSV logger)
    seed-0/fold-00/hpc/               SLURM requeue checkpoints, one folder per job attempt
    seed-0/.fold-00.lock              beside the cell while a process runs it (host, PID)
    summary.json, summary.md          per-fold, mean +- std over folds and pooled WA/UA

and beside the label folders of a study: ``sergraph.log`` (the study's log file) and
``failed_files.csv`` (files left out under ``features.on_error=skip``).

Every name above is spelled here and read from here: :class:`CellPaths` gives the paths of one
cell folder, :func:`cell_dir` the cell folder of a seed and fold. A fold folder's name is the
fold's own (:func:`sergraph.data.folds.fold_name`, also used in messages that name a fold),
read from the data layer below.

``metrics.json`` records the SHA-256, size and row count of ``predictions.csv`` and of the
checkpoint it was tested from (``files``). :func:`read_metrics` checks them each time a cell is
read, so that a damaged or edited result file stops ``train``, ``report``, ``select``,
``ensemble`` and ``export`` with a message naming the file, instead of silently changing a
pooled result. A cell folder without ``metrics.json`` is unfinished.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from sergraph.config import identity
from sergraph.data.folds import FOLD_PREFIX, fold_name
from sergraph.io import atomic_write_bytes, atomic_write_json

# The files and folders of a cell folder (see the module docstring); read them through
# CellPaths.
CONFIG = "config.yaml"
METRICS_FILE = "metrics.json"
PREDICTIONS = "predictions.csv"
CHECKPOINTS = "checkpoints"
BEST = "best.ckpt"
LAST = "last.ckpt"
LOGS = "logs"
#: The file Lightning's CSV logger writes in ``LOGS``.
CSV_LOG = "metrics.csv"
#: The earlier attempts' rows of a resumed cell's CSV log, until the cell ends.
CSV_LOG_BEFORE_RESUME = "metrics.before-resume.csv"
#: Lightning's SLURM requeue checkpoints (``hpc_ckpt_N.ckpt``), one folder per job attempt.
REQUEUE = "hpc"
LOCK_SUFFIX = ".lock"
SEED_PREFIX = "seed-"
CELL_GLOB = f"{SEED_PREFIX}*/{FOLD_PREFIX}*"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"


def seed_name(seed: int) -> str:
    """The folder name of a seed's cells: ``seed-S``."""
    return f"{SEED_PREFIX}{seed}"


def cell_dir(root: str | Path, seed: int, fold_index: int) -> Path:
    """The cell folder of ``seed`` and fold ``fold_index`` in a variant folder:
    ``root/seed-S/fold-XX``."""
    return Path(root) / seed_name(seed) / fold_name(fold_index)


@dataclass(frozen=True)
class CellPaths:
    """The paths of the files and folders of one cell folder (see the module docstring)."""

    cell: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell", Path(self.cell))

    @property
    def config(self) -> Path:
        """The resolved configuration the cell ran with."""
        return self.cell / CONFIG

    @property
    def metrics(self) -> Path:
        """Written last: its presence marks the cell finished."""
        return self.cell / METRICS_FILE

    @property
    def predictions(self) -> Path:
        return self.cell / PREDICTIONS

    @property
    def checkpoints(self) -> Path:
        return self.cell / CHECKPOINTS

    @property
    def best(self) -> Path:
        """The checkpoint of the best validation UA, the one tested."""
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        """The end-of-epoch checkpoint an unfinished cell resumes from."""
        return self.checkpoints / LAST

    @property
    def logs(self) -> Path:
        """The CSV logger's folder."""
        return self.cell / LOGS

    @property
    def csv_log(self) -> Path:
        return self.logs / CSV_LOG

    @property
    def csv_log_before_resume(self) -> Path:
        return self.logs / CSV_LOG_BEFORE_RESUME

    @property
    def requeue(self) -> Path:
        """The folder of Lightning's SLURM requeue checkpoints."""
        return self.cell / REQUEUE

    def attempt(self, job: str, restart: str) -> Path:
        """Lightning's ``default_root_dir`` for one attempt (``restart``) of SLURM job ``job``."""
        return self.requeue / f"job-{job}-restart-{restart}"

    @property
    def lock(self) -> Path:
        """Beside the cell folder (``seed-S/.fold-XX.lock``), so that cleaning an interrupted
        attempt's folder leaves it alone."""
        return self.cell.parent / f".{self.cell.name}{LOCK_SUFFIX}"

    def last_aside(self, number: int) -> Path:
        """Where an unreadable ``last.ckpt`` is moved (``seed-S/corrupt-fold-XX-last-N.ckpt``):
        out of the cell folder."""
        last = Path(LAST)
        return self.cell.parent / f"corrupt-{self.cell.name}-{last.stem}-{number}{last.suffix}"


def cell_of_lock(lock: Path) -> Path:
    """The cell folder a lock file (:attr:`CellPaths.lock`) claims."""
    lock = Path(lock)
    return lock.parent / lock.name.removeprefix(".").removesuffix(LOCK_SUFFIX)


def summary_paths(root: str | Path) -> tuple[Path, Path]:
    """A variant folder's ``summary.json`` and ``summary.md``."""
    return Path(root) / SUMMARY_JSON, Path(root) / SUMMARY_MD


class ResultFileError(RuntimeError):
    """A result file that is unreadable or no longer matches what its metrics.json recorded."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        cell = self.path.parent if self.path.name != BEST else self.path.parents[1]
        super().__init__(
            f"{self.path}: {problem}. The cell's result files are damaged; delete the cell "
            f"folder {cell} to compute it again (sergraph train), or restore it from a backup"
        )


def study_dir(cfg: DictConfig) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or cfg.data.name)


def failed_files_path(cfg: DictConfig) -> Path:
    """Where ``features.on_error=skip`` lists the files left out of a study."""
    return study_dir(cfg) / "failed_files.csv"


def log_file_path(cfg: DictConfig) -> Path:
    """The study's log file: library chatter and every console note (``sergraph -v`` shows both)."""
    return study_dir(cfg) / "sergraph.log"


def run_root(cfg: DictConfig) -> Path:
    return study_dir(cfg) / (cfg.run.label or cfg.model.name)


def fold_dir(cfg: DictConfig, seed: int, fold) -> Path:
    return cell_dir(run_root(cfg), seed, fold.index)


def aside_path(cell: Path, why: str) -> Path:
    """Where a cell folder set aside goes (``seed-S/<why>-fold-XX-N``, the first free N): out
    of the cell glob, so no summary, report or export reads it again."""
    number = 1
    while (aside := cell.parent / f"{why}-{cell.name}-{number}").exists():
        number += 1
    return aside


# ---------------------------------------------------------------------------------------------
# cells


def cell_dirs(root: str | Path) -> list[Path]:
    """Every cell folder (``seed-*/fold-*``) of a variant folder, finished or not, sorted."""
    return sorted(path for path in Path(root).glob(CELL_GLOB) if path.is_dir())


def is_cell(directory: str | Path) -> bool:
    directory = Path(directory)
    return directory.parent.name.startswith(SEED_PREFIX) and directory.name.startswith(FOLD_PREFIX)


def variant_dirs(run_dir: str | Path) -> list[Path]:
    """Folders under ``run_dir`` (itself included) that hold cell folders, sorted."""
    run_dir = Path(run_dir)
    return sorted({cell.parents[1] for cell in run_dir.rglob(f"{FOLD_PREFIX}*") if is_cell(cell)})


def finished_cells(root: str | Path) -> list[tuple[Path, dict]]:
    """(cell folder, verified metrics) of every finished cell of a variant folder."""
    return [
        (cell, read_metrics(cell)) for cell in cell_dirs(root) if (cell / METRICS_FILE).is_file()
    ]


def unfinished_cells(root: str | Path) -> list[Path]:
    """Cell folders of a variant folder that have no metrics.json (yet)."""
    return [cell for cell in cell_dirs(root) if not (cell / METRICS_FILE).is_file()]


def finished(cfg: DictConfig, directory: Path) -> bool:
    """True if the fold has verified results for this configuration.

    Raises:
        RuntimeError: the results are of another configuration.
        ResultFileError: a result file is unreadable or differs from what metrics.json recorded.
    """
    if not (directory / METRICS_FILE).is_file():
        return False
    saved = read_metrics(directory).get("config_id")
    if saved != identity(cfg):
        raise RuntimeError(
            f"{directory} holds results of a different configuration (id {saved}, now "
            f"{identity(cfg)}); choose another run.name or remove that folder"
        )
    return True


def other_configuration(cfg: DictConfig) -> str | None:
    """The id of another configuration whose cells lie in ``cfg``'s variant folder (a finished
    cell's recorded ``config_id``, an unfinished one's saved ``config.yaml``), or ``None``."""
    from omegaconf import OmegaConf

    mine = identity(cfg)
    for cell in cell_dirs(run_root(cfg)):
        if (cell / METRICS_FILE).is_file():
            saved = read_json(cell / METRICS_FILE).get("config_id")
        elif (cell / CONFIG).is_file():
            try:
                saved = identity(OmegaConf.load(cell / CONFIG))
            except Exception:  # noqa: BLE001 - an unreadable leftover holds nothing to keep
                continue
        else:
            continue
        if saved != mine:
            return saved
    return None


def own_folder(configs: dict[str, DictConfig], overrides) -> dict[str, DictConfig]:
    """A standalone run (one variant, no label given) whose folder holds another
    configuration goes to a variant folder of its own, labelled by its settings.

    The label is made of the command line's settings that differ from the base (the same
    experiment without them), else of all its settings (``k=4`` for the base value given
    explicitly): :func:`sergraph.config.composition.run_settings`. A label given by the user
    (``run.label``, an experiment's variants, a grid's points) is kept: the identity check of
    :func:`finished` then refuses a changed configuration under it.

    Returns ``configs``, the run relabelled where it moved.
    """
    from sergraph.config.composition import run_settings
    from sergraph.config.labels import settings_label
    from sergraph.console import log

    if len(configs) != 1:
        return configs
    ((label, cfg),) = configs.items()
    if cfg.run.label is not None or cfg.variants:
        return configs
    other = other_configuration(cfg)
    if other is None:
        return configs
    differing, given = run_settings(cfg, overrides)
    settings = differing or given
    if not settings:
        raise RuntimeError(
            f"{run_root(cfg)} holds results of a different configuration (id {other}, now "
            f"{identity(cfg)}) and this run sets nothing that could label a folder of its own "
            "(the config files changed since?); give it a label (run.label=NAME) or choose "
            "another run.name"
        )
    moved = cfg.copy()
    moved.run.label = settings_label(settings)
    note = (
        f"{run_root(cfg)} holds another configuration (id {other}); this run's results go to "
        f"{run_root(moved)} (labelled by its settings)"
    )
    # once on the console, by the process that plans the study (run.parallel workers take its
    # plan)
    log(note)
    return {moved.run.label: moved}


# ---------------------------------------------------------------------------------------------
# reading and verifying


def read_json(path: str | Path) -> dict:
    """A JSON result file; a decode error names the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ResultFileError(path, f"not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ResultFileError(path, f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ResultFileError(path, f"expected a JSON object, found {type(value).__name__}")
    return value


def read_metrics(directory: str | Path, checkpoint: bool = False) -> dict:
    """A finished cell's metrics.json, its predictions.csv (and checkpoint) verified.

    The predictions file must have ``n_test`` rows and, when metrics.json recorded them
    (results written since this check exists), the recorded SHA-256 and size. With
    ``checkpoint`` the recorded checkpoint is hashed too (it can be large: export does it).
    """
    directory = Path(directory)
    metrics = read_json(directory / METRICS_FILE)
    missing = [key for key in ("seed", "fold", "classes", "n_test") if key not in metrics]
    if missing:
        raise ResultFileError(directory / METRICS_FILE, f"has no {missing}")
    recorded = metrics.get("files", {})
    if PREDICTIONS in recorded:
        verify_file(directory / PREDICTIONS, recorded[PREDICTIONS])
    else:  # written before the files record: its row count is all there is to check
        rows = predictions_rows(directory / PREDICTIONS)
        if rows != metrics["n_test"]:
            raise ResultFileError(
                directory / PREDICTIONS,
                f"has {rows} rows, metrics.json recorded {metrics['n_test']}",
            )
    if checkpoint:
        for name, record in recorded.items():
            if name != PREDICTIONS:
                verify_file(directory / name, record)
    return metrics


def read_predictions(directory: str | Path) -> pd.DataFrame:
    """A cell's predictions.csv; a parse error names the file."""
    path = Path(directory) / PREDICTIONS
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultFileError(path, f"not a readable CSV file ({error})") from None


def predictions_rows(path: Path) -> int:
    if not path.is_file():
        raise ResultFileError(path, "is missing")
    try:
        return len(pd.read_csv(path))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultFileError(path, f"not a readable CSV file ({error})") from None


def file_record(path: Path, data: bytes | None = None) -> dict:
    """SHA-256 and size of a file (and its data rows for a CSV file)."""
    data = Path(path).read_bytes() if data is None else data
    record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if Path(path).suffix == ".csv":
        record["rows"] = len(pd.read_csv(io.BytesIO(data)))
    return record


def verify_file(path: Path, record: dict) -> None:
    if not path.is_file():
        raise ResultFileError(path, "is missing (metrics.json records it)")
    data = path.read_bytes()
    if len(data) != record.get("bytes", len(data)) or (
        hashlib.sha256(data).hexdigest() != record["sha256"]
    ):
        rows = ""
        if "rows" in record:
            try:
                rows = f", {len(pd.read_csv(io.BytesIO(data)))} rows instead of {record['rows']}"
            except Exception:  # noqa: BLE001 - the row count only adds detail to the message
                rows = ", not a readable CSV file"
        raise ResultFileError(
            path,
            f"changed since metrics.json was written ({len(data)} bytes instead of "
            f"{record.get('bytes')}{rows}; SHA-256 differs)",
        )


# ---------------------------------------------------------------------------------------------
# writing


def write_cell(
    directory: Path, predictions: pd.DataFrame, metrics: dict, checkpoint: str | None = None
) -> dict:
    """Write predictions.csv, then metrics.json (last) recording its hash and row count.

    ``checkpoint`` (relative to ``directory``) is hashed into the record too. Returns the
    metrics as written.
    """
    data = predictions.to_csv(index=False).encode("utf-8")
    atomic_write_bytes(directory / PREDICTIONS, data)
    files = {PREDICTIONS: file_record(directory / PREDICTIONS, data)}
    if checkpoint is not None and (directory / checkpoint).is_file():
        files[checkpoint] = file_record(directory / checkpoint)
    metrics = {**metrics, "files": files}
    atomic_write_json(directory / METRICS_FILE, metrics)
    return metrics


def predictions_frame(utterances, speakers, true, scores, classes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "utterance": utterances,
            "speaker": speakers,
            "true": [classes[i] for i in true],
            "predicted": [classes[i] for i in np.asarray(scores).argmax(axis=1)],
        }
    )
    for i, name in enumerate(classes):
        frame[f"p_{name}"] = np.round(np.asarray(scores)[:, i], 6)
    return frame
