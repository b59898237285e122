"""ONNX export of a bundle: its models (all members, averaged) as one ONNX graph on padded graphs.

``sergraph export RUN_DIR_OR_BUNDLE --onnx DIR`` (:func:`export_onnx`) writes::

    DIR/model.onnx     inputs  features [1, max_nodes, F] float32: an utterance's pooled node
                               features (the bundle's feature set, un-normalised), zero-padded
                               or cut to max_nodes rows
                               mask     [1, max_nodes] float32: 1 for the utterance's nodes
                               (the first min(T, max_nodes) rows), 0 for padding
                               functionals [1, D] float32 (bundles of
                               features.concat_functionals runs only): the utterance's
                               openSMILE functionals of the whole file (of its first
                               features.max_seconds for a run trained so), un-normalised
                       output  probabilities [1, C] float32: the mean over the bundle's members
                               of each member's softmax, columns in the order of ``classes``
    DIR/model.json     what is needed to rebuild the input and read the output: classes, the
                       feature settings (feature set, deltas, pooling, sample rate, openSMILE
                       version, feature names; ``functionals``: those of the functionals
                       vector, or null), the graph settings, the input and output
                       names and shapes, the tolerance checked at export, what
                       model.yaml holds (``audonnx``)
    DIR/MODEL_CARD.md  the bundle's model card
    DIR/model.yaml     the model for ``audonnx`` (written when audonnx is installed, as it is
                       by ``pip install sergraph[onnx]``): ``audonnx.load(DIR)`` gives a model
                       that takes ``(signal, sampling_rate)`` and returns the probabilities,
                       labelled with the classes

Inside the graph each member normalises the features with its own training-fold statistics,
sets the padding rows to zero (as :func:`~sergraph.data.graphs.fit_length` pads after
normalising), and runs on the fixed padded graph of ``max_nodes`` nodes (its temporal band is
constant, so the graph layers are the dense shifted sums of :mod:`sergraph.models.banded`: no
scatter). One utterance per call (batch size 1).

The functionals input of a ``features.concat_functionals`` bundle (the recommended model,
``configs/experiment/recommended.yaml``) is raw, like the node features: each member z-scores
it inside the graph with its own training-fold statistics of the functionals and makes it
finite, as :meth:`~sergraph.deploy.ensemble.Bundle.predict_features` does. So the statistics
have one owner, the bundle (copied into the graph at export, never written elsewhere), one
ensemble of several folds is still one graph with one input, and whoever feeds the model needs
openSMILE alone: the vector is what openSMILE gives for the whole file, or for its first
``max_seconds`` where training read only that (``functionals.max_seconds`` of ``model.json``), as
:meth:`~sergraph.data.features.FeatureCache.functionals` gives it, never a normalisation step of their
own.

What cannot be exported, and why: bundles of graphs without padding (``graph.pad=false``: the
node count, and so the graph, changes per utterance) or with dilated edges
(``graph.dilations``: message passing with gather/scatter); bundles trained with
``eval.protocol=enrollment`` (a new speaker's statistics come from its enrollment audio, which
the fixed graph cannot take); model families without the banded fast path (their layers run
PyG message passing: ``gps``); families whose layers use ``Tensor.unfold`` (``gat``,
``sage_lstm``, ``ga_gru``), which PyTorch's TorchScript-based ONNX exporter cannot convert.
:data:`ONNX_FAMILIES` lists those that export, with or without the utterance functionals.

The export checks itself when ``onnxruntime`` is installed (``pip install sergraph[onnx]``):
:data:`ONNX_TOLERANCE` on the probabilities of random node-feature arrays of several lengths
(each with a random functionals vector where the models take one), against
:meth:`~sergraph.deploy.ensemble.Bundle.predict_features`.

**audonnx.** ``model.yaml`` is an ``audonnx.Model`` of ``model.onnx`` whose inputs each
have a transform (:func:`write_audonnx`): an ``audonnx.Function`` of
:func:`signal_to_onnx_input`, whose source the YAML stores, with the bundle's openSMILE levels
as ``opensmile.Smile`` objects (for IS10 and ComParE with deltas two of them, ``lld`` and
``lld_de``, whose columns joined and cut to the shorter level are exactly what sergraph's
one-run wrapper config gives; that config is a file in the temp dir that includes the
installed openSMILE's own config by absolute path, so it cannot travel in a YAML). The
function is self-contained: numpy, opensmile and (to resample) scipy, no sergraph, so the
model runs where only ``audonnx`` and ``opensmile`` are installed; it repeats sergraph's steps
for a file classified as a whole, which the tests check against
:meth:`~sergraph.deploy.ensemble.Bundle.predict` on audio (stereo, another rate, longer than
the part read included): the inputs are identical and the probabilities within
:data:`ONNX_TOLERANCE` (measured 7e-7). A functionals bundle's third transform is the same
function with the bundle's functionals level (``func``) and the functionals' own rate, on the
whole signal (sergraph computes the vector from the whole file, not from the part the node
features read; from its first ``max_seconds`` for a run trained with ``features.max_seconds``);
its output equals the feature cache's functionals exactly (tests). The price of
audonnx's one transform per input: the features and the mask each run openSMILE (for IS10 with
deltas four runs per call where sergraph makes one: about 0.35 s instead of 0.07 s per 2.3 s
synthetic file on one core; the functionals one more run). The
YAML pins the audonnx and opensmile versions it was written with (audobject warns when another
version loads it). No transform, and the reason in ``model.json``, for SSL features (the front
end is a PyTorch model, not an audobject transform) and where the installed openSMILE differs
from the bundle's (:func:`~sergraph.deploy.pipeline.check_pipeline`): ``model.yaml`` then
holds the labels only and the model takes ``{"features": ..., "mask": ...}`` (and
``"functionals"``) as :func:`onnx_inputs` makes them.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sergraph.deploy.pipeline import BundleError

#: Largest absolute difference accepted between the ONNX model's and the bundle's probabilities
#: (float32 throughout; ONNX Runtime's kernels sum in another order than PyTorch's).
ONNX_TOLERANCE = 1e-4
ONNX_FILE, SIDECAR_FILE, CARD_FILE = "model.onnx", "model.json", "MODEL_CARD.md"
#: The ``audonnx`` description of ``model.onnx`` (``audonnx.load(DIR)`` reads it).
AUDONNX_FILE = "model.yaml"
OPSET = 17
#: Model families whose ONNX export matches PyTorch (``tests/unit/test_onnx.py``);
#: gat, sage_lstm and ga_gru use ``Tensor.unfold``, which the TorchScript-based exporter
#: cannot convert; gps has no dense form on padded graphs.
ONNX_FAMILIES = ("lstm_gin", "gin", "gcn", "cheb", "sage_mean", "bigru_attn")


class _PaddedEnsemble(nn.Module):
    """The bundle's members on one fixed padded graph: ``(features, mask) -> probabilities``."""

    def __init__(self, bundle) -> None:
        from sergraph.data.collate import graph_loader
        from sergraph.data.graphs import build_graph

        super().__init__()
        graph = bundle.meta["graph"]
        width = int(bundle.meta["model"]["in_channels"])
        self.max_nodes, self.width = int(graph["max_nodes"]), width
        template = build_graph(
            np.zeros((self.max_nodes, width), np.float32),
            graph["k"],
            self.max_nodes,
            True,
            0,
            "",
            "",
        )
        self.template = next(iter(graph_loader([template], batch_size=1)))
        self.members = nn.ModuleList(model.cpu() for model in bundle.models)
        for index, normalizer in enumerate(bundle.normalizers):
            self.register_buffer(f"mean_{index}", torch.as_tensor(normalizer.mean).float())
            self.register_buffer(f"std_{index}", torch.as_tensor(normalizer.std).float())
        # the utterance functionals' statistics: the bundle's, per member (one owner)
        global_normalizers = list(getattr(bundle, "global_normalizers", None) or [])
        self.global_width = len(global_normalizers[0].mean) if global_normalizers else 0
        for index, normalizer in enumerate(global_normalizers):
            self.register_buffer(f"global_mean_{index}", torch.as_tensor(normalizer.mean).float())
            self.register_buffer(f"global_std_{index}", torch.as_tensor(normalizer.std).float())
        for index, model in enumerate(self.members):
            if not model.uses_fast_path(self.template):
                raise BundleError(
                    f"model {bundle.meta['model']['name']!r} (member {index}) has no dense "
                    "form on padded graphs (its layers run PyG message passing with "
                    "gather/scatter), so it cannot be exported to ONNX"
                )

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, functionals: torch.Tensor | None = None
    ) -> torch.Tensor:
        total = None
        for index, model in enumerate(self.members):
            mean, std = getattr(self, f"mean_{index}"), getattr(self, f"std_{index}")
            x = (features - mean) / std * mask.unsqueeze(-1)
            batch = self.template.clone()
            batch.x = x.reshape(-1, self.width)
            if self.global_width:  # as Bundle.predict_features: z-scored, then made finite
                mean = getattr(self, f"global_mean_{index}")
                std = getattr(self, f"global_std_{index}")
                u = (functionals - mean) / std
                batch.u = torch.nan_to_num(u, nan=0.0, posinf=0.0, neginf=0.0)
            probabilities = torch.softmax(model(batch), dim=-1)
            total = probabilities if total is None else total + probabilities
        return total / len(self.members)


