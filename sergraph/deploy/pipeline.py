"""The audio pipeline a bundle was trained on, and the check that refuses any other.

A bundle's ``meta["features"]`` names the openSMILE feature set, deltas, pooling, sample rate,
openSMILE version, sergraph feature recipe and feature names its models were trained on;
:func:`check_pipeline` compares them with the installed openSMILE and a given feature
configuration, and raises :class:`BundleMismatchError` naming what differs and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict


class BundleError(ValueError):
    """A bundle cannot be made or used (the message says why and what to do)."""


class BundleMismatchError(BundleError):
    """The bundle was trained on another audio pipeline than the one in use."""


def bundle_feature_config(meta: dict):
    """The :class:`~sergraph.data.features.FeatureConfig` of a bundle's metadata."""
    from sergraph.data.features import FeatureConfig

    settings = meta["features"]
    ssl = settings.get("ssl")
    try:
        if ssl is not None:
            return FeatureConfig(
                "ssl",
                node_seconds=ssl["node_seconds"],
                ssl={
                    key: ssl[key] for key in ("model", "layer", "chunk_seconds", "context_seconds")
                },
            )
        return FeatureConfig(
            feature_set=settings["feature_set"],
            deltas=settings["deltas"],
            pool=settings["pool"],
            sample_rate=settings["sample_rate"],
        )
    except ValueError as error:
        raise BundleMismatchError(
            f"the bundle's feature settings are not supported by this sergraph: {error}"
        ) from None


def check_pipeline(meta: dict, config=None, source: str = "this bundle") -> None:
    """See :meth:`~sergraph.deploy.bundle.Bundle.check_pipeline`; ``meta`` is a bundle's metadata."""
    from sergraph.data.features import (
        RECIPE_VERSION,
        FeatureConfig,
        feature_names,
        opensmile_version,
    )

    expected = bundle_feature_config(meta)
    settings = meta["features"]
    if settings.get("ssl") is not None:
        _check_ssl_pipeline(settings["ssl"], expected, config, source)
        return
    trained = f"openSMILE {settings['opensmile']}, sergraph feature recipe {settings['recipe']}"
    if settings["opensmile"] != opensmile_version() or settings["recipe"] != RECIPE_VERSION:
        raise BundleMismatchError(
            f"{source} was trained on features from {trained}; this environment has openSMILE "
            f"{opensmile_version()}, recipe {RECIPE_VERSION}. Features of another version can "
            "differ numerically, so its predictions would not be trustworthy. Install "
            f"opensmile=={settings['opensmile']} (pip install opensmile=={settings['opensmile']}), "
            "or re-export from a run trained with this version."
        )
    names = feature_names(expected)
    if names != list(settings["names"]):
        raise BundleMismatchError(
            f"{source} was trained on {len(settings['names'])} {expected.feature_set} features "
            f"whose names differ from the {len(names)} this openSMILE gives "
            f"(first difference: {_first_difference(settings['names'], names)}); re-export "
            "the bundle from a run trained in this environment"
        )
    if config is None:
        return
    given = FeatureConfig.from_any(config)
    differing = [
        f"{name}={getattr(given, name)!r} (bundle: {getattr(expected, name)!r})"
        for name in ("feature_set", "deltas", "pool", "sample_rate")
        if getattr(given, name) != getattr(expected, name)
        and not (name == "deltas" and expected.feature_set == "egemaps")
        # an unset rate states nothing (the run's config leaves it unset; the bundle records
        # the rate the corpus had)
        and not (name == "sample_rate" and given.sample_rate is None)
    ]
    if differing:
        raise BundleMismatchError(
            f"{source} was trained on features {asdict(expected)}; the pipeline in use has "
            f"{', '.join(differing)}. A model only understands the features it was trained on: "
            "use the bundle's settings (Bundle.feature_config) or a bundle trained with these."
        )


def _check_ssl_pipeline(recorded: dict, expected, config, source: str) -> None:
    """Refuse another SSL model (by the hash of its files) or other SSL settings."""
    from sergraph.data.features import FeatureConfig
    from sergraph.data.features.ssl import identity_record

    try:
        found = identity_record(expected)
    except (ValueError, ImportError, OSError) as error:
        raise BundleMismatchError(
            f"{source} was trained on features of the SSL model {recorded['model']!r} (files "
            f"sha256 {recorded['model_sha256'][:12]}...), which cannot be loaded here: {error}. "
            "Give its location on this machine (load_bundle(..., ssl_model=PATH), sergraph "
            "predict --ssl-model PATH)"
        ) from None
    if found["model_sha256"] != recorded["model_sha256"]:
        raise BundleMismatchError(
            f"{source} was trained on features of the SSL model {recorded['model']!r} with files "
            f"sha256 {recorded['model_sha256'][:12]}...; the model there now has "
            f"{found['model_sha256'][:12]}... (other weights or configuration). A model only "
            "understands the features it was trained on: put the original model there."
        )
    if config is None:
        return
    in_use = FeatureConfig.from_any(config)
    if in_use.feature_set != "ssl":
        raise BundleMismatchError(
            f"{source} was trained on SSL features; the pipeline in use has "
            f"feature_set={in_use.feature_set!r}: use the bundle's settings "
            "(Bundle.feature_config)"
        )
    given = identity_record(in_use)
    keys = ("model_sha256", "layer", "chunk_seconds", "context_seconds", "node_seconds")
    differing = [
        f"{key}={given[key]!r} (bundle: {recorded[key]!r})"
        for key in keys
        if given[key] != recorded[key]
    ]
    if differing:
        raise BundleMismatchError(
            f"{source} was trained on other SSL features: {', '.join(differing)}; use the "
            "bundle's settings (Bundle.feature_config)"
        )


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"column {index}: {x!r} vs {y!r}"
    return f"{len(a)} vs {len(b)} columns"
