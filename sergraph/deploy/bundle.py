"""Model bundles: one file holding everything needed to predict emotions from audio.

A bundle is made from a finished run (``sergraph export RUN_DIR``, :func:`export_bundle`) and
used without the training corpus (``sergraph predict BUNDLE AUDIO...``, :func:`load_bundle`).
Exporting a model folder ``runs/NAME/LABEL`` gives an **ensemble** of all its fold models (and
seeds): each member keeps its own training-fold normalisation statistics, and the bundle's
probabilities are the mean of the members' softmax outputs. That is the recommended way to
ship a model trained with cross-validation: no fold is preferred by looking at test scores, and
every training speaker contributes. Exporting a single ``seed-S/fold-XX`` folder (or choosing
``folds``/``seeds``) gives a smaller bundle.

File format (``format_version`` 1): a single file written with ``torch.save`` (a zip archive),
by convention named ``*.sergraph``. It holds only strings, numbers and tensors, so it is read
with ``torch.load(weights_only=True)``: loading a bundle runs no pickled code. Its dict::

    format          "sergraph-bundle"
    format_version  1
    meta            JSON text:
        sergraph        version that wrote the bundle; created (UTC, ISO 8601)
        classes         class names, in the order of the probability columns
        model           {"name", "params", "in_channels"}
        features        {"feature_set", "deltas", "pool", "sample_rate", "levels", "opensmile",
                         "recipe", "names"}: the audio pipeline the model was trained on
        graph           {"k", "max_nodes", "pad", "normalize"}
        config          the run's resolved configuration; config_id: its identity hash
        source          {"run_dir", "corpus", "data_root", "n_utterances", "speakers"}
        members         per member: seed, fold, train/val/test speakers, test WA/UA, best
                        validation UA, epochs, checkpoint (relative to run_dir)
        verification    {"n", "max_abs_diff"}: the members' probabilities recomputed from the
                        cached features through the bundle, against each fold's predictions.csv
    members         [{"state_dict": {name: tensor}, "mean": tensor [F], "std": tensor [F]}]

A bundle refuses to load (:class:`BundleMismatchError`) where the audio pipeline differs from
the one it was trained on: another openSMILE version, another sergraph extraction recipe,
other feature names. :meth:`Bundle.check_pipeline` also compares a given feature configuration.

Prediction: each file is read, turned into the bundle's openSMILE features (cached like
training features, extracted in ``workers`` processes), normalised with each member's statistics,
made into the same temporal graph as in training and classified in batches of ``batch_size``.
Like in training, only the first ``graph.max_nodes`` nodes of a file are seen (120 nodes of
50 ms = 6 s by default; the ``end`` column says how much was used). For long recordings give
``window`` (and ``hop``) in seconds: the file's node sequence is cut into windows and each
window is classified on its own. Features are computed once over the whole file, so frames at a
window's edge see their neighbours across the edge.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sergraph.config import ON_ERROR_CHOICES
from sergraph.data.features import check_positive_int
from sergraph.io import atomic_write_bytes

FORMAT = "sergraph-bundle"
FORMAT_VERSION = 1
SUFFIX = ".sergraph"
#: openSMILE frame hop (seconds); a node is ``pool`` frames.
FRAME_SECONDS = 0.010
#: Largest |difference| of a probability between the bundle and the run's predictions.csv.
VERIFY_TOLERANCE = 1e-3


class BundleError(ValueError):
    """A bundle cannot be made or used (the message says why and what to do)."""


class BundleMismatchError(BundleError):
    """The bundle was trained on another audio pipeline than the one in use."""


# --------------------------------------------------------------------------------------------
# the bundle


class Bundle:
    """A loaded bundle: one or more fold models with their normalisation statistics.

    Made by :func:`load_bundle` (or :func:`export_bundle`); see the module docstring.

    Attributes:
        meta: the bundle's metadata (classes, model, features, graph, config, provenance).
        classes: class names in the order of the probability columns.
        feature_config: the :class:`~sergraph.data.features.FeatureConfig` the models were trained on.
        device: where the models run.
    """

    def __init__(self, meta: dict, members: list[dict], device: str | torch.device = "cpu"):
        from sergraph.data.graphs import Normalizer
        from sergraph.models import build_model

        self.meta = meta
        self.classes = list(meta["classes"])
        self.device = torch.device(device)
        self.feature_config = _feature_config(meta)
        self._members = members
        self.models = []
        self.normalizers = []
        model = meta["model"]
        for index, member in enumerate(members):
            network = build_model(
                model["name"], int(model["in_channels"]), len(self.classes), **model["params"]
            )
            try:
                network.load_state_dict(member["state_dict"])
            except RuntimeError as error:
                raise BundleError(
                    f"bundle member {index}: weights do not fit model {model['name']!r} ({error})"
                ) from None
            self.models.append(network.to(self.device).eval())
            self.normalizers.append(
                Normalizer(
                    np.asarray(member["mean"], dtype=np.float32),
                    np.asarray(member["std"], dtype=np.float32),
                )
            )

    # ---- description

    @property
    def members(self) -> list[dict]:
        """Provenance of each member: seed, fold, speakers of each split, test scores."""
        return list(self.meta["members"])

    @property
    def node_seconds(self) -> float:
        if not self.feature_config.is_opensmile:  # SSL: frames pooled by time
            return float(self.feature_config.node_seconds)
        return FRAME_SECONDS * self.feature_config.pool

    def describe(self) -> str:
        meta = self.meta
        members = meta["members"]
        folds = sorted({m["fold"] for m in members})
        seeds = sorted({m["seed"] for m in members})
        kind = f"ensemble of {len(members)} fold models" if len(members) > 1 else "one fold model"
        features = meta["features"]
        lines = [
            f"{kind} ({meta['model']['name']}; seeds {seeds}, folds {folds}), "
            f"classes {self.classes}",
            f"features {features['feature_set']} ({len(features['names'])} per node, pool "
            f"{features['pool']}), openSMILE {features['opensmile']}; graph k={meta['graph']['k']}"
            f" max_nodes={meta['graph']['max_nodes']} pad={meta['graph']['pad']}",
            f"trained on {meta['source']['corpus']} ({meta['source']['n_utterances']} "
            f"utterances, {len(meta['source']['speakers'])} speakers) in "
            f"{meta['source']['run_dir']}",
        ]
        verification = meta.get("verification")
        if verification:
            lines.append(
                f"verified against the run's predictions.csv: {verification['n']} test "
                f"predictions, max |difference| {verification['max_abs_diff']:.1e}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Bundle {self.describe().splitlines()[0]}>"

    # ---- compatibility

    def check_pipeline(self, config=None) -> None:
        """Refuse an audio pipeline that differs from the one the models were trained on.

        Args:
            config: a feature configuration in use (a
                :class:`~sergraph.data.features.FeatureConfig`, the run config's ``features`` node,
                or a mapping); ``None`` checks the installed openSMILE only.

        Raises:
            BundleMismatchError: naming what differs and what to do.
        """
        check_pipeline(self.meta, config)

    # ---- saving

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle to ``path`` atomically (temporary file, then rename)."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "meta": json.dumps(self.meta, default=_json_default),
            "members": [
                {
                    "state_dict": {
                        k: v.detach().cpu().clone() for k, v in member["state_dict"].items()
                    },
                    "mean": torch.as_tensor(np.asarray(member["mean"], dtype=np.float32)),
                    "std": torch.as_tensor(np.asarray(member["std"], dtype=np.float32)),
                }
                for member in self._members
            ],
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    # ---- prediction

    @torch.inference_mode()
    def predict_features(
        self, features: Sequence[np.ndarray], batch_size: int = 32, member: int | None = None
    ) -> np.ndarray:
        """Class probabilities of pooled feature arrays ``[T_i, F]`` (as the cache gives them).

        Args:
            features: one array per utterance or segment.
            batch_size: graphs per forward pass.
            member: use only this member (default: the mean over all members).

        Returns:
            ``[N, C]`` float64 probabilities, columns in the order of :attr:`classes`.
        """
        from torch_geometric.loader import DataLoader

        from sergraph.data.graphs import build_graph

        check_positive_int(batch_size, "batch_size")
        graph = self.meta["graph"]
        width = int(self.meta["model"]["in_channels"])
        for index, array in enumerate(features):
            if array.ndim != 2 or array.shape[1] != width or len(array) == 0:
                raise BundleError(
                    f"features[{index}] has shape {array.shape}; this bundle needs [T >= 1, "
                    f"{width}] ({self.feature_config.feature_set} features)"
                )
        if not features:
            return np.zeros((0, len(self.classes)))
        chosen = range(len(self.models)) if member is None else [member]
        total = np.zeros((len(features), len(self.classes)))
        for index in chosen:
            normalizer = self.normalizers[index]
            graphs = [
                build_graph(
                    normalizer(array),
                    graph["k"],
                    graph["max_nodes"],
                    graph["pad"],
                    0,
                    str(position),
                    "",
                )
                for position, array in enumerate(features)
            ]
            outputs = []
            for batch in DataLoader(graphs, batch_size=batch_size, shuffle=False):
                logits = self.models[index](batch.to(self.device))
                outputs.append(torch.softmax(logits.double(), dim=-1).cpu())
            total += torch.cat(outputs).numpy()
        return total / len(chosen)

    def predict(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int = 32,
        workers: int = 1,
        window: float | None = None,
        hop: float | None = None,
        *,
        on_error: str = "stop",
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        chunk_size: int = 512,
    ) -> pd.DataFrame:
        """Emotion of each audio file (or of each window of it).

        Args:
            paths: audio files (see :func:`sergraph.deploy.predict.expand_inputs` for folders and
                manifests).
            batch_size: graphs per forward pass.
            workers: feature-extraction processes.
            window: seconds per segment; ``None`` classifies each file as a whole (its first
                ``graph.max_nodes`` nodes, as in training).
            hop: seconds between segment starts (default: ``window``, adjacent segments).
            on_error: ``"stop"``: after every other file is done (and its features cached),
                raise one :class:`~sergraph.data.features.FeatureError` listing each failed file
                and its reason; ``"skip"``: give failed files a row with the reason in
                ``error`` and no prediction.
            cache_dir: feature cache (default: ``$SERGRAPH_CACHE/features``).
            progress: show a progress bar on stderr.
            chunk_size: files whose features are extracted (in parallel) and classified at a
                time, which bounds memory for long lists.

        Returns:
            One row per file (per segment with ``window``): ``path``, ``segment``, ``start``
            and ``end`` (seconds of the file the prediction used), ``duration`` (seconds),
            ``emotion``, ``p_<class>`` for each class, ``error`` (empty when it worked).

        Raises:
            FeatureError: ``on_error="stop"`` and some files failed.
            BundleError: bad ``window``/``hop``/``on_error``.
        """
        from tqdm import tqdm

        from sergraph.data.features import FeatureCache, FeatureError

        if isinstance(paths, str | bytes | os.PathLike):
            raise TypeError(f"paths must be a list of files, not a single path: {paths!r}")
        if on_error not in ON_ERROR_CHOICES:
            raise BundleError(f"on_error={on_error!r}; choose one of {list(ON_ERROR_CHOICES)}")
        check_positive_int(workers, "workers")
        check_positive_int(chunk_size, "chunk_size")
        window_nodes, hop_nodes = self._segment_nodes(window, hop)
        paths = [os.fspath(p) for p in paths]
        cache = FeatureCache(_cache_root(cache_dir), self.feature_config)
        self.check_pipeline(cache.config)

        rows: list[dict] = []
        failures: list[tuple[str, str]] = []
        bar = tqdm(total=len(paths), unit="file", desc="predict", disable=not progress)
        try:
            for start in range(0, len(paths), chunk_size):
                chunk = paths[start : start + chunk_size]
                try:
                    arrays = cache.get(chunk, workers=workers, progress=False)
                    reasons: dict[str, str] = {}
                except FeatureError as error:
                    reasons = dict(error.failures)
                    failures += error.failures
                    good = [p for p in chunk if p not in reasons]
                    arrays = cache.get(good, workers=1, progress=False)  # cache hits
                good = [p for p in chunk if p not in reasons]
                rows += self._chunk_rows(
                    chunk, good, arrays, reasons, window_nodes, hop_nodes, batch_size
                )
                bar.update(len(chunk))
        finally:
            bar.close()
        if failures and on_error == "stop":
            raise FeatureError(
                failures,
                hint="The features of every other file are cached. Fix or remove these files, "
                "or use on_error='skip' (sergraph predict --on-error skip) to predict the "
                "others and list these with their reason.",
            )
        columns = ["path", "segment", "start", "end", "duration", "emotion"]
        columns += [f"p_{name}" for name in self.classes] + ["error"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"segment": "int64"}) if len(frame) else frame

    def predict_signal(
        self,
        signal: np.ndarray,
        sample_rate: int,
        batch_size: int = 32,
        window: float | None = None,
        hop: float | None = None,
    ) -> pd.DataFrame:
        """Emotion of audio already in memory (a notebook, a microphone buffer).

        The signal goes through exactly the steps a file goes through (channel average,
        resampling, clipping, openSMILE or the SSL model, pooling) without touching the disk or
        the cache, so a file and its samples give the same probabilities.

        Args:
            signal: samples as floats in [-1, 1): ``[n]`` mono or ``[n, channels]``.
            sample_rate: its rate in Hz.
            batch_size: graphs per forward pass.
            window, hop: as in :meth:`predict` (seconds).

        Returns:
            The columns of :meth:`predict`, with ``path`` = ``"<signal>"``.

        Raises:
            FeatureError: the signal is empty, silent, too short or not finite.
        """
        import soundfile as sf

        from sergraph.data.features import pool_by_time, pool_frames
        from sergraph.data.features.opensmile import extract_llds_from

        check_positive_int(sample_rate, "sample_rate")
        samples = np.asarray(signal, dtype=np.float32)
        if samples.ndim not in (1, 2):
            raise BundleError(f"signal has shape {samples.shape}; give [n] or [n, channels]")
        window_nodes, hop_nodes = self._segment_nodes(window, hop)
        buffer = io.BytesIO()
        sf.write(buffer, samples, int(sample_rate), format="WAV", subtype="FLOAT")
        buffer.seek(0)
        config = self.feature_config
        if config.is_opensmile:
            array = pool_frames(extract_llds_from(buffer, "<signal>", config), config.pool)
        else:  # SSL: the same chunked extraction as for files, pooled by time
            from sergraph.data.features.ssl import SSLFrontEnd, embed_file

            frames = embed_file(config, buffer, "<signal>")
            hop_seconds = SSLFrontEnd(config).hop_seconds
            array = pool_by_time(frames, hop_seconds, config.node_seconds).astype(np.float32)
        duration = samples.shape[0] / sample_rate
        node, max_nodes = self.node_seconds, self.meta["graph"]["max_nodes"]
        if window_nodes is None:
            spans = [(0, len(array) if max_nodes is None else min(len(array), max_nodes))]
        else:
            starts = _window_starts(len(array), window_nodes, hop_nodes)
            spans = [(first, min(first + window_nodes, len(array))) for first in starts]
        scores = self.predict_features([array[a:b] for a, b in spans], batch_size)
        rows = []
        for number, ((first, end), row_scores) in enumerate(zip(spans, scores, strict=True)):
            row = {
                "path": "<signal>",
                "segment": number,
                "start": round(first * node, 3),
                "end": round(min(end * node, duration), 3),
                "duration": round(duration, 3),
                "emotion": self.classes[int(np.argmax(row_scores))],
            }
            row.update(
                {
                    f"p_{c}": round(float(p), 6)
                    for c, p in zip(self.classes, row_scores, strict=True)
                }
            )
            row["error"] = ""
            rows.append(row)
        return pd.DataFrame(rows)

    def _segment_nodes(self, window, hop) -> tuple[int | None, int | None]:
        if window is None:
            if hop is not None:
                raise BundleError("hop needs window: give window (seconds) as well")
            return None, None
        for name, value in (("window", window), ("hop", hop)):
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise BundleError(f"{name}={value!r} must be a positive number of seconds")
        node = self.node_seconds
        window_nodes = max(1, int(round(window / node)))
        hop_nodes = window_nodes if hop is None else max(1, int(round(hop / node)))
        max_nodes = self.meta["graph"]["max_nodes"]
        if max_nodes is not None and window_nodes > max_nodes:
            raise BundleError(
                f"window={window} s is longer than the {max_nodes * node:g} s ({max_nodes} "
                f"nodes of {node:g} s) the model sees; choose window <= {max_nodes * node:g}"
            )
        return window_nodes, hop_nodes

    def _chunk_rows(self, chunk, good, arrays, reasons, window_nodes, hop_nodes, batch_size):
        node = self.node_seconds
        max_nodes = self.meta["graph"]["max_nodes"]
        by_path = dict(zip(good, arrays, strict=True))  # a file listed twice is computed once
        segments: list[tuple[str, int, int, int]] = []  # path, segment, first node, end node
        for path, array in by_path.items():
            if window_nodes is None:
                used = len(array) if max_nodes is None else min(len(array), max_nodes)
                segments.append((path, 0, 0, used))
                continue
            for number, first in enumerate(_window_starts(len(array), window_nodes, hop_nodes)):
                segments.append((path, number, first, min(first + window_nodes, len(array))))
        probabilities = self.predict_features(
            [by_path[p][first:end] for p, _, first, end in segments], batch_size
        )
        durations = {p: _duration(p) for p in by_path}
        predicted: dict[str, list[dict]] = {}
        for (path, number, first, end), scores in zip(segments, probabilities, strict=True):
            duration = durations[path]
            row = {
                "path": path,
                "segment": number,
                "start": round(first * node, 3),
                "end": round(min(end * node, duration), 3),
                "duration": round(duration, 3),
                "emotion": self.classes[int(np.argmax(scores))],
            }
            row.update(
                {f"p_{c}": round(float(p), 6) for c, p in zip(self.classes, scores, strict=True)}
            )
            row["error"] = ""
            predicted.setdefault(path, []).append(row)
        rows = []
        for path in chunk:
            if path in reasons:
                failed = {"path": path, "segment": 0, "start": np.nan, "end": np.nan}
                failed.update({"duration": _duration(path), "emotion": ""})
                failed.update({f"p_{c}": np.nan for c in self.classes})
                failed["error"] = reasons[path]
                rows.append(failed)
            else:
                rows += predicted[path]
        return rows


def _window_starts(num_nodes: int, window: int, hop: int) -> list[int]:
    """First node of each window; the last window ends at the last node (no lost tail)."""
    if num_nodes <= window:
        return [0]
    starts = list(range(0, num_nodes - window + 1, hop))
    if starts[-1] + window < num_nodes:
        starts.append(num_nodes - window)
    return starts


def _duration(path: str) -> float:
    import soundfile as sf

    try:
        return float(sf.info(path).duration)
    except Exception:  # noqa: BLE001 - unreadable files have no duration
        return float("nan")


# --------------------------------------------------------------------------------------------
# loading and checking


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


def _feature_config(meta: dict):
    from sergraph.data.features import FeatureConfig

    settings = meta["features"]
    ssl = settings.get("ssl")
    try:
        if ssl is not None:  # see ssl_identity
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
    """See :meth:`Bundle.check_pipeline`; ``meta`` is a bundle's metadata."""
    from sergraph.data.features import (
        RECIPE_VERSION,
        FeatureConfig,
        feature_names,
        opensmile_version,
    )

    expected = _feature_config(meta)
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
    ]
    if differing:
        raise BundleMismatchError(
            f"{source} was trained on features {asdict(expected)}; the pipeline in use has "
            f"{', '.join(differing)}. A model only understands the features it was trained on: "
            "use the bundle's settings (Bundle.feature_config) or a bundle trained with these."
        )


