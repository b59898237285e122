"""The classic baselines pinned to independent scikit-learn pipelines: for a fixed setting the
predictions of ``model=svm`` equal a hand-built ``StandardScaler`` + ``SVC(kernel="linear")``;
the nested choice of every classic baseline equals ``GridSearchCV`` with ``LeaveOneGroupOut``
over the training speakers (same grid, balanced accuracy = UA); the test speaker never
influences a choice; real openSMILE functionals of the three standard sets feed them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

import sergraph.models.svm as svm_module
from sergraph.config import ConfigError, compose
from sergraph.data.folds import Fold
from sergraph.data.prepared import PreparedData
from sergraph.models import CLASSIC, build_baseline, model_inputs
from sergraph.training.classic import fit_classic

SPEAKERS = ("s1", "s2", "s3", "s4", "s5", "s6")
CLASSES = ["angry", "happy", "neutral", "sad"]
WIDTH = 12
# The fold the runner would make: s1 tested, s2 validation, the rest training; a classic
# baseline fits on training and validation speakers together.
FOLD = Fold(0, ("s3", "s4", "s5", "s6"), ("s2",), ("s1",))


def corpus(seed: int = 0, per_class: int = 5):
    """Made-up functionals: class centres plus a speaker offset plus noise, unbalanced classes
    (the last class has fewer rows) so that class weighting can matter."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.9, size=(len(CLASSES), WIDTH))
    rows, values = [], []
    for speaker in SPEAKERS:
        offset = rng.normal(scale=0.8, size=WIDTH)
        for k, label in enumerate(CLASSES):
            for i in range(per_class if k < len(CLASSES) - 1 else 2):
                rows.append(
                    (f"{speaker}_{label}_{i}", f"/a/{speaker}_{label}_{i}.wav", speaker, label)
                )
                values.append(centres[k] + offset + rng.normal(scale=1.6, size=WIDTH))
    table = pd.DataFrame(rows, columns=["utterance", "path", "speaker", "label"])
    scale = rng.uniform(0.1, 20, size=WIDTH)  # unstandardised columns: the scaler matters
    return table, np.asarray(values) * scale


def arrays(table):
    labels = table["label"].map(CLASSES.index).to_numpy()
    speakers = table["speaker"].to_numpy().astype(str)
    train = np.flatnonzero(table["speaker"] != "s1")
    test = np.flatnonzero(table["speaker"] == "s1")
    return labels, speakers, train, test


def study_of(table, values) -> PreparedData:
    return PreparedData(table=table, classes=CLASSES, folds=[FOLD], functionals=values)


# ---------------------------------------------------------------------------------------------
# model=svm is the standard libsvm linear SVM


@pytest.mark.parametrize("c", [1e-3, 1e-2, 1.0])
def test_svm_at_a_fixed_c_predicts_as_a_hand_built_scaler_and_linear_svc(monkeypatch, c):
    table, values = corpus(seed=1)
    labels, _, train, test = arrays(table)
    monkeypatch.setattr(svm_module, "SVM_C_GRID", (c,))  # one C: nothing left to choose
    cfg = compose(["model=svm", "model.params.class_weight=null", "data=synthetic"])
    predictions, extra = fit_classic(cfg, study_of(table, values), FOLD, seed=0)
    assert extra["svm_C"] == c and extra["svm_class_weight"] is None

    pipeline = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="linear", C=c))])
    pipeline.fit(values[train], labels[train])
    expected = pipeline.predict(values[test])
    got = predictions["predicted"].map(CLASSES.index).to_numpy()
    assert list(predictions["utterance"]) == list(table["utterance"].iloc[test])
    # libsvm's one-vs-one vote; sergraph breaks the (rare) tied votes by the decision values
    decision = pipeline.decision_function(values[test])
    votes_tied = (
        np.sort(np.round(decision), axis=1)[:, -1] == np.sort(np.round(decision), axis=1)[:, -2]
    )
    np.testing.assert_array_equal(got[~votes_tied], expected[~votes_tied])
    np.testing.assert_array_equal(got, decision.argmax(axis=1))
    probabilities = predictions[[f"p_{name}" for name in CLASSES]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def grid_search(estimator, grid, values, labels, speakers, train):
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("model", estimator)]),
        [{f"model__{key}": values_ for key, values_ in part.items()} for part in grid],
        scoring="balanced_accuracy",
        cv=LeaveOneGroupOut(),
    )
    return search.fit(values[train], labels[train], groups=speakers[train])