def check_onnx_exportable(meta: dict) -> None:
    """Refuse a bundle whose graphs or protocol have no fixed ONNX form (module docstring)."""
    graph = meta["graph"]
    if not graph.get("pad") or graph.get("max_nodes") is None:
        raise BundleError(
            "graph.pad=false: each utterance has its own node count, so there is no fixed "
            "graph to export; export a run trained with graph.pad=true (the paper's 120-node "
            "graphs)"
        )
    if graph.get("dilations") is not None:
        raise BundleError(
            f"graph.dilations={graph['dilations']}: dilated edges run PyG message passing "
            "(gather/scatter), which the ONNX export does not support; export a run trained "
            "with the k band (no graph.dilations)"
        )
    if (meta.get("protocol") or {}).get("name") == "enrollment":
        raise BundleError(
            "this bundle was trained with eval.protocol=enrollment: a new speaker is "
            "normalised with its enrollment audio, which a fixed ONNX graph cannot take; use "
            "the bundle (sergraph predict --enroll) or export a run trained with "
            "eval.protocol=inductive"
        )


def onnx_inputs(
    bundle, features: list[np.ndarray], functionals: np.ndarray | None = None
) -> list[dict[str, np.ndarray]]:
    """The ONNX model's inputs for pooled node-feature arrays ``[T, F]`` (as the feature cache
    gives them): each zero-padded or cut to ``max_nodes`` with its mask.

    Args:
        bundle: the exported bundle.
        features: one array per utterance.
        functionals: bundles with utterance functionals only, and required there: ``[N, D]``
            raw (un-normalised) functionals, one row per array, as
            :meth:`~sergraph.data.features.FeatureCache.functionals` gives them (the graph
            normalises them, as :meth:`~sergraph.deploy.ensemble.Bundle.predict_features`
            does).

    Raises:
        BundleError: ``functionals`` missing, given to a bundle without them, or of the wrong
            shape.
    """
    from sergraph.deploy.ensemble import functionals_rows

    vectors = functionals_rows(bundle.meta, functionals, len(features))
    max_nodes = int(bundle.meta["graph"]["max_nodes"])
    out = []
    for position, array in enumerate(features):
        n_valid = min(len(array), max_nodes)
        padded = np.zeros((1, max_nodes, array.shape[1]), np.float32)
        padded[0, :n_valid] = array[:n_valid]
        mask = np.zeros((1, max_nodes), np.float32)
        mask[0, :n_valid] = 1.0
        feed = {"features": padded, "mask": mask}
        if vectors is not None:
            feed["functionals"] = np.ascontiguousarray(vectors[position : position + 1])
        out.append(feed)
    return out


