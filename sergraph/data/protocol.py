"""Evaluation protocols: which unlabelled audio may shape normalisation, and what is scored.

``eval.protocol`` names one of three protocols:

- ``inductive`` (default): statistics come from training speakers only; every utterance of a
  validation or test speaker is scored.
- ``enrollment``: for every held-out speaker (:func:`enrollment_speakers`: validation and test
  speakers; test speakers only for a classic baseline, which fits on its validation speakers) a
  fixed, seeded, label-free subset of its utterances (``eval.enrollment``: a fraction in (0, 1)
  or a count >= 1 per speaker) is held aside. It is used, without labels, for that speaker's
  normalisation statistics and is **never scored**; only the speaker's other utterances are
  scored. This is the deployable form of per-speaker normalisation: a new user records a few
  unlabelled sentences first.
- ``transductive``: a held-out speaker's statistics come from all of its utterances, the scored
  ones included (the older ``graph.normalize=speaker`` alone). Allowed, but every output says
  :data:`TRANSDUCTIVE_NOTE`.

Training speakers are always normalised with their own (or the training side's) statistics.
The enrollment subset of a speaker depends only on its utterance ids, its name and
``eval.enrollment_seed``: never on labels, folds or models, so every model of a study scores the
same utterances. :func:`check_protocol` is the guard: it raises :class:`ProtocolLeakError` when
an enrollment utterance is scored or a scored utterance enters a statistic.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd

from sergraph.data.folds import Fold

PROTOCOLS = ("inductive", "enrollment", "transductive")
TRANSDUCTIVE_NOTE = "transductive: test utterances were used unlabelled for normalisation"


class ProtocolLeakError(RuntimeError):
    """An enrollment utterance was scored, or a scored utterance entered a statistic."""


def resolve_protocol(protocol: str | None, normalize: str) -> str:
    """The protocol a configuration runs under.

    Args:
        protocol: ``eval.protocol`` (``None``: not given).
        normalize: ``graph.normalize`` (``train``, ``speaker`` or ``none``).

    Returns:
        ``protocol`` itself, or when it is ``None``: ``transductive`` under
        ``graph.normalize=speaker`` (its meaning before protocols were named) and ``inductive``
        otherwise.

    Raises:
        ValueError: an unknown protocol, per-speaker normalisation under ``inductive`` (a
            held-out speaker has no statistics of its own there) or ``transductive`` without
            per-speaker normalisation (there is nothing transductive to do).
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(
            f"eval.protocol={protocol!r} is not valid; choose one of {list(PROTOCOLS)}"
        )
    if protocol is None:
        return "transductive" if normalize == "speaker" else "inductive"
    if protocol == "inductive" and normalize == "speaker":
        raise ValueError(
            "eval.protocol=inductive with graph.normalize=speaker: under inductive a held-out "
            "speaker has no statistics of its own; use eval.protocol=enrollment (a held-aside, "
            "never-scored part of each speaker) or eval.protocol=transductive, or "
            "graph.normalize=train"
        )
    if protocol == "transductive" and normalize != "speaker":
        raise ValueError(
            f"eval.protocol=transductive with graph.normalize={normalize}: transductive applies "
            "to per-speaker normalisation; set graph.normalize=speaker or use inductive"
        )
    return protocol


def check_enrollment_amount(amount: float) -> None:
    """``eval.enrollment``: a fraction in (0, 1) or a whole count >= 1."""
    ok = isinstance(amount, int | float) and not isinstance(amount, bool) and math.isfinite(amount)
    if ok and (0 < amount < 1 or (amount >= 1 and float(amount).is_integer())):
        return
    raise ValueError(
        f"eval.enrollment={amount!r} is not valid; give a fraction in (0, 1) (e.g. 0.2) or a "
        "whole number of utterances per speaker >= 1 (e.g. 5)"
    )


