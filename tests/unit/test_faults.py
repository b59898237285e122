"""Faults, one case per test: damaged result files, diverged models, interrupted writes,
concurrent runs and unwritable folders stop with a message naming the file and what to do.

Result cells are written here with the run layout's own writer (:func:`write_cell`) and then
damaged the way a user or a full disk would, so the expected outcome follows from what was
done to the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from sergraph.config import ConfigError, compose
from sergraph.io import NotWritableError, atomic_write_text
from sergraph.results import select
from sergraph.results.layout import (
    CellPaths,
    ResultFileError,
    cell_dir,
    cell_dirs,
    cell_of_lock,
    finished,
    finished_cells,
    is_cell,
    read_metrics,
    unfinished_cells,
    write_cell,
)
from sergraph.results.report import write_report
from sergraph.results.summary import summarize
from sergraph.training import lock
from sergraph.training.checkpoints import (
    atomic_checkpoint_io,
    merge_csv_logs,
    resume_checkpoint,
    set_aside_csv_log,
)

CLASSES = ["a", "b"]
#: A folder no process can write to on Linux, root included.
READ_ONLY = "/sys"


def cell(root, label, seed, fold, predicted, true=("a", "a", "b", "b"), config_id="id"):
    """A finished cell: predictions with hand-made probabilities, metrics as training writes."""
    directory = root / label / f"seed-{seed}" / f"fold-{fold:02d}"
    p_a = [0.9 if p == "a" else 0.2 for p in predicted]
    frame = pd.DataFrame(
        {
            "utterance": [f"u{fold}{i}" for i in range(len(predicted))],
            "speaker": f"t{fold}",
            "true": list(true),
            "predicted": list(predicted),
            "p_a": p_a,
            "p_b": [1 - p for p in p_a],
        }
    )
    correct = sum(t == p for t, p in zip(true, predicted, strict=True))
    metrics = {
        "config_id": config_id,
        "model": "gin",
        "seed": seed,
        "fold": fold,
        "train_speakers": ["r"],
        "val_speakers": ["v"],
        "test_speakers": [f"t{fold}"],
        "classes": CLASSES,
        "n_test": len(frame),
        "wa": correct / len(frame),
        "ua": correct / len(frame),
        "best_val_ua": 0.5,
    }
    write_cell(directory, frame, metrics)
    return directory


@pytest.fixture
def study(tmp_path):
    """Variant x: two folds, all right (fold 0) and half right (fold 1)."""
    cell(tmp_path, "x", 0, 0, ["a", "a", "b", "b"])
    cell(tmp_path, "x", 0, 1, ["a", "b", "b", "a"])
    return tmp_path


# ---------------------------------------------------------------------------------------------
# the paths of a cell, as the run layout documents them


def test_cell_paths_are_the_documented_layout(tmp_path):
    cell = cell_dir(tmp_path, 2, 3)
    assert cell == tmp_path / "seed-2" / "fold-03"
    paths = CellPaths(cell)
    assert (paths.config, paths.metrics, paths.predictions) == (
        cell / "config.yaml",
        cell / "metrics.json",
        cell / "predictions.csv",
    )
    assert (paths.best, paths.last) == (
        cell / "checkpoints" / "best.ckpt",
        cell / "checkpoints" / "last.ckpt",
    )
    assert paths.csv_log == cell / "logs" / "metrics.csv"
    assert paths.attempt("77", "1") == cell / "hpc" / "job-77-restart-1"
    assert paths.lock == tmp_path / "seed-2" / ".fold-03.lock"
    assert cell_of_lock(paths.lock) == cell
    assert paths.last_aside(4) == tmp_path / "seed-2" / "corrupt-fold-03-last-4.ckpt"
    assert lock.lock_path(cell) == paths.lock
    paths.checkpoints.mkdir(parents=True)
    assert cell_dirs(tmp_path) == [cell] and is_cell(cell) and not is_cell(paths.checkpoints)


# ---------------------------------------------------------------------------------------------
# verified result files


def test_metrics_json_records_hash_and_rows_of_predictions(study):
    directory = study / "x" / "seed-0" / "fold-00"
    data = (directory / "predictions.csv").read_bytes()
    record = json.loads((directory / "metrics.json").read_text())["files"]["predictions.csv"]
    assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": 4}


def test_predictions_cut_to_fewer_rows_stop_the_report_naming_the_file(study):
    """Pooled over 8 predictions the report says WA 75 %; a cut file must not change it."""
    assert write_report(study)["rows"][0]["pooled_wa"] == pytest.approx(0.75)
    path = study / "x" / "seed-0" / "fold-01" / "predictions.csv"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:4]))  # header + 3 rows
    with pytest.raises(ResultFileError) as caught:
        write_report(study)
    message = str(caught.value)
    assert str(path) in message and "3 rows instead of 4" in message
    assert "delete the cell folder" in message and "restore it" in message


def test_garbage_predictions_stop_summary_select_and_ensemble(study):
    cell(study, "y", 0, 0, ["a", "a", "b", "b"])
    cell(study, "y", 0, 1, ["a", "a", "b", "b"])
    cell(study, "x", 1, 0, ["a", "a", "b", "b"])
    path = study / "x" / "seed-0" / "fold-00" / "predictions.csv"
    path.write_bytes(b"\x00\xff garbage \n\x01")
    for action in (
        lambda: summarize(study / "x"),
        lambda: select.select_nested(study, ["x", "y"]),
        lambda: select.ensemble_seeds(study / "x"),
    ):
        with pytest.raises(ResultFileError, match="fold-00/predictions.csv: changed since"):
            action()


def test_predictions_of_results_written_before_the_record_are_checked_by_row_count(study):
    directory = study / "x" / "seed-0" / "fold-01"
    metrics = json.loads((directory / "metrics.json").read_text())
    del metrics["files"]  # a metrics.json of an earlier version
    (directory / "metrics.json").write_text(json.dumps(metrics))
    assert read_metrics(directory)["n_test"] == 4
    frame = pd.read_csv(directory / "predictions.csv")
    frame.iloc[:3].to_csv(directory / "predictions.csv", index=False)
    with pytest.raises(ResultFileError, match="has 3 rows, metrics.json recorded 4"):
        read_metrics(directory)


def test_truncated_metrics_json_names_the_file_in_report_and_train(study):
    path = study / "x" / "seed-0" / "fold-01" / "metrics.json"
    path.write_text(path.read_text()[:60])
    with pytest.raises(ResultFileError) as caught:
        write_report(study)
    assert str(path) in str(caught.value) and "not valid JSON" in str(caught.value)
    cfg = compose([])
    with pytest.raises(ResultFileError, match="metrics.json: not valid JSON"):
        finished(cfg, path.parent)  # what train asks before it skips a cell


def test_deleted_metrics_json_makes_the_cell_missing_in_the_report(study):
    (study / "x" / "seed-0" / "fold-01" / "metrics.json").unlink()
    assert [c.name for c in unfinished_cells(study / "x")] == ["fold-01"]
    assert [c.name for c, _ in finished_cells(study / "x")] == ["fold-00"]
    result = write_report(study)
    (row,) = result["rows"]
    assert row["complete"] is False and row["missing"] == "seed-0/fold-01"
    text = (study / "report" / "report.md").read_text()
    assert "incomplete; missing seed-0/fold-01" in text and "INCOMPLETE: x" in text
    assert pd.read_csv(study / "report" / "results.csv")["missing"][0] == "seed-0/fold-01"


def test_complete_report_says_nothing_about_missing_cells(study):
    result = write_report(study)
    assert result["rows"][0]["complete"] is True
    assert "INCOMPLETE" not in (study / "report" / "report.md").read_text()


def test_changed_checkpoint_is_caught_when_asked(study):
    directory = study / "x" / "seed-0" / "fold-00"
    (directory / "checkpoints").mkdir()
    (directory / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    metrics = read_metrics(directory)
    write_cell(
        directory, pd.read_csv(directory / "predictions.csv"), metrics, "checkpoints/best.ckpt"
    )
    assert read_metrics(directory, checkpoint=True)["files"]["checkpoints/best.ckpt"]["bytes"] == 7
    (directory / "checkpoints" / "best.ckpt").write_bytes(b"weightz")
    read_metrics(directory)  # the report does not read checkpoints
    with pytest.raises(ResultFileError, match="best.ckpt: changed since"):
        read_metrics(directory, checkpoint=True)


# ---------------------------------------------------------------------------------------------
# atomic checkpoints, corrupt resume checkpoints, resumed logs


def test_checkpoint_that_fails_to_save_leaves_the_previous_one(tmp_path):
    io = atomic_checkpoint_io()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)
    with pytest.raises(Exception, match="pickle"):
        io.save_checkpoint({"state_dict": {}, "epoch": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_the_resume_checkpoint_is_not_fsynced_the_best_one_is(tmp_path, monkeypatch):
    # last.ckpt is rewritten every epoch and only saves work; best.ckpt holds the results
    import sergraph.io

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(sergraph.io.os, "fsync", fsync)
    io = atomic_checkpoint_io()
    for name in ("last.ckpt", "best.ckpt", "last.ckpt"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 1}, tmp_path / name)
    assert len(synced) == 1 and synced[0].startswith(".best.ckpt.")
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_corrupt_last_checkpoint_is_moved_aside_and_the_cell_starts_afresh(tmp_path, capsys):
    from sergraph.config import to_yaml

    cfg = compose([])
    directory = tmp_path / "seed-0" / "fold-00"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.yaml").write_text(to_yaml(cfg))
    last = directory / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, last)
    assert resume_checkpoint(cfg, directory) == last
    last.write_bytes(last.read_bytes()[:100])  # a copy cut short
    assert resume_checkpoint(cfg, directory) is None
    aside = tmp_path / "seed-0" / "corrupt-fold-00-last-1.ckpt"
    assert aside.is_file() and not last.exists()
    note = capsys.readouterr().err
    assert str(last) in note and "moved aside" in note and "starts again" in note


def test_resumed_fold_log_keeps_the_epochs_before_the_interruption(tmp_path):
    csv_log = tmp_path / "logs" / "metrics.csv"
    csv_log.parent.mkdir()
    # epochs 0-2 logged, interrupted in epoch 2 after its last.ckpt of epoch 1
    pd.DataFrame({"epoch": [0, 1, 2], "step": [7, 15, 23], "train/loss": [1.0, 0.9, 0.8]}).to_csv(
        csv_log, index=False
    )
    aside = set_aside_csv_log(csv_log)
    assert aside.is_file() and not csv_log.exists()
    # the resumed fit repeats epoch 2 and adds the test row with other columns
    pd.DataFrame(
        {"epoch": [2, 3], "step": [23, 31], "train/loss": [0.7, 0.6], "test/ua": [None, 0.5]}
    ).to_csv(csv_log, index=False)
    merge_csv_logs(aside, csv_log)
    merged = pd.read_csv(csv_log)
    assert merged["epoch"].tolist() == [0, 1, 2, 3]
    assert merged["train/loss"].tolist() == [1.0, 0.9, 0.7, 0.6]
    assert list(merged.columns[:2]) == ["epoch", "step"] and not aside.exists()


# ---------------------------------------------------------------------------------------------
# cell locks


def test_lock_is_held_released_and_names_its_owner(tmp_path):
    directory = tmp_path / "seed-0" / "fold-00"
    with lock.cell_lock(directory) as path:
        owner = json.loads(path.read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    assert not path.exists()
    other = {"host": socket.gethostname(), "pid": os.getppid()}  # a live process
    path.write_text(json.dumps(other))
    with pytest.raises(lock.CellLocked) as caught:
        lock.acquire(directory)
    assert f"process {os.getppid()}" in str(caught.value) and str(path) in str(caught.value)
    assert json.loads(path.read_text()) == other  # left alone


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    directory = tmp_path / "seed-0" / "fold-00"
    path = lock.lock_path(directory)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    assert lock.acquire(directory) == path
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"process {pid}" in capsys.readouterr().err
    lock.release(path)


def test_lock_of_another_host_is_respected(tmp_path):
    directory = tmp_path / "seed-0" / "fold-00"
    path = lock.lock_path(directory)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))
    with pytest.raises(lock.CellLocked, match=f"node-elsewhere.*delete {path}"):
        lock.acquire(directory)


# ---------------------------------------------------------------------------------------------
# files and folders


def test_output_is_group_readable_under_a_group_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_checkpoint_io().save_checkpoint({"state_dict": {}}, tmp_path / "c.ckpt")
    finally:
        os.umask(old)
    for name in ("a.txt", "c.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(not os.path.isdir(READ_ONLY), reason="needs Linux /sys")
def test_unwritable_folder_is_named(tmp_path):
    with pytest.raises(NotWritableError) as caught:
        atomic_write_text(f"{READ_ONLY}/sergraph-test/report.md", "x")
    assert f"folder {READ_ONLY} is not writable" in str(caught.value)


def test_empty_manifest_is_named(tmp_path):
    from sergraph.data.corpora.manifest import read_manifest_csv
    from sergraph.deploy.predict import expand_inputs

    empty = tmp_path / "corpus.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"manifest {empty} is empty \\(0 bytes\\)"):
        read_manifest_csv(empty)
    with pytest.raises(ValueError, match="is empty \\(0 bytes\\); expected a header row"):
        expand_inputs([empty])


def test_empty_manifest_stops_the_study_naming_it(tmp_path):
    empty = tmp_path / "corpus.csv"
    empty.write_bytes(b"")
    from sergraph.training.study import plan

    with pytest.raises(ValueError, match=f"manifest {empty} is empty"):
        plan(["data=manifest", f"data.root={empty}", f"run.out_dir={tmp_path}"])


# ---------------------------------------------------------------------------------------------
# configuration and command line


def test_no_validation_speakers_needs_an_explicit_no_early_stopping():
    with pytest.raises(ConfigError, match="folds.val_speakers=0.*trainer.early_stopping=false"):
        compose(["folds.val_speakers=0"])
    cfg = compose(["folds.val_speakers=0", "trainer.early_stopping=false"])
    assert cfg.folds.val_speakers == 0
    compose(["folds.val_speakers=0", "model=svm"])  # no epochs to stop


def test_early_stopping_default_keeps_existing_run_identities():
    from omegaconf import OmegaConf

    from sergraph.config import identity

    cfg = compose([])
    older = OmegaConf.create(OmegaConf.to_container(cfg))
    del older.trainer["early_stopping"]
    assert identity(cfg) == identity(older)


def test_train_help_shows_groups_keys_and_examples(capsys):
    from sergraph.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "data={" in text and "emodb," in text and "model={" in text and "lstm_gin" in text
    assert "optim.lr=" in text and "run.name=" in text and "folds.only=" in text
    assert "examples:" in text and "sergraph train data=emodb data.root=" in text


def test_closed_pipe_ends_quietly(tmp_path):
    """The reader of stdout has gone (``| head``): no traceback, exit status 141."""
    env = {**os.environ, "SERGRAPH_CACHE": str(tmp_path)}
    read, write = os.pipe()
    os.close(read)  # nobody will read
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sergraph.cli", "config"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141


def test_unwritable_report_folder_exits_2_naming_it(study, capsys):
    from sergraph.cli import main

    assert main(["report", str(study), "--out", f"{READ_ONLY}/sergraph-report"]) == 2
    err = capsys.readouterr().err
    assert f"folder {READ_ONLY} is not writable" in err and "Traceback" not in err


def test_damaged_result_file_exits_2_with_what_to_do(study, capsys):
    from sergraph.cli import main

    path = study / "x" / "seed-0" / "fold-00" / "metrics.json"
    path.write_text("{")
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "delete the cell folder" in err


def test_non_finite_probabilities_give_no_class(tmp_path):
    """Predictions of a model whose probabilities are nan: export refuses the fold."""
    from sergraph.deploy.bundle import BundleError, export_bundle

    directory = cell(tmp_path, "x", 0, 0, ["a", "a", "b", "b"])
    frame = pd.read_csv(directory / "predictions.csv")
    frame.loc[1:, ["p_a", "p_b"]] = np.nan
    write_cell(directory, frame, read_metrics(directory))
    with pytest.raises(BundleError, match="3 of 4 test predictions have no finite"):
        export_bundle(tmp_path / "x")


def test_lock_of_an_earlier_attempt_of_a_requeued_slurm_job_is_taken_over(tmp_path, monkeypatch):
    directory = tmp_path / "seed-0" / "fold-00"
    path = lock.lock_path(directory)
    path.parent.mkdir(parents=True)
    earlier = {"host": "node-a", "pid": 1, "slurm_job": "77", "slurm_restart": 0}
    path.write_text(json.dumps(earlier))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(lock.CellLocked):  # the same attempt on another node: a live claim
        lock.acquire(directory)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued
    assert lock.acquire(directory) == path
    assert json.loads(path.read_text())["slurm_restart"] == 1


def test_damaged_config_yaml_of_a_cell_is_named_by_the_report(study):
    path = study / "x" / "seed-0" / "fold-00" / "config.yaml"
    path.write_text("graph: [k: 4\n  : :")
    with pytest.raises(ResultFileError, match="config.yaml: not a readable YAML"):
        write_report(study)


def test_lock_of_another_host_without_heartbeat_is_stale_and_a_held_lock_beats(
    tmp_path, monkeypatch
):
    directory = tmp_path / "seed-0" / "fold-00"
    path = lock.lock_path(directory)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))
    old = path.stat().st_mtime - lock.STALE_AFTER_SECONDS - 60
    os.utime(path, (old, old))  # killed at a time limit long ago: no heartbeat since
    monkeypatch.setattr(lock, "HEARTBEAT_SECONDS", 0.01)
    with lock.cell_lock(directory):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        os.utime(path, (old, old))
        for _ in range(1000):  # the heartbeat touches it again
            if path.stat().st_mtime > old:
                break
            threading.Event().wait(0.01)
        assert path.stat().st_mtime > old
    assert not path.exists()