def run_onnx(path: str | os.PathLike, inputs: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Probabilities ``[N, C]`` of an exported model under ONNX Runtime, one input at a time."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"running {path} needs onnxruntime: pip install 'sergraph[onnx]'"
        ) from error
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(["probabilities"], feed)[0] for feed in inputs])


def signal_to_onnx_input(
    signal,
    sampling_rate,
    *,
    levels,
    pool,
    max_nodes,
    sample_rate,
    max_seconds,
    output,
):
    """One input of ``model.onnx`` (``output``: ``"features"``, ``"mask"`` or
    ``"functionals"``) from a signal.

    The transform of ``model.yaml``: ``audonnx`` stores this function's source in the YAML
    and calls it on ``(signal, sampling_rate)`` once per input node, with the other arguments
    from the YAML (``levels``: one ``opensmile.Smile`` per openSMILE level, e.g. IS10's ``lld``
    and ``lld_de``). It is self-contained on purpose: it imports only numpy, opensmile
    (through the ``Smile`` objects) and, to resample, scipy, never sergraph, so the audonnx
    model runs where sergraph is not installed. It repeats, step for step, what sergraph does
    to a file it classifies as a whole (:meth:`~sergraph.deploy.ensemble.Bundle.predict`:
    :func:`~sergraph.data.features.audio.load_mono`, the openSMILE run,
    :func:`~sergraph.data.features.pooling.pool_frames`, :func:`onnx_inputs`), and the tests
    compare the two on audio: the channels' mean in float64, only the first ``max_seconds``
    read, polyphase resampling to ``sample_rate`` (``None``: the signal's own rate), clipping
    to openSMILE's int16 range, the levels joined column-wise and cut to the shortest (what
    sergraph's one-run wrapper config gives, ``tests/unit/test_features.py``), ``pool``
    frames averaged into a node, then padded or cut to ``max_nodes`` rows. For
    ``"functionals"`` (``levels``: the one ``func`` level; ``max_seconds`` ``None``, since
    sergraph computes them from the whole file, or the training run's ``features.max_seconds``;
    ``sample_rate`` the functionals' own) the
    same reading, resampling and clipping, then openSMILE's one row of functionals, raw
    (``model.onnx`` normalises them), as
    :meth:`~sergraph.data.features.FeatureCache.functionals` gives them.

    Args:
        signal: samples as floats in [-1, 1): ``[n]`` mono or ``[channels, n]`` (the layout
            of ``audiofile.read``); channels are averaged.
        sampling_rate: its rate in Hz.

    Returns:
        ``[1, max_nodes, F]`` float32 node features, the ``[1, max_nodes]`` float32 mask or
        the ``[1, D]`` float32 functionals.

    Raises:
        ValueError: an empty, non-finite, silent or too short signal, or non-finite features
            (sergraph refuses the same audio).
    """
    import math
    import warnings

    import numpy as np

    samples = np.asarray(signal, dtype=np.float32).astype(np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    elif samples.ndim == 2:
        samples = samples.T
    else:
        raise ValueError(f"signal has shape {samples.shape}; give [n] or [channels, n]")
    if max_seconds is not None:
        samples = samples[: int(math.ceil(max_seconds * sampling_rate))]
    if samples.shape[0] == 0:
        raise ValueError("empty signal (0 samples)")
    if not np.isfinite(samples).all():
        raise ValueError("the signal has NaN/inf samples")
    mono, rate = samples.mean(axis=1), int(sampling_rate)
    if sample_rate is not None and int(sample_rate) != rate:
        from scipy.signal import resample_poly

        common = math.gcd(int(sample_rate), rate)
        mono = resample_poly(mono, int(sample_rate) // common, rate // common)
        rate = int(sample_rate)
    mono = np.clip(mono, -1.0, 32767 / 32768).astype(np.float32)
    if not np.any(np.abs(mono) >= 1 / 32768):
        raise ValueError("silent signal: every sample is 0 at 16-bit resolution")
    tables = []
    for smile in levels:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = smile.process_signal(mono, rate)
        if any("Segment too short" in str(warning.message) for warning in caught):
            raise ValueError(f"signal too short for openSMILE ({mono.size} samples at {rate} Hz)")
        tables.append(table.to_numpy(dtype=np.float32))
    rows = min(len(table) for table in tables)
    frames = np.concatenate([table[:rows] for table in tables], axis=1)
    if not np.isfinite(frames).all():
        raise ValueError("openSMILE gave NaN/inf features")
    if output == "functionals":
        return frames[:1]
    starts = np.arange(0, rows, pool)
    sums = np.add.reduceat(frames.astype(np.float64), starts, axis=0)
    nodes = (sums / np.minimum(pool, rows - starts)[:, None]).astype(np.float32)
    used = min(len(nodes), max_nodes)
    if output == "mask":
        mask = np.zeros((1, max_nodes), np.float32)
        mask[0, :used] = 1.0
        return mask
    features = np.zeros((1, max_nodes, nodes.shape[1]), np.float32)
    features[0, :used] = nodes[:used]
    return features


def audonnx_transforms(bundle) -> tuple[dict | None, str]:
    """The ``audonnx`` transforms of ``model.onnx``'s two inputs for ``bundle``, or ``None``.

    Returns:
        ``({"features": ..., "mask": ...}, what)`` for a bundle of openSMILE features: two
        ``audonnx.Function`` of :func:`signal_to_onnx_input` holding the bundle's openSMILE
        levels as ``opensmile.Smile`` objects (and a third, ``"functionals"``, holding the
        functionals level, for a bundle whose models take the utterance functionals);
        ``(None, why)`` for SSL features (the SSL model is a PyTorch front end, not an
        audobject transform) and where the installed openSMILE is not the one the bundle was
        trained with.
    """
    import audonnx
    import opensmile

    from sergraph.data.features.opensmile import OPENSMILE_MEMBERS
    from sergraph.deploy.pipeline import BundleMismatchError, check_pipeline

    config = bundle.feature_config
    if not config.is_opensmile:
        return None, (
            f"{config.feature_set} features come from a PyTorch front end, not from an "
            "openSMILE transform: model.yaml has no transform; give the model "
            "{'features': ..., 'mask': ...} (sergraph.deploy.onnx.onnx_inputs)"
        )
    try:
        check_pipeline(bundle.meta)
    except BundleMismatchError as error:
        return None, f"no openSMILE transform: {error}"
    member = getattr(opensmile.FeatureSet, OPENSMILE_MEMBERS[config.feature_set][0])
    levels = [opensmile.Smile(member, opensmile.FeatureLevel(level)) for level in config.levels()]
    settings = {
        "levels": levels,
        "pool": int(config.pool),
        "max_nodes": int(bundle.meta["graph"]["max_nodes"]),
        "sample_rate": config.sample_rate,
        "max_seconds": bundle.input_config().max_seconds,
    }
    transforms = {
        name: audonnx.Function(signal_to_onnx_input, func_args={**settings, "output": name})
        for name in ("features", "mask")
    }
    what = (
        f"openSMILE {opensmile.__version__} {member.name} {'+'.join(config.levels())}, "
        f"pooled by {config.pool}, "
        + (f"at {config.sample_rate} Hz" if config.sample_rate else "at the signal's own rate")
    )
    recorded = bundle.functionals
    if recorded is not None:  # as Bundle.functionals_config: the part and rate of training's
        rate, part = recorded.get("sample_rate"), recorded.get("max_seconds")
        functionals = getattr(opensmile.FeatureSet, OPENSMILE_MEMBERS[recorded["feature_set"]][0])
        func_args = {
            **settings,
            "levels": [opensmile.Smile(functionals, opensmile.FeatureLevel.Functionals)],
            "sample_rate": rate,
            "max_seconds": part,
            "output": "functionals",
        }
        transforms["functionals"] = audonnx.Function(signal_to_onnx_input, func_args=func_args)
        what += (
            f"; functionals: {functionals.name} func of "
            + ("the whole signal, " if part is None else f"the first {part:g} s, ")
            + (f"at {rate} Hz" if rate else "at the signal's own rate")
        )
    return transforms, what


def write_audonnx(bundle, out_dir: str | os.PathLike) -> dict:
    """Write ``model.yaml`` beside ``model.onnx`` so that ``audonnx.load(out_dir)`` reads it.

    Returns:
        What was written: ``{"file", "labels", "transform"}`` (``transform`` ``None`` and a
        ``why`` where there is none: :func:`audonnx_transforms`), or ``{"file": None, "why"}``
        when audonnx is not installed (a ``model.yaml`` of an earlier export is then removed:
        its transform could be another bundle's).
    """
    import tempfile

    from sergraph.io import atomic_write_text

    out_dir = Path(out_dir)
    try:
        import audonnx
    except ImportError:
        (out_dir / AUDONNX_FILE).unlink(missing_ok=True)
        return {"file": None, "why": "audonnx is not installed (pip install 'sergraph[onnx]')"}
    transforms, what = audonnx_transforms(bundle)
    model = audonnx.Model(
        str(out_dir / ONNX_FILE), labels=list(bundle.classes), transform=transforms
    )
    # to_yaml writes the ONNX path relative to the YAML's folder: a temporary file there
    handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=".model.", suffix=".yaml")
    os.close(handle)
    try:
        model.to_yaml(temporary)
        atomic_write_text(out_dir / AUDONNX_FILE, Path(temporary).read_text())
    finally:
        Path(temporary).unlink(missing_ok=True)
    record = {"file": AUDONNX_FILE, "labels": list(bundle.classes)}
    if transforms is None:
        return record | {"transform": None, "why": what}
    return record | {"transform": what}


def onnx_model_bytes(bundle) -> bytes:
    """The ONNX model (``model.onnx``) of a bundle's members on the fixed padded graph.

    Args:
        bundle: a :class:`~sergraph.deploy.ensemble.Bundle` (or an object with its ``meta``
            ``graph`` and ``model`` entries, ``models`` and ``normalizers``).

    Raises:
        BundleError: a model family that cannot be exported (see the module docstring).
    """
    import io

    meta = bundle.meta
    module = _PaddedEnsemble(bundle).eval()
    max_nodes, width = module.max_nodes, module.width
    example = (torch.zeros(1, max_nodes, width), torch.ones(1, max_nodes))
    names = ["features", "mask"]
    if module.global_width:
        example += (torch.zeros(1, module.global_width),)
        names.append("functionals")
    buffer = io.BytesIO()
    # the tracer warns about every Python-level shape check of the fixed graph: all constant here
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                example,
                buffer,
                input_names=names,
                output_names=["probabilities"],
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as error:  # noqa: BLE001 - the exporter raises many types
            reason = str(error).strip().splitlines()[0][:200]
            raise BundleError(
                f"model {meta['model']['name']!r} cannot be exported to ONNX ({type(error).__name__}: "
                f"{reason}); families that export: {', '.join(ONNX_FAMILIES)}"
            ) from None
    return buffer.getvalue()


def export_onnx(bundle, out_dir: str | os.PathLike, check: bool = True) -> tuple[Path, dict]:
    """Write ``model.onnx``, ``model.json``, ``MODEL_CARD.md`` and (with audonnx installed)
    ``model.yaml`` of a bundle into ``out_dir``.

    Args:
        bundle: a loaded :class:`~sergraph.deploy.ensemble.Bundle`.
        out_dir: the folder (created).
        check: compare with the bundle under ONNX Runtime when it is installed.

    Returns:
        ``(out_dir, the sidecar as written)``; its ``check`` says what was compared, its
        ``audonnx`` what :func:`write_audonnx` wrote.

    Raises:
        BundleError: a bundle that cannot be exported (see the module docstring), or a check
            above :data:`ONNX_TOLERANCE`.
    """
    from sergraph.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    meta = bundle.meta
    check_onnx_exportable(meta)
    max_nodes = int(meta["graph"]["max_nodes"])
    width = int(meta["model"]["in_channels"])
    data = onnx_model_bytes(bundle)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / ONNX_FILE, data)
    atomic_write_text(out_dir / CARD_FILE, bundle.model_card)
    result = {
        "checked": False,
        "why": "onnxruntime is not installed (pip install 'sergraph[onnx]')",
    }
    if check:
        result = _self_check(bundle, out_dir / ONNX_FILE)
    audonnx_record = write_audonnx(bundle, out_dir)
    features = meta["features"]
    recorded = meta.get("functionals")
    functionals_input, functionals_settings = {}, None
    if recorded:
        functionals_input = {
            "functionals": {
                "shape": [1, len(recorded["names"])],
                "dtype": "float32",
                "meaning": f"the utterance's {recorded['feature_set']} openSMILE functionals "
                "of the whole file (of its first functionals.max_seconds where that is set; "
                "un-normalised), in the order of functionals.names",
            }
        }
        functionals_settings = {
            key: recorded.get(key)
            for key in ("feature_set", "sample_rate", "max_seconds", "opensmile", "recipe")
        } | {"names": list(recorded["names"])}
    sidecar = {
        "format": "sergraph-onnx",
        "format_version": 1,
        "sergraph": meta["sergraph"],
        "model": meta["model"]["name"],
        "config_id": meta["config_id"],
        "classes": list(bundle.classes),
        "members": [[m["seed"], m["fold"]] for m in meta["members"]],
        "inputs": {
            "features": {
                "shape": [1, max_nodes, width],
                "dtype": "float32",
                "meaning": "pooled node features (un-normalised), zero-padded or cut to "
                "max_nodes rows",
            },
            "mask": {
                "shape": [1, max_nodes],
                "dtype": "float32",
                "meaning": "1 for the first min(T, max_nodes) rows, 0 after",
            },
        }
        | functionals_input,
        "outputs": {
            "probabilities": {
                "shape": [1, len(bundle.classes)],
                "dtype": "float32",
                "meaning": "mean of the members' softmax, columns in the order of classes",
            }
        },
        "features": {
            key: features.get(key)
            for key in ("feature_set", "deltas", "pool", "sample_rate", "levels", "opensmile")
        }
        | {"recipe": features.get("recipe"), "names": list(features["names"])},
        "functionals": functionals_settings,
        "node_seconds": bundle.node_seconds,
        "graph": dict(meta["graph"]),
        "protocol": meta.get("protocol"),
        "opset": OPSET,
        "tolerance": ONNX_TOLERANCE,
        "check": result,
        "audonnx": audonnx_record,
    }
    atomic_write_json(out_dir / SIDECAR_FILE, sidecar)
    return out_dir, sidecar


