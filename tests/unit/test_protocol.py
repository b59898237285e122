"""Evaluation protocols: the enrollment subset, label-free statistics, the guard, the SVM's C
search, and the fold check and enrollment in the real runner path (``sergraph train``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sergraph.config import ConfigError, compose, identity, normalization_of, protocol_of
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import Fold, FoldLeakError, split_indices
from sergraph.data.graphs import Normalizer
from sergraph.data.prepared import PreparedData
from sergraph.data.protocol import (
    TRANSDUCTIVE_NOTE,
    ProtocolLeakError,
    check_enrollment_sizes,
    check_predictions,
    check_protocol,
    enrollment_count,
    enrollment_rows,
    enrollment_speakers,
    resolve_protocol,
)
from sergraph.training.classic import fit_classic

FOLD = Fold(0, ("s3", "s4"), ("s2",), ("s1",))


def table_of(speakers=("s1", "s2", "s3", "s4"), per_speaker=10) -> pd.DataFrame:
    labels = ["angry", "neutral", "sad"]
    rows = [
        (f"{s}_{i:02d}", f"/audio/{s}_{i:02d}.wav", s, labels[i % 3])
        for s in speakers
        for i in range(per_speaker)
    ]
    return pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])


def features_of(table: pd.DataFrame, width: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(loc=i % 7, size=(int(rng.integers(4, 12)), width)).astype(np.float32)
        for i in range(len(table))
    ]


# ---------------------------------------------------------------------------------------------
# configuration


def test_protocol_names_and_the_older_spelling():
    # The data module's own modes (train | speaker | none) keep their resolution.
    assert resolve_protocol(None, "train") == "inductive"
    assert resolve_protocol(None, "speaker") == "transductive"
    assert resolve_protocol("enrollment", "train") == "enrollment"
    with pytest.raises(ValueError, match="no statistics of its own"):
        resolve_protocol("inductive", "speaker")
    with pytest.raises(ValueError, match="transductive applies"):
        resolve_protocol("transductive", "train")
    with pytest.raises(ConfigError, match="eval.enrollment"):
        compose(["eval.protocol=enrollment", "eval.enrollment=2.5"])


def test_eval_protocol_is_the_one_key_and_graph_normalize_says_only_whether():
    cfg = compose([])
    assert cfg.eval.protocol == "inductive" and cfg.graph.normalize == "zscore"
    assert (normalization_of(cfg), protocol_of(cfg)) == ("train", "inductive")
    for protocol in ("enrollment", "transductive"):
        chosen = compose([f"eval.protocol={protocol}"])
        assert (normalization_of(chosen), protocol_of(chosen)) == ("speaker", protocol)
    assert normalization_of(compose(["graph.normalize=none"])) == "none"
    best = compose(["experiment=best_emodb"])  # says transductive in so many words
    assert best.eval.protocol == "transductive" and normalization_of(best) == "speaker"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["eval.protocol=enrollment", "graph.normalize=none"],
            r"eval.protocol=enrollment with graph.normalize=none: .*accepted: "
            r"eval.protocol=enrollment with graph.normalize=zscore, or graph.normalize=none "
            r"with eval.protocol=inductive",
        ),
        (
            ["eval.protocol=transductive", "graph.normalize=none"],
            r"eval.protocol=transductive with graph.normalize=none",
        ),
        (
            ["graph.normalize=speaker"],
            r"graph.normalize=speaker was removed: .*eval.protocol's alone.*"
            r"graph.normalize=zscore with eval.protocol=transductive.*eval.protocol=enrollment",
        ),
        (
            ["eval.protocol=enrollment", "graph.normalize=train"],
            r"graph.normalize=train was removed: .*graph.normalize=zscore with "
            r"eval.protocol=inductive",
        ),
        (["eval.protocol=null"], r"eval.protocol=null is no longer accepted: .*inductive"),
        (["eval.protocol=lenient"], r"eval.protocol='lenient' is not valid; choose one of"),
        (["graph.normalize=global"], r"graph.normalize='global' is not valid.*zscore"),
    ],
)
def test_contradicting_or_removed_settings_are_refused_naming_both_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_sergraph_config_prints_the_protocol(capsys):
    from sergraph import cli

    assert cli.main(["config"]) == 0
    printed = capsys.readouterr().out
    assert "protocol: inductive" in printed and "protocol: null" not in printed
    assert cli.main(["config", "eval.protocol=enrollment", "graph.normalize=none"]) != 0
    error = capsys.readouterr().err
    assert "eval.protocol=enrollment" in error and "graph.normalize=none" in error


def test_every_experiment_file_names_its_protocol():
    from omegaconf import OmegaConf

    from sergraph.config import config_dir

    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        text = OmegaConf.load(path)
        assert OmegaConf.select(text, "eval.protocol") in ("inductive", "transductive"), path
        for label, overrides in (text.get("variants") or {}).items():
            assert not any(o.startswith("graph.normalize=") for o in overrides), (path, label)


def _as_saved_by_an_older_release(cfg):
    """A config.yaml of a release before eval.protocol was the one key: graph.normalize spelled
    the mode (train | speaker | none) and eval.protocol was null unless enrollment."""
    from omegaconf import OmegaConf

    from sergraph.config import to_yaml

    saved = OmegaConf.create(to_yaml(cfg))
    saved.graph.normalize = normalization_of(cfg)
    if saved.eval.protocol != "enrollment":
        saved.eval.protocol = None
    saved.run.pop("sources")
    return saved


def test_identity_of_runs_made_before_protocols_is_unchanged():
    # Same behaviour, same id: the default is inductive, transductive is what
    # graph.normalize=speaker alone meant.
    assert identity(compose([])) == identity(compose(["eval.protocol=inductive"]))
    assert identity(compose([])) == "0f1268d2ea22"  # pinned in test_features too
    transductive = compose(["eval.protocol=transductive"])
    older = _as_saved_by_an_older_release(transductive)
    assert (older.graph.normalize, older.eval.protocol) == ("speaker", None)
    assert identity(older) == identity(transductive)
    # The reference and the recorded config files never change an id.
    assert identity(compose(["reference=svm"])) == identity(compose([]))
    assert compose(["experiment=quickstart"]).run.sources  # hashes of the composing files
    # Enrollment changes what is scored: another id, and its amount matters.
    enrolled = identity(compose(["eval.protocol=enrollment"]))
    assert enrolled != identity(transductive)
    assert enrolled != identity(compose(["eval.protocol=enrollment", "eval.enrollment=3"]))
    assert identity(compose(["graph.normalize=none"])) != identity(compose([]))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["experiment=best_emodb"],
        ["model=svm", "eval.protocol=transductive"],
        ["eval.protocol=enrollment"],
        ["graph.normalize=none"],
    ],
)
def test_a_config_saved_before_protocols_keeps_its_identity(overrides):
    from sergraph.config import upgrade_saved

    cfg = compose(overrides)
    saved = _as_saved_by_an_older_release(cfg)
    if saved.eval.protocol is None:  # a release before protocols: no eval section at all
        for key in ("eval", "reference"):
            saved.pop(key)
    assert identity(saved) == identity(cfg)
    assert protocol_of(saved) == protocol_of(cfg)
    upgraded = upgrade_saved(saved)
    assert (upgraded.eval.protocol, upgraded.graph.normalize) == (
        cfg.eval.protocol,
        cfg.graph.normalize,
    )
    assert identity(upgraded) == identity(cfg)


def test_an_old_enrollment_run_with_training_statistics_cannot_be_upgraded():
    from sergraph.config import upgrade_saved

    saved = _as_saved_by_an_older_release(compose(["eval.protocol=enrollment"]))
    saved.graph.normalize = "train"  # accepted before: enrollment audio held aside, unused
    with pytest.raises(ValueError, match="eval.protocol=enrollment with graph.normalize=train"):
        upgrade_saved(saved)


def test_config_sources_are_the_sha256_of_each_composing_file():
    import hashlib

    from sergraph.config import config_dir

    sources = compose(["experiment=best_emodb_ablation"]).run.sources
    assert set(sources) == {
        "default.yaml",
        "data/synthetic.yaml",
        "model/lstm_gin.yaml",
        "trainer/default.yaml",
        "experiment/best_emodb_ablation.yaml",
        "experiment/best_emodb.yaml",  # extended by the ablation
    }
    path = config_dir() / "experiment" / "best_emodb.yaml"
    assert sources["experiment/best_emodb.yaml"] == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the enrollment subset


def test_enrollment_counts_by_hand():
    assert enrollment_count(10, 0.2) == 2
    assert enrollment_count(10, 3) == 3
    assert enrollment_count(12, 0.25) == 3
    # never clamped: an amount that holds none aside or scores none is refused
    with pytest.raises(ValueError, match=r"holds 0 of 3 utterance\(s\) aside"):
        enrollment_count(3, 0.1)  # round(0.3) = 0
    with pytest.raises(ValueError, match=r"holds 10 of 4 utterance\(s\) aside"):
        enrollment_count(4, 10)


def speakers_with(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{s}_{i}", s, "angry") for s, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["utterance", "speaker", "label"])


def test_enrollment_amounts_a_speaker_cannot_honour_are_refused_naming_it():
    table = speakers_with({"03": 3, "08": 12, "09": 2, "10": 12})
    # the cases: 5 of a 3-utterance speaker; 1e9; 0.2 of a 2-utterance speaker
    with pytest.raises(ValueError) as caught:
        check_enrollment_sizes(table, ["03", "08"], 5)
    message = str(caught.value)
    assert "eval.enrollment=5 cannot be honoured" in message
    assert "speaker '03' has 3 (would hold 5 aside, none left to score)" in message
    assert "'08'" not in message  # 12 utterances: 5 aside, 7 scored, fine
    # 3 utterances: a count of 1 or 2; a fraction in (0.5/3, 1 - 0.5/3)
    assert "Accepted here: a count from 1 to 2 or a fraction between 0.167 and 0.833" in message
    with pytest.raises(ValueError, match=r"'08' has 12 \(would hold 1000000000 aside"):
        check_enrollment_sizes(table, ["08"], 1e9)
    with pytest.raises(ValueError, match=r"'09' has 2 \(would hold 0 aside\)"):
        check_enrollment_sizes(table, ["09", "10"], 0.2)  # round(0.4) = 0
    with pytest.raises(ValueError, match="a fraction between 0.25 and 0.75"):
        enrollment_rows(table, ["09"], 0.2)  # the rows themselves are never clamped either
    check_enrollment_sizes(table, ["03", "08", "09", "10"], 1)  # one aside, the rest scored
    check_enrollment_sizes(table, ["08", "10"], 0.2)  # round(2.4) = 2 of 12


@pytest.mark.parametrize("amount", [1.5, 0.0, -1, float("nan")])
def test_absurd_enrollment_amounts_are_refused_by_the_config(amount):
    with pytest.raises(ConfigError, match="eval.enrollment"):
        compose(["eval.protocol=enrollment", f"eval.enrollment={amount}"])


def test_enrollment_subset_is_fixed_seeded_and_label_free():
    table = table_of()
    rows = enrollment_rows(table, ["s1", "s2"], 0.2, seed=0)
    assert len(rows) == 4 and set(table["speaker"].iloc[rows]) == {"s1", "s2"}
    assert list(rows) == list(enrollment_rows(table, ["s2", "s1"], 0.2, seed=0))
    # labels permuted, other speakers' rows gone, rows shuffled: the same utterances
    permuted = table.assign(label=np.random.default_rng(1).permutation(table["label"]))
    assert list(permuted["utterance"].iloc[enrollment_rows(permuted, ["s1"], 0.2)]) == list(
        table["utterance"].iloc[enrollment_rows(table, ["s1"], 0.2)]
    )
    shuffled = table[table["speaker"] != "s3"].sample(frac=1, random_state=3).reset_index(drop=True)
    assert set(shuffled["utterance"].iloc[enrollment_rows(shuffled, ["s1"], 0.2)]) == set(
        table["utterance"].iloc[enrollment_rows(table, ["s1"], 0.2)]
    )
    assert list(enrollment_rows(table, ["s1"], 0.2, seed=1)) != list(
        enrollment_rows(table, ["s1"], 0.2, seed=0)
    )


def test_split_indices_leave_enrollment_rows_out_of_scoring():
    table = table_of()
    enrolled = enrollment_rows(table, ["s1", "s2"], 3)
    rows = split_indices(table, FOLD, enrolled)
    assert len(rows["test"]) == 7 and len(rows["val"]) == 7 and len(rows["train"]) == 20
    assert not set(enrolled) & (set(rows["test"]) | set(rows["val"]))
    with pytest.raises(FoldLeakError, match="training speakers"):
        split_indices(table, FOLD, enrollment_rows(table, ["s3"], 2))
    from sergraph.data.folds import fold_table

    shown = fold_table(table, [FOLD], ["angry", "neutral", "sad"], lambda fold: enrolled)
    shown = shown.set_index("split")
    assert shown.loc["test", "n"] == 7 and shown.loc["test", "enrollment"] == 3
    assert shown.loc["train", "enrollment"] == 0
    assert shown.loc["val", ["angry", "neutral", "sad"]].sum() == 7  # scored rows counted


def test_a_classic_baseline_enrolls_its_test_speakers_only():
    # FOLD: train s3, s4; validation s2; test s1. A neural cell scores s2 unseen (validation),
    # a classic baseline fits on it.
    assert enrollment_speakers(FOLD) == ["s2", "s1"]
    assert enrollment_speakers(FOLD, fits_on_validation=True) == ["s1"]


@pytest.mark.parametrize("model, val_enrolled", [("lstm_gin", 2), ("logreg", 0), ("svm", 0)])
def test_sergraph_folds_shows_the_enrollment_of_the_configured_model(
    model, val_enrolled, capsys, tmp_path, monkeypatch
):
    from sergraph import cli

    monkeypatch.chdir(tmp_path)
    overrides = ["data.options.n_speakers=4", "data.options.n_per_class=3"]
    assert cli.main(["folds", f"model={model}", "eval.protocol=enrollment", *overrides]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    header = lines[0]
    rows = {(row[0], row[1]): dict(zip(header, row, strict=True)) for row in lines[1:]}
    # 12 utterances a speaker, eval.enrollment=0.2: 2 held aside from each speaker held out
    assert rows["fold-00", "test"]["enrollment"] == "2" and rows["fold-00", "test"]["n"] == "10"
    assert rows["fold-00", "val"]["enrollment"] == str(val_enrolled)
    assert rows["fold-00", "val"]["n"] == str(12 - val_enrolled)


# ---------------------------------------------------------------------------------------------
# statistics, datamodule and guard


def datamodule(table, features, protocol, normalize="speaker", functionals=None, **kwargs):
    module = FoldDataModule(
        table,
        features,
        FOLD,
        ["angry", "neutral", "sad"],
        k=2,
        max_nodes=None,
        pad=False,
        normalize=normalize,
        protocol=protocol,
        utterance_features=functionals,
        **kwargs,
    )
    module.setup()
    return module


def test_enrollment_statistics_by_hand_and_never_scored():
    table, features = table_of(), None
    features = features_of(table)
    module = datamodule(table, features, "enrollment", enrollment=0.3)
    enrolled = enrollment_rows(table, ["s1", "s2"], 0.3)
    assert np.array_equal(module.enrolled, enrolled)
    scored = [g.utterance for split in ("val", "test") for g in module.datasets[split]]
    assert not set(scored) & set(table["utterance"].iloc[enrolled])
    assert len(module.datasets["test"]) == 7  # 10 - round(0.3 * 10)
    # the test speaker's statistics: its enrollment frames only, computed here by hand
    s1 = [i for i in enrolled if table["speaker"].iloc[i] == "s1"]
    frames = np.concatenate([features[i] for i in s1]).astype(np.float64)
    first = next(g for g in module.datasets["test"])
    row = table.index[table["utterance"] == first.utterance][0]
    expected = (features[row] - frames.mean(axis=0)) / frames.std(axis=0)
    np.testing.assert_allclose(first.x.numpy(), expected, rtol=1e-4, atol=1e-5)
    # a training speaker keeps all its utterances for its own statistics
    s3 = np.concatenate([features[i] for i in range(len(table)) if table["speaker"][i] == "s3"])
    np.testing.assert_allclose(module.speaker_normalizers["s3"].mean, s3.mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize(
    "protocol,normalize",
    [
        ("inductive", "train"),
        ("enrollment", "speaker"),
        ("enrollment", "train"),
        ("transductive", "speaker"),
    ],
)
def test_statistics_are_label_free(protocol, normalize):
    """Permuting the labels of any speaker changes no feature (nodes and utterance vector)."""
    table = table_of()
    features = features_of(table)
    functionals = np.random.default_rng(5).normal(size=(len(table), 4))
    base = datamodule(table, features, protocol, normalize, functionals)
    rng = np.random.default_rng(2)
    for speaker in ("s1", "s2", "s3"):
        permuted = table.copy()
        mask = permuted["speaker"] == speaker
        permuted.loc[mask, "label"] = rng.permutation(permuted.loc[mask, "label"].to_numpy())
        other = datamodule(permuted, features, protocol, normalize, functionals)
        for split in ("train", "val", "test"):
            for a, b in zip(base.datasets[split], other.datasets[split], strict=True):
                assert a.utterance == b.utterance
                assert np.array_equal(a.x.numpy(), b.x.numpy())
                assert np.array_equal(a.u.numpy(), b.u.numpy())


def test_guard_raises_on_a_scored_enrollment_row_or_a_scored_row_in_a_statistic():
    with pytest.raises(ProtocolLeakError, match="enrollment utterance"):
        check_protocol("enrollment", np.array([1, 2]), np.array([5]), np.array([2, 7]))
    with pytest.raises(ProtocolLeakError, match="entered a normalisation statistic"):
        check_protocol("inductive", np.array([1, 2]), np.array([0, 2, 3]))
    with pytest.raises(ProtocolLeakError, match="entered a normalisation statistic"):
        check_protocol("enrollment", np.array([1, 2]), {"s1": np.array([1]), "s3": np.array([4])})
    check_protocol("transductive", np.array([1, 2]), {"s1": np.array([1, 2])})  # allowed
    table = table_of()
    enrolled = table["utterance"].iloc[enrollment_rows(table, ["s1"], 2)].tolist()
    scored = table["utterance"][table["speaker"] == "s1"].tolist()
    with pytest.raises(ProtocolLeakError, match="among the predictions"):
        check_predictions(table, scored, ["s1"], "enrollment", 2)
    rest = [u for u in scored if u not in enrolled]
    check_predictions(table, rest, ["s1"], "enrollment", 2)
    check_predictions(table, scored, ["s1"], "inductive", 2)


def test_transductive_is_said_in_words():
    from sergraph.data.protocol import protocol_record

    assert protocol_record("transductive")["note"] == TRANSDUCTIVE_NOTE
    assert "test utterances were used unlabelled" in TRANSDUCTIVE_NOTE
    assert "20 %" in protocol_record("enrollment", 0.2)["note"]


# ---------------------------------------------------------------------------------------------
# the SVM


def svm_study(table, seed=0) -> PreparedData:
    rng = np.random.default_rng(seed)
    classes = ["angry", "neutral", "sad"]
    centre = {c: rng.normal(size=6) for c in classes}
    functionals = np.stack([centre[c] + rng.normal(scale=1.5, size=6) for c in table["label"]])
    return PreparedData(table=table, classes=classes, folds=[FOLD], functionals=functionals)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["eval.protocol=enrollment"],
        ["eval.protocol=enrollment"],
    ],
)
def test_svm_c_search_never_sees_the_test_speaker(overrides):
    cfg = compose(["model=svm", *overrides])
    table = table_of(("s1", "s2", "s3", "s4", "s5"), per_speaker=12)
    fold = Fold(0, ("s3", "s4", "s5"), ("s2",), ("s1",))
    study = svm_study(table)
    study.folds = [fold]
    _, extra = fit_classic(cfg, study, fold, seed=0)
    # rewrite every feature and label of the test speaker
    test = (table["speaker"] == "s1").to_numpy()
    rewritten = svm_study(table)
    rewritten.folds = [fold]
    rewritten.functionals[test] = np.random.default_rng(9).normal(scale=50, size=(test.sum(), 6))
    rewritten.table = table.assign(
        label=np.where(test, "sad", table["label"])  # every test label changed to one class
    )
    predictions, again = fit_classic(cfg, rewritten, fold, seed=0)
    assert (again["svm_C"], again["inner_cv_ua"]) == (extra["svm_C"], extra["inner_cv_ua"])
    if "eval.protocol=enrollment" in overrides:
        enrolled = set(table["utterance"].iloc[enrollment_rows(table, ["s1"], 0.2)])
        assert len(predictions) == 12 - 2 and not enrolled & set(predictions["utterance"])


def test_svm_speaker_normalisation_uses_the_enrollment_part_only():
    from sergraph.models.classic import speaker_standardized
    from sergraph.training.classic import protocol_rows

    table = table_of()
    values = np.random.default_rng(3).normal(size=(len(table), 3))
    speakers = table["speaker"].to_numpy()
    fit_rows, test_rows, statistics, enrolled = protocol_rows(
        table, FOLD, "enrollment", "speaker", 0.2, 0
    )
    assert set(statistics["s1"]) == set(enrolled) and len(test_rows) == 8
    out = speaker_standardized(values, speakers, statistics)
    block = values[enrolled]
    expected = (values[test_rows] - block.mean(axis=0)) / block.std(axis=0)
    np.testing.assert_allclose(out[test_rows], expected)
    # the validation speaker is a training speaker of the SVM: all its rows, all fitted on
    assert len(statistics["s2"]) == 10 and len(fit_rows) == 30
    assert Normalizer  # (the graph models' z-scoring is tested above)


# ---------------------------------------------------------------------------------------------
# the real runner path


SMALL = ["data.options.n_speakers=4", "data.options.n_per_class=3", "features.workers=1"]


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("model", ["svm", "lstm_gin"])
def test_a_fold_built_to_overlap_raises_from_sergraph_train(small_run, monkeypatch, capsys, model):
    import sergraph.data.prepared as prepared
    from sergraph import cli

    def overlapping(table, **_):  # the test speaker is also a training speaker
        speakers = sorted(table["speaker"].unique())
        return [Fold(0, tuple(speakers[1:]), (), (speakers[1],))]

    monkeypatch.setattr(prepared, "make_folds", overlapping)
    prepared._PREPARED.clear()
    code = cli.main(["train", f"model={model}", *SMALL, "trainer.max_epochs=1", "run.name=leak"])
    assert code != 0
    assert "in both train and test" in capsys.readouterr().err
    assert not list(small_run.rglob("metrics.json"))
    prepared._PREPARED.clear()


@pytest.mark.parametrize("model", ["svm", "lstm_gin"])
def test_enrollment_utterances_are_never_in_predictions(small_run, model):
    from sergraph import cli
    from sergraph.data.prepared import _PREPARED, load_table

    _PREPARED.clear()
    protocol = ["eval.protocol=enrollment", "eval.enrollment=3"]
    args = ["train", f"model={model}", *SMALL, *protocol, "run.name=enrol", "folds.only=[0,1]"]
    assert (
        cli.main(
            [*args, "trainer=quick", "trainer.max_epochs=1", "model.params.hidden=4"]
            if model != "svm"
            else args
        )
        == 0
    )
    table, _ = load_table(compose(SMALL))
    for metrics_path in sorted(small_run.rglob("metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        assert metrics["protocol"]["name"] == "enrollment"
        assert set(metrics["provenance"]) >= {"commit", "dirty", "config_files", "packages"}
        predicted = pd.read_csv(metrics_path.parent / "predictions.csv")
        test = metrics["test_speakers"]
        enrolled = set(table["utterance"].iloc[enrollment_rows(table, test, 3)])
        everyone = set(table["utterance"][table["speaker"].isin(test)])
        assert len(enrolled) == 3 * len(test)
        assert set(predicted["utterance"]) == everyone - enrolled
    _PREPARED.clear()
