"""The ``sergraph`` command line's argument parser: its verbs, their options and help texts.

:mod:`sergraph.cli` parses with :func:`build_parser` and runs the verb.
"""

from __future__ import annotations

import argparse

from sergraph.config import group_choices


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sergraph`` and its verbs (see :mod:`sergraph.cli`)."""
    parser = argparse.ArgumentParser(
        prog="sergraph",
        description="Speech emotion recognition with graph neural networks.",
        epilog=(
            f"config groups: data={group_choices('data')}, model={group_choices('model')}, "
            f"trainer={group_choices('trainer')}, experiment={group_choices('experiment')}"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from sergraph.version import __version__

    parser.add_argument("--version", action="version", version=f"sergraph {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show library messages (Lightning, PyG, warnings) on the console; they are "
        "always in the study's sergraph.log. Accepted anywhere on the command line.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    train = verbs.add_parser(
        "train",
        help="cross-validated training and testing",
        description="Cross-validated training and testing: every (variant, seed, fold) cell of "
        "the study is trained with early stopping on its validation speakers and tested once "
        "on its held-out speakers. Results go to run.out_dir/run.name/LABEL/seed-S/fold-XX/; "
        "a rerun skips finished cells and resumes interrupted ones.",
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("overrides", nargs="*", help="group=name or key.sub=value")
    _add_multirun_options(train)
    train.add_argument(
        "--rerun-changed",
        action="store_true",
        help="finished cells whose data changed since they ran (speakers added or removed, "
        "labels or audio changed, fold numbering shifted) are moved aside and computed again; "
        "without it such a rerun is refused before any work",
    )
    for verb, text in (
        ("features", "extract and cache node features (openSMILE, SSL, precomputed)"),
        ("folds", "print the speaker-held-out fold table"),
        ("cells", "list the (variant, seed, fold) cells of a study with their indices"),
        ("config", "print the resolved configuration"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("overrides", nargs="*", help="group=name or key.sub=value")
        _add_multirun_options(sub)
    report = verbs.add_parser("report", help="summarise a finished run folder")
    report.add_argument(
        "run_dir", nargs="+", help="runs/NAME (all variants) or runs/NAME/LABEL; several to compare"
    )
    report.add_argument("--out", help="output folder (default RUN_DIR/report; needed for several)")
    report.add_argument(
        "--reference",
        help="label every other label is paired with (default: the experiment's declared "
        "`reference`; never chosen by a test score)",
    )
    report.add_argument(
        "--cross-protocol",
        action="store_true",
        help="also pair labels of different evaluation protocols (labelled in the report)",
    )
    report.add_argument(
        "--cross-data",
        action="store_true",
        help="also pair labels whose cells scored other utterances or come from other data "
        "(a deliberate cross-corpus comparison; labelled CROSS-DATA in the report)",
    )
    report.add_argument(
        "--folds",
        help="only these fold indices, comma-separated (e.g. the folds never looked at while "
        "shaping a recipe); the labels' summary files are left alone",
    )
    select = verbs.add_parser(
        "select",
        help="nested selection: per (seed, fold), the variant with the best validation UA",
    )
    select.add_argument("study_dir", help="runs/NAME holding the variant folders")
    select.add_argument(
        "--candidates",
        help="comma-separated variant labels (default: all variants); a grid's labels, which "
        "hold commas themselves (k=2,readout=sum), are recognised",
    )
    select.add_argument("--label", default="nested", help="name of the new label folder")
    select.add_argument(
        "--cross-data",
        action="store_true",
        help="also choose between candidates whose cells scored other utterances or come from "
        "other data (recorded in each chosen cell's metrics.json)",
    )
    select.add_argument(
        "--criterion",
        choices=("cell", "fold"),
        default="cell",
        help="cell: per (seed, fold) on that seed's validation UA; fold: per fold on the "
        "validation UA averaged over all seeds (less noisy)",
    )
    select.add_argument(
        "--reference", help="the fixed recipe's label: print both pooled UAs seed by seed"
    )
    ensemble = verbs.add_parser(
        "ensemble", help="seed ensemble of one variant (probabilities averaged per fold)"
    )
    ensemble.add_argument("variant_dir", help="runs/NAME/LABEL holding seed-*/fold-*/")
    _add_export_parser(verbs)
    _add_predict_parser(verbs)
    _add_evaluate_parser(verbs)
    _add_slurm_parser(verbs)
    return parser


#: Verbs of a study's overrides: they take -m/--multirun and --reference (anywhere on the line).
STUDY_VERBS = ("train", "features", "folds", "cells", "config", "slurm")


def _add_multirun_options(sub) -> None:
    sub.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="a grid: every KEY=a,b,c override lists values (commas inside [...] do not "
        "split); their cross product is the variants of one study, each labelled by its "
        "settings (k=2,readout=sum). Accepted anywhere after the verb.",
    )
    sub.add_argument(
        "--reference",
        metavar="LABEL",
        help="the study's declared reference variant (default for a grid: its first point); "
        "the same as the override reference=LABEL",
    )


def hoist_study_options(argv: list[str]) -> list[str]:
    """``-m``/``--multirun`` and ``--reference LABEL`` of a study verb moved to just after the
    verb, so that they may stand anywhere among the overrides (as ``-v`` may)."""
    verb_at = next((i for i, item in enumerate(argv) if not item.startswith("-")), None)
    if verb_at is None or argv[verb_at] not in STUDY_VERBS:
        return argv
    hoisted, rest, items = [], [], iter(argv[verb_at + 1 :])
    for item in items:
        if item in ("-m", "--multirun") or item.startswith("--reference="):
            hoisted.append(item)
        elif item == "--reference":  # without its LABEL argparse says so
            hoisted += [item, *[value for value in [next(items, None)] if value is not None]]
        else:
            rest.append(item)
    return [*argv[: verb_at + 1], *hoisted, *rest]


#: The keys most often changed on the command line, with what they do.
COMMON_KEYS = (
    ("data.root=PATH", "where the corpus (or, for data=manifest, its CSV) is"),
    ("run.name=NAME", "the study folder under run.out_dir (default runs/)"),
    ("run.seeds=[0,1,2]", "seeds; each is a full cross-validation"),
    ("run.parallel=N", "cells run at once in separate processes"),
    ("folds.only=[0,1]", "a subset of the folds"),
    ("folds.val_speakers=N", "validation speakers drawn from each fold's training side"),
    ("optim.lr=1e-4", "learning rate (a diverging loss stops the cell and names it)"),
    ("optim.batch_size=32", "graphs per batch"),
    ("trainer.max_epochs=200", "most epochs; trainer.patience=20 stops earlier"),
    ("trainer.accelerator=gpu", "auto, cpu, gpu; trainer.devices=N for several"),
    ("graph.k=4", "temporal neighbours per node"),
    ("features.on_error=skip", "leave out unreadable audio files (listed)"),
    ("logger.kind=wandb", "csv (default), wandb or none"),
)


def _train_epilog() -> str:
    groups = "\n".join(
        f"  {group}={{{','.join(group_choices(group))}}}"
        for group in ("data", "model", "trainer", "experiment")
    )
    width = max(len(key) for key, _ in COMMON_KEYS)
    keys = "\n".join(f"  {key.ljust(width)}  {text}" for key, text in COMMON_KEYS)
    return (
        f"config groups:\n{groups}\n\nmost used keys (all: sergraph config):\n{keys}\n\n"
        "examples:\n"
        "  sergraph train                                   # LSTM-GIN on the synthetic corpus\n"
        "  sergraph train data=emodb data.root=PATH/emodb   # leave-one-speaker-out on EmoDB\n"
        "  sergraph train model=svm data=emodb data.root=PATH/emodb\n"
        "  sergraph train experiment=quickstart run.name=first\n"
        "  sergraph train optim.lr=3e-4 run.seeds=[0,1,2] run.parallel=3\n"
        "  sergraph train -m graph.k=2,4 model.params.readout=sum,mean run.name=grid\n"
        "  sergraph config data=emodb                       # every key with its value"
    )


def _add_slurm_parser(verbs) -> None:
    slurm = verbs.add_parser(
        "slurm",
        help="render and submit the SLURM jobs of a study",
        description="Render slurm/*.sbatch with the slurm: settings (partition, account, time, "
        "GPUs, environment activation) and submit: feature extraction (array over shards), "
        "training (one array task per cell, or one multi-GPU run with --ddp) and the report "
        "(after the training succeeded). Prints the job ids. See slurm/README.md.",
    )
    slurm.add_argument("overrides", nargs="*", help="group=name or key.sub=value")
    _add_multirun_options(slurm)
    slurm.add_argument("--ddp", action="store_true", help="one multi-GPU/multi-node training run")
    slurm.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    slurm.add_argument(
        "--no-features", action="store_true", help="no feature-extraction job (cache is filled)"
    )
    slurm.add_argument(
        "--wait", action="store_true", help="return when the report job has ended (sbatch --wait)"
    )


def _add_export_parser(verbs) -> None:
    export = verbs.add_parser(
        "export",
        help="write a self-contained model bundle from a finished run",
        description="Write a model bundle (weights, configuration, feature settings, "
        "normalisation statistics, class names, fold provenance) from a finished run; needs only "
        "the run folder. A model folder runs/NAME/LABEL gives an ensemble of its fold models "
        "(recommended).",
    )
    export.add_argument(
        "run_dir",
        help="runs/NAME/LABEL (ensemble) or .../seed-S/fold-XX (with --onnx also a .sergraph bundle)",
    )
    export.add_argument(
        "--onnx",
        metavar="DIR",
        help="also write the bundle as ONNX (model.onnx, model.json, MODEL_CARD.md, and "
        "model.yaml for audonnx when it is installed) into DIR",
    )
    export.add_argument("-o", "--output", help="bundle file (default RUN_DIR/bundle.sergraph)")
    export.add_argument("--fold", type=int, action="append", help="only this fold (repeatable)")
    export.add_argument("--seed", type=int, action="append", help="only this seed (repeatable)")
    export.add_argument(
        "--data-root",
        help="the training corpus, only for checkpoints of an older sergraph that do not carry "
        "their normalisation statistics (export needs only the run folder otherwise)",
    )
    export.add_argument(
        "--no-verify", action="store_true", help="skip re-predicting the test speakers"
    )
    export.add_argument(
        "--partial",
        action="store_true",
        help="export a study whose folds are not all finished (refused otherwise); the bundle "
        "says which are missing",
    )


class _IntermixedParser(argparse.ArgumentParser):
    """A verb whose optional positional list (``nargs="*"``) may come after options, as the
    ``nargs="+"`` one it replaced could (argparse otherwise gives the list no values)."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _add_evaluate_parser(verbs) -> None:
    evaluate = verbs.add_parser(
        "evaluate",
        help="score a bundle on a labelled corpus (cross-corpus): its scores, a cell for report",
        description="Score a bundle on a labelled corpus under the bundle's protocol; writes "
        "OUT_DIR/NAME/LABEL/seed-0/fold-00 (metrics.json, predictions.csv) for sergraph report.",
    )
    evaluate.add_argument("bundle", help="a .sergraph bundle")
    evaluate.add_argument("overrides", nargs="*", help="data=NAME data.root=PATH data.*=VALUE")
    evaluate.add_argument(
        "--map",
        action="append",
        help="CORPUS_CLASS=BUNDLE_CLASS (repeatable, or comma-separated)",
    )
    evaluate.add_argument(
        "--drop", action="append", help="leave out the utterances of this corpus class"
    )
    evaluate.add_argument("--out-dir", default="runs", help="results folder (default runs)")
    evaluate.add_argument("--name", default="evaluate", help="study name (default evaluate)")
    evaluate.add_argument("--label", help="default: BUNDLE_STEM-on-CORPUS")
    evaluate.add_argument("--workers", type=int, default=2, help="feature-extraction processes")
    evaluate.add_argument("--cache-dir", help="feature cache (default $SERGRAPH_CACHE/features)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_predict_parser(verbs) -> None:
    from sergraph.config import ON_ERROR_CHOICES

    predict = verbs.add_parser(
        "predict",
        help="predict the emotion of audio files with a bundle",
        description="Predict the emotion of audio files with a bundle made by `sergraph export`.",
    )
    # audio is optional (--info), so it may follow options: `predict B --workers 1 A.wav`
    predict.__class__ = _IntermixedParser
    predict.add_argument("bundle", help="a .sergraph bundle")
    predict.add_argument("audio", nargs="*", help="audio files, folders or manifest CSVs")
    predict.add_argument(
        "--info", action="store_true", help="print the bundle's model card (MODEL_CARD.md) and stop"
    )
    predict.add_argument("-o", "--output", help="also write to this .csv or .jsonl file")
    predict.add_argument(
        "--format", choices=("table", "csv", "jsonl"), default="table", help="stdout format"
    )
    predict.add_argument("--batch-size", type=int, default=32, help="graphs per forward pass")
    predict.add_argument("--workers", type=int, default=2, help="feature-extraction processes")
    predict.add_argument("--window", type=float, help="seconds per segment (long recordings)")
    predict.add_argument("--hop", type=float, help="seconds between segments (default: window)")
    predict.add_argument(
        "--on-error",
        choices=ON_ERROR_CHOICES,
        default="stop",
        help="files that cannot be read: stop (list them, no predictions) or skip (list them, "
        "predict the others)",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    predict.add_argument(
        "--enroll",
        action="append",
        default=[],
        metavar="SPEAKER=DIR_OR_FILES",
        help="unlabelled enrollment audio of a speaker (files comma-separated, or a folder), or "
        "a manifest CSV with path and speaker columns; for bundles trained with "
        "eval.protocol=enrollment (repeatable)",
    )
    predict.add_argument(
        "--speaker",
        help="the speaker of the audio to predict (a manifest's speaker column wins)",
    )
    predict.add_argument("--cache-dir", help="feature cache (default $SERGRAPH_CACHE/features)")
    predict.add_argument(
        "--ssl-model", help="bundles of SSL features: the SSL model's folder on this machine"
    )
    predict.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar or notes on stderr"
    )
