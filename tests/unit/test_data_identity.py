"""What a cell was computed from: the sergraph version, the data fingerprint (corpus table, feature
inputs, folds, scored set) in every metrics.json, and the checks that read it back: a finished
cell whose data changed is refused before any work (``sergraph train``), and cells of different
data or scored sets are neither pooled nor paired (``report``, ``select``).

Runs are tiny: the SVM (no epochs) on a manifest of synthetic audio, 4 speakers x 4 classes x 3
utterances, leave-one-speaker-out.
"""

from __future__ import annotations

import pandas as pd

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