def _self_check(bundle, path: Path) -> dict:
    """Random node-feature arrays of several lengths (shorter, equal and longer than
    max_nodes), each with a random functionals vector where the models take one, through ONNX
    Runtime and through the bundle."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {
            "checked": False,
            "why": "onnxruntime is not installed (pip install 'sergraph[onnx]')",
        }
    max_nodes = int(bundle.meta["graph"]["max_nodes"])
    width = int(bundle.meta["model"]["in_channels"])
    rng = np.random.default_rng(0)
    lengths = [1, max(1, max_nodes // 3), max_nodes, max_nodes + 7]
    features = []
    for length in lengths:  # around each member's own statistics, as real features are
        normalizer = bundle.normalizers[0]
        features.append(
            (normalizer.mean + normalizer.std * rng.standard_normal((length, width))).astype(
                np.float32
            )
        )
    functionals = None
    if bundle.meta.get("functionals"):  # one raw vector per array, around its statistics
        statistics = bundle.global_normalizers[0]
        noise = rng.standard_normal((len(lengths), statistics.mean.size))
        functionals = (statistics.mean + statistics.std * noise).astype(np.float32)
    expected = bundle.predict_features(features, functionals=functionals)
    got = run_onnx(path, onnx_inputs(bundle, features, functionals))
    difference = float(np.abs(expected - got).max())
    if difference > ONNX_TOLERANCE:
        raise BundleError(
            f"{path}: ONNX Runtime's probabilities differ from the bundle's by {difference:.1e} "
            f"(tolerance {ONNX_TOLERANCE:g}); the export is not faithful"
        )
    return {
        "checked": True,
        "n": len(features),
        "lengths": lengths,
        "max_abs_diff": difference,
        "tolerance": ONNX_TOLERANCE,
    }


def sidecar_of(out_dir: str | os.PathLike) -> dict:
    """The ``model.json`` of an ONNX export folder."""
    return json.loads((Path(out_dir) / SIDECAR_FILE).read_text())
