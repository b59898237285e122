"""Corpus loaders, label maps and the registry, on miniature corpora built in tmp_path."""

from __future__ import annotations

import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from omegaconf import OmegaConf

from sergraph.data.corpora import (
    CORPORA,
    apply_label_map,
    build_table,
    default_classes,
    emodb,
    iemocap,
    load_corpus,
    manifest,
    ravdess,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_wav(path: Path, seconds: float = 0.05) -> Path:
    """A short 16 kHz sine, enough for a file that exists and is valid audio.

    Its pitch depends on the path, so two files never have the same bytes (the manifest loader
    refuses rows whose files have identical content).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    freq = 220 + zlib.crc32(path.as_posix().encode()) % 500
    soundfile.write(path, 0.1 * np.sin(2 * np.pi * freq * t), 16000, subtype="PCM_16")
    return path


# --- table helpers -----------------------------------------------------------------------------


def test_build_table_orders_columns_and_rows():
    rows = [
        {"utterance": "b", "path": "/x/b.wav", "speaker": "1", "label": "sad", "text": "t", "gender": "f"},
        {"utterance": "a", "path": "/x/a.wav", "speaker": "2", "label": "angry", "text": "t", "gender": "m"},
    ]  # fmt: skip
    table = build_table(rows, source="test")
    assert list(table.columns) == ["utterance", "path", "speaker", "label", "gender", "text"]
    assert list(table["utterance"]) == ["a", "b"]
    assert list(table.index) == [0, 1]


def test_build_table_rejects_duplicates_and_partial_columns():
    row = {"utterance": "a", "path": "/x/a.wav", "speaker": "1", "label": "sad"}
    with pytest.raises(ValueError, match=r"duplicate utterance ids in src: \['a'\]"):
        build_table([row, dict(row)], source="src")
    with pytest.raises(ValueError, match="lacks \\['text'\\]"):
        build_table([row, {**row, "utterance": "b", "text": "hi"}], source="src")
    with pytest.raises(ValueError, match="no utterances found in src"):
        build_table([], source="src")


# --- label maps --------------------------------------------------------------------------------


@pytest.fixture
def small_table() -> pd.DataFrame:
    labels = ["neutral", "happy", "excited", "sad", "angry", "frustrated", "excited"]
    return pd.DataFrame(
        {
            "utterance": [f"u{i}" for i in range(len(labels))],
            "path": [f"/data/u{i}.wav" for i in range(len(labels))],
            "speaker": ["s1", "s1", "s1", "s2", "s2", "s2", "s2"],
            "label": labels,
        }
    )


def test_apply_label_map_subset_keeps_row_order_and_class_order(small_table):
    result = apply_label_map(small_table, classes=["sad", "neutral"])
    assert list(result["utterance"]) == ["u0", "u3"]
    assert list(result["label"]) == ["neutral", "sad"]
    assert result.attrs["classes"] == ["sad", "neutral"]
    assert list(result.index) == [0, 1]
    assert list(small_table["label"])[2] == "excited"  # input untouched


def test_apply_label_map_merge_then_select(small_table):
    result = apply_label_map(
        small_table, classes=["neutral", "happy", "sad", "angry"], merge={"excited": "happy"}
    )
    assert list(result["utterance"]) == ["u0", "u1", "u2", "u3", "u4", "u6"]
    assert Counter(result["label"]) == {"neutral": 1, "happy": 3, "sad": 1, "angry": 1}


def test_apply_label_map_without_classes_keeps_all_sorted(small_table):
    result = apply_label_map(small_table, merge={"excited": "happy", "frustrated": "angry"})
    assert len(result) == 7
    assert result.attrs["classes"] == ["angry", "happy", "neutral", "sad"]


def test_apply_label_map_errors_name_label_and_labels_present(small_table):
    present = "['angry', 'excited', 'frustrated', 'happy', 'neutral', 'sad']"
    with pytest.raises(
        ValueError, match=r"\['fear'\] not in the table.*" + present.replace("[", r"\[")
    ):
        apply_label_map(small_table, classes=["neutral", "fear"])
    with pytest.raises(ValueError, match=r"merge names label\(s\) \['exc'\] not in the table"):
        apply_label_map(small_table, merge={"exc": "happy"})
    # after merging, "excited" no longer exists as a class
    with pytest.raises(ValueError, match=r"\['excited'\] not in the table.*after merging"):
        apply_label_map(small_table, classes=["excited"], merge={"excited": "happy"})
    with pytest.raises(ValueError, match="more than once"):
        apply_label_map(small_table, classes=["sad", "sad"])
    with pytest.raises(ValueError, match="classes is empty"):
        apply_label_map(small_table, classes=[])


# --- registry ----------------------------------------------------------------------------------


def test_registry_names_and_unknown_corpus():
    assert sorted(CORPORA) == ["audformat", "emodb", "iemocap", "manifest", "ravdess", "synthetic"]
    with pytest.raises(
        ValueError, match=r"unknown corpus 'emo'; choose one of \['audformat', 'emodb'"
    ):
        load_corpus("emo", "/nowhere")
    assert default_classes("iemocap") == ["neutral", "happy", "sad", "angry"]
    assert default_classes("manifest") is None


def test_load_corpus_rejects_unknown_option_and_missing_root(tmp_path):
    with pytest.raises(ValueError, match=r"no option\(s\) \['seed'\].*options are \[\]"):
        load_corpus("emodb", tmp_path, seed=1)
    with pytest.raises(ValueError, match="emodb corpus needs root"):
        load_corpus("emodb", None)


# --- EmoDB -------------------------------------------------------------------------------------


def test_emodb_parse_name():
    assert emodb.parse_name("03a01Fa.wav") == {
        "utterance": "03a01Fa",
        "speaker": "03",
        "text": "a01",
        "label": "happy",
        "gender": "m",
    }
    parsed = emodb.parse_name("some/dir/16b10Td.wav")
    assert (parsed["speaker"], parsed["text"], parsed["label"], parsed["gender"]) == (
        "16",
        "b10",
        "sad",
        "f",
    )
    codes = {code: emodb.parse_name(f"08a02{code}a.wav")["label"] for code in "WLEAFTN"}
    assert codes == {
        "W": "angry",
        "L": "boredom",
        "E": "disgust",
        "A": "fear",
        "F": "happy",
        "T": "sad",
        "N": "neutral",
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("3a01Fa.wav", "does not match SSTTTEV.wav"),
        ("03a01Fa.mp3", "does not match SSTTTEV.wav"),
        ("03c01Fa.wav", "does not match SSTTTEV.wav"),
        ("03a01Xa.wav", "emotion code 'X'"),
        ("99a01Fa.wav", "speaker '99'"),
    ],
)
def test_emodb_parse_name_errors(name, message):
    with pytest.raises(ValueError, match=message):
        emodb.parse_name(name)


def test_emodb_mini_folder(tmp_path):
    names = ["16b10Td.wav", "03a01Fa.wav", "08a02Wb.wav", "03a01Nc.wav"]
    for name in names:
        write_wav(tmp_path / "wav" / name)
    (tmp_path / "wav" / "README.txt").write_text("not audio")
    (tmp_path / "wav" / "._03a01Fa.wav").write_bytes(b"macOS resource fork")
    for root in (tmp_path, tmp_path / "wav"):
        table = emodb.load(root)
        assert list(table.columns) == ["utterance", "path", "speaker", "label", "gender", "text"]
        assert list(table["utterance"]) == ["03a01Fa", "03a01Nc", "08a02Wb", "16b10Td"]
        assert list(table["label"]) == ["happy", "neutral", "angry", "sad"]
        assert list(table["gender"]) == ["m", "m", "f", "f"]
        assert table["path"].iloc[0] == str((tmp_path / "wav" / "03a01Fa.wav").resolve())


def test_emodb_bad_file_name_names_file_and_pattern(tmp_path):
    write_wav(tmp_path / "wav" / "03a01Fa.wav")
    write_wav(tmp_path / "wav" / "recording1.wav")
    with pytest.raises(
        ValueError, match=r"'recording1.wav' does not match SSTTTEV.wav.*recording1"
    ):
        emodb.load(tmp_path)


def test_emodb_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no EmoDB wav files"):
        emodb.load(tmp_path)


def _real_emodb() -> Path | None:
    candidates = [os.environ.get("SERGRAPH_EMODB"), REPO_ROOT.parent / "shared" / "data" / "emodb"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.mark.skipif(
    _real_emodb() is None,
    reason="real EmoDB not found (set SERGRAPH_EMODB or place it at ../shared/data/emodb)",
)
def test_emodb_real_corpus_counts():
    table = load_corpus("emodb", _real_emodb())
    assert len(table) == 535
    assert table["utterance"].is_unique
    # per-class counts from the corpus documentation (W127 L81 E46 A69 F71 T62 N79)
    assert dict(Counter(table["label"])) == {
        "angry": 127,
        "boredom": 81,
        "disgust": 46,
        "fear": 69,
        "happy": 71,
        "sad": 62,
        "neutral": 79,
    }
    per_speaker = {"03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61, "14": 69, "15": 56, "16": 71}  # fmt: skip
    assert dict(Counter(table["speaker"])) == per_speaker
    genders = table.groupby("speaker")["gender"].first()
    assert sorted(genders[genders == "f"].index) == ["08", "09", "13", "14", "16"]
    assert table.attrs["classes"] == emodb.DEFAULT_CLASSES
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in table["path"])


# --- RAVDESS -----------------------------------------------------------------------------------


def test_ravdess_parse_name():
    assert ravdess.parse_name("03-01-05-02-01-01-12.wav") == {
        "utterance": "03-01-05-02-01-01-12",
        "speaker": "12",
        "label": "angry",
        "gender": "f",
        "text": "Kids are talking by the door",
    }
    assert ravdess.parse_name("03-01-08-01-02-02-07.wav")["label"] == "surprise"
    assert ravdess.parse_name("03-01-08-01-02-02-07.wav")["gender"] == "m"
    assert ravdess.parse_name("03-01-08-01-02-02-07.wav")["text"] == "Dogs are sitting by the door"
    assert ravdess.parse_name("03-02-03-01-01-01-01.wav") is None  # song


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("03-01-05-02-01-01.wav", "does not match MM-VV-EE"),
        ("01-01-05-02-01-01-12.wav", "modality 01"),
        ("03-01-09-02-01-01-12.wav", "emotion 09"),
        ("03-01-05-03-01-01-12.wav", "intensity 03"),
        ("03-01-05-01-01-01-25.wav", "actor 25"),
    ],
)
def test_ravdess_parse_name_errors(name, message):
    with pytest.raises(ValueError, match=message):
        ravdess.parse_name(name)


def test_ravdess_mini_tree_skips_song_and_non_wav(tmp_path):
    root = tmp_path / "Audio_Speech_Actors_01-24"
    speech = [
        "Actor_01/03-01-01-01-01-01-01.wav",
        "Actor_01/03-01-05-02-02-01-01.wav",
        "Actor_02/03-01-02-01-01-02-02.wav",
        "Actor_02/03-01-08-02-02-02-02.wav",
    ]
    for name in speech:
        write_wav(root / name)
    write_wav(root / "Actor_01/03-02-03-01-01-01-01.wav")  # song: skipped
    (root / "Actor_02/01-01-02-01-01-02-02.mp4").write_bytes(b"video")  # not wav: ignored
    table = ravdess.load(tmp_path)
    # sorted by utterance id, so the emotion code orders files before the actor
    assert list(table["utterance"]) == [
        "03-01-01-01-01-01-01",
        "03-01-02-01-01-02-02",
        "03-01-05-02-02-01-01",
        "03-01-08-02-02-02-02",
    ]
    assert list(table["speaker"]) == ["01", "02", "01", "02"]
    assert list(table["gender"]) == ["m", "f", "m", "f"]
    assert list(table["label"]) == ["neutral", "calm", "angry", "surprise"]
    assert list(table["text"]) == [
        "Kids are talking by the door",
        "Kids are talking by the door",
        "Dogs are sitting by the door",
        "Dogs are sitting by the door",
    ]
    assert table["path"].iloc[2] == str((root / speech[1]).resolve())
    selected = load_corpus("ravdess", root, classes=["angry", "calm"])
    assert list(selected["label"]) == ["calm", "angry"]  # row order kept
    assert selected.attrs["classes"] == ["angry", "calm"]


def test_ravdess_actor_folder_mismatch(tmp_path):
    write_wav(tmp_path / "Actor_03" / "03-01-01-01-01-01-04.wav")
    with pytest.raises(ValueError, match="names actor 04 but lies in Actor_03"):
        ravdess.load(tmp_path)


def test_ravdess_no_actor_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Actor_XX folders"):
        ravdess.load(tmp_path)


# --- IEMOCAP -----------------------------------------------------------------------------------

# (session, dialog, [(utterance, code)]): 13 labelled utterances in the real layout.
IEMOCAP_DIALOGS = [
    (
        1,
        "Ses01F_impro01",
        [
            ("Ses01F_impro01_F000", "neu"),
            ("Ses01F_impro01_F001", "hap"),
            ("Ses01F_impro01_M000", "exc"),
            ("Ses01F_impro01_M001", "ang"),
            ("Ses01F_impro01_F002", "xxx"),
            ("Ses01F_impro01_M002", "fru"),
        ],
    ),
    (
        1,
        "Ses01M_script01_1",
        [
            ("Ses01M_script01_1_F000", "sad"),
            ("Ses01M_script01_1_M000", "neu"),
            ("Ses01M_script01_1_M001", "sur"),
        ],
    ),
    (
        2,
        "Ses02F_impro02",
        [
            ("Ses02F_impro02_F000", "exc"),
            ("Ses02F_impro02_M000", "sad"),
            ("Ses02F_impro02_M001", "oth"),
            ("Ses02F_impro02_F001", "ang"),
        ],
    ),
]


def build_iemocap(root: Path, transcripts: bool = True, skip_wav: str | None = None) -> Path:
    """A miniature IEMOCAP_full_release tree with the real file formats."""
    for session, dialog, utterances in IEMOCAP_DIALOGS:
        session_folder = root / f"Session{session}"
        evaluation = session_folder / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
        # annotator files in subfolders have another format and must not be read
        (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
            f"{utterances[0][0]} :Neutral state; ()\n"
        )
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        transcript_lines = []
        for index, (utterance, code) in enumerate(utterances):
            start, end = 6.2901 + 3 * index, 8.2357 + 3 * index
            lines += [
                f"[{start:.4f} - {end:.4f}]\t{utterance}\t{code}\t[2.5000, 2.5000, 2.5000]",
                "C-E1:\tNeutral state;\t()",
                "C-E2:\tNeutral state;\t()",
                "A-E1:\tval 3; act 2; dom  2;\t()",
                "",
            ]
            transcript_lines.append(f"{utterance} [{start:08.4f}-{end:08.4f}]: Line {index}.")
            if utterance != skip_wav:
                write_wav(session_folder / "sentences" / "wav" / dialog / f"{utterance}.wav")
        (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        if transcripts:
            folder = session_folder / "dialog" / "transcriptions"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{dialog}.txt").write_text("\n".join(transcript_lines) + "\n")
    return root


def test_iemocap_speaker_of():
    assert iemocap.speaker_of("Ses01F_impro01_M003") == ("Ses01", "Ses01M", "m")
    assert iemocap.speaker_of("Ses05M_script01_1b_F012") == ("Ses05", "Ses05F", "f")
    with pytest.raises(ValueError, match="does not match"):
        iemocap.speaker_of("impro01_M003")


def test_iemocap_mini_tree_all_labels(tmp_path):
    root = build_iemocap(tmp_path / "IEMOCAP_full_release")
    table = iemocap.load(root)
    assert list(table.columns) == [
        "utterance", "path", "speaker", "label", "session", "gender", "text",
    ]  # fmt: skip
    assert len(table) == 13
    assert list(table["utterance"]) == sorted(u for _, _, us in IEMOCAP_DIALOGS for u, _ in us)
    row = table.set_index("utterance").loc["Ses01F_impro01_M000"]
    assert (row["speaker"], row["session"], row["gender"], row["label"]) == (
        "Ses01M",
        "Ses01",
        "m",
        "excited",
    )
    assert row["path"] == str(
        (root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M000.wav").resolve()
    )
    assert row["text"] == "Line 2."
    assert Counter(table["label"]) == {
        "neutral": 2,
        "happy": 1,
        "excited": 2,
        "angry": 2,
        "sad": 2,
        "frustrated": 1,
        "no_agreement": 1,
        "surprise": 1,
        "other": 1,
    }


def test_iemocap_default_four_classes_with_excited_merged(tmp_path):
    root = build_iemocap(tmp_path / "IEMOCAP_full_release")
    table = load_corpus("iemocap", root)
    assert table.attrs["classes"] == ["neutral", "happy", "sad", "angry"]
    # neutral: impro01_F000, script01_1_M000; happy: hap F001 + exc M000 + exc Ses02 F000
    assert Counter(table["label"]) == {"neutral": 2, "happy": 3, "sad": 2, "angry": 2}
    assert Counter(table["speaker"]) == {"Ses01F": 3, "Ses01M": 3, "Ses02F": 2, "Ses02M": 1}
    # merge={} turns the default merge off: excited rows are dropped
    plain = load_corpus("iemocap", root, merge={})
    assert Counter(plain["label"]) == {"neutral": 2, "happy": 1, "sad": 2, "angry": 2}


def test_iemocap_classes_and_merge_from_omegaconf(tmp_path):
    root = build_iemocap(tmp_path / "IEMOCAP_full_release")
    config = OmegaConf.create(
        {"classes": ["angry", "neutral"], "merge": {"frustrated": "angry", "excited": "happy"}}
    )
    table = load_corpus("iemocap", root, classes=config.classes, merge=config.merge)
    assert table.attrs["classes"] == ["angry", "neutral"]
    assert Counter(table["label"]) == {"angry": 3, "neutral": 2}


def test_iemocap_without_transcripts_has_no_text(tmp_path):
    table = iemocap.load(build_iemocap(tmp_path / "root", transcripts=False))
    assert "text" not in table.columns
    assert len(table) == 13


def test_iemocap_missing_wav_is_an_error(tmp_path):
    root = build_iemocap(tmp_path / "root", skip_wav="Ses02F_impro02_M001")
    with pytest.raises(
        FileNotFoundError, match=r"1 labelled IEMOCAP utterance.*Ses02F_impro02_M001\.wav"
    ):
        iemocap.load(root)


def test_iemocap_unknown_code_is_an_error(tmp_path):
    root = build_iemocap(tmp_path / "root")
    label_file = root / "Session2/dialog/EmoEvaluation/Ses02F_impro02.txt"
    label_file.write_text(label_file.read_text().replace("\toth\t", "\tboredom\t"))
    with pytest.raises(
        ValueError, match=r"Ses02F_impro02.txt line \d+: unknown IEMOCAP emotion code 'boredom'"
    ):
        iemocap.load(root)


def test_iemocap_wrong_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="IEMOCAP_full_release folder"):
        iemocap.load(tmp_path)


# --- manifest ----------------------------------------------------------------------------------


def write_manifest(folder: Path, text: str) -> Path:
    path = folder / "corpus.csv"
    path.write_text(text)
    return path


def test_manifest_resolves_relative_paths(tmp_path):
    corpus = tmp_path / "corpus"
    write_wav(corpus / "audio" / "a1.wav")
    write_wav(corpus / "audio" / "b1.wav")
    elsewhere = write_wav(tmp_path / "other" / "c1.wav")
    csv = write_manifest(
        corpus,
        "path,speaker,label,gender,extra\n"
        "audio/b1.wav,B,Sad,female,x\n"
        f"{elsewhere},C,angry,M,y\n"
        "./audio/a1.wav,A,neutral,f,z\n",
    )
    table = manifest.load(csv)
    # Other columns are kept after the contract's (a fold column, feature files, ...).
    assert list(table.columns) == ["utterance", "path", "speaker", "label", "gender", "extra"]
    assert list(table["utterance"]) == ["a1", "b1", "c1"]
    assert list(table["extra"]) == ["z", "x", "y"]
    assert list(table["path"]) == [
        str((corpus / "audio" / "a1.wav").resolve()),
        str((corpus / "audio" / "b1.wav").resolve()),
        str(elsewhere.resolve()),
    ]
    assert list(table["label"]) == ["neutral", "sad", "angry"]
    assert list(table["gender"]) == ["f", "f", "m"]
    # no default classes: every label is kept, sorted
    assert load_corpus("manifest", csv).attrs["classes"] == ["angry", "neutral", "sad"]


def test_manifest_optional_utterance_column(tmp_path):
    write_wav(tmp_path / "x" / "take.wav")
    write_wav(tmp_path / "y" / "take.wav")
    csv = write_manifest(
        tmp_path,
        "utterance,path,speaker,label,session\nx1,x/take.wav,s1,sad,1\ny1,y/take.wav,s2,sad,2\n",
    )
    table = manifest.load(csv)
    assert list(table["utterance"]) == ["x1", "y1"]
    assert list(table["session"]) == ["1", "2"]


def test_manifest_missing_column(tmp_path):
    csv = write_manifest(tmp_path, "file,speaker,label\na.wav,s1,sad\n")
    with pytest.raises(
        ValueError,
        match=r"corpus.csv lacks column\(s\) \['path'\]; it has \['file', 'speaker', 'label'\]; "
        r"required: \['path', 'speaker', 'label'\]",
    ):
        manifest.load(csv)


def test_manifest_empty_cell_names_row(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    csv = write_manifest(tmp_path, "path,speaker,label\na.wav,s1,sad\nb.wav, ,angry\n")
    with pytest.raises(ValueError, match=r"empty 'speaker' in row 2;"):
        manifest.load(csv)


def test_manifest_missing_audio_lists_rows(tmp_path):
    write_wav(tmp_path / "a.wav")
    csv = write_manifest(
        tmp_path, "path,speaker,label\na.wav,s1,sad\nmissing1.wav,s1,sad\nsub/missing2.wav,s2,sad\n"
    )
    with pytest.raises(FileNotFoundError, match=r"2 audio file\(s\) missing") as error:
        manifest.load(csv)
    assert "row 2: " + str(tmp_path.resolve() / "missing1.wav") in str(error.value)
    assert "row 3: " + str(tmp_path.resolve() / "sub" / "missing2.wav") in str(error.value)


def test_manifest_duplicate_paths_name_rows(tmp_path):
    write_wav(tmp_path / "a.wav")
    write_wav(tmp_path / "b.wav")
    csv = write_manifest(
        tmp_path, "path,speaker,label\na.wav,s1,sad\nb.wav,s1,sad\n./a.wav,s2,angry\n"
    )
    with pytest.raises(ValueError, match=r"listed more than once, e\.g\. .*a\.wav in rows 1, 3"):
        manifest.load(csv)


def test_manifest_clashing_file_stems_need_utterance_column(tmp_path):
    write_wav(tmp_path / "x" / "take.wav")
    write_wav(tmp_path / "y" / "take.wav")
    csv = write_manifest(tmp_path, "path,speaker,label\nx/take.wav,s1,sad\ny/take.wav,s2,sad\n")
    with pytest.raises(ValueError, match=r"'take' repeats in rows 1, 2.*add an 'utterance' column"):
        manifest.load(csv)


def test_manifest_bad_gender_and_missing_file(tmp_path):
    write_wav(tmp_path / "a.wav")
    csv = write_manifest(tmp_path, "path,speaker,label,gender\na.wav,s1,sad,x\n")
    with pytest.raises(ValueError, match=r"gender 'x' in row 1; accepted"):
        manifest.load(csv)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        manifest.load(tmp_path / "nope.csv")
