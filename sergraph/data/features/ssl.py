"""Self-supervised frame embeddings (wav2vec 2.0, HuBERT, WavLM, ...) through ``transformers``.

``features.feature_set=ssl`` with ``features.ssl.model`` = a local Hugging Face model folder or a
hub id. Each file is read, mixed down to mono, resampled to the model's rate (its
``preprocessor_config.json``, 16 kHz when absent) and normalised to zero mean and unit variance
over the whole file when the model's feature extractor asks for it (``do_normalize``). The
hidden states chosen by ``features.ssl.layer`` (an index, or a list of indices averaged) are
cached per file as ``[T, H]`` float32 (``all``: every hidden state side by side,
``[T, (layers + 1) * H]``, mixed in the model by a learned
:class:`~sergraph.models.layers.LayerWeightedSum`) at the model's frame hop (20 ms for these models), and
pooled into ``features.node_seconds`` nodes when loaded.

Long files are cut into chunks of ``ssl.chunk_seconds`` aligned to the model's frame grid. Each
chunk is given ``ssl.context_seconds`` of audio on each side whose frames are dropped, so memory
is bounded by the chunk length whatever the file length. Where the chunked result is exact: the
convolutional feature encoder and everything up to ``hidden_states[0]`` (the input of the first
transformer layer) have a finite receptive field; with ``feat_extract_norm="layer"`` models
(wav2vec2-large-lv60, WavLM-Large, HuBERT-Large) and a context at least half the positional
convolution (``num_conv_pos_embeddings / 2`` frames: 64 frames = 1.28 s for the real models,
hence the 1.5 s default), layer 0 of a chunked file equals the
unchunked one up to float rounding. Transformer layers attend over the whole input, so deeper
layers of a chunked file differ from an unchunked run (by how much depends on the model; the
tests measure it on a tiny random model). Group-norm feature encoders (wav2vec2-base, WavLM-Base)
normalise over the whole input, so even layer 0 differs slightly. Files shorter than one chunk
are never cut.

Several chunks (of one or several files) go through the model together (``ssl.batch_size``),
zero-padded with an attention mask when the model takes one (``feat_extract_norm="layer"``);
group-norm models get only chunks of equal length together, because padding would change their
normalisation.

The cache key holds a hash of every file of the model folder (weights and configuration), the
layer choice, the chunking, the rate, ``max_seconds`` and the transformers version.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from sergraph.data.features.audio import load_mono
from sergraph.data.features.config import FeatureConfig, FeatureError
from sergraph.data.features.hashing import atomic_save_npy, folder_sha256

RECIPE_VERSION = 1
INSTALL_HINT = 'pip install "sergraph[ssl]"  (or: pip install transformers)'


def require_transformers() -> None:
    """Raise ImportError with the install command when ``transformers`` cannot be imported."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError(
            "features.feature_set=ssl needs the transformers package, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        ) from None


