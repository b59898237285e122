"""What a cell was computed from: the sergraph version, the data fingerprint (corpus table, feature
inputs, folds, scored set) in every metrics.json, and the checks that read it back: a finished
cell whose data changed is refused before any work (``sergraph train``), and cells of different
data or scored sets are neither pooled nor paired (``report``, ``select``).

Runs are tiny: the SVM (no epochs) on a manifest of synthetic audio, 4 speakers x 4 classes x 3
utterances, leave-one-speaker-out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sergraph.data.fingerprint import (
    cell_fingerprint,
    changes,
    content_differences,
    differences,
    digest,
    scored_digest,
    study_fingerprint,
)
from sergraph.data.folds import Fold

# ---------------------------------------------------------------------------------------------
# the fingerprint, by hand


def small_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "utterance": ["a1", "a2", "b1", "b2"],
            "path": ["/x/a1.wav", "/x/a2.wav", "/x/b1.wav", "/x/b2.wav"],
            "speaker": ["a", "a", "b", "b"],
            "label": ["ang", "neu", "ang", "neu"],
        }
    )


FOLDS = [Fold(0, ("b",), (), ("a",)), Fold(1, ("a",), (), ("b",))]
KEYS = ["k1", "k2", "k3", "k4"]


def test_study_fingerprint_is_the_hash_of_what_was_loaded():
    table = small_table()
    fp = study_fingerprint(table, KEYS, FOLDS)
    # worked out independently: canonical JSON of the sorted rows, SHA-256, 16 hex
    rows = [["a1", "/x/a1.wav", "a", "ang"], ["a2", "/x/a2.wav", "a", "neu"]]
    rows += [["b1", "/x/b1.wav", "b", "ang"], ["b2", "/x/b2.wav", "b", "neu"]]
    assert fp["table"] == digest(rows)
    assert fp["speakers"]["a"] == {
        "utterances": digest(["a1", "a2"]),
        "labels": digest([["a1", "ang"], ["a2", "neu"]]),
        "inputs": digest([["a1", "k1"], ["a2", "k2"]]),
    }
    assert fp["folds"] == digest([[0, ["b"], [], ["a"]], [1, ["a"], [], ["b"]]])
    # row order does not matter; a moved corpus changes the table hash only
    shuffled = table.iloc[[3, 1, 0, 2]].reset_index(drop=True)
    assert study_fingerprint(shuffled, [KEYS[i] for i in (3, 1, 0, 2)], FOLDS) == fp
    moved = table.assign(path=table["path"].str.replace("/x/", "/y/"))
    moved_fp = study_fingerprint(moved, KEYS, FOLDS)
    assert moved_fp["table"] != fp["table"] and moved_fp["speakers"] == fp["speakers"]
    assert content_differences(fp, moved_fp) == []


def test_scored_sets_and_their_differences_in_words():
    fp = study_fingerprint(small_table(), KEYS, FOLDS)
    first = cell_fingerprint(fp, FOLDS[0], ["a2", "a1"], "enrollment", 0.2, 0)
    assert first["scored"] == scored_digest(["a1", "a2"]) == digest(["a1", "a2"])
    assert (first["n_scored"], first["enrollment"], first["enrollment_seed"]) == (2, 0.2, 0)
    second = cell_fingerprint(fp, FOLDS[0], ["a2"], "enrollment", 0.5, 0)
    assert differences(first, second) == ["eval.enrollment 0.2 vs 0.5: scored sets differ"]
    third = cell_fingerprint(fp, FOLDS[0], ["a2"], "enrollment", 0.2, 1)
    assert differences(first, third) == ["eval.enrollment_seed 0 vs 1: scored sets differ"]
    inductive = cell_fingerprint(fp, FOLDS[0], ["a1", "a2"], "inductive", 0.5, 3)
    assert inductive["enrollment"] is None and differences(first, inductive) == []
    relabelled = small_table().assign(label=["neu", "neu", "ang", "neu"])
    other = cell_fingerprint(
        study_fingerprint(relabelled, KEYS, FOLDS), FOLDS[0], ["a1", "a2"], "inductive"
    )
    assert differences(inductive, other) == ["labels differ for speaker(s) a"]
    new_audio = cell_fingerprint(
        study_fingerprint(small_table(), ["k1", "k2", "k3", "kX"], FOLDS),
        FOLDS[0],
        ["a1", "a2"],
        "inductive",
    )
    assert content_differences(inductive, new_audio) == ["audio changed for speaker(s) b"]


def test_changes_name_the_fold_and_what_changed():
    fp = study_fingerprint(small_table(), KEYS, FOLDS)
    recorded = {
        "fold": 0,
        "test_speakers": ["a"],
        "data": cell_fingerprint(fp, FOLDS[0], ["a1"], "inductive"),
    }
    grown = pd.concat(
        [
            small_table(),
            pd.DataFrame([["c1", "/x/c1.wav", "c", "ang"]], columns=small_table().columns),
        ]
    )
    folds = [Fold(0, ("b", "c"), (), ("a",)), Fold(1, ("a", "c"), (), ("b",))]
    now = cell_fingerprint(
        study_fingerprint(grown, [*KEYS, "k5"], folds), folds[0], ["a1"], "inductive"
    )
    assert changes(recorded, folds[0], now) == ["speakers added: c"]
    shifted = Fold(0, ("a", "b"), (), ("c",))
    assert changes(recorded, shifted, now)[0] == (
        "fold numbering shifted: fold-00 tested a, now tests c"
    )
    assert changes(recorded, None, None) == ["fold-00 no longer exists"]


# ---------------------------------------------------------------------------------------------
# provenance: the version


def test_every_cell_records_the_installed_version(monkeypatch):
    from importlib import metadata

    from omegaconf import OmegaConf

    from sergraph.results import provenance as module

    assert module.sergraph_version() == metadata.version("sergraph")
    real = metadata.version
    monkeypatch.setattr(
        module.metadata, "version", lambda name: "9.8.7" if name == "sergraph" else real(name)
    )
    record = module.provenance(OmegaConf.create({"run": {"sources": {}}}), "t0")
    assert record["sergraph"] == "9.8.7"
    # an installed wheel: no git checkout, so no commit; the version says what ran
    wheel = {"commit": "unknown", "dirty": "unknown", "sergraph": "9.8.7"}
    assert module.row_provenance([{"provenance": wheel}])["text"] == "installed package 9.8.7"
    older = {"commit": "unknown", "dirty": "unknown"}
    assert module.row_provenance([{"provenance": older}])["text"] == (
        "unknown (cells without git provenance)"
    )


# ---------------------------------------------------------------------------------------------
# real runs: the SVM on a manifest of synthetic audio


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest (path, speaker, label) of 4 synthetic speakers x 4 classes x 3 utterances,
    and a fifth speaker's rows kept apart (spk00: it sorts first, so adding it shifts folds)."""
    from sergraph.config import compose
    from sergraph.data.prepared import load_table

    root = tmp_path_factory.mktemp("identity")
    table, _ = load_table(
        compose(
            [
                f"data.root={root / 'synthetic'}",
                "data.options.n_speakers=5",
                "data.options.n_per_class=3",
            ]
        )
    )
    table = table[["path", "speaker", "label"]].copy()
    table["speaker"] = table["speaker"].replace({"spk05": "spk00"})
    return root, table


