import numpy as np
import pytest

from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import make_folds


def test_datamodule_sizes_and_train_only_normalisation(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[0]  # test s1, val s2, train s3 s4
    dm = FoldDataModule(
        toy_table, toy_features, fold, ["angry", "neutral", "sad"], k=2, max_nodes=20
    )
    dm.setup()
    assert dm.num_features == 6 and dm.num_classes == 3
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [12, 6, 6]
    train_idx = np.flatnonzero(toy_table["speaker"].isin(["s3", "s4"]))
    frames = np.concatenate([toy_features[i] for i in train_idx])
    assert np.allclose(dm.normalizer.mean, frames.mean(axis=0), atol=1e-5)
    assert np.allclose(dm.normalizer.std, frames.std(axis=0), atol=1e-5)
    # the statistics would move if the test speaker were included: guard against a leak
    every = np.concatenate(toy_features)
    assert not np.allclose(dm.normalizer.mean, every.mean(axis=0), atol=1e-3)


def test_test_speaker_features_do_not_change_training_graphs(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[0]
    classes = ["angry", "neutral", "sad"]
    base = FoldDataModule(toy_table, toy_features, fold, classes, k=2, max_nodes=20)
    base.setup()
    poisoned = [
        f * 100 + 7 if s == "s1" else f
        for f, s in zip(toy_features, toy_table["speaker"], strict=True)
    ]
    other = FoldDataModule(toy_table, poisoned, fold, classes, k=2, max_nodes=20)
    other.setup()
    for split in ("train", "val"):
        for a, b in zip(base.datasets[split], other.datasets[split], strict=True):
            assert np.array_equal(a.x.numpy(), b.x.numpy())


def test_batches_and_class_weights(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[1]
    dm = FoldDataModule(
        toy_table, toy_features, fold, ["angry", "neutral", "sad"], k=4, max_nodes=20, batch_size=5
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 5 and batch.x.shape == (5 * 20, 6)
    assert dm.class_weights == pytest.approx([1.0, 1.0, 1.0])  # balanced toy corpus
    test_ids = [u for b in dm.test_dataloader() for u in b.utterance]
    assert test_ids == toy_table[toy_table["speaker"] == "s2"]["utterance"].tolist()


def test_speaker_normalisation_uses_each_speakers_own_features(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[0]
    dm = FoldDataModule(
        toy_table,
        toy_features,
        fold,
        ["angry", "neutral", "sad"],
        k=2,
        max_nodes=None,
        pad=False,
        normalize="speaker",
    )
    dm.setup()
    test_x = np.concatenate([g.x.numpy() for g in dm.datasets["test"]])
    assert np.allclose(test_x.mean(axis=0), 0, atol=1e-5)


def test_missing_training_class_is_an_error(toy_table, toy_features):
    table = toy_table[~((toy_table["label"] == "sad") & toy_table["speaker"].isin(["s3", "s4"]))]
    features = [toy_features[i] for i in table.index]
    fold = make_folds(table, "loso")[0]
    dm = FoldDataModule(table, features, fold, ["angry", "neutral", "sad"], k=2, max_nodes=20)
    with pytest.raises(ValueError, match="sad"):
        dm.setup()


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "true_length"])
def test_every_batch_is_marked_for_the_fast_path(toy_table, toy_features, pad):
    from sergraph.data.collate import band_mark
    from sergraph.models import build_model

    fold = make_folds(toy_table, "loso")[1]
    dm = FoldDataModule(
        toy_table,
        toy_features,
        fold,
        ["angry", "neutral", "sad"],
        k=4,
        max_nodes=20,
        pad=pad,
        batch_size=5,
    )
    dm.setup()
    model = build_model("lstm_gin", 6, 3, hidden=8, lstm_hidden=4)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            mark = band_mark(batch)
            lengths = batch.ptr.diff().tolist()
            assert mark is not None and mark.k == 4 and mark.lengths.tolist() == lengths
            assert mark.uniform is (len(set(lengths)) == 1) and (mark.uniform or not pad)
            assert model.uses_fast_path(batch)


def test_checkpointed_state_carries_what_export_needs(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[0]  # test s1, val s2, train s3 s4
    classes = ["angry", "neutral", "sad"]
    dm = FoldDataModule(
        toy_table, toy_features, fold, classes, k=2, max_nodes=12, provenance={"run": "x"}
    )
    assert dm.state_dict() == {}  # nothing to save before setup
    dm.setup()
    state = dm.state_dict()["export"]
    assert state["classes"] == classes and state["num_features"] == 6
    assert state["graph"] == {"k": 2, "max_nodes": 12, "pad": True, "normalize": "train"}
    assert state["fold"]["test_speakers"] == ["s1"] and state["fold"]["val_speakers"] == ["s2"]
    assert state["corpus"] == {"n_utterances": 24, "speakers": ["s1", "s2", "s3", "s4"]}
    assert state["provenance"] == {"run": "x"}
    train = np.concatenate([toy_features[i] for i in range(12, 24)]).astype(np.float64)
    np.testing.assert_allclose(state["normalizer"]["mean"].numpy(), train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(state["normalizer"]["std"].numpy(), train.std(axis=0), atol=1e-5)
    # the test speaker's raw features, in table order, each cut to the 12 nodes a graph holds
    test = state["test"]
    assert test["utterances"] == [f"s1_{c}_{t}" for c in classes for t in (0, 1)]
    expected = [toy_features[i][:12] for i in range(6)]
    assert test["lengths"].tolist() == [min(len(toy_features[i]), 12) for i in range(6)]
    np.testing.assert_array_equal(test["features"].numpy(), np.concatenate(expected))
    # a resumed run's data module ignores it and restores only the training shuffle
    other = FoldDataModule(toy_table, toy_features, fold, classes, k=2, max_nodes=12)
    other.load_state_dict({"export": state})
    assert other._train_generator_state is None


def test_enrollment_checkpoints_carry_training_and_enrollment_statistics(toy_table, toy_features):
    """Under eval.protocol=enrollment with per-speaker normalisation the export state holds the
    training speakers' pooled statistics (a bundle's fallback) and each held-out speaker's
    statistics of its enrollment utterances only, computed here by hand; labels play no part."""
    import io

    import torch

    from sergraph.data.protocol import enrollment_rows

    fold = make_folds(toy_table, "loso")[0]  # test s1, val s2, train s3 s4
    classes = ["angry", "neutral", "sad"]

    def state_of(table):
        dm = FoldDataModule(
            table, toy_features, fold, classes, k=2, max_nodes=12, normalize="speaker",
            protocol="enrollment", enrollment=2, enrollment_seed=3,
        )  # fmt: skip
        dm.setup()
        return dm.state_dict()["export"]

    state = state_of(toy_table)
    assert state["normalizer"] is None and state["graph"]["normalize"] == "speaker"
    train = np.concatenate([toy_features[i] for i in range(12, 24)]).astype(np.float64)
    fallback = state["training_normalizer"]
    np.testing.assert_allclose(fallback["mean"].numpy(), train.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(fallback["std"].numpy(), train.std(axis=0), atol=1e-5)
    enrolled = enrollment_rows(toy_table, ["s1", "s2"], 2, seed=3)
    assert sorted(state["enrollment_normalizers"]) == ["s1", "s2"]
    for speaker, stored in state["enrollment_normalizers"].items():
        rows = [i for i in enrolled if toy_table["speaker"].iloc[i] == speaker]
        assert len(rows) == 2
        frames = np.concatenate([toy_features[i] for i in rows]).astype(np.float64)
        np.testing.assert_allclose(stored["mean"].numpy(), frames.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(stored["std"].numpy(), frames.std(axis=0), atol=1e-5)
    # the test inputs are the scored utterances only (as predictions.csv), with their speaker
    held = set(toy_table["utterance"].iloc[enrolled])
    scored = [u for u in toy_table["utterance"].iloc[:6] if u not in held]
    assert state["test"]["utterances"] == scored and state["test"]["speakers"] == ["s1"] * 4
    # label-free: the held-out speakers' labels permuted, the same statistics
    permuted = toy_table.copy()
    for speaker in ("s1", "s2"):
        mask = permuted["speaker"] == speaker
        permuted.loc[mask, "label"] = permuted.loc[mask, "label"].to_numpy()[::-1]
    other = state_of(permuted)
    for speaker in ("s1", "s2"):
        for key in ("mean", "std"):
            assert torch.equal(
                other["enrollment_normalizers"][speaker][key],
                state["enrollment_normalizers"][speaker][key],
            )
    # stored as plain tensors: loadable with weights_only
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert torch.equal(loaded["training_normalizer"]["mean"], fallback["mean"])


def test_without_per_speaker_normalisation_no_fallback_is_stored(toy_table, toy_features):
    fold = make_folds(toy_table, "loso")[0]
    classes = ["angry", "neutral", "sad"]
    for normalize, protocol in (("train", "enrollment"), ("speaker", "transductive")):
        dm = FoldDataModule(
            toy_table, toy_features, fold, classes, k=2, max_nodes=12, normalize=normalize,
            protocol=protocol, enrollment=2,
        )  # fmt: skip
        dm.setup()
        state = dm.export_state()
        assert state["enrollment_normalizers"] is None
        assert (state["training_normalizer"] is None) == (normalize == "train")
