"""Command line: ``sergraph <verb> [group=name ...] [key.sub=value ...]``.

Verbs:
    train     cross-validated training and testing; prints the per-fold and overall WA/UA table
    features  extract (or check) the cached openSMILE features of a corpus
    folds     print the fold table: speakers and per-class counts of train/val/test
    cells     list a study's (variant, seed, fold) cells; run one with run.cell=INDEX
    report    tables, paired tests and figures of a run folder (``sergraph report runs/NAME``)
    config    print the resolved configuration

Examples:
    sergraph train                                   # LSTM-GIN on the built-in synthetic corpus
    sergraph train data=emodb data.root=PATH/emodb   # 10-fold leave-one-speaker-out on EmoDB
    sergraph train model=svm data=emodb data.root=PATH/emodb
    sergraph folds data=emodb data.root=PATH/emodb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sergraph.config import ConfigError, compose, group_choices, to_yaml


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
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (
        ("train", "cross-validated training and testing"),
        ("features", "extract and cache openSMILE features"),
        ("folds", "print the speaker-held-out fold table"),
        ("cells", "list the (variant, seed, fold) cells of a study with their indices"),
        ("config", "print the resolved configuration"),
    ):
        sub = verbs.add_parser(verb, help=text)
        sub.add_argument("overrides", nargs="*", help="group=name or key.sub=value")
    report = verbs.add_parser("report", help="summarise a finished run folder")
    report.add_argument("run_dir", help="runs/NAME (all variants) or runs/NAME/LABEL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.verb == "report":
            return _report(Path(args.run_dir))
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
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"sergraph {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _train(overrides: list[str]) -> int:
    import time

    from sergraph.runner import format_summary, run_study

    start = time.perf_counter()
    summaries = run_study(overrides)
    for summary in summaries.values():
        print(format_summary(summary))
    print(f"total wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


def _cells(overrides: list[str]) -> int:
    from sergraph.runner import plan

    _, cells = plan(overrides)
    print("index\tlabel\tseed\tfold")
    for cell in cells:
        print(f"{cell.index}\t{cell.label}\t{cell.seed}\t{cell.fold}")
    return 0


def _report(run_dir: Path) -> int:
    from sergraph.report import write_report

    report = write_report(run_dir)
    print(Path(report["paths"]["report"]).read_text())
    print(
        f"written: {', '.join(report['paths']['figures'] + [report['paths']['results']])}",
        file=sys.stderr,
    )
    return 0


def _features(cfg) -> None:
    import time

    import numpy as np

    from sergraph.runner import feature_cache, load_table

    table, _ = load_table(cfg)
    cache = feature_cache(cfg)
    start = time.perf_counter()
    features = cache.get(table["path"].tolist(), workers=cfg.features.workers)
    nodes = np.array([len(f) for f in features])
    print(
        f"{len(features)} files, {features[0].shape[1]} features per node, nodes per utterance "
        f"min {nodes.min()} median {int(np.median(nodes))} max {nodes.max()}, "
        f"{time.perf_counter() - start:.1f} s; cache {cache.root}"
    )


def _folds(cfg) -> None:
    import pandas as pd

    from sergraph.folds import fold_table
    from sergraph.runner import prepare

    study = prepare(cfg, need_features=False)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(fold_table(study.table, study.folds, study.classes).to_string(index=False))


if __name__ == "__main__":
    raise SystemExit(main())
