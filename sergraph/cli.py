"""Command line: ``sergraph <verb> [group=name ...] [key.sub=value ...]``.

Verbs:
    train     cross-validated training and testing; prints the per-fold and overall scores table
    features  extract (or check) the cached node features of a corpus (openSMILE, SSL, precomputed)
    folds     print the fold table: speakers and per-class counts of train/val/test
    cells     list a study's (variant, seed, fold) cells; run one with run.cell=INDEX
    report    tables, paired tests and figures of a run folder (``sergraph report runs/NAME``)
    select    nested selection: per cell, the variant with the best validation UA (never test)
    ensemble  average the class probabilities of a variant's seeds, fold by fold
    export    a self-contained model bundle from a finished run (``sergraph export runs/NAME/LABEL``)
    predict   emotions of audio files with a bundle (``sergraph predict BUNDLE AUDIO...``)
    evaluate  score a bundle on a labelled corpus (``sergraph evaluate BUNDLE data=...``)
    slurm     render and submit the SLURM jobs of a study (``sergraph slurm [--ddp] [--dry-run]``)
    config    print the resolved configuration

Examples:
    sergraph train                                   # LSTM-GIN on the built-in synthetic corpus
    sergraph train data=emodb data.root=PATH/emodb   # 10-fold leave-one-speaker-out on EmoDB
    sergraph train model=svm data=emodb data.root=PATH/emodb
    sergraph folds data=emodb data.root=PATH/emodb
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sergraph.cli_parser import build_parser, hoist_study_options
from sergraph.config import ConfigError, compose, to_yaml
from sergraph.console import configure as configure_console
from sergraph.console import error as console_error


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # -v/--verbose may follow the verb; overrides never start with "-".
    verbose = any(item in ("-v", "--verbose") for item in argv)
    argv = [item for item in argv if item not in ("-v", "--verbose")]
    configure_console(verbose)
    args = build_parser().parse_args(hoist_study_options(argv))
    if getattr(args, "overrides", None) is not None:
        args.overrides = study_overrides(args)
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


def study_overrides(args) -> list[str]:
    """A study verb's overrides as the study functions take them: a multirun's start with the
    marker ``-m`` (so the same list, passed to a worker or an sbatch script, runs the same
    grid), ``--reference LABEL`` becomes ``reference=LABEL``."""
    from sergraph.config.labels import MULTIRUN

    overrides = list(args.overrides)
    if getattr(args, "reference", None):
        overrides.append(f"reference={args.reference}")
    return [MULTIRUN, *overrides] if getattr(args, "multirun", False) else overrides


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
                args.cross_data,
            )
        if args.verb == "select":
            return _select(args)
        if args.verb == "ensemble":
            return _ensemble(args)
        if args.verb == "export":
            return _export(args)
        if args.verb == "predict":
            return _predict(args)
        if args.verb == "evaluate":
            from sergraph.deploy.evaluate import run_evaluate

            return run_evaluate(args)
        if args.verb == "slurm":
            return _slurm(args)
        if args.verb == "train":
            return _train(args.overrides, args.rerun_changed)
        if args.verb == "cells":
            return _cells(args.overrides)
        # config and folds only show a configuration: they check model.params names, not the
        # values a model's constructor checks, and so start without importing torch
        cfg = compose(args.overrides, build_model=args.verb == "features")
        if args.verb == "config":
            print(to_yaml(cfg), end="")
        elif args.verb == "features":
            _features(cfg)
        elif args.verb == "folds":
            _folds(cfg)
    except BrokenPipeError:
        raise
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError, PermissionError) as error:
        console_error(f"sergraph {args.verb}: error: {error}")
        leave_process_group()
        return 2
    except OSError as error:  # a disk that is full, a folder that vanished: name the file
        where = (
            f"{error.filename}: "
            if error.filename and str(error.filename) not in str(error)
            else ""
        )
        console_error(f"sergraph {args.verb}: error: {where}{error}")
        leave_process_group()
        return 2
    except Exception as error:  # a bug: the traceback on stderr (Python) and in the log file
        console_error(f"sergraph {args.verb}: unexpected {type(error).__name__}", traceback=True)
        leave_process_group()
        raise
    return 0


def leave_process_group() -> None:
    """On an error exit of a distributed run: destroy the process group before the interpreter
    exits. Exiting with it alive left gloo's communication threads running at shutdown, and a
    node could then abort ("terminate called without an active exception", exit -6) instead of
    exiting with the error's code. torch.distributed is not imported here if it was not already.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - the error already reported is what the user needs
        pass


