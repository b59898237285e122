"""The console: what a person sees, and the log file that keeps everything else.

By default the console shows notes (:func:`log`), one line per finished cell and one progress
bar for the study (:class:`StudyProgress`); the chatter of Lightning, PyTorch Geometric and
Python warnings goes to the study's log file only (:func:`attach_log_file`). ``sergraph -v``
(:func:`configure` with ``verbose=True``) shows it on the console as well.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sergraph.io import ensure_folder

#: Loggers whose records are library chatter: the log file always, the console only with -v.
LIBRARY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "torch_geometric",
    "py.warnings",
)
VERBOSE_ENV = "SERGRAPH_VERBOSE"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_state = {"configured": False, "file": None, "file_only": False}
_progress: StudyProgress | None = None


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure(verbose_console: bool | None = None) -> None:
    """Route library chatter: to stderr only when verbose, always to the log file once attached.

    The choice is kept in an environment variable, so that worker processes (``run.parallel``,
    DDP ranks) behave like the process that started them.
    """
    if verbose_console is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose_console else "0"
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        # Lightning adds its own stderr handler when imported; only our file handler stays.
        for handler in list(logger.handlers):
            if getattr(handler, "_sergraph", None) != "file":
                logger.removeHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        if verbose():
            handler = logging.StreamHandler(sys.stderr)
            handler._sergraph = "console"
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
        elif not logger.handlers:
            logger.addHandler(logging.NullHandler())
    _state["configured"] = True


def attach_log_file(path: str | Path) -> Path:
    """Send library chatter and every console note to ``path`` as well (appending)."""
    path = Path(path)
    if _state["file"] is not None and Path(_state["file"].baseFilename) == path.resolve():
        return path
    if not _state["configured"]:
        configure()
    detach_log_file()
    ensure_folder(path.parent)  # an unwritable runs folder is named (NotWritableError)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler._sergraph = "file"
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in (*LIBRARY_LOGGERS, "sergraph"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("sergraph").setLevel(logging.INFO)
    logging.getLogger("sergraph").propagate = False
    _state["file"] = handler
    return path


def detach_log_file() -> None:
    handler = _state["file"]
    if handler is None:
        return
    for name in (*LIBRARY_LOGGERS, "sergraph"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()
    _state["file"] = None


def log(message: str) -> None:
    """A note for the person at the console (stderr), also kept in the log file."""
    if _state["file_only"] and _state["file"] is not None:
        logging.getLogger("sergraph").info(message)
        return
    if _progress is not None:
        _progress.write(message)
    else:
        print(message, file=sys.stderr, flush=True)
    if _state["file"] is not None:
        logging.getLogger("sergraph").info(message)


@contextmanager
def notes_to_file_only() -> Iterator[None]:
    """Notes (:func:`log`) go to the attached log file only inside the block: a ``run.parallel``
    worker planning the study again would repeat the notes its parent already printed."""
    before = _state["file_only"]
    _state["file_only"] = True
    try:
        yield
    finally:
        _state["file_only"] = before


def error(message: str, traceback: bool = False) -> None:
    """An error line for the person at the console (stderr), kept in the log file as well when
    one is attached (``traceback``: with the exception being handled, in the file only)."""
    print(message, file=sys.stderr, flush=True)
    if _state["file"] is not None:
        logging.getLogger("sergraph").error(message, exc_info=traceback)


def detail(message: str) -> None:
    """A detail of one cell (e.g. its fusion weight): the log file always, the console only
    with ``-v``, so that the console keeps one line per finished cell."""
    if verbose():
        log(message)
    elif _state["file"] is not None:
        logging.getLogger("sergraph").info(message)


class StudyProgress:
    """One progress bar for a study: cells done of all, the running cell's epoch and validation
    score (the primary metric), elapsed time and ETA. Shown on a terminal only; elsewhere (log
    files of cluster jobs) the one line per finished cell says the same without
    carriage-return noise."""

    def __init__(self, total: int, enabled: bool | None = None):
        self.total = total
        self.done = 0
        self.start = time.perf_counter()
        if enabled is None:
            enabled = sys.stderr.isatty() and total > 0
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="cell", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> StudyProgress:
        global _progress
        _progress = self
        return self

    def __exit__(self, *exc) -> None:
        global _progress
        _progress = None
        if self.bar is not None:
            self.bar.close()

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def cell_started(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)

    def epoch(self, name: str, epoch: int, score: tuple[str, float] | None) -> None:
        """``score``: (the metric's display name, its validation value), or ``None``."""
        if self.bar is not None:
            shown = f" val {score[0]} {100 * score[1]:.1f}" if score is not None else ""
            self.bar.set_postfix_str(f"{name} epoch {epoch}{shown}", refresh=True)

    def cell_finished(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)


def progress() -> StudyProgress | None:
    """The study's progress bar in this process, if one is shown."""
    return _progress
