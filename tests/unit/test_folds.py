import pandas as pd
import pytest

from sergraph.data.folds import (
    Fold,
    FoldLeakError,
    check_fold,
    fold_table,
    make_folds,
    split_indices,
)


def test_loso_one_fold_per_speaker_with_rotated_validation(toy_table):
    folds = make_folds(toy_table, "loso", val_speakers=1)
    assert [f.test_speakers for f in folds] == [("s1",), ("s2",), ("s3",), ("s4",)]
    # validation is the next speaker in cyclic order, never the test speaker
    assert [f.val_speakers for f in folds] == [("s2",), ("s3",), ("s4",), ("s1",)]
    assert folds[3].train_speakers == ("s2", "s3")
    for fold in folds:
        assert not set(fold.test_speakers) & (set(fold.train_speakers) | set(fold.val_speakers))


def test_two_validation_speakers(toy_table):
    fold = make_folds(toy_table, "loso", val_speakers=2)[2]
    assert fold.test_speakers == ("s3",)
    assert fold.val_speakers == ("s4", "s1")
    assert fold.train_speakers == ("s2",)


def test_split_indices_cover_rows(toy_table):
    fold = make_folds(toy_table, "loso")[0]
    rows = split_indices(toy_table, fold)
    assert len(rows["test"]) == 6 and len(rows["val"]) == 6 and len(rows["train"]) == 12
    assert set(toy_table["speaker"].iloc[rows["test"]]) == {"s1"}


def test_session_folds_test_whole_sessions(toy_table):
    table = toy_table.assign(
        session=toy_table["speaker"].map({"s1": "A", "s2": "A", "s3": "B", "s4": "B"})
    )
    folds = make_folds(table, "loso_session", val_speakers=1)
    assert [f.test_speakers for f in folds] == [("s1", "s2"), ("s3", "s4")]
    assert folds[0].val_speakers == ("s3",)


def test_session_scheme_needs_sessions(toy_table):
    with pytest.raises(ValueError, match="session"):
        make_folds(toy_table, "loso_session")


def test_groups_are_speaker_disjoint_and_cover_all(toy_table):
    folds = make_folds(toy_table, "groups", n_groups=2, val_speakers=1, seed=3)
    tested = [s for f in folds for s in f.test_speakers]
    assert sorted(tested) == ["s1", "s2", "s3", "s4"]
    with pytest.raises(ValueError, match="more than the 4 speakers"):
        make_folds(toy_table, "groups", n_groups=5)


def test_unknown_scheme_lists_choices(toy_table):
    with pytest.raises(ValueError, match="loso_session"):
        make_folds(toy_table, "kfold")


def test_fewer_speakers_than_needed():
    table = pd.DataFrame(
        {"utterance": ["a", "b"], "path": ["a", "b"], "speaker": ["x", "y"], "label": ["n", "n"]}
    )
    with pytest.raises(ValueError, match="2 speakers"):
        make_folds(table, "loso", val_speakers=1)


def test_guard_rejects_speaker_in_two_splits(toy_table):
    with pytest.raises(FoldLeakError, match="s1"):
        check_fold(Fold(0, ("s1", "s2"), ("s3",), ("s1",)), toy_table)


def test_guard_rejects_same_file_in_train_and_test(toy_table):
    table = toy_table.copy()
    table.loc[0, "path"] = table.loc[table["speaker"] == "s4", "path"].iloc[0]
    with pytest.raises(FoldLeakError, match="path"):
        check_fold(Fold(0, ("s1", "s2"), ("s3",), ("s4",)), table)


def test_fold_table_counts(toy_table):
    folds = make_folds(toy_table, "loso")
    table = fold_table(toy_table, folds, ["angry", "neutral", "sad"])
    first = table[(table["fold"] == "fold-00") & (table["split"] == "train")].iloc[0]
    assert first["speakers"] == "s3,s4" and first["n"] == 12 and first["angry"] == 4


# ---------------------------------------------------------------------------------------------
# predefined folds


def test_predefined_folds_reproduce_the_fold_column(toy_table):
    # s1, s2 -> fold 0; s3 -> fold 1; s4 -> fold 2 (the column is text, as read from a CSV)
    table = toy_table.assign(
        fold=toy_table["speaker"].map({"s1": "0", "s2": "0", "s3": "1", "s4": "2"})
    )
    folds = make_folds(table, "predefined", val_speakers=1)
    assert [f.test_speakers for f in folds] == [("s1", "s2"), ("s3",), ("s4",)]
    for fold, declared in zip(folds, ("0", "1", "2"), strict=True):
        rows = split_indices(table, fold)
        assert set(table["utterance"].iloc[rows["test"]]) == set(
            table["utterance"][table["fold"] == declared]
        )
        assert fold.speaker_independent
        assert len(rows["train"]) + len(rows["val"]) + len(rows["test"]) == len(table)
    # validation: the next speaker after the test ones, from the training side
    assert folds[0].val_speakers == ("s3",) and folds[0].train_speakers == ("s4",)


def test_predefined_folds_refuse_a_speaker_in_two_folds_naming_it(toy_table):
    fold = toy_table["speaker"].map({"s1": "0", "s2": "0", "s3": "1", "s4": "1"})
    fold[toy_table["utterance"] == "s2_sad_1"] = "1"  # one utterance of s2 in the other fold
    table = toy_table.assign(fold=fold)
    with pytest.raises(
        FoldLeakError, match=r"1 speaker\(s\) in more than one fold: s2 in folds \[0, 1\]"
    ):
        make_folds(table, "predefined", val_speakers=0)
    folds = make_folds(table, "predefined", val_speakers=0, allow_speaker_overlap=True)
    assert [f.speaker_independent for f in folds] == [False, False]
    rows = split_indices(table, folds[1])
    assert "s2_sad_1" in set(table["utterance"].iloc[rows["test"]])
    assert "s2_sad_1" not in set(table["utterance"].iloc[rows["train"]])
    assert "speakers overlap" in fold_table(table, folds, ["angry", "neutral", "sad"])["fold"][0]


def test_predefined_folds_name_a_missing_column_and_bad_values(toy_table):
    with pytest.raises(ValueError, match=r"needs a 'fold' column.*folds.column"):
        make_folds(toy_table, "predefined")
    table = toy_table.assign(fold=["0"] * 20 + ["x"] + ["1"] * 3)
    with pytest.raises(ValueError, match=r"fold values must be integers.*\['x'\]"):
        make_folds(table, "predefined")
