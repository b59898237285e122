"""Cross-corpus studies: a test corpus other than the training corpus, leave one corpus out.

The study is the shipped experiment ``cross_corpus`` (three small synthetic corpora, seeds 0,
1 and 2; corpus b calls "sad" "gloomy", corpus c has no "sad"), shrunk to one epoch. Its scores
are recomputed with scikit-learn from the predictions files, its scored utterances and labels
from the corpora loaded independently. Two tiny studies that differ only in their test corpus
show that the test corpus never reaches training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
)

from sergraph.config import ConfigError, compose
from sergraph.data.corpora import load_corpus
from sergraph.data.prepared import prepare
from sergraph.results.comparable import corpus_evaluation
from sergraph.results.report import write_report
from sergraph.training.study import run_study

#: The corpora of experiment cross_corpus, as its file writes them (loader arguments).
B = {"seed": 1, "n_speakers": 4, "n_per_class": 3}
B_LABELS = {"classes": ["neutral", "happy", "gloomy", "angry"], "merge": {"sad": "gloomy"}}
C = {"seed": 2, "n_speakers": 4, "n_per_class": 3}
C_LABELS = {"classes": ["neutral", "happy", "angry"]}
A = {"seed": 0, "n_speakers": 4, "n_per_class": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Every synthetic corpus of this module generated under its own folder."""
    root = tmp_path_factory.mktemp("cross_corpus")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERGRAPH_CACHE", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def study(cache) -> Path:
    run_study(
        [
            "experiment=cross_corpus",
            "trainer.max_epochs=1",
            "features.workers=1",
            f"features.cache_dir={cache / 'features'}",
            f"run.out_dir={cache / 'runs'}",
            "logger.kind=none",
        ]
    )
    return cache / "runs" / "cross_corpus"


def _cell(study: Path, label: str, fold: int) -> tuple[dict, pd.DataFrame]:
    cell = study / label / "seed-0" / f"fold-{fold:02d}"
    return json.loads((cell / "metrics.json").read_text()), pd.read_csv(cell / "predictions.csv")