def enrollment_count(n_utterances: int, amount: float) -> int:
    """How many of a speaker's ``n_utterances`` are held aside: ``round(amount * n)`` for a
    fraction, ``amount`` for a count.

    Raises:
        ValueError: that would hold none aside or leave none to score (see
            :func:`check_enrollment_sizes`, which names every such speaker at once).
    """
    check_enrollment_amount(amount)
    wanted = round(amount * n_utterances) if amount < 1 else int(amount)
    if not 1 <= wanted <= n_utterances - 1:
        raise ValueError(
            f"eval.enrollment={amount:g} holds {wanted} of {n_utterances} utterance(s) aside; "
            "enrollment needs at least 1 held aside and 1 scored"
        )
    return int(wanted)


def check_enrollment_sizes(table: pd.DataFrame, speakers, amount: float) -> None:
    """Refuse an ``eval.enrollment`` that some of ``speakers`` cannot honour, before any work.

    Every speaker must keep at least one utterance held aside and one scored, with exactly the
    amount asked for (a count as given, a fraction rounded to whole utterances): it is never
    clamped, so the protocol note of every result file states what was done.

    Raises:
        ValueError: naming each such speaker with its number of utterances and what it would
            hold aside, and the amounts that every one of ``speakers`` can honour.
    """
    check_enrollment_amount(amount)
    sizes = table["speaker"].astype(str).value_counts()
    counts = {str(s): int(sizes.get(str(s), 0)) for s in speakers}
    if not counts:
        return
    bad = []
    for speaker, n in sorted(counts.items()):
        wanted = round(amount * n) if amount < 1 else int(amount)
        if wanted < 1:
            bad.append(f"{speaker!r} has {n} (would hold {wanted} aside)")
        elif wanted > n - 1:
            bad.append(f"{speaker!r} has {n} (would hold {wanted} aside, none left to score)")
    if not bad:
        return
    fewest = min(counts.values())
    if fewest < 2:
        accepted = (
            "none: a speaker with fewer than 2 utterances cannot be enrolled and scored; "
            "remove it or use eval.protocol=inductive"
        )
    else:
        accepted = (
            f"a count from 1 to {fewest - 1} or a fraction between {0.5 / fewest:.3g} and "
            f"{1 - 0.5 / fewest:.3g} (the fewest utterances of a held-out speaker: {fewest})"
        )
    shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
    raise ValueError(
        f"eval.enrollment={amount:g} cannot be honoured: every held-out speaker needs at least "
        f"one utterance held aside and one scored, but speaker {shown}. Accepted here: {accepted}"
    )


