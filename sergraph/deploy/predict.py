"""The ``sergraph export`` and ``sergraph predict`` verbs: inputs, outputs and messages.

The work itself is in :mod:`sergraph.deploy.bundle`; this module turns command-line inputs (files,
folders, manifest CSVs) into a list of audio files and writes the predictions as a table, CSV
or JSON lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

#: File name endings searched for in folders (any file named explicitly is tried whatever its
#: name: the format is recognised from the header).
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".mp3")
OUTPUT_FORMATS = ("table", "csv", "jsonl")


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[str]:
    """Audio files named by command-line inputs, in the order given.

    Args:
        items: audio files; folders (searched recursively for :data:`AUDIO_SUFFIXES`, sorted);
            CSV manifests (``.csv``) with a ``path`` column, relative paths resolved against
            the CSV's folder (the corpus manifest format; other columns are ignored).

    Returns:
        File paths. A file listed twice is predicted twice.

    Raises:
        FileNotFoundError: an input or a manifest row's file does not exist (all are named).
        ValueError: a folder without audio files, a manifest without a ``path`` column or
            with empty ``path`` cells, or no inputs at all.
    """
    if not items:
        raise ValueError("no audio given: name files, folders or a manifest CSV")
    paths: list[str] = []
    missing: list[str] = []
    for item in items:
        item = Path(item).expanduser()
        if item.is_dir():
            found = sorted(
                str(p)
                for p in item.rglob("*")
                if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"folder {item} holds no audio files (searched for {list(AUDIO_SUFFIXES)})"
                )
            paths += found
        elif item.is_file() and item.suffix.lower() == ".csv":
            listed, absent = _manifest_paths(item)
            paths += listed
            missing += absent
        elif item.is_file():
            paths.append(str(item))
        else:
            missing.append(str(item))
    if missing:
        shown = "; ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise FileNotFoundError(f"{len(missing)} input(s) do not exist: {shown}")
    return paths


def _manifest_paths(csv_path: Path) -> tuple[list[str], list[str]]:
    from sergraph.data.corpora.manifest import read_manifest_csv

    frame = read_manifest_csv(csv_path)
    if "path" not in frame.columns:
        raise ValueError(
            f"manifest {csv_path} has no 'path' column (it has {list(frame.columns)}); a "
            "prediction manifest needs one row per audio file in a 'path' column"
        )
    paths, missing = [], []
    for number, cell in enumerate(frame["path"].str.strip(), start=1):
        if not cell:
            raise ValueError(f"manifest {csv_path}: empty 'path' in row {number}")
        path = (csv_path.parent / Path(cell).expanduser()).resolve()
        (paths if path.is_file() else missing).append(
            str(path) if path.is_file() else f"{csv_path} row {number}: {path}"
        )
    return paths, missing


def write_predictions(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write predictions atomically: ``.csv`` as CSV, ``.jsonl``/``.json`` as JSON lines."""
    from sergraph.io import atomic_write_text

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        atomic_write_text(path, frame.to_csv(index=False))
    elif suffix in (".jsonl", ".json"):
        atomic_write_text(path, to_jsonl(frame))
    else:
        raise ValueError(f"--output {path}: name a .csv, .jsonl or .json file")
    return path


def to_jsonl(frame: pd.DataFrame) -> str:
    """One JSON object per row; NaN becomes null, floats keep 6 decimals."""
    import json
    import math

    def clean(value):
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 6)
        return value.item() if hasattr(value, "item") else value

    return "".join(
        json.dumps({key: clean(value) for key, value in record.items()}) + "\n"
        for record in frame.to_dict(orient="records")
    )


def format_table(frame: pd.DataFrame) -> str:
    """Predictions as an aligned text table (probabilities to 3 decimals)."""
    shown = frame.copy()
    if "segment" in shown and not (shown["segment"] > 0).any():
        shown = shown.drop(columns=["segment"])
    if "error" in shown and not (shown["error"] != "").any():
        shown = shown.drop(columns=["error"])
    with pd.option_context("display.max_rows", None, "display.width", 250):
        return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def run_export(args) -> int:
    from sergraph.deploy.export import export_bundle

    onnx_dir = getattr(args, "onnx", None)
    if onnx_dir is not None and Path(args.run_dir).is_file():  # an existing bundle to ONNX
        from sergraph.deploy.bundle import load_bundle

        return _export_onnx(load_bundle(args.run_dir, map_location="cpu"), onnx_dir)
    out, bundle = export_bundle(
        args.run_dir,
        args.output,
        folds=args.fold,
        seeds=args.seed,
        data_root=args.data_root,
        verify=not args.no_verify,
        partial=getattr(args, "partial", False),
    )
    print(f"wrote {out}")
    print(bundle.describe())
    if onnx_dir is not None:
        return _export_onnx(bundle, onnx_dir)
    return 0


def _export_onnx(bundle, out_dir) -> int:
    from sergraph.deploy.onnx import export_onnx

    written, sidecar = export_onnx(bundle, out_dir)
    check = sidecar["check"]
    audonnx = sidecar["audonnx"]
    files = ["model.onnx", "model.json", "MODEL_CARD.md", audonnx["file"]]
    print(f"wrote {written} ({', '.join(name for name in files if name)})")
    if check["checked"]:
        print(
            f"checked under ONNX Runtime: max |difference| {check['max_abs_diff']:.1e} from the "
            f"bundle's probabilities on {check['n']} inputs (tolerance {check['tolerance']:g})"
        )
    else:
        print(f"not checked: {check['why']}", file=sys.stderr)
    if "why" in audonnx:  # no model.yaml, or one without the openSMILE transform
        print(f"audonnx: {audonnx['why']}", file=sys.stderr)
    return 0


