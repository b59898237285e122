"""What a checkpoint records about the run that made it, so that export needs the run folder only.

Training hands this plain dict to the fold's
:class:`~sergraph.data.datamodule.FoldDataModule`, whose ``state_dict`` (saved by Lightning in
every checkpoint) carries it next to the fold's normalisation statistics and test inputs.
Everything in it is a string, number, bool, list or dict, so a checkpoint stays loadable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sergraph.config import identity


def feature_pipeline(features) -> dict:
    """The audio pipeline of a ``features`` config node: what a bundle must reproduce.

    Args:
        features: the run config's ``features`` node (or a mapping with ``feature_set``,
            ``deltas``, ``pool`` and optionally ``sample_rate``).

    Returns:
        ``{"feature_set", "deltas", "pool", "sample_rate", "levels", "opensmile", "recipe",
        "names"}`` of the installed openSMILE and sergraph feature recipe; for SSL features
        also ``ssl`` (see :func:`sergraph.data.features.ssl.identity_record`).

    Raises:
        ValueError: precomputed features, or ``ssl.layer=all`` (bundles cannot reproduce them).
    """
    from sergraph.data.features import (
        RECIPE_VERSION,
        FeatureConfig,
        feature_names,
        opensmile_version,
    )

    if features["feature_set"] == "precomputed":
        raise ValueError(
            "features.feature_set=precomputed: a bundle must compute its features from audio, "
            "and precomputed arrays come from a front end sergraph does not know"
        )
    if features["feature_set"] == "ssl":  # the model is identified by the hash of its files
        from sergraph.data.features.ssl import identity_record

        ssl = identity_record(FeatureConfig.from_any(features))
        return {
            "feature_set": "ssl",
            "deltas": False,
            "pool": 1,
            "sample_rate": None,
            "levels": [],
            "opensmile": opensmile_version(),
            "recipe": RECIPE_VERSION,
            "names": [f"ssl_{index}" for index in range(ssl["width"])],
            "ssl": ssl,
        }
    config = FeatureConfig.from_any(
        {
            name: features[name]
            for name in ("feature_set", "deltas", "pool", "sample_rate")
            if name in features
        }
    )
    return {
        "feature_set": config.feature_set,
        "deltas": bool(config.deltas),
        "pool": int(config.pool),
        "sample_rate": config.sample_rate,
        "levels": list(config.levels()),
        "opensmile": opensmile_version(),
        "recipe": RECIPE_VERSION,
        "names": feature_names(config),
    }


def run_provenance(cfg: DictConfig, corpus_rates: dict[int, int] | None = None) -> dict:
    """The run's resolved configuration, its identity, training precision and audio pipeline.

    A feature pipeline that bundles cannot describe does not stop training: ``features`` is
    then ``{"unsupported": reason}``, and export refuses with that reason.

    ``corpus_rates`` (sample rate -> number of files, from the headers): openSMILE features
    computed at the files' own rates (``features.sample_rate`` unset) were computed at the
    corpus's one rate, which ``features["sample_rate"]`` then records, so that a bundle
    resamples new audio to it; with mixed rates it stays ``None`` (each file at its own rate).
    """
    try:
        features = feature_pipeline(cfg.features)
    except Exception as error:  # noqa: BLE001 - recorded for export, never fatal to training
        features = {"unsupported": f"{type(error).__name__}: {error}"}
    if features.get("sample_rate", 0) is None and "ssl" not in features and corpus_rates:
        if len(corpus_rates) == 1:
            features["sample_rate"] = int(next(iter(corpus_rates)))
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_id": identity(cfg),
        "precision": str(cfg.trainer.precision),
        "features": features,
    }
