"""The prepared data of one configuration: corpus table, cached features and folds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from sergraph.console import log
from sergraph.data.cross_corpus import (
    LEAVE_ONE_CORPUS_OUT,
    TEST_CORPUS,
    check_no_shared_audio,
    combine_tables,
    corpus_folds,
    is_cross_corpus,
    label_mapping,
)
from sergraph.data.folds import Fold, make_folds, similar_speaker_ids
from sergraph.io import atomic_write_csv


@dataclass
class PreparedData:
    """Everything a fold needs that does not depend on the fold."""

    table: pd.DataFrame
    classes: list[str]
    folds: list[Fold]
    features: list[np.ndarray] | None = None
    functionals: np.ndarray | None = None
    #: :func:`data_fingerprint`, computed on first use.
    fingerprint: dict | None = None
    sample_rates: dict[int, int] | None = None  # see corpus_sample_rates
    #: A cross-corpus study (:mod:`sergraph.data.cross_corpus`): ``scheme``, ``classes`` (the
    #: label set) and per corpus name its ``data`` configuration, ``classes``, ``label_map``,
    #: ``dropped`` (class -> utterances left out) and ``utterances`` kept; ``None`` otherwise.
    cross_corpus: dict | None = None
    #: A cross-corpus study: corpus name -> the ``table`` and ``inputs`` hashes of its rows
    #: (:func:`data_fingerprint` fills it).
    corpus_fingerprints: dict | None = None


def corpus_sample_rates(study: PreparedData) -> dict[int, int]:
    """Sample rate -> number of the study's audio files at it, from the headers (read once)."""
    if study.sample_rates is None:
        from collections import Counter

        from sergraph.data.features import audio_info

        infos = [audio_info(path) for path in study.table["path"]]
        study.sample_rates = dict(Counter(info[1] for info in infos if info is not None))
    return study.sample_rates


def default_cache_dir() -> Path:
    return Path(os.environ.get("SERGRAPH_CACHE", Path.home() / ".cache" / "sergraph"))


def feature_cache(cfg: DictConfig):
    from sergraph.data.features import FeatureCache, FeatureConfig

    root = (
        Path(cfg.features.cache_dir) if cfg.features.cache_dir else default_cache_dir() / "features"
    )
    return FeatureCache(root, FeatureConfig.from_any(cfg.features))


def feature_inputs(cfg: DictConfig, table: pd.DataFrame) -> list[str]:
    """What the feature cache reads for each row: the audio file, or a precomputed array."""
    if cfg.features.feature_set != "precomputed":
        return table["path"].tolist()
    from sergraph.data.features import FeatureConfig
    from sergraph.data.features.precomputed import array_paths

    root = Path(cfg.data.root).expanduser() if cfg.data.root else None
    manifest_dir = root.parent if root is not None and root.is_file() else root
    return array_paths(table, FeatureConfig.from_any(cfg.features), manifest_dir)


def data_fingerprint(cfg: DictConfig, study: PreparedData) -> dict:
    """The study's data fingerprint (:func:`sergraph.data.fingerprint.study_fingerprint`): the
    corpus table and the content keys of its feature inputs, the feature cache's own keys
    (hashed once per process; a cache look-up has usually hashed them already)."""
    if study.fingerprint is None:
        from sergraph.data.fingerprint import study_fingerprint
        from sergraph.io import file_sha256

        precomputed = cfg.features.feature_set == "precomputed"
        keys = [file_sha256(path) for path in feature_inputs(cfg, study.table)]
        if study.cross_corpus is not None:
            # each corpus's own hashes too, so a cell names the data of each corpus it used
            study.corpus_fingerprints = {}
            for name in study.cross_corpus["corpora"]:
                rows = (study.table["corpus"] == name).to_numpy()
                part = study_fingerprint(
                    study.table[rows], [k for k, r in zip(keys, rows, strict=True) if r], []
                )
                study.corpus_fingerprints[name] = {
                    key: part[key] for key in ("table", "inputs", "inputs_kind")
                }
        study.fingerprint = study_fingerprint(
            study.table,
            keys,
            study.folds,
            inputs_kind="precomputed" if precomputed else "audio",
            fold_column=cfg.folds.get("column", "fold")
            if cfg.folds.scheme == "predefined"
            else None,
        )
    return study.fingerprint