def rate_note(bundle, paths: Sequence[str]) -> str | None:
    """One line on the sample rates of the audio given (headers only), or ``None``: the files
    not at the rate the bundle's features were computed at are resampled to it."""
    from collections import Counter

    from sergraph.data.features import audio_info

    if not bundle.feature_config.is_opensmile:
        return None  # SSL front ends resample to their model's rate, always
    rates = Counter(info[1] for info in map(audio_info, paths) if info is not None)
    trained = bundle.feature_config.sample_rate
    if trained is None:
        if len(rates) < 2:
            return None
        return (
            f"note: the audio mixes sample rates ({_rates(rates)}) and this bundle does not "
            "record the rate its features were computed at (exported by an older sergraph, or "
            "trained on mixed rates): each file is analysed at its own rate, which changes "
            "openSMILE features; resample the files to the training corpus's rate"
        )
    other = Counter({rate: n for rate, n in rates.items() if rate != trained})
    if not other:
        return None
    return (
        f"note: {sum(other.values())} file(s) resampled to {trained} Hz, the rate this bundle's "
        f"features were computed at (found {_rates(other)})"
    )


def _rates(rates) -> str:
    return ", ".join(f"{rate} Hz ({n} file(s))" for rate, n in sorted(rates.items()))


def run_predict(args) -> int:
    from sergraph.deploy.bundle import load_bundle

    if getattr(args, "info", False):
        if args.audio:
            raise ValueError("--info prints the bundle's model card; give no audio with it")
        print(load_bundle(args.bundle, map_location="cpu").model_card.rstrip("\n"))
        return 0
    paths = expand_inputs(args.audio)  # before loading anything: bad inputs fail at once
    if args.output is not None and Path(args.output).suffix.lower() not in (
        ".csv",
        ".jsonl",
        ".json",
    ):
        raise ValueError(f"--output {args.output}: name a .csv, .jsonl or .json file")
    from sergraph.deploy.enroll import NO_ENROLLMENT, input_speakers, parse_enroll

    enrollment = parse_enroll(getattr(args, "enroll", None) or [], expand_inputs)
    speakers = input_speakers(args.audio, paths, getattr(args, "speaker", None))
    unused = sorted(set(enrollment) - {s for s in speakers if s is not None})
    if unused:  # before any work: that audio would be ignored
        raise ValueError(
            f"--enroll gives enrollment audio of speaker(s) {unused}, but no file to predict is "
            "said to be theirs, so it would be unused; name the speaker of the files with "
            "--speaker SPEAKER, or give them in a manifest CSV with a speaker column"
        )
    device = None if args.device == "auto" else args.device
    bundle = load_bundle(
        args.bundle, map_location=device, ssl_model=getattr(args, "ssl_model", None)
    )
    if not args.quiet:
        print(f"{bundle!r} on {bundle.device}; {len(paths)} file(s)", file=sys.stderr)
        note = rate_note(bundle, paths + [p for files in enrollment.values() for p in files])
        if note:
            print(note, file=sys.stderr)
    frame = bundle.predict(
        paths,
        batch_size=args.batch_size,
        workers=args.workers,
        window=args.window,
        hop=args.hop,
        on_error=args.on_error,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        speakers=speakers,
        enrollment=enrollment,
    )
    if "normalised_with" in frame:
        bare = frame[frame["normalised_with"] == NO_ENROLLMENT]
        if len(bare):
            names = sorted({s or "(speaker unknown)" for s in bare["speaker"]})
            print(
                f"{bare['path'].nunique()} file(s) of {', '.join(names)}: no enrollment audio "
                "for this speaker, normalised with the training speakers' statistics instead "
                "(give --enroll SPEAKER=FILES and --speaker or a manifest speaker column)",
                file=sys.stderr,
            )
    from sergraph.deploy.bundle import NON_FINITE_ERROR

    broken = frame[frame["error"] == NON_FINITE_ERROR]
    failed = frame[(frame["error"] != "") & (frame["error"] != NON_FINITE_ERROR)]
    if len(failed):
        listed = "\n".join(f"  {row.path}: {row.error}" for row in failed.itertuples())
        print(
            f"{failed['path'].nunique()} file(s) could not be read (skipped):\n{listed}",
            file=sys.stderr,
        )
    max_nodes = bundle.meta["graph"]["max_nodes"]
    if args.window is None and max_nodes is not None:
        cut = frame[(frame["error"] == "") & (frame["end"] < frame["duration"] - 0.5)]
        if len(cut) and not args.quiet:
            seconds = max_nodes * bundle.node_seconds
            print(
                f"{len(cut)} file(s) are longer than the {seconds:g} s the model sees; only "
                f"their first {seconds:g} s were used (see the end column). For per-segment "
                f"predictions use --window {seconds:g} (and --hop).",
                file=sys.stderr,
            )
    text = {"table": format_table, "csv": lambda f: f.to_csv(index=False), "jsonl": to_jsonl}
    print(text[args.format](frame).rstrip("\n"))
    if args.output is not None:
        written = write_predictions(frame, args.output)
        if not args.quiet:
            print(f"written: {written}", file=sys.stderr)
    if len(broken):
        print(
            f"sergraph predict: error: {len(broken)} prediction(s) of {args.bundle} are not "
            f"finite, so no emotion was given for them (see the error column): {NON_FINITE_ERROR}",
            file=sys.stderr,
        )
        return 2
    return 0