def _check_scores(metrics: dict, predictions: pd.DataFrame) -> None:
    """The cell's scores, recomputed with scikit-learn from its predictions file."""
    classes = metrics["classes"]
    true, predicted = predictions["true"], predictions["predicted"]
    probabilities = predictions[[f"p_{c}" for c in classes]].to_numpy()
    assert (predicted == np.array(classes)[probabilities.argmax(axis=1)]).all()
    assert metrics["wa"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["ua"] == pytest.approx(balanced_accuracy_score(true, predicted))
    assert metrics["f1"] == pytest.approx(
        f1_score(true, predicted, labels=sorted(set(true)), average="macro", zero_division=0)
    )
    present = [c for c in classes if (true == c).any()]
    recall = recall_score(true, predicted, labels=present, average=None, zero_division=0)
    assert [metrics["recall"][classes.index(c)] for c in present] == pytest.approx(recall)
    assert metrics["confusion"] == confusion_matrix(true, predicted, labels=classes).tolist()
    assert metrics["support"] == [int((true == c).sum()) for c in classes]


def _prefixed(name: str, table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(
        utterance=name + ":" + table["utterance"], speaker=name + ":" + table["speaker"]
    )


def test_cross_corpus_keys_are_validated_by_name():
    test = "cross_corpus.test={data: synthetic, name: b"
    cases = {
        f"{test}, colour: red}}": r"cross_corpus.test: unknown key\(s\) \['colour'\]",
        "cross_corpus.test={data: nope, name: b}": r"cross_corpus.test.data='nope' is not known",
        "cross_corpus.test={name: b}": r"cross_corpus.test.data: name the corpus",
        "cross_corpus.test={data: synthetic}": r"cross_corpus.test.name: the test corpus needs",
        f"{test}, label_map: [sad]}}": r"cross_corpus.test.label_map=\['sad'\]: write a mapping",
        f"{test}, drop: fear}}": r"cross_corpus.test.drop='fear': write a list",
        "cross_corpus.corpora=[{data: synthetic}]": r"cross_corpus.corpora lists 1 corpus",
        "cross_corpus.corpora=[{data: synthetic}, {data: synthetic, options: {seed: 1}}]": (
            r"cross_corpus.corpora: name\(s\) \['synthetic'\] given to more than one corpus"
        ),
        "cross_corpus.classes=[sad]": r"cross_corpus.classes is the label set",
        # a data mapping without its corpus's name is not the synthetic corpus by default
        "cross_corpus.test={data: {root: PATH}, name: b}": (
            r"cross_corpus.test.data: a data mapping needs the corpus's name \(data.name\), "
            r"one of \['audformat', 'emodb', .*\]; e.g. cross_corpus.test.data=\{name: emodb, root: PATH\}"
        ),
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            compose([override])
    with pytest.raises(ConfigError, match="not both"):
        compose([f"{test}}}", "cross_corpus.corpora=[{data: synthetic}, {data: emodb}]"])
    # resolved: the whole data section of the corpus, its overrides applied
    cfg = compose([f"{test}, options: {{seed: 3}}, label_map: {{gloomy: sad}}}}"])
    assert dict(cfg.cross_corpus.test.data.options) == {
        "seed": 3,
        "n_speakers": 8,
        "n_per_class": 10,
    }
    assert cfg.cross_corpus.test.name == "b" and dict(cfg.cross_corpus.test.label_map) == {
        "gloomy": "sad"
    }


def test_a_class_the_model_cannot_predict_is_refused_by_name(cache):
    small = "options: {seed: 1, n_speakers: 2, n_per_class: 1}"
    gloomy = "merge: {sad: gloomy}, classes: [neutral, happy, gloomy, angry]"
    base = ["data.options.n_speakers=2", "data.options.n_per_class=1"]
    cfg = compose([*base, f"cross_corpus.test={{data: synthetic, name: b, {small}, {gloomy}}}"])
    with pytest.raises(ValueError, match=r"corpus 'b' has class\(es\) \['gloomy'\] that the model"):
        prepare(cfg, need_features=False)
    with pytest.raises(ValueError, match=r"cross_corpus.test.label_map=\{gloomy: CLASS\}"):
        prepare(cfg, need_features=False)
    cfg = compose(
        [
            *base,
            f"cross_corpus.test={{data: synthetic, name: b, {small}, {gloomy}, drop: [gloomy]}}",
        ]
    )
    study = prepare(cfg, need_features=False)
    assert "gloomy" not in set(study.table["corpus_label"])
    assert study.cross_corpus["corpora"]["b"]["dropped"] == {"gloomy": 2}
    # leave one corpus out: a class outside the declared label set is refused the same way
    corpora = (
        f"[{{data: synthetic, name: a, {small}}}, {{data: synthetic, name: b, {small}, {gloomy}}}]"
    )
    cfg = compose(
        [f"cross_corpus.corpora={corpora}", "cross_corpus.classes=[neutral,happy,sad,angry]"]
    )
    with pytest.raises(ValueError, match=r"cross_corpus.corpora\[1\].label_map=\{gloomy: CLASS\}"):
        prepare(cfg, need_features=False)


def test_a_test_corpus_is_scored_in_full_with_its_labels_mapped(study):
    metrics, predictions = _cell(study, "a_to_b", 0)
    _check_scores(metrics, predictions)
    b = _prefixed("b", load_corpus("synthetic", **B_LABELS, **B)).set_index("utterance")
    # every utterance of b scored once, its own label kept, the mapped label scored
    assert sorted(predictions["utterance"]) == sorted(b.index) and metrics["n_test"] == 48
    assert (
        predictions["corpus_label"].to_numpy() == b.loc[predictions["utterance"], "label"]
    ).all()
    expected = b.loc[predictions["utterance"], "label"].replace({"gloomy": "sad"}).to_numpy()
    assert (predictions["true"].to_numpy() == expected).all()
    # trained and validated on a only: two validation speakers (folds.val_speakers=2)
    a_speakers = {f"synthetic:spk{i:02d}" for i in range(1, 5)}
    assert set(metrics["train_speakers"]) | set(metrics["val_speakers"]) == a_speakers
    assert len(metrics["val_speakers"]) == 2
    assert metrics["test_speakers"] == sorted(b["speaker"].unique())
    evaluation = metrics["evaluation"]
    assert evaluation["cross_corpus"] is True and evaluation["scheme"] == "test_corpus"
    assert evaluation["train_corpora"] == ["synthetic"] and evaluation["corpus"] == "b"
    assert evaluation["corpora"]["b"]["label_map"] == {"gloomy": "sad"}
    assert evaluation["corpora"]["b"]["data"]["options"] == B
    assert evaluation["corpora"]["synthetic"]["data"]["options"] == A
    fingerprints = {n: c["fingerprint"] for n, c in evaluation["corpora"].items()}
    assert fingerprints["b"]["table"] != fingerprints["synthetic"]["table"]
    assert metrics["data"]["n_scored"] == 48


def test_leave_one_corpus_out_tests_each_corpus_once(study):
    tables = {
        "a": _prefixed("a", load_corpus("synthetic", **A)),
        "b": _prefixed("b", load_corpus("synthetic", **B_LABELS, **B)),
        "c": _prefixed("c", load_corpus("synthetic", **C_LABELS, **C)),
    }
    for fold, held_out in enumerate(tables):
        metrics, predictions = _cell(study, "loco", fold)
        _check_scores(metrics, predictions)
        table = tables[held_out]
        assert sorted(predictions["utterance"]) == sorted(table["utterance"])
        assert metrics["test_speakers"] == sorted(table["speaker"].unique())
        others = [name for name in tables if name != held_out]
        trained = {s.split(":")[0] for s in metrics["train_speakers"] + metrics["val_speakers"]}
        assert trained == set(others)
        # one validation speaker from each training corpus (folds.val_speakers=2)
        assert sorted(s.split(":")[0] for s in metrics["val_speakers"]) == others
        assert metrics["evaluation"]["train_corpora"] == others
        assert metrics["evaluation"]["corpus"] == held_out
        assert metrics["evaluation"]["scheme"] == "leave_one_corpus_out"
    metrics, predictions = _cell(study, "loco", 2)
    assert metrics["support"][metrics["classes"].index("sad")] == 0  # c has no "sad"
    assert len(predictions) == 36


def _tiny(cache: Path, name: str, test_seed: int, *more: str) -> Path:
    """A tiny study trained on 3 synthetic speakers, tested on 2 of another seed; its cell."""
    run_study(
        [
            "data.options.n_speakers=3",
            "data.options.n_per_class=2",
            "cross_corpus.test={data: synthetic, name: b, options: {seed: "
            f"{test_seed}, n_speakers: 2, n_per_class: 2}}}}",
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
            "optim.lr=1e-3",
            "features.workers=1",
            f"features.cache_dir={cache / 'features'}",
            f"run.out_dir={cache / 'runs'}",
            f"run.name={name}",
            "logger.kind=none",
            *more,
        ]
    )
    return cache / "runs" / name / "lstm_gin" / "seed-0" / "fold-00"


def test_the_test_corpus_does_not_influence_training(cache):
    from sergraph.metrics import BEST_VALIDATION

    first, second = _tiny(cache, "test_seed_5", 5), _tiny(cache, "test_seed_6", 6)
    checkpoints = [
        torch.load(cell / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
        for cell in (first, second)
    ]
    metrics = [json.loads((cell / "metrics.json").read_text()) for cell in (first, second)]
    # the test corpora differ (other audio under the same utterance ids) ...
    corpora = [m["evaluation"]["corpora"] for m in metrics]
    assert corpora[0]["b"]["fingerprint"]["inputs"] != corpora[1]["b"]["fingerprint"]["inputs"]
    assert corpora[0]["synthetic"]["fingerprint"] == corpora[1]["synthetic"]["fingerprint"]
    predictions = [pd.read_csv(cell / "predictions.csv") for cell in (first, second)]
    assert list(predictions[0]["utterance"]) == list(predictions[1]["utterance"])
    assert not np.allclose(predictions[0]["p_happy"], predictions[1]["p_happy"])
    # ... and nothing fitted differs: weights, normalisation, the epoch chosen and its score
    weights = [c["state_dict"] for c in checkpoints]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    normalizers = [c["FoldDataModule"]["export"]["normalizer"] for c in checkpoints]
    for key in ("mean", "std"):
        assert torch.equal(normalizers[0][key], normalizers[1][key])
    assert checkpoints[0]["epoch"] == checkpoints[1]["epoch"]
    assert metrics[0][BEST_VALIDATION] == metrics[1][BEST_VALIDATION]


def test_enrollment_utterances_of_the_test_corpus_are_never_scored(cache):
    from sergraph.data.protocol import enrollment_rows

    more = ("eval.protocol=enrollment", "eval.enrollment=1")
    cell = _tiny(cache, "enrolled", 5, *more)
    metrics = json.loads((cell / "metrics.json").read_text())
    predictions = pd.read_csv(cell / "predictions.csv")
    b = _prefixed("b", load_corpus("synthetic", seed=5, n_speakers=2, n_per_class=2))
    # one utterance of each of b's two speakers held aside, the other 7 scored
    assert len(predictions) == metrics["n_test"] == 2 * 4 * 2 - 2
    assert predictions["speaker"].value_counts().to_dict() == {"b:spk01": 7, "b:spk02": 7}
    assert set(predictions["utterance"]) < set(b["utterance"])
    table = b.reset_index(drop=True)
    held_aside = set(table["utterance"].iloc[enrollment_rows(table, ["b:spk01", "b:spk02"], 1, 0)])
    assert len(held_aside) == 2 and not held_aside & set(predictions["utterance"])


def test_report_never_pairs_cross_corpus_with_within_corpus_rows(study, tmp_path, capsys):
    from sergraph.cli import main

    report = write_report(study, tmp_path / "report", cross_protocol=True, cross_data=True)
    refused = {frozenset(pair) for pair in report["refused_corpus"]}
    assert refused == {frozenset(("a_to_b", "within_a")), frozenset(("loco", "within_a"))}
    for test in report["comparisons"]:
        assert "within_a" not in (test["first"], test["second"])
    rows = {row["label"]: row for row in report["rows"]}
    assert rows["within_a"]["evaluation"] == "within-corpus"
    assert rows["a_to_b"]["evaluation"] == "cross-corpus: synthetic → b"
    assert rows["loco"]["evaluation"] == "cross-corpus: b + c → a; a + c → b; a + b → c"
    table = pd.read_csv(report["paths"]["results"]).set_index("label")
    assert table.loc["a_to_b", "evaluation"] == "cross-corpus: synthetic → b"
    text = Path(report["paths"]["report"]).read_text()
    assert "inductive; CROSS-CORPUS: synthetic → b" in text
    assert "a_to_b / within_a" in text
    # the command line says so too, even when asked to pair across data and protocols
    args = ["report", str(study), "--out", str(tmp_path / "cli"), "--cross-data"]
    assert main([*args, "--cross-protocol"]) == 0
    err = capsys.readouterr().err
    assert "not pairing a_to_b with within_a: one is cross-corpus" in err
    assert "not pairing loco with within_a: one is cross-corpus" in err


def test_an_evaluated_bundle_counts_as_cross_corpus():
    evaluated = {
        "evaluation": {"cross_corpus": True, "corpus": "emodb", "bundle": {"trained_on": "iemocap"}}
    }
    assert corpus_evaluation([evaluated]) == (True, "cross-corpus: iemocap → emodb")
    assert corpus_evaluation([{"protocol": {"name": "inductive"}}]) == (False, "within-corpus")


def test_a_cross_corpus_run_is_not_exported_as_a_bundle(study, tmp_path):
    from sergraph.deploy.export import export_bundle
    from sergraph.deploy.pipeline import BundleError

    # a bundle's model card describes one training corpus and its cross-validated scores
    with pytest.raises(BundleError, match="is a cross-corpus study"):
        export_bundle(study / "a_to_b", tmp_path / "a_to_b.sergraph", folds=[0])
    assert not (tmp_path / "a_to_b.sergraph").exists()


def test_files_left_out_of_every_corpus_are_listed(tmp_path):
    import soundfile as sf

    from sergraph.training.study import study_data
    from tests.unit.test_bad_input import make_manifest, tone

    rows = [
        (f"{s}_{label}{i}.wav", s, label)
        for s in ("s1", "s2", "s3")
        for label in ("angry", "sad")
        for i in range(2)
    ]
    csv = make_manifest(tmp_path / "corpus", rows)
    (tmp_path / "corpus" / "s1_sad0.wav").write_bytes(b"")
    sf.write(tmp_path / "corpus" / "s2_sad1.wav", tone(0.03), 16000)
    cfg = compose(
        [
            "data=manifest",
            f"data.root={csv}",
            "cross_corpus.test={data: synthetic, name: b, options: {seed: 5, n_speakers: 2, "
            "n_per_class: 1}, drop: [neutral, happy]}",
            "features.on_error=skip",
            "features.workers=1",
            f"features.cache_dir={tmp_path / 'features'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "run.name=skipped",
        ]
    )
    study = study_data(cfg, need_features=False)
    # the training corpus's two failed files are left out, and still listed after the test
    # corpus (which lost none) was prepared
    assert len(study.table) == 12 - 2 + 2 * 2
    listing = pd.read_csv(tmp_path / "runs" / "skipped" / "failed_files.csv")
    assert sorted(listing["utterance"]) == ["s1_sad0", "s2_sad1"]
    assert set(listing["corpus"]) == {"manifest"}
    assert study.cross_corpus["corpora"]["b"]["dropped"] == {"neutral": 2, "happy": 2}


def test_a_corpus_that_cannot_be_loaded_is_named_by_its_key(tmp_path):
    """The loader's own message (which speaks of root) is prefixed with the entry's key, so
    that it is clear which corpus of the study lacks what: cross_corpus.test.root here, not
    data.root."""
    missing = tmp_path / "nowhere"
    cases = {
        "cross_corpus.test={data: emodb, drop: [boredom, disgust, fear]}": (
            ValueError,
            r"^cross_corpus.test \(corpus 'emodb'\): the emodb corpus needs root",
        ),
        f"cross_corpus.test={{data: emodb, root: {missing}}}": (
            FileNotFoundError,
            rf"^cross_corpus.test \(corpus 'emodb'\): EmoDB root {missing} is not a folder",
        ),
        "cross_corpus.corpora=[{data: synthetic}, {data: manifest, name: m}]": (
            ValueError,
            r"^cross_corpus.corpora\[1\] \(corpus 'm'\): ",
        ),
    }
    for override, (kind, message) in cases.items():
        with pytest.raises(kind, match=message):
            prepare(compose([override]), need_features=False)
    # the training corpus of a test-corpus study is the data section's
    cfg = compose(["data=manifest", "cross_corpus.test={data: synthetic, name: b}"])
    with pytest.raises(ValueError, match=r"^data \(corpus 'manifest'\): "):
        prepare(cfg, need_features=False)


def test_a_class_no_training_corpus_of_a_fold_has_is_refused_with_the_cross_corpus_keys():
    """Leave one corpus out with a label set one fold's training corpus lacks ("sad" only in
    b): refused before any work, naming the fold, the class and the keys that would change it
    here (data.* and folds.scheme are not read by such a study)."""
    from sergraph.training.study import plan

    small = "n_speakers: 2, n_per_class: 1"
    corpora = (
        f"[{{data: synthetic, name: a, options: {{{small}}}, classes: [neutral, happy, angry]}}, "
        f"{{data: synthetic, name: b, options: {{seed: 1, {small}}}}}]"
    )
    overrides = [
        "cross_corpus.classes=[neutral,happy,sad,angry]",
        f"cross_corpus.corpora={corpora}",
        "folds.val_speakers=1",
    ]
    with pytest.raises(ValueError, match=r"fold-01 \(test b:spk01, b:spk02\): \['sad'\]") as error:
        plan(overrides)
    message = str(error.value)
    assert "cross_corpus.classes" in message and "cross_corpus.corpora[i].drop" in message
    assert "data.merge" not in message and "folds.scheme" not in message


def test_corpora_at_different_sample_rates_are_noted(tmp_path, capsys):
    """openSMILE features depend on the rate: a test corpus at 8 kHz beside the 16 kHz
    synthetic corpus is noted (each corpus on its own has one rate, so no corpus's own note
    says it), unless every file is resampled to one rate."""
    import soundfile as sf

    from tests.unit.test_bad_input import make_manifest

    rows = [(f"{s}_{label}.wav", s, label) for s in ("s1", "s2") for label in ("angry", "sad")]
    csv = make_manifest(tmp_path / "corpus", rows)
    for name, *_ in rows:  # the same tones at 8 kHz
        path = tmp_path / "corpus" / name
        samples, _ = sf.read(path)
        sf.write(path, samples[::2], 8000)
    test = f"cross_corpus.test={{data: manifest, name: b, root: {csv}, label_map: {{}}, drop: []}}"
    common = [
        "data.options.n_speakers=2",
        "data.options.n_per_class=1",
        test,
        "features.workers=1",
        f"features.cache_dir={tmp_path / 'features'}",
    ]
    capsys.readouterr()
    prepare(compose(common))
    err = capsys.readouterr().err
    assert (
        "note: the corpora are at different sample rates (synthetic: 16000 Hz; b: 8000 Hz); "
        "openSMILE features depend on the rate, so features.sample_rate=8000 (the lowest) "
        "makes the corpora's features comparable"
    ) in err
    assert "mixes sample rates" not in err
    prepare(compose([*common, "features.sample_rate=8000"]))
    assert "different sample rates" not in capsys.readouterr().err


def test_corpora_that_share_audio_files_are_refused(tmp_path):
    """A test corpus (or a left-out corpus) made of the training corpus's own files would be
    scored on utterances the model was trained on: here the synthetic corpus of the data
    section named again as the test corpus, its seed forgotten, and one corpus listed twice
    (once through a symbolic link) for leave-one-corpus-out."""
    small = "n_speakers: 2, n_per_class: 1"
    data = ["data.options.n_speakers=2", "data.options.n_per_class=1"]
    same = f"cross_corpus.test={{data: synthetic, name: b, options: {{{small}}}}}"
    with pytest.raises(
        ValueError,
        match=r"corpus 'b' \(cross_corpus.test\) and corpus 'synthetic' \(data\) share 8 "
        r"audio file\(s\), e.g. .*\.wav",
    ):
        prepare(compose([*data, same]), need_features=False)
    # another seed: other audio, accepted
    other = f"cross_corpus.test={{data: synthetic, name: b, options: {{seed: 1, {small}}}}}"
    assert len(prepare(compose([*data, other]), need_features=False).table) == 16

    wav = Path(load_corpus("synthetic", n_speakers=2, n_per_class=1)["path"].iloc[0])
    link = tmp_path / "link"
    link.symlink_to(wav.parents[2], target_is_directory=True)  # the corpora's parent folder
    corpora = (
        f"[{{data: synthetic, name: a, options: {{{small}}}}}, "
        f"{{data: synthetic, name: c, options: {{seed: 2, {small}}}}}, "
        f"{{data: synthetic, name: a2, root: {link}, options: {{{small}}}}}]"
    )
    with pytest.raises(
        ValueError,
        match=r"corpus 'a2' \(cross_corpus.corpora\[2\]\) and corpus 'a' "
        r"\(cross_corpus.corpora\[0\]\) share 8 audio file\(s\)",
    ):
        prepare(compose([f"cross_corpus.corpora={corpora}"]), need_features=False)
