"""A write that fails (full disk, quota, read-only) stops the run naming the file; it is never
taken for bad input, and every error line is kept in the study's ``sergraph.log``.

Where a full disk can be made (root: a 96 KiB tmpfs), the real one is used; elsewhere ENOSPC is
raised by ``os.fsync`` inside the project's own atomic writer, which is where a full disk shows
first (the kernel may accept the data into its page cache and refuse it at the sync).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sergraph.io
from sergraph.config import compose
from sergraph.data.prepared import prepare
from sergraph.io import WriteError, atomic_write_text
from sergraph.results.layout import failed_files_path
from tests.cli import run_cli
from tests.unit.test_bad_input import make_manifest, study_overrides


@contextlib.contextmanager
def full_disk(monkeypatch, room: int = 0):
    """``os.fsync`` raises ENOSPC after ``room`` files were written."""
    real, written = os.fsync, []

    def fsync(fd):
        if len(written) >= room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(fd)
        real(fd)

    with monkeypatch.context() as patch:
        patch.setattr(sergraph.io.os, "fsync", fsync)
        yield


@pytest.fixture
def corpus(tmp_path) -> str:
    rows = [
        (f"{s}_{c}{i}.wav", s, c)
        for s in ("s1", "s2", "s3")
        for c in ("angry", "sad")
        for i in (0, 1)
    ]
    return make_manifest(tmp_path / "corpus", rows)


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "predictions.csv"
    with full_disk(monkeypatch), pytest.raises(WriteError) as caught:
        atomic_write_text(target, "a,b\n1,2\n")
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: no space left on device (ENOSPC)")
    assert "write elsewhere" in message and caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # neither the file nor its temporary


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_full_cache_disk_stops_the_run_and_is_not_a_failed_file(
    corpus, tmp_path, monkeypatch, policy
):
    cfg = compose(study_overrides(corpus, tmp_path, policy))
    listing = failed_files_path(cfg)
    cache = tmp_path / "cache"
    with full_disk(monkeypatch), pytest.raises(WriteError) as caught:
        prepare(cfg, failed_listing=listing)  # the cache's manifest is its first file
    assert str(caught.value).startswith(
        f"the feature cache cannot be written: cannot write {cache}"
    )
    assert caught.value.filename.endswith("manifest.json")
    with full_disk(monkeypatch, room=1), pytest.raises(WriteError) as caught:
        prepare(cfg, failed_listing=listing)  # room for the manifest, none for an array
    message = str(caught.value)
    assert message.startswith(f"the feature cache cannot be written: cannot write {cache}")
    assert caught.value.filename.endswith(".npy") and "(ENOSPC)" in message
    assert not listing.exists()  # nothing was listed as a failed file
    assert not list(cache.rglob("*.npy")) and not list(cache.rglob("*.tmp"))
    # space again: the same command extracts every file, none failed
    study = prepare(cfg, failed_listing=listing)
    assert len(study.table) == 12 and len(pd.read_csv(listing)) == 0


def test_the_failed_files_listing_is_rewritten_on_every_extraction(corpus, tmp_path):
    folder = Path(corpus).parent
    good = (folder / "s2_sad1.wav").read_bytes()
    (folder / "s2_sad1.wav").write_bytes(b"not audio")
    listing = tmp_path / "failed_files.csv"
    skip = compose(study_overrides(corpus, tmp_path, "skip"))
    assert len(prepare(skip, failed_listing=listing).table) == 11
    assert pd.read_csv(listing)["utterance"].tolist() == ["s2_sad1"]

    (folder / "s2_sad1.wav").write_bytes(good)  # fixed: under either policy no stale listing
    stop = compose(study_overrides(corpus, tmp_path, "stop"))
    assert len(prepare(stop, failed_listing=listing).table) == 12
    assert len(pd.read_csv(listing)) == 0


def test_a_full_disk_during_a_checkpoint_names_it_and_is_kept_in_the_log(
    corpus, tmp_path, monkeypatch, capsys
):
    from sergraph.cli import main
    from sergraph.training import checkpoints

    real = checkpoints.atomic_write_bytes

    def full_for_checkpoints(path, data, **options):
        if str(path).endswith(".ckpt"):
            with full_disk(monkeypatch):
                return real(path, data, **options)
        return real(path, data, **options)

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", full_for_checkpoints)
    args = [
        "train",
        *study_overrides(corpus, tmp_path, "stop"),
        "folds.only=[0]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "logger.kind=none",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    cell = tmp_path / "runs" / "bad" / "lstm_gin" / "seed-0" / "fold-00"
    line = next(line for line in err.splitlines() if "error:" in line)
    assert line.startswith(f"sergraph train: error: cannot write {cell / 'checkpoints'}")
    assert ".ckpt: no space left on device (ENOSPC)" in line
    log = (tmp_path / "runs" / "bad" / "sergraph.log").read_text()
    assert line in log  # the error line is in the study's log file too
    assert not (cell / "metrics.json").exists()
    assert not list(cell.rglob("*.tmp")) and not list(cell.rglob("*.ckpt"))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 96 KiB file system (needs root to mount; skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_cache_disk_stops_a_train_run_with_parallel_extraction(
    corpus, tmp_path, tiny_tmpfs
):
    # Each 1 s file's IS10 LLDs are 95 x 76 float32 = 28.9 KB: the 96 KiB disk holds 3 of the 12.
    runs = tmp_path / "runs"
    args = [
        "train",
        *study_overrides(corpus, tmp_path, "skip"),
        "features.workers=2",
        f"features.cache_dir={tiny_tmpfs}",
        "trainer.max_epochs=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_cli(args, env, tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "error:" in line)
    assert f"the feature cache cannot be written: cannot write {tiny_tmpfs}" in line
    assert "no space left on device (ENOSPC)" in line
    assert "left out" not in result.stderr  # not one file was skipped as bad audio
    listing = runs / "bad" / "failed_files.csv"
    assert not listing.exists() or len(pd.read_csv(listing)) == 0
    assert line in (runs / "bad" / "sergraph.log").read_text()
    stored = list(tiny_tmpfs.rglob("*.npy"))
    assert 1 <= len(stored) <= 3
    for path in stored:  # what was stored is complete
        assert np.load(path).shape == (95, 76)


def test_a_read_only_cache_is_not_bad_input(corpus, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o500)
    try:
        cfg = compose(study_overrides(corpus, tmp_path, "skip"))
        with pytest.raises(OSError, match=f"cannot write {cache}") as caught:
            prepare(cfg, failed_listing=failed_files_path(cfg))
        assert caught.value.errno == errno.EACCES
    finally:
        cache.chmod(0o700)


def test_a_full_disk_during_predict_output_names_the_file(
    bundle_run, tmp_path, monkeypatch, capsys
):
    from sergraph.cli import main

    out = tmp_path / "predictions.csv"
    audio = next(iter(bundle_run.audio.values()))
    args = ["predict", str(bundle_run.ensemble), audio, "-q", "--workers", "1"]
    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    assert main(args) == 0  # features cached first: the disk fills at the output
    capsys.readouterr()
    with full_disk(monkeypatch):
        assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"sergraph predict: error: cannot write {out}: no space left on device (ENOSPC)" in err
    assert not out.exists() and not list(tmp_path.glob(".predictions.csv.*"))