def audio_notes(cfg: DictConfig, table: pd.DataFrame) -> list[str]:
    """Notes on the corpus's audio for a model fitted on frame-level nodes (:func:`prepare`
    asks only for those): sample rates mixed, files longer than the graph uses.

    Reads only the file headers. Nothing is said about precomputed features (no audio read).
    """
    from collections import Counter

    from sergraph.data.features import FeatureConfig, audio_info

    config = FeatureConfig.from_any(cfg.features)
    if config.feature_set == "precomputed":
        return []
    infos = [info for info in map(audio_info, table["path"]) if info is not None]
    notes = []
    rates = Counter(rate for _, rate in infos)
    if len(rates) > 1:
        listed = ", ".join(f"{rate} Hz ({count} files)" for rate, count in sorted(rates.items()))
        if config.feature_set == "ssl":
            action = "every file is resampled to the model's rate"
        elif config.sample_rate is None:
            action = (
                "openSMILE features depend on the rate, so features.sample_rate=16000 (or the "
                "lowest rate) makes them comparable"
            )
        else:
            action = f"every file is resampled to features.sample_rate={config.sample_rate}"
        notes.append(f"note: the corpus mixes sample rates: {listed}; {action}")
    node = config.pool * 0.010 if config.is_opensmile else config.node_seconds
    if cfg.graph.max_nodes is not None:
        used = cfg.graph.max_nodes * node
        longer = [duration for duration, _ in infos if duration > used + node]
        if longer:
            note = (
                f"note: {len(longer)} file(s) are longer than the {used:g} s the graph uses "
                f"(graph.max_nodes={cfg.graph.max_nodes} nodes of {node:g} s; longest "
                f"{max(longer):.1f} s): training uses only their first {used:g} s"
            )
            if config.max_seconds is None:
                note += (
                    f"; features.max_seconds={used:g} extracts only that part (less memory and "
                    "time for long files)"
                )
            notes.append(note)
    return notes


def corpora_rates_note(cfg: DictConfig, tables: dict[str, pd.DataFrame]) -> str | None:
    """A cross-corpus study's note when its corpora are at different sample rates while
    openSMILE features are computed at each file's own rate (``features.sample_rate`` unset):
    the corpora's features are then not comparable, and each corpus alone has one rate, so
    :func:`audio_notes` of each says nothing. ``None`` otherwise. Reads only the headers."""
    from sergraph.data.features import FeatureConfig, audio_info

    config = FeatureConfig.from_any(cfg.features)
    if not config.is_opensmile or config.sample_rate is not None:
        return None
    rates = {
        name: sorted({info[1] for info in map(audio_info, table["path"]) if info is not None})
        for name, table in tables.items()
    }
    every = sorted({rate for found in rates.values() for rate in found})
    if len(every) < 2:
        return None
    listed = "; ".join(
        f"{name}: {', '.join(f'{rate} Hz' for rate in found)}" for name, found in rates.items()
    )
    return (
        f"note: the corpora are at different sample rates ({listed}); openSMILE features depend "
        f"on the rate, so features.sample_rate={every[0]} (the lowest) makes the corpora's "
        "features comparable"
    )


def load_table(cfg: DictConfig) -> tuple[pd.DataFrame, list[str]]:
    """The corpus table after the label map, and the class names in index order."""
    from sergraph.data.corpora import load_corpus

    table = load_corpus(
        cfg.data.name,
        root=cfg.data.root,
        classes=list(cfg.data.classes) if cfg.data.classes is not None else None,
        merge=dict(cfg.data.merge) if cfg.data.merge else None,
        **OmegaConf.to_container(cfg.data.options),
    )
    classes = list(table.attrs["classes"])
    return table.reset_index(drop=True), classes


