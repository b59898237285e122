"""RAVDESS speech (Livingstone & Russo, PLoS ONE 2018), audio-only files.

Layout: ``Actor_XX/MM-VV-EE-II-SS-RR-AA.wav`` (modality, vocal channel, emotion, intensity,
statement, repetition, actor), as in ``Audio_Speech_Actors_01-24.zip``: 24 actors, 1,440 speech
files, 8 emotions. Song files (vocal channel 02, from the song zip unpacked into the same actor
folders) are skipped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from sergraph.data.corpora import build_table, wav_files

EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
STATEMENTS: dict[str, str] = {
    "01": "Kids are talking by the door",
    "02": "Dogs are sitting by the door",
}
AUDIO_ONLY = "03"
SPEECH, SONG = "01", "02"

DEFAULT_CLASSES: list[str] = list(EMOTIONS.values())
DEFAULT_MERGE: dict[str, str] = {}

FILE_PATTERN = re.compile(
    r"^(?P<modality>\d{2})-(?P<channel>\d{2})-(?P<emotion>\d{2})-(?P<intensity>\d{2})"
    r"-(?P<statement>\d{2})-(?P<repetition>\d{2})-(?P<actor>\d{2})$"
)
EXPECTED = (
    "MM-VV-EE-II-SS-RR-AA.wav, e.g. 03-01-05-02-01-01-12.wav (modality 03 audio-only, "
    "vocal channel 01 speech/02 song, emotion 01-08, intensity 01-02, statement 01-02, "
    "repetition 01-02, actor 01-24)"
)


def parse_name(file_name: str) -> dict[str, str] | None:
    """Parse a RAVDESS audio file name.

    Args:
        file_name: e.g. ``"03-01-05-02-01-01-12.wav"`` (a path is accepted; only its name is read).

    Returns:
        ``{"utterance", "speaker", "label", "gender", "text"}`` for a speech file, e.g.
        ``"03-01-05-02-01-01-12"``, ``"12"``, ``"angry"``, ``"f"``,
        ``"Kids are talking by the door"``; ``None`` for a song file (vocal channel 02).

    Raises:
        ValueError: the name does not follow the pattern, is not audio-only (modality 03), or
            has a code outside its range.
    """
    name = Path(file_name).name
    stem, suffix = os.path.splitext(name)
    match = FILE_PATTERN.match(stem)
    if suffix.lower() != ".wav" or match is None:
        raise ValueError(f"RAVDESS file name {name!r} does not match {EXPECTED}")
    problems = []
    if match["modality"] != AUDIO_ONLY:
        problems.append(f"modality {match['modality']} (audio-only files have 03)")
    if match["channel"] not in (SPEECH, SONG):
        problems.append(f"vocal channel {match['channel']} (01 speech or 02 song)")
    if match["emotion"] not in EMOTIONS:
        problems.append(f"emotion {match['emotion']} (01-08)")
    for field in ("intensity", "statement", "repetition"):
        if match[field] not in ("01", "02"):
            problems.append(f"{field} {match[field]} (01 or 02)")
    actor = int(match["actor"])
    if not 1 <= actor <= 24:
        problems.append(f"actor {match['actor']} (01-24)")
    if problems:
        raise ValueError(f"RAVDESS file name {name!r} has {'; '.join(problems)}")
    if match["channel"] == SONG:
        return None
    return {
        "utterance": stem,
        "speaker": match["actor"],
        "label": EMOTIONS[match["emotion"]],
        "gender": "m" if actor % 2 == 1 else "f",
        "text": STATEMENTS[match["statement"]],
    }


def load(root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """Load RAVDESS speech.

    Args:
        root: a folder whose ``Actor_XX`` folders (at any depth, e.g. inside
            ``Audio_Speech_Actors_01-24/``) hold the wav files. Non-wav and hidden files are
            ignored; song files are skipped.

    Returns:
        Table with columns utterance, path, speaker (actor id ``"01"``..``"24"``), label,
        gender (odd actors ``m``, even ``f``), text (the statement), sorted by utterance.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no ``Actor_XX`` folder.
        ValueError: a wav file whose name breaks the pattern, or whose actor code differs from
            its ``Actor_XX`` folder; no speech files at all.
    """
    if root is None:
        raise ValueError("the ravdess corpus needs root: the folder holding the Actor_XX folders")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"RAVDESS root {root} is not a folder")
    actor_folders = sorted(
        p for p in root.rglob("Actor_*") if p.is_dir() and re.fullmatch(r"Actor_\d{2}", p.name)
    )
    if root.name.startswith("Actor_") and root.is_dir():
        actor_folders.append(root)
    if not actor_folders:
        raise FileNotFoundError(f"no Actor_XX folders under {root}; expected {EXPECTED}")
    rows = []
    for folder in actor_folders:
        for path in wav_files(folder):
            try:
                row = parse_name(path.name)
            except ValueError as error:
                raise ValueError(f"{error} (file {path})") from None
            if row is None:
                continue
            if folder.name != f"Actor_{row['speaker']}":
                raise ValueError(
                    f"RAVDESS file {path} names actor {row['speaker']} but lies in {folder.name}"
                )
            rows.append({**row, "path": str(path)})
    return build_table(rows, source=f"{root} (speech wav files in Actor_XX folders)")
