"""Command line: ``sergraph <verb> [group=name ...] [key.sub=value ...]``.

Verbs:
    train     cross-validated training and testing; prints the per-fold and overall WA/UA table
    features  extract (or check) the cached node features of a corpus (openSMILE, SSL, precomputed)
    folds     print the fold table: speakers and per-class counts of train/val/test
    cells     list a study's (variant, seed, fold) cells; run one with run.cell=INDEX
    report    tables, paired tests and figures of a run folder (``sergraph report runs/NAME``)
    select    nested selection: per cell, the variant with the best validation UA (never test)
    ensemble  average the class probabilities of a variant's seeds, fold by fold
    export    a self-contained model bundle from a finished run (``sergraph export runs/NAME/LABEL``)
    predict   emotions of audio files with a bundle (``sergraph predict BUNDLE AUDIO...``)
    slurm     render and submit the SLURM jobs of a study (``sergraph slurm [--ddp] [--dry-run]``)
    config    print the resolved configuration

Examples:
    sergraph train                                   # LSTM-GIN on the built-in synthetic corpus
    sergraph train data=emodb data.root=PATH/emodb   # 10-fold leave-one-speaker-out on EmoDB
    sergraph train model=svm data=emodb data.root=PATH/emodb
    sergraph folds data=emodb data.root=PATH/emodb
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sergraph.config import ConfigError, compose, group_choices, to_yaml
from sergraph.console import configure as configure_console


def _parser() -> argparse.ArgumentParser:
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
    for verb, text in (
        ("features", "extract and cache node features (openSMILE, SSL, precomputed)"),
        ("folds", "print the speaker-held-out fold table"),
        ("cells", "list the (variant, seed, fold) cells of a study with their indices"),
        ("config", "print the resolved configuration"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("overrides", nargs="*", help="group=name or key.sub=value")
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
        "--candidates", help="comma-separated variant labels (default: all variants)"
    )
    select.add_argument("--label", default="nested", help="name of the new label folder")
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
    _add_slurm_parser(verbs)
    return parser


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
    export.add_argument("run_dir", help="runs/NAME/LABEL (ensemble) or .../seed-S/fold-XX")
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


def _add_predict_parser(verbs) -> None:
    from sergraph.config import ON_ERROR_CHOICES

    predict = verbs.add_parser(
        "predict",
        help="predict the emotion of audio files with a bundle",
        description="Predict the emotion of audio files with a bundle made by `sergraph export`.",
    )
    predict.add_argument("bundle", help="a .sergraph bundle")
    predict.add_argument("audio", nargs="+", help="audio files, folders or manifest CSVs")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v/--verbose may follow the verb; overrides never start with "-".
    verbose = any(item in ("-v", "--verbose") for item in argv)
    argv = [item for item in argv if item not in ("-v", "--verbose")]
    configure_console(verbose)
    args = _parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`sergraph predict ... | head`): stop quietly, as Unix tools do.
        # Python would report the pipe again when flushing stdout at exit; point it at null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool ended by a closed pipe


def _run(args) -> int:
    try:
        if args.verb == "report":
            folds = [int(f) for f in args.folds.split(",")] if args.folds else None
            return _report(
                [Path(d) for d in args.run_dir],
                args.reference,
                args.out,
                args.cross_protocol,
                folds,
            )
        if args.verb == "select":
            return _select(args)
        if args.verb == "ensemble":
            return _ensemble(args)
        if args.verb == "export":
            return _export(args)
        if args.verb == "predict":
            return _predict(args)
        if args.verb == "slurm":
            return _slurm(args)
        if args.verb == "train":
            return _train(args.overrides)
        if args.verb == "cells":
            return _cells(args.overrides)
        cfg = compose(args.overrides)
        if args.verb == "config":
            print(to_yaml(cfg), end="")
        elif args.verb == "features":
            _features(cfg)
        elif args.verb == "folds":
            _folds(cfg)
    except BrokenPipeError:
        raise
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, PermissionError) as error:
        print(f"sergraph {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk that is full, a folder that vanished: name the file
        where = (
            f"{error.filename}: "
            if error.filename and str(error.filename) not in str(error)
            else ""
        )
        print(f"sergraph {args.verb}: error: {where}{error}", file=sys.stderr)
        return 2
    return 0


def _train(overrides: list[str]) -> int:
    import time

    from sergraph.results.summary import format_summary
    from sergraph.training.study import run_study

    start = time.perf_counter()
    summaries = run_study(overrides)
    for summary in summaries.values():
        print(format_summary(summary))
    print(f"total wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def _cells(overrides: list[str]) -> int:
    from sergraph.training.study import plan

    _, cells = plan(overrides)
    print("index\tlabel\tseed\tfold")
    for cell in cells:
        print(f"{cell.index}\t{cell.label}\t{cell.seed}\t{cell.fold}")
    return 0


def _select(args) -> int:
    from sergraph.results.select import select_nested

    candidates = args.candidates.split(",") if args.candidates else None
    chosen = select_nested(Path(args.study_dir), candidates, args.label, args.criterion)
    print("seed\tfold\tselected")
    for (seed, fold), label in chosen.items():
        print(f"{seed}\t{fold}\t{label}")
    if args.reference:
        from sergraph.results.select import compare_per_seed

        table = compare_per_seed(Path(args.study_dir), args.label, args.reference)
        print(f"\npooled UA per seed, {args.label} against the fixed recipe {args.reference}:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"mean difference over {len(table)} seed(s): {table['difference'].mean():+.4f}")
    print(f"written: {Path(args.study_dir) / args.label}", file=sys.stderr)
    return 0


def _ensemble(args) -> int:
    from sergraph.results.select import ensemble_dir, ensemble_seeds
    from sergraph.results.summary import format_summary, summarize

    ensemble_seeds(args.variant_dir)
    print(format_summary(summarize(ensemble_dir(args.variant_dir))))
    return 0


def _report(
    run_dirs: list[Path],
    reference: str | None = None,
    out: str | None = None,
    cross_protocol: bool = False,
    folds: list[int] | None = None,
) -> int:
    from sergraph.results.report import write_report

    report = write_report(
        run_dirs, out, reference=reference, cross_protocol=cross_protocol, folds=folds
    )
    for label, files in report["changed_sources"].items():
        print(
            f"WARNING: {label}: config files changed since its cells ran: {'; '.join(files)}",
            file=sys.stderr,
        )
    print(Path(report["paths"]["report"]).read_text())
    print(
        f"written: {', '.join(report['paths']['figures'] + [report['paths']['results']])}",
        file=sys.stderr,
    )
    return 0


def _export(args) -> int:
    from sergraph.deploy.predict import run_export

    return run_export(args)


def _predict(args) -> int:
    from sergraph.deploy.predict import run_predict

    return run_predict(args)


def _slurm(args) -> int:
    from sergraph.training.slurm import run_slurm

    return run_slurm(args)


def _features(cfg) -> None:
    import time

    import numpy as np

    from sergraph.data.prepared import feature_cache, feature_inputs, load_table

    table, _ = load_table(cfg)
    cache = feature_cache(cfg)
    start = time.perf_counter()
    paths, shard = feature_inputs(cfg, table), ""
    if cfg.features.shard is not None:  # one SLURM array task's share: every n-th file from i
        index, count = (int(part) for part in cfg.features.shard.split("/"))
        paths, shard = paths[index::count], f"shard {cfg.features.shard} of {len(paths)} files: "
        if not paths:
            print(f"{shard}no files")
            return
    features = cache.get(paths, workers=cfg.features.workers)
    nodes = np.array([len(f) for f in features])
    print(
        f"{shard}{len(features)} files, {features[0].shape[1]} features per node, nodes per utterance "
        f"min {nodes.min()} median {int(np.median(nodes))} max {nodes.max()}, "
        f"{time.perf_counter() - start:.1f} s; cache {cache.root}"
    )


def _folds(cfg) -> None:
    import pandas as pd

    from sergraph.config import protocol_of
    from sergraph.data.folds import NOT_SPEAKER_INDEPENDENT, fold_table
    from sergraph.data.prepared import prepare
    from sergraph.data.protocol import enrollment_rows

    study = prepare(cfg, need_features=False)
    enroll = None
    if protocol_of(cfg) == "enrollment":
        # as the neural runner does: validation and test speakers (the SVM enrolls test only)
        def enroll(fold):
            held_out = fold.val_speakers + fold.test_speakers
            return enrollment_rows(
                study.table, held_out, cfg.eval.enrollment, cfg.eval.enrollment_seed
            )

    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(fold_table(study.table, study.folds, study.classes, enroll).to_string(index=False))
    if not all(fold.speaker_independent for fold in study.folds):
        print(f"note: these folds are {NOT_SPEAKER_INDEPENDENT}")


if __name__ == "__main__":
    raise SystemExit(main())
