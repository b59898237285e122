"""``data=audformat``: a small database written here with audformat itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

audformat = pytest.importorskip("audformat")

from sergraph.data.corpora import load_corpus  # noqa: E402

FILES = [f"audio/{speaker}_{i}.wav" for speaker in ("s1", "s2", "s3") for i in range(2)]
EMOTIONS = ["Angry", "neutral", "angry", "neutral", None, "neutral"]  # s3_0 unlabelled


@pytest.fixture
def database(tmp_path):
    root = tmp_path / "db"
    (root / "audio").mkdir(parents=True)
    for index, file in enumerate(FILES):
        sf.write(root / file, 0.1 * np.random.default_rng(index).standard_normal(8000), 16000)
    db = audformat.Database("toy")
    db.schemes["emotion"] = audformat.Scheme("str")
    db["speakers"] = audformat.MiscTable(pd.Index(["s1", "s2", "s3"], name="speaker"))
    db["speakers"]["gender"] = audformat.Column()
    db["speakers"]["gender"].set(["female", "male", "female"])
    db.schemes["speaker"] = audformat.Scheme(labels="speakers", dtype="str")
    db.schemes["session"] = audformat.Scheme("str")
    db["files"] = audformat.Table(audformat.filewise_index(FILES))
    db["files"]["speaker"] = audformat.Column(scheme_id="speaker")
    db["files"]["speaker"].set([f.split("/")[1][:2] for f in FILES])
    db["emo"] = audformat.Table(audformat.filewise_index(FILES))
    db["emo"]["category"] = audformat.Column(scheme_id="emotion")
    db["emo"]["category"].set(EMOTIONS)
    db["emo"]["part"] = audformat.Column(scheme_id="session")
    db["emo"]["part"].set(["a", "a", "b", "b", "c", "c"])
    db.save(str(root))
    return root


def test_labels_from_a_table_and_speakers_from_another(database):
    table = load_corpus("audformat", root=database, table="emo", emotion="category", session="part")
    # The unlabelled file is left out; labels lower-cased; speakers from the files table.
    assert list(table["utterance"]) == [f for f in FILES if f != "audio/s3_0.wav"]
    assert list(table["label"]) == ["angry", "neutral", "angry", "neutral", "neutral"]
    assert list(table["speaker"]) == ["s1", "s1", "s2", "s2", "s3"]
    assert list(table["session"]) == ["a", "a", "b", "b", "c"]
    assert table["path"].iloc[0] == str(database.resolve() / "audio" / "s1_0.wav")
    assert table.attrs["classes"] == ["angry", "neutral"]


def test_unknown_tables_and_columns_are_named_with_those_present(database):
    with pytest.raises(ValueError, match=r"no table 'emotion'; its tables are \['emo', 'files'"):
        load_corpus("audformat", root=database)
    with pytest.raises(ValueError, match=r"no column 'emotion'.*\['category', 'part'\]"):
        load_corpus("audformat", root=database, table="emo")
    with pytest.raises(ValueError, match="no filewise table has a speaker column 'spk'"):
        load_corpus("audformat", root=database, table="emo", emotion="category", speaker="spk")
    with pytest.raises(FileNotFoundError, match="no db.yaml"):
        load_corpus("audformat", root=database / "audio")


def test_config_group_composes_and_folds_come_out(database):
    from sergraph.config import compose
    from sergraph.data.prepared import prepare

    cfg = compose(
        [
            "data=audformat",
            f"data.root={database}",
            "data.options.table=emo",
            "data.options.emotion=category",
        ]
    )
    study = prepare(cfg, need_features=False)
    assert [fold.test_speakers for fold in study.folds] == [("s1",), ("s2",), ("s3",)]