def svm_args(root: Path, manifest: Path, name: str, *more: str) -> list[str]:
    return [
        "model=svm",
        "data=manifest",
        f"data.root={manifest}",
        "folds.val_speakers=0",
        "features.workers=1",
        f"features.cache_dir={root / 'features'}",
        f"run.out_dir={root / 'runs'}",
        f"run.name={name}",
        "logger.kind=none",
        *more,
    ]


@pytest.fixture
def fresh():
    """Each command reads the manifest again, as a new process would."""
    from sergraph.data.prepared import _PREPARED

    _PREPARED.clear()
    yield
    _PREPARED.clear()


def train(args, capsys, *flags) -> tuple[int, str]:
    from sergraph import cli
    from sergraph.data.prepared import _PREPARED

    _PREPARED.clear()
    capsys.readouterr()
    code = cli.main(["train", *flags, *args])
    return code, capsys.readouterr().err


def write_manifest(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def four(table):
    return table[table["speaker"] != "spk00"].reset_index(drop=True)


def test_every_metrics_json_records_version_data_and_scored_set(corpus, capsys, fresh):
    from importlib import metadata

    root, table = corpus
    manifest = write_manifest(four(table), root / "record.csv")
    args = svm_args(root, manifest, "record", "eval.protocol=enrollment", "folds.only=[0]")
    assert train(args, capsys)[0] == 0
    cell = root / "runs" / "record" / "svm" / "seed-0" / "fold-00"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["provenance"]["sergraph"] == metadata.version("sergraph")
    data = metrics["data"]
    scored = pd.read_csv(cell / "predictions.csv")["utterance"]
    # spk01 has 12 utterances; round(0.2 * 12) = 2 held aside, 10 scored
    assert data["n_scored"] == len(scored) == 10
    assert data["scored"] == digest(sorted(scored))
    assert (data["enrollment"], data["enrollment_seed"]) == (0.2, 0)
    assert sorted(data["speakers"]) == ["spk01", "spk02", "spk03", "spk04"]
    from sergraph.data.features.hashing import file_sha256

    rows = four(table).assign(utterance=lambda t: t["path"].map(lambda p: Path(p).stem))
    spk01 = rows[rows["speaker"] == "spk01"].sort_values("utterance")
    assert data["speakers"]["spk01"]["inputs"] == digest(
        [[u, file_sha256(p)] for u, p in zip(spk01["utterance"], spk01["path"], strict=True)]
    )


def test_enrollment_fractions_are_not_paired_nor_chosen_between(corpus, capsys, fresh, tmp_path):
    import shutil

    from sergraph import cli
    from sergraph.results.report import write_report
    from sergraph.results.select import select_nested

    root, table = corpus
    manifest = write_manifest(four(table), root / "enrol.csv")
    for name, amount in (("enrol_20", 0.2), ("enrol_50", 0.5)):
        args = svm_args(root, manifest, name, "eval.protocol=enrollment", "folds.only=[0,1]")
        assert train([*args, f"eval.enrollment={amount}"], capsys)[0] == 0
    runs = root / "runs"
    capsys.readouterr()
    assert (
        cli.main(
            ["report", str(runs / "enrol_20"), str(runs / "enrol_50"), "--out", str(tmp_path / "r")]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "refused to pair enrol_20/svm with enrol_50/svm: eval.enrollment 0.2 vs 0.5: scored "
        "sets differ" in err
    )
    result = write_report([runs / "enrol_20", runs / "enrol_50"], tmp_path / "r")
    assert result["comparisons"] == []
    assert result["refused_data"] == [
        ("enrol_20/svm", "enrol_50/svm", ["eval.enrollment 0.2 vs 0.5: scored sets differ"])
    ]
    crossed = write_report([runs / "enrol_20", runs / "enrol_50"], tmp_path / "c", cross_data=True)
    (test,) = crossed["comparisons"]
    assert test["kind"] == "pair, CROSS-DATA" and test["undeclared"] == ["eval.enrollment"]
    assert "CROSS-DATA: eval.enrollment 0.2 vs 0.5" in (tmp_path / "c" / "report.md").read_text()
    # select: the two as candidates of one study
    study = tmp_path / "study"
    shutil.copytree(runs / "enrol_20" / "svm", study / "svm_20")
    shutil.copytree(runs / "enrol_50" / "svm", study / "svm_50")
    with pytest.raises(
        ValueError, match=r"svm_20 vs svm_50: eval.enrollment 0.2 vs 0.5: scored sets differ"
    ):
        select_nested(study, ["svm_20", "svm_50"])


def test_same_paths_with_another_label_file_are_not_paired(corpus, capsys, fresh, tmp_path):
    from sergraph.results.report import write_report

    root, table = corpus
    original = write_manifest(four(table), root / "labels_a.csv")
    relabelled = four(table)
    swap = {"angry": "sad", "sad": "angry"}
    relabelled.loc[relabelled["speaker"] == "spk03", "label"] = relabelled["label"].map(
        lambda label: swap.get(label, label)
    )
    other = write_manifest(relabelled, root / "labels_b.csv")
    assert train(svm_args(root, original, "labels_a", "folds.only=[0]"), capsys)[0] == 0
    assert train(svm_args(root, other, "labels_b", "folds.only=[0]"), capsys)[0] == 0
    runs = root / "runs"
    result = write_report([runs / "labels_a", runs / "labels_b"], tmp_path / "r")
    assert result["refused_data"] == [
        ("labels_a/svm", "labels_b/svm", ["labels differ for speaker(s) spk03"])
    ]


def test_a_manifest_edited_in_place_after_a_run_is_refused(corpus, capsys, fresh):
    root, table = corpus
    manifest = write_manifest(four(table), root / "edited.csv")
    args = svm_args(root, manifest, "edited", "folds.only=[0]")
    assert train(args, capsys)[0] == 0
    # the same run again: resumed, nothing changed, nothing refused
    code, err = train(args, capsys)
    assert code == 0 and "1 cell(s) finished earlier, skipped" in err
    edited = four(table)
    edited.loc[edited["speaker"] == "spk02", "label"] = "neutral"
    write_manifest(edited, manifest)
    code, err = train(args, capsys)
    cell = root / "runs" / "edited" / "svm" / "seed-0" / "fold-00"
    assert code == 2
    assert f"{cell}: labels changed for speaker(s) spk02" in err
    assert "a new run.name" in err and "--rerun-changed" in err
    assert json.loads((cell / "metrics.json").read_text())["data"]  # untouched


def test_a_speaker_added_then_the_same_train_names_the_shifted_folds(corpus, capsys, fresh):
    from sergraph.results.summary import summarize

    root, table = corpus
    manifest = write_manifest(four(table), root / "grown.csv")
    args = svm_args(root, manifest, "grown", "folds.only=[0,1]", "run.seeds=[0,1]")
    assert train(args, capsys)[0] == 0  # two seeds of one variant: pooled, accepted
    variant = root / "runs" / "grown" / "svm"
    assert len(summarize(variant)["folds"]) == 4
    write_manifest(table, manifest)  # spk00 added: fold-00 now tests spk00
    code, err = train(args, capsys)
    assert code == 2
    for seed in (0, 1):
        assert (
            f"seed-{seed}/fold-00: fold numbering shifted: fold-00 tested spk01, now tests "
            "spk00; speakers added: spk00" in err
        )
        assert (
            f"seed-{seed}/fold-01: fold numbering shifted: fold-01 tested spk02, now tests "
            "spk01; speakers added: spk00" in err
        )
    # the way on: --rerun-changed moves the four cells aside and computes them again
    code, err = train(args, capsys, "--rerun-changed")
    assert code == 0
    assert sorted(p.name for p in (variant / "seed-0").iterdir()) == [
        "changed-fold-00-1",
        "changed-fold-01-1",
        "fold-00",
        "fold-01",
    ]
    folds = pd.DataFrame(summarize(variant)["folds"])
    assert sorted(set(folds["test_speakers"])) == ["spk00", "spk01"]


def test_a_label_pooling_cells_of_different_data_is_refused(corpus, capsys, fresh):
    from sergraph.results.summary import summarize

    root, table = corpus
    manifest = write_manifest(four(table), root / "pooled.csv")
    assert train(svm_args(root, manifest, "pooled", "folds.only=[0,1]"), capsys)[0] == 0
    variant = root / "runs" / "pooled" / "svm"
    path = variant / "seed-0" / "fold-01" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["data"]["speakers"]["spk03"]["labels"] = "0" * 16  # as if relabelled in between
    path.write_text(json.dumps(metrics))
    with pytest.raises(
        ValueError,
        match=r"seed-0/fold-01 vs seed-0/fold-00: labels differ for "
        r"speaker\(s\) spk03",
    ):
        summarize(variant)


def test_replaced_audio_is_a_changed_cell_not_a_finished_one(corpus, capsys, fresh, tmp_path):
    import shutil

    root, table = corpus
    rows = four(table)
    copies = tmp_path / "wav"
    copies.mkdir()
    rows["path"] = [shutil.copy(path, copies / Path(path).name) for path in rows["path"]]
    manifest = write_manifest(rows, tmp_path / "audio.csv")
    args = svm_args(root, manifest, "audio", "folds.only=[1]")
    assert train(args, capsys)[0] == 0
    import soundfile

    target = rows["path"][rows["speaker"] == "spk03"].iloc[0]
    audio, rate = soundfile.read(target)
    soundfile.write(target, 0.5 * audio, rate)  # same path, the recording re-recorded quieter
    code, err = train(args, capsys)
    assert code == 2
    assert "seed-0/fold-01: audio changed for speaker(s) spk03" in err
