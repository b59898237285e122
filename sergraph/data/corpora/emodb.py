"""Berlin Database of Emotional Speech (EmoDB; Burkhardt et al., Interspeech 2005).

Reads exactly the ``wav/`` folder of the original distribution: 535 files named ``SSTTTEV.wav``
(speaker ``SS``, text ``TTT``, emotion code ``E``, version ``V``), 10 speakers, 7 emotions. The
other folders of the original zip (``lablaut/``, ``silb/``, ...) are not needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from sergraph.data.corpora import build_table, wav_files

EMOTIONS: dict[str, str] = {
    "W": "angry",  # Wut
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fear",  # Angst
    "F": "happy",  # Freude
    "T": "sad",  # Trauer
    "N": "neutral",  # Neutral
}

# Speaker id -> gender, from the corpus documentation.
SPEAKER_GENDER: dict[str, str] = {
    "03": "m",
    "08": "f",
    "09": "f",
    "10": "m",
    "11": "m",
    "12": "m",
    "13": "f",
    "14": "f",
    "15": "m",
    "16": "f",
}

DEFAULT_CLASSES: list[str] = ["angry", "boredom", "disgust", "fear", "happy", "sad", "neutral"]
DEFAULT_MERGE: dict[str, str] = {}

FILE_PATTERN = re.compile(
    r"^(?P<speaker>\d{2})(?P<text>[ab]\d{2})(?P<code>[A-Z])(?P<version>[a-z])$"
)
EXPECTED = "SSTTTEV.wav, e.g. 03a01Fa.wav (SS speaker, TTT text a01..b10, E emotion, V version)"


def parse_name(file_name: str) -> dict[str, str]:
    """Parse an EmoDB file name.

    Args:
        file_name: e.g. ``"03a01Fa.wav"`` (a path is accepted; only its name is read).

    Returns:
        ``{"utterance", "speaker", "text", "label", "gender"}``, e.g. ``"03a01Fa"``, ``"03"``,
        ``"a01"``, ``"happy"``, ``"m"``.

    Raises:
        ValueError: the name does not follow ``SSTTTEV.wav``, or its emotion code or speaker is
            not one of EmoDB's.
    """
    name = Path(file_name).name
    stem, suffix = os.path.splitext(name)
    match = FILE_PATTERN.match(stem)
    if suffix.lower() != ".wav" or match is None:
        raise ValueError(f"EmoDB file name {name!r} does not match {EXPECTED}")
    code, speaker = match["code"], match["speaker"]
    if code not in EMOTIONS:
        raise ValueError(
            f"EmoDB file name {name!r} has emotion code {code!r}; "
            f"valid codes: {', '.join(f'{c}={e}' for c, e in EMOTIONS.items())}"
        )
    if speaker not in SPEAKER_GENDER:
        raise ValueError(
            f"EmoDB file name {name!r} has speaker {speaker!r}; "
            f"EmoDB speakers are {sorted(SPEAKER_GENDER)}"
        )
    return {
        "utterance": stem,
        "speaker": speaker,
        "text": match["text"],
        "label": EMOTIONS[code],
        "gender": SPEAKER_GENDER[speaker],
    }


def find_wav_folder(root: str | os.PathLike[str] | None) -> Path:
    """Resolve ``root`` (the folder holding ``wav/``, or ``wav/`` itself) to the wav folder."""
    if root is None:
        raise ValueError("the emodb corpus needs root: the folder holding wav/ or wav/ itself")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"EmoDB root {root} is not a folder")
    if (root / "wav").is_dir():
        return (root / "wav").resolve()
    if any(p.suffix.lower() == ".wav" for p in root.iterdir()):
        return root.resolve()
    raise FileNotFoundError(
        f"no EmoDB wav files in {root}: give the folder holding wav/ or the wav/ folder itself"
    )


def load(root: str | os.PathLike[str] | None) -> pd.DataFrame:
    """Load EmoDB.

    Args:
        root: the folder holding ``wav/`` or the ``wav/`` folder itself. Files that do not end
            in ``.wav`` and hidden files (``._03a01Fa.wav`` from macOS) are ignored.

    Returns:
        Table with columns utterance, path, speaker, label, gender, text (text is the sentence
        id, e.g. ``a01``), sorted by utterance.

    Raises:
        ValueError: a ``.wav`` file whose name does not follow ``SSTTTEV.wav``.
        FileNotFoundError: no wav folder at ``root``.
    """
    folder = find_wav_folder(root)
    rows = []
    for path in wav_files(folder):
        try:
            row = parse_name(path.name)
        except ValueError as error:
            raise ValueError(f"{error} (file {path})") from None
        rows.append({**row, "path": str(path)})
    return build_table(rows, source=str(folder))
