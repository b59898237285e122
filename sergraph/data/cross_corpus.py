"""Cross-corpus data: label mappings between corpora, several corpora in one table, and the folds
that hold out a whole corpus.

A cross-corpus study (``cross_corpus`` in the configuration, resolved by
:mod:`sergraph.config.cross_corpus`) trains on one or more corpora and tests on another:

- ``cross_corpus.test``: train on every speaker of ``data`` (validation speakers drawn from it,
  ``folds.val_speakers`` of them), test on every utterance of the named corpus: one fold;
- ``cross_corpus.corpora``: leave one corpus out: fold *i* tests corpus *i* with a model trained
  on all the others (validation speakers drawn from those, in turn from each).

Each corpus's classes are mapped onto the study's label set with an explicit, validated mapping
(:func:`label_mapping`, the one ``sergraph evaluate`` uses too): a class the model cannot
predict is refused by name unless it is mapped (``label_map``) or its utterances are left out
(``drop``). In the combined table every speaker and utterance id is prefixed with its corpus's
name (``b:spk01``), so that two corpora never share a speaker; ``corpus`` and ``corpus_label``
(the label before the mapping) are kept as columns.

Nothing here reads audio or features: :func:`sergraph.data.prepared.prepare` prepares each
corpus as usual and combines them with :func:`combine_tables` and :func:`corpus_folds`; the
normalisation statistics then come from the training speakers of each fold as in any study.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from sergraph.data.folds import Fold

#: Joins a corpus's name and a speaker or utterance id in the combined table (``b:spk01``).
SEPARATOR = ":"
#: The two kinds of cross-corpus study (``scheme`` in each cell's ``evaluation`` record).
TEST_CORPUS = "test_corpus"
LEAVE_ONE_CORPUS_OUT = "leave_one_corpus_out"


def is_cross_corpus(cfg) -> bool:
    """Whether a configuration (composed, or a cell's saved ``config.yaml``) is cross-corpus."""
    from omegaconf import OmegaConf

    return bool(
        OmegaConf.select(cfg, "cross_corpus.test", default=None)
        or OmegaConf.select(cfg, "cross_corpus.corpora", default=None)
    )


def _map_hint(key: str, name: str) -> str:
    return f"{key} {name}=CLASS" if key.startswith("--") else f"{key}={{{name}: CLASS}}"


def _drop_hint(key: str, name: str) -> str:
    return f"{key} {name}" if key.startswith("--") else f"{key}=[{name}]"


def label_mapping(
    corpus_classes: Sequence[str],
    target_classes: Sequence[str],
    mapping: dict[str, str] | None = None,
    drop: Sequence[str] | None = None,
    *,
    corpus: str = "the corpus",
    target: str = "the bundle",
    map_key: str = "--map",
    drop_key: str = "--drop",
) -> dict[str, str | None]:
    """Each corpus class's target class (``None``: dropped), validated.

    A corpus class that is also a target class maps to itself unless mapped otherwise.

    Args:
        corpus_classes: the classes of the corpus whose labels are mapped.
        target_classes: the classes the model predicts (a bundle's, a study's label set).
        mapping: corpus class -> target class.
        drop: corpus classes whose utterances are left out.
        corpus, target, map_key, drop_key: how the messages name the corpus, the target and the
            two settings (``--map``/``--drop`` for ``sergraph evaluate``; the configuration
            keys for a cross-corpus study).

    Raises:
        ValueError: a mapped or dropped class the corpus does not have; a target the model
            cannot predict; a class both mapped and dropped; a corpus class the model cannot
            predict that is neither mapped nor dropped (each named, with the choices).
    """
    mapping, drop = dict(mapping or {}), list(drop or [])
    classes, targets = list(corpus_classes), list(target_classes)
    unknown = sorted((set(mapping) | set(drop)) - set(classes))
    if unknown:
        raise ValueError(
            f"{map_key}/{drop_key} name class(es) {unknown} that {corpus} does not have; its "
            f"classes are {classes}"
        )
    outside = sorted(set(mapping.values()) - set(targets))
    if outside:
        raise ValueError(
            f"{map_key} maps to class(es) {outside} that {target} cannot predict; its classes "
            f"are {targets}"
        )
    both = sorted(set(mapping) & set(drop))
    if both:
        raise ValueError(
            f"class(es) {both} of {corpus} are both mapped ({map_key}) and dropped ({drop_key})"
        )
    out: dict[str, str | None] = {}
    unmapped = []
    for name in classes:
        if name in drop:
            out[name] = None
        elif name in mapping:
            out[name] = mapping[name]
        elif name in targets:
            out[name] = name
        else:
            unmapped.append(name)
    if unmapped:
        raise ValueError(
            f"{corpus} has class(es) {unmapped} that {target} cannot predict (its classes: "
            f"{targets}); map each onto one of them ({_map_hint(map_key, unmapped[0])}) or "
            f"leave its utterances out ({_drop_hint(drop_key, unmapped[0])})"
        )
    return out


def prefixed(corpus: str, ids) -> list[str]:
    """Speaker or utterance ids of one corpus as the combined table spells them."""
    return [f"{corpus}{SEPARATOR}{value}" for value in ids]


def combine_tables(
    tables: dict[str, pd.DataFrame], targets: dict[str, dict[str, str | None]]
) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Several corpora as one table, labels mapped, dropped classes left out.

    Args:
        tables: corpus name -> its table (``utterance``, ``path``, ``speaker``, ``label``, ...).
        targets: corpus name -> its :func:`label_mapping`.

    Returns:
        (the combined table: ``utterance``, ``path``, ``speaker`` (ids prefixed with the
        corpus's name), ``label`` (mapped), ``corpus``, ``corpus_label``; the rows of each
        corpus's table that were kept, in order).
    """
    parts, kept = [], {}
    for name, table in tables.items():
        mapped = table["label"].astype(str).map(targets[name])
        keep = mapped.notna().to_numpy()
        kept[name] = [int(i) for i in keep.nonzero()[0]]
        part = table[keep]
        parts.append(
            pd.DataFrame(
                {
                    "utterance": prefixed(name, part["utterance"].astype(str)),
                    "path": part["path"].astype(str).to_numpy(),
                    "speaker": prefixed(name, part["speaker"].astype(str)),
                    "label": mapped[keep].astype(str).to_numpy(),
                    "corpus": name,
                    "corpus_label": part["label"].astype(str).to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True), kept


def check_no_shared_audio(table: pd.DataFrame, keys: dict[str, str]) -> None:
    """Refuse two corpora of one cross-corpus study that share audio files (the same file by
    its resolved path: the same corpus named twice, or reached through a link): every corpus
    is held out by some fold, so such a fold would score utterances its model was trained on.

    Args:
        table: the combined table (:func:`combine_tables`).
        keys: corpus name -> the configuration key of its entry (``data``,
            ``cross_corpus.test``, ``cross_corpus.corpora[i]``), for the message.

    Raises:
        ValueError: naming both corpora, their keys, how many files they share and one of them.
    """
    import os

    resolved = table["path"].astype(str).map(os.path.realpath)
    files = {
        name: set(resolved[(table["corpus"] == name).to_numpy()])
        for name in dict.fromkeys(table["corpus"].astype(str))
    }
    names = list(files)
    for later_index, later in enumerate(names):
        for earlier in names[:later_index]:
            shared = sorted(files[later] & files[earlier])
            if shared:
                raise ValueError(
                    f"cross-corpus: corpus {later!r} ({keys[later]}) and corpus {earlier!r} "
                    f"({keys[earlier]}) share {len(shared)} audio file(s), e.g. {shared[0]}: "
                    "a model trained on one would be scored on its own training utterances. "
                    "Give each corpus its own audio (its root, or other options such as "
                    "options.seed for the synthetic corpus)"
                )


def corpus_folds(table: pd.DataFrame, held_out: Sequence[str], val_speakers: int) -> list[Fold]:
    """One fold per held-out corpus: its every speaker tested, the other corpora's trained on.

    The ``val_speakers`` validation speakers come from the training corpora only, taken in turn
    from each (in the corpora's order, each corpus's speakers in sorted order), so that the
    held-out corpus never influences early stopping or the checkpoint choice.

    Raises:
        ValueError: a held-out corpus without utterances, or validation speakers that would
            leave a fold with no training speaker.
    """
    corpora = list(dict.fromkeys(table["corpus"].astype(str)))
    speakers = {
        name: sorted(set(table.loc[table["corpus"] == name, "speaker"].astype(str)))
        for name in corpora
    }
    folds = []
    for index, name in enumerate(held_out):
        if not speakers.get(name):
            raise ValueError(
                f"cross-corpus: the test corpus {name!r} has no utterance left to score (its "
                "classes all dropped?)"
            )
        pools = [list(speakers[other]) for other in corpora if other != name]
        training = [s for pool in pools for s in pool]
        if val_speakers >= len(training):
            raise ValueError(
                f"folds.val_speakers={val_speakers} leaves no training speaker when "
                f"{name!r} is held out (the training corpora have {len(training)} speakers); "
                "lower folds.val_speakers"
            )
        validation: list[str] = []
        turn = 0
        while len(validation) < val_speakers:
            pool = pools[turn % len(pools)]
            if pool:
                validation.append(pool.pop(0))
            turn += 1
        folds.append(
            Fold(
                index,
                tuple(s for s in training if s not in validation),
                tuple(validation),
                tuple(speakers[name]),
            )
        )
    return folds


def training_classes_remedy(scheme: str) -> str:
    """What would give a cross-corpus fold's training side a class it lacks, in words (for
    :func:`sergraph.data.folds.check_training_classes`): leaving corpora out, neither
    ``data`` nor ``folds.scheme`` is read."""
    if scheme == LEAVE_ONE_CORPUS_OUT:
        return (
            "leave that class out of cross_corpus.classes, or map it onto another class or drop "
            "it where a corpus has it (cross_corpus.corpora[i].label_map, "
            "cross_corpus.corpora[i].drop), or lower folds.val_speakers"
        )
    return (
        "merge or drop that class in the training corpus (data.merge=..., data.classes=[...]), "
        "or lower folds.val_speakers"
    )


def fold_record(study_record: dict, fold: Fold, fingerprints: dict[str, dict]) -> dict:
    """What a cross-corpus cell's ``metrics.json`` records under ``evaluation``: that it is
    cross-corpus, its training and test corpora (each with its data configuration, classes,
    label mapping, dropped classes and data fingerprint) and the study's label set."""
    test = fold.test_speakers[0].split(SEPARATOR, 1)[0]
    used = {s.split(SEPARATOR, 1)[0] for s in (*fold.train_speakers, *fold.val_speakers)}
    training = [name for name in study_record["corpora"] if name in used]
    return {
        "cross_corpus": True,
        "scheme": study_record["scheme"],
        "train_corpora": training,
        "corpus": test,
        "classes": list(study_record["classes"]),
        "corpora": {
            name: {**study_record["corpora"][name], "fingerprint": fingerprints[name]}
            for name in [*training, test]
        },
    }