C_GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
UNWEIGHTED_FIRST = [{"class_weight": [None]}, {"class_weight": ["balanced"]}]
# name, params, the estimator and grid an independent GridSearchCV gets (grid parts in the
# order of their candidates: ties go to the first)
BASELINES = [
    (
        "svm",
        {},
        SVC(kernel="linear", break_ties=True),
        [{**part, "C": C_GRID} for part in UNWEIGHTED_FIRST],
    ),
    (
        "svm_linearsvc",
        {},
        LinearSVC(max_iter=20000, random_state=0),
        [{"C": C_GRID, "class_weight": [None]}],
    ),
    (
        "logreg",
        {},
        LogisticRegression(max_iter=2000),
        [{**part, "C": C_GRID} for part in UNWEIGHTED_FIRST],
    ),
    (
        "svm_rbf",
        {},
        SVC(kernel="rbf", break_ties=True),
        [
            {**part, "C": [c], "gamma": [f / WIDTH for f in (0.25, 1.0, 4.0)]}
            for part in UNWEIGHTED_FIRST
            for c in (0.1, 1.0, 10.0, 100.0)
        ],
    ),
    (
        "mlp",
        {},
        MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0),
        [{"alpha": [0.1, 1.0, 10.0, 100.0]}],
    ),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(
    ("name", "params", "estimator", "grid"), BASELINES, ids=[b[0] for b in BASELINES]
)
def test_the_nested_choice_equals_grid_search_with_leave_one_group_out(
    name, params, estimator, grid
):
    table, values = corpus(seed=2)
    labels, speakers, train, test = arrays(table)
    scores, extra = build_baseline(name, **params).fit_predict(
        values, labels, speakers, train, test, num_classes=len(CLASSES), seed=0, normalize="train"
    )
    search = grid_search(estimator, grid, values, labels, speakers, train)
    expected_choice = {k.removeprefix("model__"): v for k, v in search.best_params_.items()}
    assert extra["chosen"] == pytest.approx(expected_choice)
    assert extra["inner_cv_ua"] == pytest.approx(search.best_score_, abs=1e-12)
    np.testing.assert_allclose(
        [row["ua"] for row in extra["inner_grid"]],
        search.cv_results_["mean_test_score"],
        atol=1e-12,
    )
    # the refit on every training row scores the test speaker the same way
    if hasattr(search, "decision_function") and name.startswith("svm"):
        expected = search.decision_function(values[test]).argmax(axis=1)
    else:
        expected = search.predict_proba(values[test]).argmax(axis=1)
    np.testing.assert_array_equal(scores.argmax(axis=1), search.classes_[expected])


def test_the_grid_search_check_can_tell_choices_apart():
    """The data make the inner UA differ across C, so equality with GridSearchCV is informative."""
    table, values = corpus(seed=2)
    labels, speakers, train, _ = arrays(table)
    search = grid_search(
        SVC(kernel="linear", break_ties=True),
        [{**part, "C": C_GRID} for part in UNWEIGHTED_FIRST],
        values,
        labels,
        speakers,
        train,
    )
    assert len(set(np.round(search.cv_results_["mean_test_score"], 9))) >= 3


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name", ["svm", "svm_linearsvc", "logreg", "svm_rbf", "mlp"])
@pytest.mark.parametrize("overrides", [[], ["eval.protocol=enrollment"]], ids=["ind", "enr"])
def test_no_choice_depends_on_the_test_speaker(name, overrides):
    cfg = compose([f"model={name}", "data=synthetic", *overrides])
    table, values = corpus(seed=3)
    _, extra = fit_classic(cfg, study_of(table, values), FOLD, seed=0)
    test = (table["speaker"] == "s1").to_numpy()
    rewritten = values.copy()
    rewritten[test] = np.random.default_rng(9).normal(scale=50, size=(test.sum(), WIDTH))
    relabelled = table.assign(label=np.where(test, "sad", table["label"]))
    _, again = fit_classic(cfg, study_of(relabelled, rewritten), FOLD, seed=0)
    assert again["chosen"] == extra["chosen"] and again["inner_grid"] == extra["inner_grid"]


