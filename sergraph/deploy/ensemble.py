"""The :class:`Bundle`: fold models with their normalisation statistics, predicting from audio.

A bundle is one or more fold models of a finished run (an ensemble: the probabilities are the
mean of the members' softmax outputs), each with its own training-fold normalisation
statistics. The file format and loading are in :mod:`sergraph.deploy.bundle`, making one in
:mod:`sergraph.deploy.export`.

Prediction: each file is read, turned into the bundle's openSMILE features (cached like
training features, extracted in ``workers`` processes), normalised with each member's statistics,
made into the same temporal graph as in training and classified in batches of ``batch_size``.
Like in training, only the first ``graph.max_nodes`` nodes of a file are seen (120 nodes of
50 ms = 6 s by default; the ``end`` column says how much was used). For long recordings give
``window`` (and ``hop``) in seconds: the file's node sequence is cut into windows and each
window is classified on its own. Features are computed once over the whole file, so frames at a
window's edge see their neighbours across the edge. The models always run in float32, whatever
precision they were trained in.

Bundles of ``features.concat_functionals`` runs (``meta["functionals"]``) also give each model
the utterance's openSMILE functionals vector ``u``: computed from the whole file (from its first
``features.max_seconds`` for a run trained with that setting, as training computed it) with the
same extraction and cache as training (:meth:`~sergraph.data.features.FeatureCache.functionals`,
at the recorded rate), z-scored with each member's training-fold statistics and made finite as in
training (non-finite values become 0); under ``eval.protocol=enrollment`` a speaker with
enrollment audio is z-scored with the functionals of that audio instead
(:mod:`sergraph.deploy.enroll`). A functionals vector describes a whole utterance, so such
bundles classify whole files only (no ``window``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sergraph.config import ON_ERROR_CHOICES
from sergraph.data.features import check_positive_int
from sergraph.deploy.enroll import enrollment_plan
from sergraph.deploy.pipeline import BundleError, bundle_feature_config, check_pipeline
from sergraph.deploy.segments import (
    chunk_rows,
    segment_nodes,
    segment_row,
    window_starts,
)
from sergraph.io import atomic_write_bytes

#: Seconds read beyond the part of a file a bundle classifies (see Bundle.input_config).
CUT_MARGIN_SECONDS = 1.0
#: In windows mode, files longer than this are analysed a block at a time (Bundle._streamed).
STREAM_SECONDS = 120.0
FORMAT = "sergraph-bundle"
#: The newest bundle format this sergraph reads (2: ``graph.dilations``; 3: utterance
#: functionals, ``meta["functionals"]``). Bundles without either are still written as format 1,
#: so older sergraph versions read them; a bundle with ``graph.dilations`` is format 2 and one
#: with functionals format 3, which older versions refuse instead of building the wrong edges
#: or models without the functionals input.
FORMAT_VERSION = 3
SUFFIX = ".sergraph"
#: openSMILE frame hop (seconds); a node is ``pool`` frames.
FRAME_SECONDS = 0.010


class Bundle:
    """A loaded bundle: one or more fold models with their normalisation statistics.

    Made by :func:`~sergraph.deploy.bundle.load_bundle` (or
    :func:`~sergraph.deploy.export.export_bundle`); see the module docstring.

    Attributes:
        meta: the bundle's metadata (classes, model, features, graph, config, provenance).
        classes: class names in the order of the probability columns.
        feature_config: the :class:`~sergraph.data.features.FeatureConfig` the models were trained on.
        device: where the models run.
    """

    def __init__(self, meta: dict, members: list[dict], device: str | torch.device = "cpu"):
        from sergraph.config import resolve_model
        from sergraph.data.graphs import Normalizer
        from sergraph.models import build_model

        self.meta = meta
        self.classes = list(meta["classes"])
        self.device = torch.device(device)
        self.feature_config = bundle_feature_config(meta)
        self._members = members
        self.models = []
        self.normalizers = []
        #: per member, the Normalizer of the utterance functionals (empty without them)
        self.global_normalizers = []
        model = meta["model"]
        global_channels = int(model.get("global_channels", 0))
        family, params = resolve_model(model["name"], model["params"], model.get("family"))
        for index, member in enumerate(members):
            network = build_model(
                family,
                int(model["in_channels"]),
                len(self.classes),
                global_channels=global_channels,
                **params,
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
            if global_channels:
                self.global_normalizers.append(
                    Normalizer(
                        np.asarray(member["global_mean"], dtype=np.float32),
                        np.asarray(member["global_std"], dtype=np.float32),
                    )
                )

    # ---- description

    @property
    def functionals(self) -> dict | None:
        """``meta["functionals"]`` (feature set, names, sample rate, openSMILE version and
        recipe of the utterance functionals the models also take), or ``None``."""
        return self.meta.get("functionals")

    def functionals_config(self):
        """The :class:`~sergraph.data.features.FeatureConfig` whose cache computes this
        bundle's utterance functionals as training's did (whole files, or their first
        ``max_seconds`` where training read only that part; the recorded rate)."""
        from sergraph.data.features import FeatureConfig

        recorded = self.functionals
        if recorded is None:
            raise BundleError("this bundle's models take no utterance functionals")
        return FeatureConfig(
            feature_set=recorded["feature_set"],
            sample_rate=recorded.get("sample_rate"),
            max_seconds=recorded.get("max_seconds"),
        )

    @property
    def members(self) -> list[dict]:
        """Provenance of each member: seed, fold, speakers of each split, test scores."""
        return list(self.meta["members"])

    @property
    def node_seconds(self) -> float:
        if not self.feature_config.is_opensmile:  # SSL: frames pooled by time
            return float(self.feature_config.node_seconds)
        return FRAME_SECONDS * self.feature_config.pool

    @property
    def model_card(self) -> str:
        """The bundle's ``MODEL_CARD.md`` text (:mod:`~sergraph.deploy.card`): stored at export;
        for a bundle exported before cards, made from its metadata."""
        from sergraph.deploy.card import model_card

        return self.meta.get("model_card") or model_card(self.meta)

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
        if meta.get("functionals"):
            recorded = meta["functionals"]
            lines.append(
                f"utterance functionals {recorded['feature_set']} ({len(recorded['names'])}) "
                "concatenated with the readout"
            )
        if meta.get("protocol"):
            lines.append(f"protocol: {meta['protocol']['note']}")
        if meta.get("partial"):
            lines.append(f"PARTIAL: exported from an unfinished study ({meta['partial']})")
        verification = meta.get("verification")
        if verification:
            line = (
                f"verified against the run's predictions.csv: {verification['n']} test "
                f"predictions, max |difference| {verification['max_abs_diff']:.1e}"
            )
            if verification.get("cause") == "precision":
                line += (
                    f" (trained in {meta.get('precision')}, predicting in float32: within "
                    f"that precision's tolerance {verification['tolerance']:g})"
                )
            lines.append(line)
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
        version = 1
        if self.meta["graph"].get("dilations") is not None:
            version = 2
        if self.meta.get("functionals"):
            version = 3
        payload = {
            "format": FORMAT,
            "format_version": version,
            "meta": json.dumps(self.meta, default=json_default),
            "members": [
                {
                    "state_dict": {
                        k: v.detach().cpu().clone() for k, v in member["state_dict"].items()
                    },
                    "mean": torch.as_tensor(np.asarray(member["mean"], dtype=np.float32)),
                    "std": torch.as_tensor(np.asarray(member["std"], dtype=np.float32)),
                    **{
                        key: torch.as_tensor(np.asarray(member[key], dtype=np.float32))
                        for key in ("global_mean", "global_std")
                        if key in member
                    },
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
        self,
        features: Sequence[np.ndarray],
        batch_size: int = 32,
        member: int | None = None,
        normalizers: Sequence | None = None,
        functionals: np.ndarray | Sequence[np.ndarray] | None = None,
        functionals_normalizers: Sequence | None = None,
    ) -> np.ndarray:
        """Class probabilities of pooled feature arrays ``[T_i, F]`` (as the cache gives them).

        Args:
            features: one array per utterance or segment.
            batch_size: graphs per forward pass.
            member: use only this member (default: the mean over all members).
            normalizers: per array, a :class:`~sergraph.data.graphs.Normalizer` of its
                speaker's enrollment audio, or ``None`` for the member's own statistics
                (see :mod:`sergraph.deploy.enroll`).
            functionals: bundles with utterance functionals (:attr:`functionals`) only, and
                required there: ``[N, D]`` raw (un-normalised) functionals, one row per array,
                as :meth:`~sergraph.data.features.FeatureCache.functionals` gives them; each
                member z-scores them with its own statistics.
            functionals_normalizers: like ``normalizers``, for the functionals: per array a
                :class:`~sergraph.data.graphs.Normalizer` of its speaker's enrollment audio's
                functionals, or ``None`` for the member's own statistics.

        Returns:
            ``[N, C]`` float64 probabilities, columns in the order of :attr:`classes`.
        """
        from sergraph.data.collate import graph_loader
        from sergraph.data.graphs import build_graph
        from sergraph.training.fit import ieee_rnn_math

        check_positive_int(batch_size, "batch_size")
        graph = self.meta["graph"]
        width = int(self.meta["model"]["in_channels"])
        for index, array in enumerate(features):
            if array.ndim != 2 or array.shape[1] != width or len(array) == 0:
                raise BundleError(
                    f"features[{index}] has shape {array.shape}; this bundle needs [T >= 1, "
                    f"{width}] ({self.feature_config.feature_set} features)"
                )
        for name, given in (
            ("normalizers", normalizers),
            ("functionals_normalizers", functionals_normalizers),
        ):
            if given is not None and len(given) != len(features):
                raise BundleError(f"{len(given)} {name} given for {len(features)} arrays")
        vectors = functionals_rows(self.meta, functionals, len(features))
        if not features:
            return np.zeros((0, len(self.classes)))
        chosen = range(len(self.models)) if member is None else [member]
        total = np.zeros((len(features), len(self.classes)))
        for index in chosen:
            own = self.normalizers[index]
            graphs = [
                build_graph(
                    ((normalizers[position] if normalizers else None) or own)(array),
                    graph["k"],
                    graph["max_nodes"],
                    graph["pad"],
                    0,
                    str(position),
                    "",
                    dilations=graph.get("dilations"),
                )
                for position, array in enumerate(features)
            ]
            if vectors is not None:  # as FoldDataModule.setup: z-scored, then made finite
                own_functionals = self.global_normalizers[index]
                for position, graph in enumerate(graphs):
                    chosen_normalizer = (
                        functionals_normalizers[position] if functionals_normalizers else None
                    ) or own_functionals
                    u = chosen_normalizer(vectors[position : position + 1])
                    u = np.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
                    graph.u = torch.from_numpy(u)
            outputs = []
            # batches marked for the models' fast path, as in training; cuDNN RNNs in IEEE
            # fp32 (not TF32), so the answer does not depend on the GPU generation
            with ieee_rnn_math():
                for batch in graph_loader(graphs, batch_size=batch_size, shuffle=False):
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
        speakers: Sequence[str | None] | None = None,
        enrollment: dict[str, Sequence[str | os.PathLike]] | None = None,
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
            speakers: the speaker of each file (``None`` where unknown); used by bundles trained
                with ``eval.protocol=enrollment`` to pick the speaker's enrollment statistics.
            enrollment: speaker -> enrollment audio files (unlabelled), for such bundles only
                (their node features, and with utterance functionals also these, are
                normalised with statistics of this audio). A file whose speaker has none is
                normalised with the training statistics, and its ``normalised_with`` column
                says so.

        Returns:
            One row per file (per segment with ``window``): ``path``, ``segment``, ``start``
            and ``end`` (seconds of the file the prediction used), ``duration`` (seconds),
            ``emotion``, ``p_<class>`` for each class, ``error`` (empty when it worked); for
            bundles trained with enrollment also ``speaker`` and ``normalised_with``.

        Raises:
            FeatureError: ``on_error="stop"`` and some files failed.
            BundleError: bad ``window``/``hop``/``on_error``, ``speakers`` not one per file,
                ``enrollment`` for a bundle that takes none, ``window`` for a bundle whose
                models take the utterance functionals (whole files only; a file whose
                functionals cannot be computed fails like one whose node features cannot).
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
        cache = FeatureCache(feature_cache_root(cache_dir), self.feature_config)
        self.check_pipeline(cache.config)
        # enrollment statistics are fitted on whole files, as in training
        functionals_cache = None
        if self.functionals is not None:
            functionals_cache = FeatureCache(cache.root, self.functionals_config())
        enrolled = enrollment_plan(
            self.meta, cache, paths, speakers, enrollment, workers, functionals_cache
        )
        cache = FeatureCache(cache.root, self.input_config(window))

        rows: list[dict] = []
        failures: list[tuple[str, str]] = []
        bar = tqdm(total=len(paths), unit="file", desc="predict", disable=not progress)
        try:
            for start in range(0, len(paths), chunk_size):
                chunk = paths[start : start + chunk_size]
                # windows over long files: streamed, a block at a time (not cached)
                streamed = self._streamed(chunk) if window_nodes is not None else {}
                reasons = {p: r for p, r in streamed.items() if isinstance(r, str)}
                failures += list(reasons.items())
                short = [p for p in chunk if p not in streamed]
                try:
                    arrays = cache.get(short, workers=workers, progress=False)
                except FeatureError as error:
                    reasons.update(error.failures)
                    failures += error.failures
                    good = [p for p in short if p not in reasons]
                    arrays = cache.get(good, workers=1, progress=False)  # cache hits
                by_path = dict(zip([p for p in short if p not in reasons], arrays, strict=True))
                by_path.update({p: a for p, a in streamed.items() if not isinstance(a, str)})
                good = [p for p in chunk if p not in reasons]
                vectors = None
                if self.functionals is not None:  # as training's cache (functionals_config)
                    vectors, lost = self._file_functionals(functionals_cache, good, workers)
                    reasons.update(lost)
                    failures += list(lost.items())
                    good = [p for p in good if p not in lost]
                arrays = [by_path[p] for p in good]
                rows += chunk_rows(
                    self,
                    chunk,
                    good,
                    arrays,
                    reasons,
                    window_nodes,
                    hop_nodes,
                    batch_size,
                    enrolled,
                    vectors,
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
        if enrolled is not None:
            columns += ["speaker", "normalised_with"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"segment": "int64"}) if len(frame) else frame

    def _file_functionals(
        self, cache, paths: Sequence[str], workers: int
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """``({path: raw functionals [D]}, {path: failure reason})`` of ``paths``, computed
        and cached by ``cache`` (a feature cache of :meth:`functionals_config`) exactly as
        training's were."""
        from sergraph.data.features import FeatureError

        feature_set = self.functionals["feature_set"]
        lost: dict[str, str] = {}
        try:
            values = cache.functionals(
                paths, workers=workers, progress=False, feature_set=feature_set
            )
        except FeatureError as error:
            lost = dict(error.failures)
            paths = [p for p in paths if p not in lost]
            values = cache.functionals(paths, progress=False, feature_set=feature_set)
        return dict(zip(paths, values, strict=True)), lost

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
        config = self.input_config(window)  # the part of the signal a file's route reads
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
            starts = window_starts(len(array), window_nodes, hop_nodes)
            spans = [(first, min(first + window_nodes, len(array))) for first in starts]
        vectors = None
        if self.functionals is not None:  # the same extraction as a file's, from memory
            from sergraph.data.features.opensmile import extract_functionals_from

            buffer.seek(0)
            recorded = self.functionals
            vector = extract_functionals_from(
                buffer,
                "<signal>",
                recorded["feature_set"],
                recorded.get("sample_rate"),
                recorded.get("max_seconds"),
            )
            vectors = np.repeat(vector[None, :], len(spans), axis=0)
        scores = self.predict_features(
            [array[a:b] for a, b in spans], batch_size, functionals=vectors
        )
        rows = [
            segment_row("<signal>", number, first, end, duration, node, self.classes, row_scores)
            for number, ((first, end), row_scores) in enumerate(zip(spans, scores, strict=True))
        ]
        return pd.DataFrame(rows)

    def _streamed(self, paths: Sequence[str]) -> dict[str, np.ndarray | str]:
        """Node features (or the failure reason) of the files longer than
        :data:`STREAM_SECONDS`, extracted a block at a time
        (:func:`~sergraph.data.features.opensmile.extract_llds_streamed`): windows mode reads
        the whole file, which openSMILE would otherwise hold in memory whole."""
        from sergraph.data.features import FeatureError, audio_info, pool_frames
        from sergraph.data.features.opensmile import extract_llds_streamed

        config = self.feature_config
        if not config.is_opensmile:
            return {}
        found: dict[str, np.ndarray | str] = {}
        for path in dict.fromkeys(paths):
            info = audio_info(path)
            if info is None or info[0] <= STREAM_SECONDS:
                continue
            try:
                frames = extract_llds_streamed(path, path, config)
                found[path] = pool_frames(frames, config.pool)
            except FeatureError as error:
                found[path] = "; ".join(reason for _, reason in error.failures)
        return found

    def input_config(self, window: float | None = None):
        """The feature configuration of the files to classify: the bundle's (whose
        ``sample_rate`` every file is resampled to), reading only the first
        ``graph.max_nodes`` nodes' seconds plus :data:`CUT_MARGIN_SECONDS` of each file when it
        is classified as a whole (``window=None``): a long file then costs no more memory than
        the part the model sees, and the frames of that part are those of the whole file
        (openSMILE's smoothing and deltas look a few frames ahead). A run trained with
        ``features.max_seconds`` (``meta["features"]["max_seconds"]``) read only that first part
        of each file, so no more is read of a file classified as a whole then either."""
        import dataclasses

        config, max_nodes = self.feature_config, self.meta["graph"]["max_nodes"]
        if window is not None or not config.is_opensmile:
            return config
        read = None if max_nodes is None else max_nodes * self.node_seconds + CUT_MARGIN_SECONDS
        trained = self.meta["features"].get("max_seconds")
        if trained is not None:
            read = float(trained) if read is None else min(read, float(trained))
        return config if read is None else dataclasses.replace(config, max_seconds=read)

    def _segment_nodes(self, window, hop) -> tuple[int | None, int | None]:
        if window is not None and self.functionals is not None:
            raise BundleError(
                f"this bundle's models also take the utterance's "
                f"{self.functionals['feature_set']} functionals, which describe a whole "
                "utterance; it classifies whole files only (leave out window and hop)"
            )
        return segment_nodes(window, hop, self.node_seconds, self.meta["graph"]["max_nodes"])


def functionals_rows(meta: dict, functionals, count: int) -> np.ndarray | None:
    """``functionals`` as float32 ``[count, D]``, checked against a bundle's metadata ``meta``
    (``None`` for a bundle without utterance functionals)."""
    recorded = meta.get("functionals")
    if recorded is None:
        if functionals is not None:
            raise BundleError("this bundle's models take no utterance functionals")
        return None
    width = len(recorded["names"])
    if functionals is None:
        raise BundleError(
            f"this bundle's models also take the utterance's {recorded['feature_set']} "
            f"functionals: give functionals [N, {width}] (Bundle.predict computes them)"
        )
    if count == 0:
        return np.zeros((0, width), np.float32)
    rows = np.asarray(functionals, dtype=np.float32)
    if rows.shape != (count, width):
        raise BundleError(
            f"functionals has shape {rows.shape}; this bundle needs [{count}, {width}] "
            f"({recorded['feature_set']} functionals, one row per array)"
        )
    return rows


def feature_cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from sergraph.data.prepared import default_cache_dir

    return default_cache_dir() / "features"


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in bundle metadata")
