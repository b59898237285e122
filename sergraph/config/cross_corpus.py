"""The ``cross_corpus`` section: each corpus it names resolved to a full data configuration, its
keys validated, naming the key and what would be accepted.

A corpus entry (``cross_corpus.test``, each item of ``cross_corpus.corpora``) is written as::

    {data: synthetic, name: b, options: {seed: 1}, label_map: {gloomy: sad}, drop: [fear]}

``data`` names a ``configs/data/`` file (or is a mapping like the ``data`` section);
``root``/``options``/``classes``/``merge`` override its keys as ``data.*`` overrides would.
:func:`resolve_cross_corpus` rewrites every entry as ``{name, data: {the whole data section},
label_map, drop}``, so that the saved ``config.yaml`` of a cell (and its identity) holds each
corpus in full; a resolved entry resolves to itself.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sergraph.config.files import config_dir, group_choices, load_yaml
from sergraph.config.schema import ConfigError, DataConfig

#: The keys of a corpus entry.
ENTRY_KEYS = ("data", "name", "root", "options", "classes", "merge", "label_map", "drop")
#: The keys of a corpus entry that override its data configuration's keys.
DATA_OVERRIDES = ("root", "options", "classes", "merge")
EXAMPLE = "{data: synthetic, name: b, options: {seed: 1}, label_map: {gloomy: sad}}"


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def resolve_entry(entry, key: str) -> dict:
    """One corpus entry as ``{name, data, label_map, drop}`` (see the module docstring).

    Raises:
        ConfigError: naming ``key`` (and the sub-key) with what would be accepted.
    """
    from sergraph.data.corpora import CORPORA
    from sergraph.data.cross_corpus import SEPARATOR

    entry = _plain(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"{key}={entry!r}: write a corpus as a mapping, e.g. {key}={EXAMPLE}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {unknown}; valid keys: {list(ENTRY_KEYS)}")
    data = entry.get("data")
    if isinstance(data, str):
        path = config_dir() / "data" / f"{data}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"{key}.data={data!r} is not known; choose one of {group_choices('data')}"
            )
        base = load_yaml(path)
    elif isinstance(data, dict):
        if "name" not in data:  # the data section's default (synthetic) would be taken silently
            raise ConfigError(
                f"{key}.data: a data mapping needs the corpus's name (data.name), one of "
                f"{sorted(CORPORA)}; e.g. {key}.data={{name: emodb, root: PATH}}"
            )
        base = data
    else:
        raise ConfigError(
            f"{key}.data: name the corpus, one of {group_choices('data')} (a configs/data/ "
            f"file) or a mapping like the data section; e.g. {key}={EXAMPLE}"
        )
    overrides = {name: entry[name] for name in DATA_OVERRIDES if name in entry}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), base, overrides)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"{key}: {str(getattr(error, 'msg', error)).splitlines()[0]}; a corpus's data keys are "
            f"{sorted(OmegaConf.structured(DataConfig).keys())}"
        ) from None
    resolved = OmegaConf.to_container(merged, resolve=True)
    if resolved["name"] not in CORPORA:
        raise ConfigError(
            f"{key}.data: data.name={resolved['name']!r} is not a corpus; choose one of "
            f"{sorted(CORPORA)}"
        )
    name = entry.get("name") or resolved["name"]
    if not isinstance(name, str) or SEPARATOR in name or not name.strip():
        raise ConfigError(
            f"{key}.name={name!r}: give a short name without {SEPARATOR!r} (it prefixes the "
            "corpus's speaker ids)"
        )
    label_map = entry.get("label_map") or {}
    if not isinstance(label_map, dict):
        raise ConfigError(
            f"{key}.label_map={label_map!r}: write a mapping of this corpus's classes onto the "
            "model's, e.g. {excited: happy, calm: neutral}"
        )
    drop = entry.get("drop") or []
    if isinstance(drop, str) or not isinstance(drop, list):
        raise ConfigError(
            f"{key}.drop={drop!r}: write a list of this corpus's classes, e.g. [fear]"
        )
    return {
        "name": name,
        "data": resolved,
        "label_map": {str(k): str(v) for k, v in label_map.items()},
        "drop": [str(c) for c in drop],
    }


def resolve_cross_corpus(cfg: DictConfig) -> None:
    """Resolve and check the ``cross_corpus`` section of a composed configuration in place.

    Raises:
        ConfigError: both ``test`` and ``corpora`` given; fewer than two ``corpora``; two
            corpora (or the test and the training corpus) of one name; ``classes`` without
            ``corpora``; a bad entry (:func:`resolve_entry`); precomputed features.
    """
    block = cfg.cross_corpus
    test, corpora = block.test, list(block.corpora or [])
    if test is None and not corpora:
        if block.classes is not None:
            raise ConfigError(
                "cross_corpus.classes is the label set of a leave-one-corpus-out study; give "
                "the corpora too (cross_corpus.corpora), or leave cross_corpus.classes unset"
            )
        return
    if test is not None and corpora:
        raise ConfigError(
            "give cross_corpus.test (train on data, test on that corpus) or cross_corpus.corpora "
            "(leave one corpus out), not both"
        )
    if cfg.features.feature_set == "precomputed":
        raise ConfigError(
            "cross_corpus studies read each corpus's audio; features.feature_set=precomputed is "
            "not supported with cross_corpus (choose an openSMILE set or ssl)"
        )
    if test is not None:
        if block.classes is not None:
            raise ConfigError(
                "cross_corpus.classes is for cross_corpus.corpora; with cross_corpus.test the "
                "classes are the training corpus's (data.classes, data.merge)"
            )
        resolved = resolve_entry(test, "cross_corpus.test")
        if resolved["name"] == cfg.data.name:
            raise ConfigError(
                f"cross_corpus.test.name: the test corpus needs a name other than the training "
                f"corpus's ({cfg.data.name!r}); its speakers are prefixed with it, e.g. "
                "cross_corpus.test.name=b"
            )
        cfg.cross_corpus.test = resolved
        return
    if len(corpora) < 2:
        raise ConfigError(
            f"cross_corpus.corpora lists {len(corpora)} corpus; leave-one-corpus-out needs two "
            "or more"
        )
    resolved = [
        resolve_entry(entry, f"cross_corpus.corpora[{i}]") for i, entry in enumerate(corpora)
    ]
    names = [entry["name"] for entry in resolved]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(
            f"cross_corpus.corpora: name(s) {twice} given to more than one corpus; give each a "
            "name of its own (key name:, it prefixes the corpus's speaker ids)"
        )
    cfg.cross_corpus.corpora = resolved