def model_folder(model: str) -> Path:
    """The local folder of ``model``: a folder as given, or a hub id's snapshot.

    A hub id is looked up in the Hugging Face cache first and downloaded only when it is not
    there (this needs network access; on a cluster, download once on a login node with
    ``huggingface-cli download ID`` and point ``HF_HOME`` at a shared folder).
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"features.ssl.model={model!r} is a folder without config.json; give a folder "
                "written by save_pretrained or a Hugging Face hub id"
            )
        return folder.resolve()
    require_transformers()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache: try the hub
        pass
    try:
        return Path(snapshot_download(model))
    except Exception as error:  # noqa: BLE001 - re-raised naming the setting
        raise ValueError(
            f"features.ssl.model={model!r} is neither a local folder nor a Hugging Face hub id "
            f"that can be found or downloaded ({type(error).__name__}: {error}); download it "
            "once where there is network access (huggingface-cli download ID) or give the "
            "folder"
        ) from None


def receptive_field(kernels: Iterable[int], strides: Iterable[int]) -> tuple[int, int]:
    """``(samples seen by one frame, samples between frames)`` of a stack of 1-D convolutions."""
    kernels, strides = list(kernels), list(strides)
    field, hop = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * hop
        hop *= stride
    return field, hop


def num_frames(samples: int, field: int, hop: int) -> int:
    """Frames a convolutional encoder gives for ``samples`` samples (0 if too short)."""
    return 0 if samples < field else (samples - field) // hop + 1


def chunk_spans(
    samples: int, field: int, hop: int, chunk_frames: int, context_frames: int
) -> list[tuple[int, int, int, int]]:
    """How to cut a file into chunks on the frame grid.

    Returns:
        ``(first sample, end sample, first kept frame, end kept frame)`` per chunk, frame
        numbers local to the chunk: the chunk's frames ``[first kept, end kept)`` are the file's
        frames ``[k * chunk_frames, ...)`` in order, so their concatenation has
        ``num_frames(samples)`` rows.
    """
    total = num_frames(samples, field, hop)
    spans = []
    for first in range(0, total, chunk_frames):
        end = min(first + chunk_frames, total)
        start_frame = max(0, first - context_frames)
        last_frame = min(total, end + context_frames)  # exclusive
        start_sample = start_frame * hop
        end_sample = min(samples, (last_frame - 1) * hop + field)
        spans.append((start_sample, end_sample, first - start_frame, end - start_frame))
    return spans


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class SSLFrontEnd:
    """One loaded SSL model and what the cache needs to know about it.

    Args:
        config: a :class:`FeatureConfig` with ``feature_set="ssl"``.

    Attributes:
        name: a short name of the model (its folder name) for cache folders and messages.
        folder: the model's local folder.
        sample_rate: the model's input rate.
        hop_seconds: seconds between two output frames.
        hidden_size: width of one frame embedding.
    """

    def __init__(self, config: FeatureConfig):
        require_transformers()
        self.config = config
        self.ssl = config.ssl
        self.layers = config.layers()
        self.folder = model_folder(str(self.ssl.model))
        settings = json.loads((self.folder / "config.json").read_text())
        self.settings = settings
        self.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.folder.name)
        self.hidden_size = int(settings["hidden_size"])
        self.num_layers = int(settings["num_hidden_layers"])
        if self.layers == "all":  # every hidden state side by side: [T, (layers + 1) * H]
            self.hidden_size *= self.num_layers + 1
        for layer in [] if self.layers == "all" else self.layers:
            if not -(self.num_layers + 1) <= layer <= self.num_layers:
                raise ValueError(
                    f"features.ssl.layer={self.ssl.layer!r}: layer {layer} does not exist; "
                    f"{self.folder.name} has hidden states 0..{self.num_layers} (-1 = last)"
                )
        self.field, self.hop = receptive_field(settings["conv_kernel"], settings["conv_stride"])
        pre = self.folder / "preprocessor_config.json"
        preprocessor = json.loads(pre.read_text()) if pre.is_file() else {}
        self.sample_rate = int(preprocessor.get("sampling_rate", 16000))
        self.layer_norm = settings.get("feat_extract_norm", "group") == "layer"
        self.normalize = bool(preprocessor.get("do_normalize", self.layer_norm))
        self.hop_seconds = self.hop / self.sample_rate
        self._model = None
        self._identity: str | None = None

    def identity(self) -> str:
        """sha256 of the model folder's files (computed once)."""
        if self._identity is None:
            self._identity = folder_sha256(self.folder)
        return self._identity

    def description(self) -> dict:
        import transformers

        description = {
            "kind": "ssl",
            "name": self.name,
            "model_sha256": self.identity(),
            "layers": self.layers,
            "sample_rate": self.sample_rate,
            "normalize": self.normalize,
            "chunk_seconds": float(self.ssl.chunk_seconds),
            "context_seconds": float(self.ssl.context_seconds),
            "transformers": transformers.__version__,
            "recipe": RECIPE_VERSION,
        }
        if self.config.max_seconds is not None:
            description["max_seconds"] = self.config.max_seconds
        return description

    def model(self):
        if self._model is None:
            import transformers
            from transformers import AutoModel

            transformers.logging.set_verbosity_error()  # library chatter stays out of the console
            transformers.utils.logging.disable_progress_bar()
            self.device = pick_device(self.ssl.device)
            model = AutoModel.from_pretrained(str(self.folder))
            self._model = model.eval().to(self.device)
        return self._model

    # ---- extraction

    def signal(self, source, name: str | None = None) -> np.ndarray:
        """The model's input for one file (a path or a binary file object): mono, at the
        model's rate, normalised if asked."""
        path = name or str(source)
        signal, _ = load_mono(source, self.sample_rate, path, self.config.max_seconds)
        signal = signal.astype(np.float64)
        if self.normalize:
            signal = (signal - signal.mean()) / math.sqrt(signal.var() + 1e-7)
        if signal.size < self.field:
            raise FeatureError(
                [
                    (
                        path,
                        f"audio too short for {self.name} ({signal.size} samples at "
                        f"{self.sample_rate} Hz; one frame needs {self.field})",
                    )
                ]
            )
        return signal.astype(np.float32)

    def spans(self, samples: int) -> list[tuple[int, int, int, int]]:
        chunk = max(1, round(self.ssl.chunk_seconds / self.hop_seconds))
        context = round(self.ssl.context_seconds / self.hop_seconds)
        return chunk_spans(samples, self.field, self.hop, chunk, context)

    def embed(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        """Frame embeddings ``[frames, H]`` of a batch of signals (one forward pass)."""
        import torch

        model = self.model()
        lengths = [piece.size for piece in pieces]
        batch = np.zeros((len(pieces), max(lengths)), dtype=np.float32)
        for row, piece in enumerate(pieces):
            batch[row, : piece.size] = piece
        inputs = torch.from_numpy(batch).to(self.device)
        mask = None
        if len(set(lengths)) > 1:
            mask = torch.zeros(batch.shape, dtype=torch.long, device=self.device)
            for row, length in enumerate(lengths):
                mask[row, :length] = 1
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's mask-type deprecation notes
            output = model(inputs, attention_mask=mask, output_hidden_states=True)
        if self.layers == "all":
            states = torch.cat(output.hidden_states, dim=-1)
        else:
            states = torch.stack([output.hidden_states[i] for i in self.layers]).mean(0)
        states = states.float().cpu().numpy()
        return [
            states[row, : num_frames(length, self.field, self.hop)]
            for row, length in enumerate(lengths)
        ]

    def _batches(self, pieces: list[tuple]) -> Iterator[list[tuple]]:
        """Groups of at most batch_size pieces; equal lengths only where padding is unsafe."""
        size = int(self.ssl.batch_size)
        if self.layer_norm:
            for start in range(0, len(pieces), size):
                yield pieces[start : start + size]
            return
        by_length: dict[int, list[tuple]] = {}
        for piece in pieces:
            by_length.setdefault(piece[2].size, []).append(piece)
        for group in by_length.values():
            for start in range(0, len(group), size):
                yield group[start : start + size]

    def extract(self, jobs: list) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """Extract, store (atomically, file by file) and yield ``(sha256, [T, H], reason)``.

        Files are read a few at a time (enough for one batch), so memory stays bounded.
        """
        pending: list[tuple] = []  # (job index, chunk index, samples, kept frames)
        parts: dict[int, list] = {}
        queue = list(enumerate(jobs))
        size = int(self.ssl.batch_size)
        while queue or pending:
            while queue and len(pending) < size:
                index, job = queue.pop(0)
                try:
                    signal = self.signal(job.path)
                except FeatureError as error:
                    yield job.sha256, None, "; ".join(reason for _, reason in error.failures)
                    continue
                except Exception as error:  # noqa: BLE001 - a per-file failure
                    yield job.sha256, None, f"{type(error).__name__}: {error}"
                    continue
                spans = self.spans(signal.size)
                parts[index] = [None] * len(spans)
                for chunk, (start, end, keep_from, keep_to) in enumerate(spans):
                    pending.append((index, chunk, signal[start:end], (keep_from, keep_to)))
            work, pending = pending, []
            for group in self._batches(work):
                for (index, chunk, _, (keep_from, keep_to)), frames in zip(
                    group, self.embed([piece[2] for piece in group]), strict=True
                ):
                    parts[index][chunk] = frames[keep_from:keep_to]
            for index in [i for i, chunks in parts.items() if all(c is not None for c in chunks)]:
                job = jobs[index]
                array = np.concatenate(parts.pop(index)).astype(np.float32)
                if not np.isfinite(array).all():
                    yield job.sha256, None, f"{self.name} gave NaN/inf embeddings"
                    continue
                atomic_save_npy(Path(job.out_path), array)  # a full disk stops (WriteError)
                yield job.sha256, array, None


def identity_record(config: FeatureConfig) -> dict:
    """What a checkpoint or bundle records of an SSL front end: the model (as given), the hash
    of its files, the settings that change the features, and the width of a node.

    Raises:
        ValueError: ``layer=all`` (its learned mix lives outside the encoder's weights, which
            bundles do not carry yet).
    """
    if config.ssl.layer == "all":
        raise ValueError(
            "features.ssl.layer=all: the learned layer mix lives outside the encoder's weights "
            "and bundles do not carry it yet; export a run trained with a layer index or list"
        )
    front = SSLFrontEnd(config)
    return {
        "model": str(config.ssl.model),
        "model_sha256": front.identity(),
        "layer": front.layers,
        "chunk_seconds": float(config.ssl.chunk_seconds),
        "context_seconds": float(config.ssl.context_seconds),
        "node_seconds": float(config.node_seconds),
        "width": int(front.hidden_size),
    }


def stacked_layers(cfg) -> int:
    """How many hidden layers each node stacks: ``num_hidden_layers + 1`` for
    ``features.ssl.layer=all`` (mixed in the model by a learned weighted sum), else 1."""
    features = cfg.features
    if features.feature_set != "ssl" or features.ssl.layer != "all":
        return 1
    folder = model_folder(str(features.ssl.model))
    return int(json.loads((folder / "config.json").read_text())["num_hidden_layers"]) + 1


def embed_file(
    config: FeatureConfig, source: str | os.PathLike | io.IOBase, name: str | None = None
) -> np.ndarray:
    """Frame embeddings ``[T, H]`` of one file (path or binary file object), unpooled and
    uncached (for checks, notebooks and audio in memory)."""
    front = SSLFrontEnd(config)
    source = source if isinstance(source, io.IOBase) else os.fspath(source)
    signal = front.signal(source, name)
    parts = []
    for start, end, keep_from, keep_to in front.spans(signal.size):
        parts.append(front.embed([signal[start:end]])[0][keep_from:keep_to])
    return np.concatenate(parts).astype(np.float32)