def test_every_classic_baseline_is_registered_on_functionals_with_its_preset():
    for name in ("svm", "svm_linearsvc", "logreg", "svm_rbf", "mlp"):
        assert name in CLASSIC and model_inputs(name) == "functionals"
        assert compose([f"model={name}"]).model.name == name


@pytest.mark.parametrize(
    "model",
    [
        ["model=logreg"],
        ["model=mlp"],
        # a preset of its own name: the model's family decides, not the name
        ["model=svm", "model.name=my_svm", "model.family=svm"],
    ],
)
def test_a_model_fitted_on_functionals_refuses_frame_level_features(model):
    precomputed = [
        "features.feature_set=precomputed",
        "features.precomputed.root=arrays",
        "features.precomputed.hop_seconds=0.02",
        "features.node_seconds=0.04",
    ]
    with pytest.raises(ConfigError, match=r"fitted on utterance functionals.*precomputed"):
        compose([*model, *precomputed])
    assert compose(["model=gin", *precomputed]).features.feature_set == "precomputed"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.params.class_weight=always", "class_weight='always' is not valid; choose null"),
        ("model.params.kernel=rbf", "no parameter"),
    ],
)
def test_bad_baseline_options_name_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        compose(["model=svm", override])


def test_mlp_options_are_checked():
    with pytest.raises(ConfigError, match=r"model.params.hidden=0 must be a positive integer"):
        compose(["model=mlp", "model.params.hidden=0"])


# ---------------------------------------------------------------------------------------------
# the three standard openSMILE functional sets, on real speech

OPENSMILE_SET = {"is10": "IS10", "compare": "ComParE_2016", "egemaps": "eGeMAPSv02"}


@pytest.mark.parametrize("functionals", ["compare", "egemaps"])
def test_standard_functional_sets_of_real_speech_feed_the_svm(emodb, functionals):
    """``features.functionals`` compare / egemaps are openSMILE's ComParE_2016 / eGeMAPSv02
    functionals (the package read directly, an independent route) of a few EmoDB files, and the
    standard SVM fits on them."""
    import opensmile

    from sergraph.data.features import extract_functionals

    speakers = ("03", "08", "09")
    paths = [
        path
        for speaker in speakers
        for path in sorted((emodb / "wav").glob(f"{speaker}a0*.wav"))[:4]
    ]
    values = np.stack([extract_functionals(path, functionals) for path in paths])
    smile = opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, OPENSMILE_SET[functionals]),
        feature_level=opensmile.FeatureLevel.Functionals,
    )
    direct = np.stack([smile.process_file(str(path)).to_numpy()[0] for path in paths])
    assert values.shape == direct.shape == (12, {"compare": 6373, "egemaps": 88}[functionals])
    np.testing.assert_allclose(values, direct, rtol=1e-4, atol=1e-4)

    # EmoDB names the emotion by the 6th letter of the file name
    labels = np.array([ord(path.name[5]) for path in paths])
    labels = np.unique(labels, return_inverse=True)[1]
    owners = np.array([path.name[:2] for path in paths])
    train, test = np.flatnonzero(owners != "03"), np.flatnonzero(owners == "03")
    scores, extra = build_baseline("svm").fit_predict(
        values, labels, owners, train, test, num_classes=labels.max() + 1, seed=0, normalize="train"
    )
    assert scores.shape == (4, labels.max() + 1) and np.allclose(scores.sum(axis=1), 1.0)
    assert extra["svm_C"] in svm_module.SVM_C_GRID
