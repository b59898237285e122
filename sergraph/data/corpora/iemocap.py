"""IEMOCAP (Busso et al., Language Resources and Evaluation 2008).

Reads the ``IEMOCAP_full_release`` layout:

- labels: ``SessionN/dialog/EmoEvaluation/<dialog>.txt``, one line per utterance such as
  ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``
  (the annotators' detail lines below it and the ``Categorical/``, ``Attribute/``, ...
  subfolders are not read);
- audio: ``SessionN/sentences/wav/<dialog>/<utterance>.wav``;
- transcripts (optional): ``SessionN/dialog/transcriptions/<dialog>.txt``, lines such as
  ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.``

The default classes are the usual 4-class setup: neutral, happy (merged with excited), sad,
angry; on the full corpus that gives 5,531 utterances (1,708 / 1,636 / 1,084 / 1,103).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from sergraph.data.corpora import build_table

EMOTIONS: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "excited",
    "sad": "sad",
    "ang": "angry",
    "fru": "frustrated",
    "sur": "surprise",
    "fea": "fear",
    "dis": "disgust",
    "oth": "other",
    "xxx": "no_agreement",  # the annotators did not agree on a category
}

DEFAULT_CLASSES: list[str] = ["neutral", "happy", "sad", "angry"]
DEFAULT_MERGE: dict[str, str] = {"excited": "happy"}

LABEL_LINE = re.compile(
    r"^\[\s*(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\s*\]\s+(?P<utterance>\S+)\s+(?P<code>\S+)\s+\["
)
UTTERANCE_ID = re.compile(r"^(?P<session>Ses\d{2})[FM]_\S*_(?P<gender>[FM])\d+\w*$")
TRANSCRIPT_LINE = re.compile(r"^(?P<utterance>Ses\S+)\s+\[[^\]]*\]:\s?(?P<text>.*)$")
SESSION_FOLDER = re.compile(r"^Session\d+$")


def speaker_of(utterance: str) -> tuple[str, str, str]:
    """Session, speaker and gender of an IEMOCAP utterance id.

    The speaker is the session plus the gender letter after the last underscore: in
    ``Ses01F_impro01_M003`` the male actor of session 1 speaks, so the speaker is ``Ses01M``
    even though the dialog id starts with ``Ses01F``.

    Args:
        utterance: e.g. ``"Ses01F_impro01_M003"`` or ``"Ses01F_script01_1_F000"``.

    Returns:
        ``(session, speaker, gender)``, e.g. ``("Ses01", "Ses01M", "m")``.

    Raises:
        ValueError: the id does not look like ``SesNN[FM]_<dialog>_[FM]NNN``.
    """
    match = UTTERANCE_ID.match(utterance)
    if match is None:
        raise ValueError(
            f"IEMOCAP utterance id {utterance!r} does not match SesNN[FM]_<dialog>_[FM]NNN, "
            "e.g. Ses01F_impro01_M003"
        )
    session, gender = match["session"], match["gender"]
    return session, session + gender, gender.lower()


def read_label_file(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read one EmoEvaluation file.

    Args:
        path: e.g. ``Session1/dialog/EmoEvaluation/Ses01F_impro01.txt``.

    Returns:
        ``[(utterance, label), ...]`` in file order, labels already canonical
        (``"neu"`` -> ``"neutral"``).

    Raises:
        ValueError: an unknown emotion code (naming the file, line and valid codes).
    """
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            match = LABEL_LINE.match(line)
            if match is None:
                continue
            code = match["code"]
            if code not in EMOTIONS:
                raise ValueError(
                    f"{path} line {line_number}: unknown IEMOCAP emotion code {code!r}; "
                    f"valid codes: {sorted(EMOTIONS)}"
                )
            pairs.append((match["utterance"], EMOTIONS[code]))
    return pairs


def read_transcripts(path: Path) -> dict[str, str]:
    """Read ``transcriptions/<dialog>.txt`` into ``{utterance: text}`` (empty if absent)."""
    if not path.is_file():
        return {}
    texts = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = TRANSCRIPT_LINE.match(line.rstrip("\n"))
            if match is not None:
                texts[match["utterance"]] = match["text"].strip()
    return texts


def load(root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """Load IEMOCAP with every labelled utterance (all categories; see ``DEFAULT_CLASSES``).

    Args:
        root: the ``IEMOCAP_full_release`` folder, holding ``Session1`` .. ``Session5``.

    Returns:
        Table with columns utterance, path, speaker (e.g. ``Ses01M``), label, session
        (``Ses01``), gender, and text when every utterance has a transcript in
        ``dialog/transcriptions/`` (otherwise no text column), sorted by utterance.

    Raises:
        FileNotFoundError: no ``SessionN`` folder with label files under ``root``, or label rows
            whose wav file is missing (the message counts them and lists the first few).
        ValueError: an unknown emotion code or malformed utterance id.
    """
    if root is None:
        raise ValueError("the iemocap corpus needs root: the IEMOCAP_full_release folder")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"IEMOCAP root {root} is not a folder")
    sessions = sorted(p for p in root.iterdir() if p.is_dir() and SESSION_FOLDER.match(p.name))
    label_files = [
        path
        for session in sessions
        for path in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not path.name.startswith(".")
    ]
    if not label_files:
        raise FileNotFoundError(
            f"no label files at {root}/SessionN/dialog/EmoEvaluation/*.txt; "
            "root must be the IEMOCAP_full_release folder"
        )
    rows, missing = [], []
    all_texts = True
    for label_file in label_files:
        session_folder = label_file.parents[2]
        dialog = label_file.stem
        texts = read_transcripts(session_folder / "dialog" / "transcriptions" / f"{dialog}.txt")
        for utterance, label in read_label_file(label_file):
            try:
                session, speaker, gender = speaker_of(utterance)
            except ValueError as error:
                raise ValueError(f"{error} (file {label_file})") from None
            wav = session_folder / "sentences" / "wav" / dialog / f"{utterance}.wav"
            if not wav.is_file():
                missing.append(f"{wav} (labelled in {label_file.name})")
            row = {
                "utterance": utterance,
                "path": str(wav),
                "speaker": speaker,
                "label": label,
                "session": session,
                "gender": gender,
            }
            if utterance in texts:
                row["text"] = texts[utterance]
            else:
                all_texts = False
            rows.append(row)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} labelled IEMOCAP utterance(s) have no wav file under {root}, e.g. "
            + "; ".join(missing[:5])
        )
    if not all_texts:
        for row in rows:
            row.pop("text", None)
    return build_table(rows, source=f"{root} (SessionN/dialog/EmoEvaluation)")