def _train(overrides: list[str], rerun_changed: bool = False) -> int:
    import time

    from sergraph.console import log
    from sergraph.training.capabilities import WORKER_PRELOAD, may_use_workers

    if may_use_workers(overrides):  # the workers' imports run beside this process's (seconds)
        from sergraph.processes import prestart

        prestart(WORKER_PRELOAD)
    from sergraph.results.summary import format_summary
    from sergraph.training.stopping import RESUME_HINT, stop_on_signals, stopped_from
    from sergraph.training.study import run_study

    start = time.perf_counter()
    try:
        with stop_on_signals():
            summaries = run_study(overrides, rerun_changed=rerun_changed)
    except BaseException as error:
        # SIGTERM/SIGINT: a non-zero status (128 + signal) and one line, never a silent 0
        stop = stopped_from(error)
        if stop is None:
            raise
        if not getattr(stop, "reported", False):  # stopped outside the cells
            log(f"sergraph train: {stop}; {RESUME_HINT}")
        return stop.exit_code
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

    candidates = None
    if args.candidates:
        study = Path(args.study_dir)
        known = (
            {path.name for path in study.iterdir() if path.is_dir()} if study.is_dir() else set()
        )
        candidates = split_labels(args.candidates, known)
    chosen = select_nested(
        Path(args.study_dir), candidates, args.label, args.criterion, cross_data=args.cross_data
    )
    print("seed\tfold\tselected")
    for (seed, fold), label in chosen.items():
        print(f"{seed}\t{fold}\t{label}")
    if args.reference:
        from sergraph.metrics import primary
        from sergraph.results.select import compare_per_seed

        table = compare_per_seed(Path(args.study_dir), args.label, args.reference)
        print(
            f"\npooled {primary().display} per seed, {args.label} against the fixed recipe "
            f"{args.reference}:"
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(f"mean difference over {len(table)} seed(s): {table['difference'].mean():+.4f}")
    print(f"written: {Path(args.study_dir) / args.label}", file=sys.stderr)
    return 0


def split_labels(text: str, known: set[str]) -> list[str]:
    """A comma-separated list of labels, where labels may hold commas themselves (a grid's
    ``k=2,readout=sum``): at each place the longest run of items that is a known label."""
    items, labels, start = text.split(","), [], 0
    while start < len(items):
        end = next(
            (end for end in range(len(items), start, -1) if ",".join(items[start:end]) in known),
            start + 1,
        )
        labels.append(",".join(items[start:end]))
        start = end
    return labels


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
    cross_data: bool = False,
) -> int:
    from sergraph.results.report import write_report

    report = write_report(
        run_dirs,
        out,
        reference=reference,
        cross_protocol=cross_protocol,
        folds=folds,
        cross_data=cross_data,
    )
    for first, second, what in report["refused_data"]:
        print(
            f"sergraph report: refused to pair {first} with {second}: {'; '.join(what)} "
            "(--cross-data to pair anyway)",
            file=sys.stderr,
        )
    for first, second in report["refused_corpus"]:
        print(
            f"sergraph report: not pairing {first} with {second}: one is cross-corpus, the "
            "other within-corpus (never paired)",
            file=sys.stderr,
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

    from sergraph.config import model_family, protocol_of
    from sergraph.data.folds import NOT_SPEAKER_INDEPENDENT, fold_table
    from sergraph.data.prepared import prepare
    from sergraph.data.protocol import enrollment_rows, enrollment_speakers
    from sergraph.models import is_classic

    study = prepare(cfg, need_features=False)
    enroll = None
    if protocol_of(cfg) == "enrollment":
        # the rows the configured model's cells hold aside (a classic baseline fits on the
        # validation speakers, so it enrolls its test speakers only)
        classic = is_classic(model_family(cfg))

        def enroll(fold):
            held_out = enrollment_speakers(fold, fits_on_validation=classic)
            return enrollment_rows(
                study.table, held_out, cfg.eval.enrollment, cfg.eval.enrollment_seed
            )

    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(fold_table(study.table, study.folds, study.classes, enroll).to_string(index=False))
    if not all(fold.speaker_independent for fold in study.folds):
        print(f"note: these folds are {NOT_SPEAKER_INDEPENDENT}")


if __name__ == "__main__":
    raise SystemExit(main())