def _speaker_seed(speaker: str, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{speaker}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def enrollment_speakers(fold: Fold, fits_on_validation: bool = False) -> list[str]:
    """The speakers of ``fold`` whose enrollment part is held aside under
    ``eval.protocol=enrollment``: every speaker the cell scores unseen.

    A neural cell is validated on its validation speakers (early stopping, the best epoch), so
    they are held out like the test speakers; a model that ``fits_on_validation`` (a classic
    baseline, fitted on training and validation speakers together) holds out its test speakers
    only.
    """
    if fits_on_validation:
        return list(fold.test_speakers)
    return [*fold.val_speakers, *fold.test_speakers]


def enrollment_rows(table: pd.DataFrame, speakers, amount: float, seed: int = 0) -> np.ndarray:
    """Row positions of the enrollment subset of each of ``speakers`` (sorted).

    The subset of a speaker is drawn from its utterance ids (sorted, then permuted by a
    generator seeded with ``seed`` and the speaker's name): it uses no label and does not depend
    on the other rows of the table.

    Raises:
        ValueError: an amount some speaker cannot honour (:func:`check_enrollment_sizes`).
    """
    check_enrollment_sizes(table, speakers, amount)
    speaker_column = table["speaker"].astype(str).to_numpy()
    ids = table["utterance"].astype(str).to_numpy() if "utterance" in table else None
    chosen = []
    for speaker in sorted({str(s) for s in speakers}):
        rows = np.flatnonzero(speaker_column == speaker)
        if ids is not None:
            rows = rows[np.argsort(ids[rows], kind="stable")]
        order = np.random.default_rng(_speaker_seed(speaker, seed)).permutation(len(rows))
        chosen.append(rows[order[: enrollment_count(len(rows), amount)]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def statistic_rows(
    table: pd.DataFrame,
    split_rows: dict[str, np.ndarray],
    protocol: str,
    normalize: str,
    enrolled: np.ndarray | None = None,
) -> dict[str, np.ndarray] | np.ndarray | None:
    """Which rows each normalisation statistic is fitted on.

    Returns:
        ``graph.normalize=train``: the training rows (one statistic); ``speaker``: speaker ->
        rows (training speakers: all their rows; held-out speakers: their enrollment rows under
        ``enrollment``, all their rows under ``transductive``); ``none``: ``None``.
    """
    if normalize == "none":
        return None
    if normalize == "train":
        return np.asarray(split_rows["train"])
    speaker_column = table["speaker"].astype(str).to_numpy()
    enrolled_set = set() if enrolled is None else {int(i) for i in enrolled}
    out = {}
    training = set(speaker_column[split_rows["train"]])
    used = np.concatenate(
        [np.asarray(rows) for rows in split_rows.values()]
        + [np.asarray(sorted(enrolled_set), dtype=np.int64)]
    )
    for speaker in sorted(set(speaker_column[used])):
        rows = np.flatnonzero(speaker_column == speaker)
        if speaker not in training and protocol == "enrollment":
            rows = np.asarray([i for i in rows if i in enrolled_set], dtype=np.int64)
        out[speaker] = rows
    return out


def check_protocol(
    protocol: str,
    scored: np.ndarray,
    statistics: dict[str, np.ndarray] | np.ndarray | None,
    enrolled: np.ndarray | None = None,
    where: str = "",
) -> None:
    """The guard: raise :class:`ProtocolLeakError` if an enrollment row is scored, or (under
    ``inductive`` and ``enrollment``) a scored row is part of any statistic."""
    scored_set = {int(i) for i in scored}
    prefix = f"{where}: " if where else ""
    if enrolled is not None:
        both = scored_set & {int(i) for i in enrolled}
        if both:
            raise ProtocolLeakError(
                f"{prefix}{len(both)} enrollment utterance(s) would be scored (rows "
                f"{sorted(both)[:5]}); enrollment utterances are never scored"
            )
    if protocol == "transductive" or statistics is None:
        return
    pools = statistics.values() if isinstance(statistics, dict) else [statistics]
    used = set().union(*({int(i) for i in rows} for rows in pools)) if pools else set()
    both = scored_set & used
    if both:
        raise ProtocolLeakError(
            f"{prefix}{len(both)} scored utterance(s) entered a normalisation statistic under "
            f"eval.protocol={protocol} (rows {sorted(both)[:5]}); only transductive allows it"
        )


def check_predictions(
    table: pd.DataFrame,
    utterances,
    test_speakers,
    protocol: str,
    amount: float,
    seed: int = 0,
    where: str = "",
) -> None:
    """The guard at the output: under ``enrollment`` no enrollment utterance of the test
    speakers is among the predicted ``utterances`` (what goes into ``predictions.csv``)."""
    if protocol != "enrollment":
        return
    enrolled = set(
        table["utterance"].astype(str).iloc[enrollment_rows(table, test_speakers, amount, seed)]
    )
    scored = enrolled & {str(u) for u in utterances}
    if scored:
        prefix = f"{where}: " if where else ""
        raise ProtocolLeakError(
            f"{prefix}{len(scored)} enrollment utterance(s) among the predictions, e.g. "
            f"{sorted(scored)[:3]}; enrollment utterances are never scored"
        )


def protocol_record(protocol: str, amount: float | None = None, seed: int = 0) -> dict:
    """What every result file says about its protocol (``note`` in words)."""
    record: dict = {"name": protocol}
    if protocol == "enrollment":
        record |= {"enrollment": amount, "enrollment_seed": seed}
        record["note"] = (
            f"enrollment: {_amount_words(amount)} of each held-out speaker's "
            "utterances were held aside, used unlabelled for that speaker's normalisation and "
            "never scored"
        )
    elif protocol == "transductive":
        record["note"] = TRANSDUCTIVE_NOTE
    else:
        record["note"] = "inductive: normalisation statistics from training speakers only"
    return record


def _amount_words(amount: float | None) -> str:
    if amount is None:
        return "a part"
    return f"{100 * amount:g} %" if amount < 1 else f"{int(amount)} utterance(s)"
