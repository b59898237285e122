"""``sergraph export`` and ``sergraph predict`` through the real command line.

A tiny run is trained once; its fold models are exported as one ensemble bundle by the CLI, and
the bundle predicts audio given as files, folders and a manifest, after the training corpus,
its feature cache and the run folder have been moved away.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sergraph.cli import main
from tests.cli import run_cli

pytestmark = pytest.mark.slow  # trains a model and starts the CLI (about a minute on 2 cores)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from sergraph.training.study import run_study

    root = tmp_path_factory.mktemp("predict")
    run_study(
        [
            f"data.root={root / 'corpus'}",
            "data.options.n_speakers=4",
            "data.options.n_per_class=3",
            "folds.only=[0,1]",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "features.workers=1",
            f"features.cache_dir={root / 'features'}",
            f"run.out_dir={root / 'runs'}",
            "logger.kind=none",
        ]
    )
    corpus = next((root / "corpus").glob("synthetic-*"))
    return SimpleNamespace(
        root=root,
        model_dir=root / "runs" / "synthetic" / "lstm_gin",
        audio=sorted((corpus / "wav").glob("*.wav")),
    )


def sergraph(args, cwd, cache):
    env = {**os.environ, "SERGRAPH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return run_cli(args, env, cwd, timeout=600)


@pytest.fixture(scope="module")
def bundle(run):
    out = run.root / "shipped" / "emotion.sergraph"
    result = sergraph(["export", run.model_dir, "-o", out], run.root, run.root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    assert "ensemble of 2 fold models" in result.stdout and "verified" in result.stdout
    return out


def test_predict_files_folders_and_a_manifest_without_the_training_corpus(run, bundle, tmp_path):
    # The audio to predict: copies in a folder tree, one loose file, a manifest with a relative
    # path. Then the corpus, its features and the run are moved away: the bundle must suffice.
    incoming = tmp_path / "incoming"
    (incoming / "day2").mkdir(parents=True)
    folder_files = [run.audio[0], run.audio[13], run.audio[26]]
    for source, target in zip(folder_files, ["a.wav", "b.wav", "day2/c.wav"], strict=True):
        shutil.copy(source, incoming / target)
    loose = tmp_path / "loose.flac"
    sf.write(loose, sf.read(run.audio[40])[0], 16000)  # FLAC input
    manifest_dir = tmp_path / "listed"
    manifest_dir.mkdir()
    shutil.copy(run.audio[7], manifest_dir / "m.wav")
    (manifest_dir / "batch.csv").write_text("path,speaker\nm.wav,x\n")
    away = tmp_path / "away"
    shutil.move(run.root, away)
    try:
        out = tmp_path / "predictions.csv"
        result = sergraph(
            [
                "predict",
                away / "shipped" / "emotion.sergraph",
                incoming,
                loose,
                manifest_dir / "batch.csv",
                "--format",
                "jsonl",
                "--workers",
                "2",
                "--batch-size",
                "2",
                "-o",
                out,
            ],
            tmp_path,
            tmp_path / "fresh-cache",
        )
    finally:
        shutil.move(away, run.root)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [incoming / "a.wav", incoming / "b.wav", incoming / "day2" / "c.wav", loose]
    expected.append((manifest_dir / "m.wav").resolve())
    assert [Path(r["path"]) for r in records] == expected
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written["path"]) == [str(p) for p in expected]
    probabilities = written[["p_neutral", "p_happy", "p_sad", "p_angry"]].to_numpy(float)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    names = np.array(["neutral", "happy", "sad", "angry"])
    assert list(written["emotion"]) == list(names[probabilities.argmax(axis=1)])
    assert [r["emotion"] for r in records] == list(written["emotion"])
    assert (written["error"] == "").all() and (written["duration"] > 1.4).all()
    assert "5 file(s)" in result.stderr and "predict" in result.stderr  # progress bar


def test_bad_files_stop_by_default_and_are_listed_with_skip(run, bundle, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(open(run.audio[0], "rb").read()[:30])
    good = run.audio[1]
    cache = f"--cache-dir={tmp_path / 'cache'}"
    assert main(["predict", str(bundle), str(good), str(broken), "--workers", "1", cache]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: unreadable audio" in err and "--on-error skip" in err

    out = tmp_path / "out.jsonl"
    args = ["predict", str(bundle), str(good), str(broken), "--on-error", "skip", "-o", str(out)]
    assert main([*args, "--workers", "1", cache]) == 0
    captured = capsys.readouterr()
    assert "1 file(s) could not be read (skipped)" in captured.err and str(broken) in captured.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["error"] == "" for r in rows] == [True, False]
    assert rows[1]["p_sad"] is None and "unreadable audio" in rows[1]["error"]


def test_bad_arguments_fail_before_loading_the_bundle(run, tmp_path, capsys):
    not_a_bundle = tmp_path / "absent.sergraph"
    assert main(["predict", str(not_a_bundle), str(tmp_path / "nothing.wav")]) == 2
    assert "1 input(s) do not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(not_a_bundle), str(tmp_path / "empty")]) == 2
    assert "holds no audio files" in capsys.readouterr().err
    (tmp_path / "list.csv").write_text("file\na.wav\n")
    assert main(["predict", str(not_a_bundle), str(tmp_path / "list.csv")]) == 2
    assert "has no 'path' column" in capsys.readouterr().err
    args = ["predict", str(not_a_bundle), str(run.audio[0]), "-o", str(tmp_path / "out.xlsx")]
    assert main(args) == 2
    assert "name a .csv, .jsonl or .json file" in capsys.readouterr().err
    assert main(["predict", str(not_a_bundle), str(run.audio[0])]) == 2
    assert "sergraph export" in capsys.readouterr().err


def test_windowed_prediction_table(run, bundle, tmp_path, capsys):
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([sf.read(p)[0] for p in run.audio[:4]]), 16000)
    args = ["predict", str(bundle), str(long), "--window", "3", "--hop", "1.5"]
    assert main([*args, "--workers", "1", f"--cache-dir={tmp_path / 'cache'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["path", "segment", "start", "end", "duration"]
    starts = [float(line.split()[2]) for line in lines[1:]]
    assert starts[:3] == [0.0, 1.5, 3.0] and len(starts) >= 4