#: What a model is fitted on (the model registry says which, see
#: ``sergraph.models.model_inputs``): frame-level node features (plus the utterance functionals
#: with ``features.concat_functionals``) or the utterance functionals alone.
INPUTS = ("frames", "functionals")


def prepare(
    cfg: DictConfig,
    need_features: bool = True,
    failed_listing: Path | None = None,
    inputs: str = "frames",
    make_study_folds: bool = True,
) -> PreparedData:
    """Load the corpus, fetch (cached) features and make the folds.

    A cross-corpus configuration (``cross_corpus``) prepares each of its corpora so and
    combines them (:func:`prepare_cross_corpus`). ``make_study_folds=False``: no folds (a
    corpus of a cross-corpus study, whose folds are the corpora).

    ``inputs`` (one of :data:`INPUTS`) says which features: ``frames`` fills
    :attr:`PreparedData.features` (and :attr:`PreparedData.functionals` with
    ``features.concat_functionals``), ``functionals`` fills :attr:`PreparedData.functionals` only.

    Files whose features fail are handled as ``features.on_error`` says. ``stop`` (default)
    raises one :class:`~sergraph.data.features.FeatureError` listing every failed file with its
    reason, after all the other files are cached. ``skip`` leaves them out of the table *before*
    the folds are made and lists them on stderr. Either way ``<study dir>/failed_files.csv`` is
    rewritten with this extraction's failures (header only when none failed). A cache that
    cannot be written (no space, quota, read-only) is not a failed file: its
    :class:`~sergraph.io.WriteError` stops the run. Under ``skip`` the features are fetched even
    when ``need_features`` is false, because the folds depend on which files are left.
    """
    from sergraph.data.features import FeatureError

    if inputs not in INPUTS:
        raise ValueError(f"inputs={inputs!r} is not valid; choose one of {list(INPUTS)}")
    if is_cross_corpus(cfg):
        return prepare_cross_corpus(cfg, need_features, failed_listing, inputs)
    table, classes = load_table(cfg)

    def folds_of(table: pd.DataFrame) -> list[Fold]:
        if not make_study_folds:
            return []
        return make_folds(
            table,
            scheme=cfg.folds.scheme,
            val_speakers=cfg.folds.val_speakers,
            n_groups=cfg.folds.n_groups,
            seed=cfg.folds.seed,
            column=cfg.folds.get("column", "fold"),
            allow_speaker_overlap=cfg.folds.get("allow_speaker_overlap", False),
        )

    for group in similar_speaker_ids(table["speaker"]):
        sizes = table["speaker"].astype(str).value_counts()
        listed = " and ".join(f"{s!r} ({sizes[s]} utterances)" for s in group)
        log(
            f"WARNING: speaker ids {listed} differ only in case, spaces or leading zeros; they "
            "are treated as different speakers. If they are one person, a test speaker is also "
            "a training speaker: make the ids identical in the corpus"
        )
    folds = folds_of(table)  # before any extraction: an impossible fold setup fails at once
    if need_features and inputs == "frames":  # functionals: one vector per file, no nodes
        for note in audio_notes(cfg, table):
            log(note)
    skip = cfg.features.get("on_error", "stop") == "skip"
    values = None
    failed = table.iloc[:0].assign(reason=[])
    if need_features or skip:
        cache = feature_cache(cfg)

        def functionals(paths: list[str]) -> np.ndarray:
            return np.asarray(
                cache.functionals(
                    paths, workers=cfg.features.workers, feature_set=cfg.features.functionals
                )
            )

        def fetch(table: pd.DataFrame):
            paths = table["path"].tolist()
            if inputs == "functionals":
                return functionals(paths)
            nodes = cache.get(feature_inputs(cfg, table), workers=cfg.features.workers)
            if cfg.features.get("concat_functionals", False):
                return nodes, functionals(paths)
            return nodes

        try:
            values = fetch(table)
        except FeatureError as error:
            reasons = dict(error.failures)
            sources = pd.Series(feature_inputs(cfg, table), index=table.index)
            by_input = sources.map(reasons)
            by_path = table["path"].map(reasons)
            reason = by_path.where(by_path.notna(), by_input)
            is_failed = reason.notna()
            failed = table[is_failed].assign(reason=reason[is_failed])
            if not skip:
                if failed_listing is not None:
                    atomic_write_csv(failed_listing, failed.reset_index(drop=True))
                raise FeatureError(
                    error.failures,
                    hint="Fix or remove these files, or set features.on_error=skip to leave them "
                    f"out of the study (they are then listed in "
                    f"{failed_listing or 'the study folder'}).",
                ) from None
            table = table[~is_failed].reset_index(drop=True)
        # Written on every extraction (header only when none failed): a listing of an earlier
        # run never stays. A cache that cannot be written raised above (a WriteError, not a
        # failed file): a full disk is not bad input.
        if failed_listing is not None:
            atomic_write_csv(failed_listing, failed.reset_index(drop=True))
        if skip:
            listing = failed_listing or "the log above"
            if len(failed):
                shown = [f"  {row.path}: {row.reason}" for row in failed.head(20).itertuples()]
                more = [f"  ... and {len(failed) - 20} more"] if len(failed) > 20 else []
                log(
                    f"features.on_error=skip: left out {len(failed)} of "
                    f"{len(failed) + len(table)} file(s) whose features failed (listed in "
                    f"{listing}):\n" + "\n".join(shown + more)
                )
                if table.empty:
                    raise ValueError(f"every file of the corpus failed; see {listing}")
                values = fetch(table)  # all cache hits now
    if len(failed):
        folds = folds_of(table)
    study = PreparedData(table=table, classes=classes, folds=folds)
    if values is not None and inputs == "functionals":
        study.functionals = values
    elif isinstance(values, tuple):
        study.features, study.functionals = values
    elif values is not None:
        study.features = values
    return study


