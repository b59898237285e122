"""Settings and corpora that cannot give what they state are refused (or warned about) before
any work: no cell folder is made, no feature is extracted.

The corpora are manifests of 1 s tones (``tests/unit/test_bad_input.py``); the folds are
leave-one-speaker-out with the next speaker (cyclically) for validation, so for speakers
s1..s4 fold 1 tests s2 and validates on s3, fold 2 tests s3 and validates on s4.
"""

from __future__ import annotations

import shutil

import pytest

from sergraph.cli import main
from sergraph.config import ConfigError, compose, compose_study
from sergraph.data.folds import similar_speaker_ids
from sergraph.training.memory import GIB, check_memory, padded_memory
from tests.unit.test_bad_input import make_manifest, study_overrides


def manifest(tmp_path, sizes: dict[tuple[str, str], int]) -> str:
    """``sizes``: (speaker, label) -> number of utterances."""
    rows = [
        (f"{speaker}_{label}{i}.wav", speaker, label)
        for (speaker, label), n in sizes.items()
        for i in range(n)
    ]
    return make_manifest(tmp_path / "corpus", rows)


def train(csv, tmp_path, *extra) -> int:
    return main(["train", *study_overrides(csv, tmp_path, "stop"), "logger.kind=none", *extra])


def nothing_done(tmp_path) -> bool:
    runs = tmp_path / "runs" / "bad"
    return not list(runs.glob("*/seed-*")) and not (tmp_path / "cache").exists()


def test_a_class_missing_from_training_is_found_for_every_fold_before_the_first(tmp_path, capsys):
    sizes = {(s, label): 2 for s in ("s1", "s2", "s3", "s4") for label in ("angry", "sad")}
    sizes[("s3", "happy")] = 2  # only s3 says "happy": folds 1 (val s3) and 2 (test s3) lack it
    assert train(manifest(tmp_path, sizes), tmp_path) == 2
    err = capsys.readouterr().err
    assert (
        "in 2 of 4 fold(s) the training speakers have no utterances of some class: "
        "fold-01 (test s2): ['happy']; fold-02 (test s3): ['happy']"
    ) in err
    assert nothing_done(tmp_path)


def test_folds_only_empty_is_refused(tmp_path, capsys):
    sizes = {(s, label): 1 for s in ("s1", "s2", "s3") for label in ("angry", "sad")}
    assert train(manifest(tmp_path, sizes), tmp_path, "folds.only=[]") == 2
    assert "folds.only=[] selects no fold; give fold indices from 0..2" in capsys.readouterr().err
    assert nothing_done(tmp_path)


def test_an_enrollment_amount_a_speaker_cannot_honour_is_refused_before_any_work(tmp_path, capsys):
    sizes = {(s, label): 4 for s in ("s1", "s2", "s3") for label in ("angry", "sad")}
    sizes[("s2", "sad")] = 1  # s2: 4 + 1 = 5 utterances; 5 held aside would score none
    args = ["eval.protocol=enrollment", "eval.enrollment=5"]
    assert train(manifest(tmp_path, sizes), tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert "eval.enrollment=5 cannot be honoured" in err
    assert "speaker 's2' has 5 (would hold 5 aside, none left to score)" in err
    assert "'s1'" not in err.split("cannot be honoured")[1]  # 8 utterances: 5 aside, 3 scored
    assert "a count from 1 to 4" in err
    assert nothing_done(tmp_path)


def test_padded_graph_memory_by_hand():
    cfg = compose(["graph.max_nodes=100000", "optim.batch_size=32"])  # LSTM-GIN: H=128, L=5
    need = padded_memory(cfg, 535, 76)  # EmoDB, IS10 LLDs with deltas
    assert need["graphs"] == 535 * 100_000 * 76 * 4  # 16.26e9 bytes
    assert need["batch"] == 32 * 100_000 * (76 + 128 * (2 + 4 * 5)) * 4  # 2892 floats a node
    with pytest.raises(ValueError) as caught:
        check_memory(cfg, 535, 76, available=23 * GIB)
    message = str(caught.value)
    assert message.startswith("graph.max_nodes=100000 with graph.pad=true needs at least 49.6 GiB")
    assert "(15.1 GiB of graphs)" in message and "(34.5 GiB)" in message
    assert "more than this machine's 23.0 GiB of memory" in message
    check_memory(compose([]), 535, 76, available=1 * GIB)  # the paper's 120 nodes: 64 MB
    check_memory(compose(["graph.max_nodes=100000", "graph.pad=false"]), 535, 76, available=1)


def test_an_absurd_max_nodes_is_refused_before_any_work(tmp_path, capsys):
    sizes = {(s, label): 1 for s in ("s1", "s2", "s3") for label in ("angry", "sad")}
    # 32 x 10^7 nodes x 2892 floats x 4 bytes = 3447 GiB for one batch: more than any machine
    assert train(manifest(tmp_path, sizes), tmp_path, "graph.max_nodes=10000000") == 2
    err = capsys.readouterr().err
    assert "graph.max_nodes=10000000 with graph.pad=true needs at least" in err
    assert "(3447.5 GiB)" in err and "of memory" in err
    assert nothing_done(tmp_path)


def test_speaker_ids_equal_after_normalising_are_warned_about(tmp_path, capsys):
    groups = similar_speaker_ids(["03", "3", "08", " 8", "Spk1", "spk01", "10", "1"])
    assert groups == [[" 8", "08"], ["03", "3"], ["Spk1", "spk01"]]  # "10" and "1" stay apart
    sizes = {(s, label): 1 for s in ("03", "3", "08") for label in ("angry", "sad")}
    sizes[("03", "sad")] = 2
    from sergraph.data.prepared import prepare

    prepare(compose(study_overrides(manifest(tmp_path, sizes), tmp_path, "stop")), False)
    err = capsys.readouterr().err
    assert (
        "WARNING: speaker ids '03' (3 utterances) and '3' (2 utterances) differ only in case, "
        "spaces or leading zeros"
    ) in err


def test_a_variant_may_not_move_the_study(tmp_path, monkeypatch):
    import sergraph.config.composition as composition
    import sergraph.config.files as files

    configs = tmp_path / "configs"
    shutil.copytree(files.config_dir(), configs)
    (configs / "experiment" / "moved.yaml").write_text(
        "run:\n  name: study\nvariants:\n  a: [graph.k=2]\n  b: [graph.k=4, run.name=elsewhere]\n"
    )
    monkeypatch.setattr(files, "config_dir", lambda: configs)
    monkeypatch.setattr(composition, "config_dir", lambda: configs)
    with pytest.raises(ConfigError) as caught:
        compose_study(["experiment=moved"])
    assert "variants: b: run.name='elsewhere', but the study's is 'study'" in str(caught.value)