def ssl_identity(config) -> dict:
    """What a bundle records of an SSL front end: the model, its files' hash, the settings."""
    from sergraph.data.features.ssl import SSLFrontEnd

    front = SSLFrontEnd(config)
    return {
        "model": str(config.ssl.model),
        "model_sha256": front.identity(),
        "layer": config.ssl.layer,
        "chunk_seconds": float(config.ssl.chunk_seconds),
        "context_seconds": float(config.ssl.context_seconds),
        "node_seconds": float(config.node_seconds),
    }


def _check_ssl_pipeline(recorded: dict, expected, config, source: str) -> None:
    """Refuse another SSL model (by the hash of its files) or other SSL settings."""
    try:
        found = ssl_identity(expected)
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
    from sergraph.data.features import FeatureConfig

    in_use = FeatureConfig.from_any(config)
    if in_use.feature_set != "ssl":
        raise BundleMismatchError(
            f"{source} was trained on SSL features; the pipeline in use has "
            f"feature_set={in_use.feature_set!r}: use the bundle's settings "
            "(Bundle.feature_config)"
        )
    given = ssl_identity(in_use)
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


# --------------------------------------------------------------------------------------------
# export


def export_bundle(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    data_root: str | None = None,
    verify: bool = True,
) -> tuple[Path, Bundle]:
    """Write a bundle from a finished run.

    The training-fold normalisation statistics are not stored by training, so they are
    recomputed here from the run's corpus and (cached) features with the same code as in
    training; the corpus is needed for exporting, never for predicting. With ``verify`` the
    test speakers of each member are classified through the bundle and compared with the run's
    ``predictions.csv``.

    Args:
        run_dir: a model folder ``runs/NAME/LABEL`` (every finished fold and seed: an ensemble)
            or one ``runs/NAME/LABEL/seed-S/fold-XX`` folder.
        out: the bundle file (default: ``RUN_DIR/bundle.sergraph``).
        folds: only these fold indices.
        seeds: only these seeds.
        data_root: the corpus location, if it moved since training (``data.root``).
        verify: recompute the test predictions through the bundle and compare.

    Returns:
        ``(path written, the bundle)``.

    Raises:
        FileNotFoundError: no finished folds under ``run_dir``.
        BundleError: a model or setting that cannot be exported (SVM, per-speaker
            normalisation), folds of different configurations, or a failed verification.
    """
    from omegaconf import OmegaConf

    from sergraph.config import Config, identity, validate
    from sergraph.data.features import RECIPE_VERSION, feature_names, opensmile_version
    from sergraph.data.prepared import prepare
    from sergraph.models import NON_NEURAL
    from sergraph.training.fit import fold_datamodule
    from sergraph.version import __version__

    run_dir = Path(run_dir)
    cells = _finished_cells(run_dir, folds, seeds)
    records = [json.loads((cell / "metrics.json").read_text()) for cell in cells]
    ids = sorted({record["config_id"] for record in records})
    if len(ids) > 1:
        raise BundleError(f"{run_dir} holds folds of {len(ids)} configurations {ids}")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(cells[0] / "config.yaml"))
    if cfg.model.name in NON_NEURAL:
        raise BundleError(
            f"model {cfg.model.name!r} cannot be exported: bundles hold neural models only"
        )
    if cfg.graph.normalize == "speaker":
        raise BundleError(
            "graph.normalize=speaker normalises each speaker with its own features, which a "
            "bundle cannot do for unknown speakers; export a run trained with "
            "graph.normalize=train"
        )
    if cfg.features.get("feature_set", "is10") == "precomputed":
        raise BundleError(
            "features.feature_set=precomputed: a bundle must compute its features from audio, "
            "and precomputed arrays come from a front end sergraph does not know; export a run "
            "trained on openSMILE or SSL features"
        )
    if cfg.features.get("feature_set", "is10") == "ssl" and cfg.features.ssl.layer == "all":
        raise BundleError(
            "features.ssl.layer=all: the learned layer mix lives outside the encoder's weights "
            "and bundles do not carry it yet; export a run trained with a layer index or list"
        )
    if cfg.features.get("concat_functionals", False):
        raise BundleError(
            "features.concat_functionals=true: bundles carry node-feature statistics only and "
            "cannot yet compute and normalise utterance functionals for new audio; export a run "
            "trained without it"
        )
    study_root = cells[0].parents[2]  # <out_dir>/<run.name>
    cfg.run.out_dir = str(study_root.parent)
    cfg.run.name = study_root.name
    if data_root is not None:
        cfg.data.root = str(data_root)
    validate(cfg)
    try:
        study = prepare(cfg)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}. Exporting recomputes the training-fold normalisation statistics from the "
            "corpus; give its current location with --data-root"
        ) from None

    members, provenance, verification = [], [], {"n": 0, "max_abs_diff": 0.0}
    meta = {
        "sergraph": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "classes": list(study.classes),
        "model": {
            "name": cfg.model.name,
            "params": OmegaConf.to_container(cfg.model.params, resolve=True),
            "in_channels": int(study.features[0].shape[1]),
        },
        "features": {
            "feature_set": cfg.features.feature_set,
            "deltas": bool(cfg.features.deltas),
            "pool": int(cfg.features.pool),
            "sample_rate": None,
            "levels": [],
            "opensmile": opensmile_version(),
            "recipe": RECIPE_VERSION,
            "names": [],
        },
        "graph": {
            "k": int(cfg.graph.k),
            "max_nodes": cfg.graph.max_nodes,
            "pad": bool(cfg.graph.pad),
            "normalize": cfg.graph.normalize,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_id": identity(cfg),
        "source": {
            "run_dir": str(run_dir.resolve()),
            "corpus": cfg.data.name,
            "data_root": cfg.data.root,
            "n_utterances": len(study.table),
            "speakers": sorted(study.table["speaker"].astype(str).unique()),
        },
    }
    if cfg.features.feature_set == "ssl":  # the model is identified by the hash of its files
        from sergraph.data.features import FeatureConfig

        meta["features"]["ssl"] = ssl_identity(FeatureConfig.from_any(cfg.features))
        width = meta["model"]["in_channels"]
        meta["features"]["names"] = [f"ssl_{index}" for index in range(width)]
    else:
        config = _feature_config(meta)
        meta["features"]["sample_rate"] = config.sample_rate
        meta["features"]["levels"] = list(config.levels())
        meta["features"]["names"] = feature_names(config)

    for cell, record in zip(cells, records, strict=True):
        fold = study.folds[record["fold"]]
        recorded = tuple(record[f"{split}_speakers"] for split in ("train", "val", "test"))
        if recorded != tuple(
            list(getattr(fold, f"{split}_speakers")) for split in ("train", "val", "test")
        ):
            raise BundleError(
                f"{cell}: the corpus no longer gives this fold's speakers (trained with test "
                f"{record['test_speakers']}, now {list(fold.test_speakers)}); the corpus or its "
                "failed files changed since training"
            )
        # The same data module the training used: normalisation from this fold's training side.
        datamodule = fold_datamodule(cfg, study, fold, record["seed"])
        datamodule.setup()
        normalizer = datamodule.normalizer
        if normalizer is None:  # graph.normalize=none
            from sergraph.data.graphs import Normalizer

            normalizer = Normalizer.identity(datamodule.num_features)
        members.append(
            {
                "state_dict": _checkpoint_weights(cell / record["checkpoint"]),
                "mean": normalizer.mean,
                "std": normalizer.std,
            }
        )
        provenance.append(
            {
                "seed": record["seed"],
                "fold": record["fold"],
                "train_speakers": record["train_speakers"],
                "val_speakers": record["val_speakers"],
                "test_speakers": record["test_speakers"],
                "test_wa": record["wa"],
                "test_ua": record["ua"],
                "best_val_ua": record.get("best_val_ua"),
                "epochs": record.get("epochs"),
                "checkpoint": str(cell.relative_to(run_dir) / record["checkpoint"]),
            }
        )
    meta["members"] = provenance
    bundle = Bundle(meta, members, device="cpu")

    if verify:
        for index, cell in enumerate(cells):
            saved = pd.read_csv(cell / "predictions.csv")
            rows = study.table.reset_index(drop=True)
            position = {u: i for i, u in enumerate(rows["utterance"].astype(str))}
            arrays = [study.features[position[str(u)]] for u in saved["utterance"]]
            mine = bundle.predict_features(arrays, member=index)
            theirs = saved[[f"p_{c}" for c in study.classes]].to_numpy(dtype=np.float64)
            difference = float(np.abs(mine - theirs).max()) if len(saved) else 0.0
            if difference > VERIFY_TOLERANCE:
                raise BundleError(
                    f"{cell}: the bundle's probabilities for the test speakers differ from "
                    f"predictions.csv by up to {difference:.3g} (> {VERIFY_TOLERANCE}); the "
                    "features or the corpus changed since training. Nothing was written."
                )
            verification["n"] += len(saved)
            verification["max_abs_diff"] = max(verification["max_abs_diff"], difference)
        meta["verification"] = verification
    out = Path(out) if out is not None else run_dir / f"bundle{SUFFIX}"
    bundle.save(out)
    return out, bundle


def _finished_cells(
    run_dir: Path, folds: Sequence[int] | None, seeds: Sequence[int] | None
) -> list[Path]:
    """Fold folders with a metrics.json under ``run_dir`` (one fold folder or a model folder)."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if (run_dir / "metrics.json").is_file():
        cells = [run_dir]
    else:
        cells = sorted(p.parent for p in run_dir.glob("seed-*/fold-*/metrics.json"))
    if not cells:
        models = sorted(p.parents[2].name for p in run_dir.glob("*/seed-*/fold-*/metrics.json"))
        if models:
            choices = [str(run_dir / name) for name in dict.fromkeys(models)]
            raise BundleError(f"{run_dir} holds several models; export one of them: {choices}")
        raise FileNotFoundError(
            f"no finished folds under {run_dir}: expected RUN_DIR/seed-S/fold-XX/metrics.json "
            "(a model folder runs/NAME/LABEL) or RUN_DIR/metrics.json (one fold folder)"
        )
    records = {cell: json.loads((cell / "metrics.json").read_text()) for cell in cells}
    if folds is not None:
        cells = [c for c in cells if records[c]["fold"] in set(folds)]
    if seeds is not None:
        cells = [c for c in cells if records[c]["seed"] in set(seeds)]
    if not cells:
        found = sorted({(r["seed"], r["fold"]) for r in records.values()})
        raise BundleError(
            f"no finished fold of {run_dir} matches folds={folds} seeds={seeds}; "
            f"finished (seed, fold): {found}"
        )
    return cells


def _checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The encoder weights of a Lightning checkpoint of :class:`~sergraph.training.module.SERModule`."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing; train that fold again")
    # Our own run's checkpoint (it stores Lightning callback state, not only tensors).
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    prefix = "model."
    return {
        key[len(prefix) :]: value.detach().clone()
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }


# --------------------------------------------------------------------------------------------
# small helpers


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from sergraph.data.prepared import default_cache_dir

    return default_cache_dir() / "features"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in bundle metadata")