def corpus_config(cfg: DictConfig, data: dict) -> DictConfig:
    """``cfg`` for one corpus of a cross-corpus study: its ``data`` section, no
    ``cross_corpus``."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container["data"] = data
    container["cross_corpus"] = {"test": None, "corpora": [], "classes": None}
    return OmegaConf.create(container)


def prepare_cross_corpus(
    cfg: DictConfig,
    need_features: bool = True,
    failed_listing: Path | None = None,
    inputs: str = "frames",
) -> PreparedData:
    """The prepared data of a cross-corpus study (:mod:`sergraph.data.cross_corpus`).

    Each corpus is loaded and its features fetched as :func:`prepare` does for one corpus; its
    labels are mapped onto the study's label set (:func:`label_mapping`: the training corpus's
    classes with ``cross_corpus.test``, ``cross_corpus.classes`` or the first corpus's with
    ``cross_corpus.corpora``); the folds hold out whole corpora (:func:`corpus_folds`).

    Raises:
        ValueError: a class that cannot be mapped (naming the corpus, the class and the keys
            that would map or drop it); a test corpus with nothing left to score.
        ValueError, FileNotFoundError: a corpus that cannot be loaded (its loader's message,
            prefixed with the key of its entry: ``cross_corpus.test``, ``data``, ...).
    """
    block = cfg.cross_corpus
    if block.test is not None:
        scheme = TEST_CORPUS
        entries = [{"name": cfg.data.name, "data": cfg.data, "label_map": {}, "drop": []}]
        entries.append(block.test)
        keys = ["data", "cross_corpus.test"]
    else:
        scheme = LEAVE_ONE_CORPUS_OUT
        entries = list(block.corpora)
        keys = [f"cross_corpus.corpora[{i}]" for i in range(len(entries))]
    parts: dict[str, PreparedData] = {}
    failed = []
    # prepare rewrites the listing whenever it fetches features (see its docstring)
    listed = failed_listing is not None and (
        need_features or cfg.features.get("on_error", "stop") == "skip"
    )
    for entry, key in zip(entries, keys, strict=True):
        data = OmegaConf.to_container(entry["data"], resolve=True)
        try:
            parts[str(entry["name"])] = prepare(
                corpus_config(cfg, data), need_features, failed_listing, inputs, False
            )
        except (ValueError, FileNotFoundError) as error:
            if type(error) not in (ValueError, FileNotFoundError):
                raise
            # the loader speaks of its own keys (root, ...): say which corpus entry they are in
            raise type(error)(f"{key} (corpus {entry['name']!r}): {error}") from None
        if listed and Path(failed_listing).is_file():
            # each corpus rewrites the listing: keep its rows before the next one does
            failed.append(pd.read_csv(failed_listing).assign(corpus=str(entry["name"])))
    if failed:
        atomic_write_csv(failed_listing, pd.concat(failed, ignore_index=True))
    names = list(parts)
    if need_features and inputs == "frames":  # where prepare notes a corpus's audio
        note = corpora_rates_note(cfg, {name: parts[name].table for name in names})
        if note is not None:
            log(note)
    if scheme == TEST_CORPUS:
        classes = list(parts[names[0]].classes)
    else:
        classes = (
            list(block.classes) if block.classes is not None else list(parts[names[0]].classes)
        )
    targets, record = {}, {}
    for entry, key, name in zip(entries, keys, names, strict=True):
        corpus_classes = list(parts[name].classes)
        targets[name] = label_mapping(
            corpus_classes,
            classes,
            dict(entry["label_map"]),
            list(entry["drop"]),
            corpus=f"corpus {name!r}",
            target="the study's label set" if scheme == LEAVE_ONE_CORPUS_OUT else "the model",
            map_key=f"{key}.label_map",
            drop_key=f"{key}.drop",
        )
        counts = parts[name].table["label"].astype(str).value_counts()
        record[name] = {
            "data": OmegaConf.to_container(OmegaConf.create(entry["data"]), resolve=True),
            "classes": corpus_classes,
            "label_map": {k: v for k, v in targets[name].items() if v is not None and v != k},
            "dropped": {c: int(counts.get(c, 0)) for c, v in targets[name].items() if v is None},
        }
    table, kept = combine_tables({name: parts[name].table for name in names}, targets)
    check_no_shared_audio(table, dict(zip(names, keys, strict=True)))
    for name in names:
        record[name]["utterances"] = len(kept[name])
    held_out = names[1:] if scheme == TEST_CORPUS else names
    study = PreparedData(
        table=table,
        classes=classes,
        folds=corpus_folds(table, held_out, cfg.folds.val_speakers),
        cross_corpus={"scheme": scheme, "classes": classes, "corpora": record},
    )
    features = [parts[name].features for name in names]
    if all(f is not None for f in features):
        study.features = [f[i] for f, name in zip(features, names, strict=True) for i in kept[name]]
    functionals = [parts[name].functionals for name in names]
    if all(f is not None for f in functionals):
        study.functionals = np.concatenate(
            [np.asarray(f)[kept[name]] for f, name in zip(functionals, names, strict=True)]
        )
    return study


_PREPARED: dict[str, PreparedData] = {}


def prepared(
    cfg: DictConfig,
    need_features: bool = True,
    failed_listing: Path | None = None,
    inputs: str = "frames",
) -> PreparedData:
    """:func:`prepare`, memoised per (data, features, folds, inputs) so variants share one load."""
    sections = {key: OmegaConf.to_container(cfg[key]) for key in ("data", "features", "folds")}
    sections["cross_corpus"] = (
        OmegaConf.to_container(cfg.cross_corpus) if is_cross_corpus(cfg) else None
    )
    sections["inputs"] = inputs
    key = json.dumps(sections, sort_keys=True, default=str)
    study = _PREPARED.get(key)
    if study is None or (need_features and study.features is None and study.functionals is None):
        study = prepare(cfg, need_features, failed_listing, inputs)
        _PREPARED[key] = study
    return study
