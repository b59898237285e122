"""Model bundles: one file holding everything needed to predict emotions from audio.

A bundle is made from a finished run (``sergraph export RUN_DIR``, :func:`export_bundle`, which
needs only the run folder) and used without the training corpus (``sergraph predict BUNDLE
AUDIO...``, :func:`load_bundle`).
Exporting a model folder ``runs/NAME/LABEL`` gives an **ensemble** of all its fold models (and
seeds): each member keeps its own training-fold normalisation statistics, and the bundle's
probabilities are the mean of the members' softmax outputs. That is the recommended way to
ship a model trained with cross-validation: no fold is preferred by looking at test scores, and
every training speaker contributes. Exporting a single ``seed-S/fold-XX`` folder (or choosing
``folds``/``seeds``) gives a smaller bundle.

File format (``format_version`` 1; 2 when ``graph`` has ``dilations``): a single file written
with ``torch.save`` (a zip archive), by convention named ``*.sergraph``. It holds only strings,
numbers and tensors, so it is read with ``torch.load(weights_only=True)``: loading a bundle runs
no pickled code. Its dict::

    format          "sergraph-bundle"
    format_version  1 (2: the graph has dilated edges, ``graph.dilations``)
    meta            JSON text:
        sergraph        version that wrote the bundle; created (UTC, ISO 8601)
        classes         class names, in the order of the probability columns
        model           {"name", "family", "params", "in_channels"} (no "family" before presets
                         had one: see ``sergraph.config.resolve_model``) and, with utterance
                         functionals (format 3), "global_channels" (their count ``D``)
        features        {"feature_set", "deltas", "pool", "sample_rate", "levels", "opensmile",
                         "recipe", "names"}: the audio pipeline the model was trained on; plus
                         "max_seconds" for openSMILE runs trained with features.max_seconds
                         (the first part of each file that training read)
        functionals     format 3 only (``features.concat_functionals`` runs): {"feature_set",
                        "names", "sample_rate", "opensmile", "recipe"} of the utterance
                        functionals the models also take; plus "max_seconds", as for features
        graph           {"k", "max_nodes", "pad", "normalize"} and, for graphs with dilated
                        edges (format 2), "dilations"
        precision       the training precision (``trainer.precision``, e.g. "32-true",
                        "bf16-mixed"); bundles always predict in float32
        config          the run's resolved configuration; config_id: its identity hash
        protocol        {"name", "note", and under enrollment "enrollment", "enrollment_seed"}:
                        the run's eval.protocol (absent in bundles made before protocols)
        source          {"run_dir", "corpus", "data_root", "n_utterances", "speakers"}
        members         per member: seed, fold, train/val/test speakers, test_<metric> of
                        every metric (test_wa, test_ua, test_f1; older bundles lack later
                        metrics), best validation UA, epochs, checkpoint (relative to run_dir)
        evaluation      the exported cells' fold mean/std and pooled score of every metric,
                        data fingerprint hashes and code provenance
                        (:func:`~sergraph.deploy.card.evaluation_record`)
        model_card      the ``MODEL_CARD.md`` text (:func:`~sergraph.deploy.card.model_card`)
        verification    {"n", "max_abs_diff", "tolerance", "cause"}: the members'
                        probabilities recomputed through the bundle from the test inputs the
                        checkpoints carry, against each fold's predictions.csv; ``cause`` is
                        "precision" when a difference above float32's tolerance is explained
                        by the training precision, else null
    members         [{"state_dict": {name: tensor}, "mean": tensor [F], "std": tensor [F]}]
                    (per-speaker statistics, under eval.protocol=enrollment only: the
                    training speakers' pooled statistics, used for speakers without
                    enrollment audio; see :mod:`~sergraph.deploy.enroll`); format 3 adds
                    "global_mean" and "global_std" (tensors [D]): the training fold's
                    statistics of the utterance functionals (under eval.protocol=enrollment,
                    like "mean" and "std", the training speakers' pooled statistics)

``evaluation`` and ``model_card`` were added within format 1 (a bundle without them gets a
card made from its metadata, :attr:`Bundle.model_card`). ``precision``, ``protocol`` and the
verification's ``tolerance``/``cause`` were added within format 1; a
bundle without them was trained in "32-true".

A bundle refuses to load (:class:`BundleMismatchError`) where the audio pipeline differs from
the one it was trained on: another openSMILE version, another sergraph extraction recipe,
other feature names. :meth:`Bundle.check_pipeline` also compares a given feature configuration.

The modules behind this one: :mod:`~sergraph.deploy.ensemble` (the :class:`Bundle` and its
prediction), :mod:`~sergraph.deploy.pipeline` (errors and the pipeline check),
:mod:`~sergraph.deploy.export` (making a bundle from a run), :mod:`~sergraph.deploy.verify`
(its verification against the run's predictions), :mod:`~sergraph.deploy.enroll` (enrollment
audio of bundles trained under ``eval.protocol=enrollment``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sergraph.deploy.ensemble import FORMAT, FORMAT_VERSION, SUFFIX, Bundle
from sergraph.deploy.export import VERIFY_TOLERANCE, export_bundle, verify_tolerance
from sergraph.deploy.pipeline import BundleError, BundleMismatchError, check_pipeline
from sergraph.deploy.segments import NON_FINITE_ERROR

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NON_FINITE_ERROR",
    "SUFFIX",
    "VERIFY_TOLERANCE",
    "Bundle",
    "BundleError",
    "BundleMismatchError",
    "check_pipeline",
    "export_bundle",
    "load_bundle",
    "verify_tolerance",
]


def load_bundle(
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    ssl_model: str | os.PathLike | None = None,
) -> Bundle:
    """Load a bundle written by :func:`export_bundle` (``sergraph export``).

    Args:
        path: the ``.sergraph`` file.
        map_location: device for the models: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...;
            ``None`` takes CUDA when available, else the CPU.
        ssl_model: bundles of SSL features: where the SSL model is on this machine (default:
            the path it had in training). Its files must hash as recorded in the bundle.

    Returns:
        A :class:`Bundle` ready to :meth:`~Bundle.predict`.

    Raises:
        FileNotFoundError: no such file.
        BundleError: not a bundle, or written by a newer sergraph.
        BundleMismatchError: trained on another openSMILE version or feature recipe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bundle {path} does not exist; make one with `sergraph export`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for foreign files
        raise BundleError(
            f"{path} is not a sergraph bundle ({type(error).__name__}: {str(error)[:200]}); "
            "make one from a finished run with `sergraph export RUN_DIR`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BundleError(
            f"{path} is not a sergraph bundle (a Lightning checkpoint or another torch file?); "
            "make one from a finished run with `sergraph export RUN_DIR`"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format {version!r}; this sergraph reads format "
            f"{FORMAT_VERSION} and older: upgrade sergraph"
        )
    meta = json.loads(payload["meta"])
    if ssl_model is not None:
        if meta["features"].get("ssl") is None:
            raise BundleError(f"{path} was trained on openSMILE features: it needs no ssl_model")
        meta["features"]["ssl"]["model"] = os.fspath(ssl_model)
    check_pipeline(meta, None, source=str(path))
    if map_location is None:
        map_location = "cuda" if torch.cuda.is_available() else "cpu"
    return Bundle(meta, payload["members"], device=map_location)
