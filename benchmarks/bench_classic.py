"""Wall time of the nested classic baselines on a corpus of about 1,500 utterances and 24
speakers (the size of the issue-22 target), against the earlier LinearSVC measured in the same
run.

The corpus: EmoDB's IS10 functionals (from the feature cache, extracting them if needed) resampled
into ``--speakers`` pseudo-speakers of ``--utterances`` rows in all (each pseudo-speaker draws,
with replacement, from one real speaker's utterances and adds noise of 0.1 column std), so the
rows have real functionals' scale and difficulty. Without EmoDB: Gaussian classes of 1,582
dimensions. One outer fold (the first speaker held out; its inner leave-one-speaker-out over the
other speakers, every candidate, the refit) is timed per model; a full LOSO study is about
``--speakers`` times that. Measures and prints; asserts nothing.

    python benchmarks/bench_classic.py                       # svm, svm per-fit kernel, LinearSVC
    python benchmarks/bench_classic.py --models svm svm_rbf logreg
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import emodb_root, machine, table

from sergraph.models import build_baseline
from sergraph.models.classic import SelectedBaseline

#: ``svm`` with its kernel computed per fit (libsvm's own linear kernel) instead of once per
#: split: the same model, the speed-up measured.
PER_FIT = "svm (kernel per fit)"


def emodb_functionals() -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    root = emodb_root()
    if root is None:
        return None
    from sergraph.config import compose
    from sergraph.data.prepared import prepare

    cfg = compose(["model=svm", "data=emodb", f"data.root={root}", "features.workers=1"])
    study = prepare(cfg, inputs="functionals")
    labels = study.table["label"].map(study.classes.index).to_numpy()
    return study.functionals, labels, study.table["speaker"].astype(str).to_numpy()


def corpus(utterances: int, speakers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    real = emodb_functionals()
    if real is None:
        source = "Gaussian classes (EmoDB not found)"
        centres = rng.normal(size=(7, 1582))
        labels = rng.integers(0, 7, size=utterances)
        values = centres[labels] + rng.normal(scale=3.0, size=(utterances, 1582))
        groups = np.arange(utterances) % speakers
        return values, labels, np.array([f"p{g:02d}" for g in groups]), source
    values, labels, real_speakers = real
    source = f"EmoDB IS10 functionals resampled ({len(values)} real utterances)"
    names = sorted(set(real_speakers))
    per_speaker = np.array_split(np.arange(utterances), speakers)
    out_values, out_labels, out_speakers = [], [], []
    noise = 0.1 * values.std(axis=0)
    for j, rows in enumerate(per_speaker):
        pool = np.flatnonzero(real_speakers == names[j % len(names)])
        drawn = rng.choice(pool, size=len(rows), replace=True)
        out_values.append(values[drawn] + rng.normal(size=(len(rows), values.shape[1])) * noise)
        out_labels.append(labels[drawn])
        out_speakers += [f"p{j:02d}"] * len(rows)
    return np.concatenate(out_values), np.concatenate(out_labels), np.array(out_speakers), source


def time_one_fold(name: str, values, labels, speakers) -> tuple[float, dict]:
    baseline = build_baseline("svm" if name == PER_FIT else name)
    if name == PER_FIT:
        baseline.score_candidates = lambda *args: SelectedBaseline.score_candidates(baseline, *args)
    held_out = sorted(set(speakers))[0]
    train, test = np.flatnonzero(speakers != held_out), np.flatnonzero(speakers == held_out)
    start = time.perf_counter()
    _, extra = baseline.fit_predict(
        values, labels, speakers, train, test, num_classes=7, seed=0, normalize="train"
    )
    return time.perf_counter() - start, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=1500)
    parser.add_argument("--speakers", type=int, default=24)
    parser.add_argument("--models", nargs="+", default=["svm", PER_FIT, "svm_linearsvc"])
    args = parser.parse_args()
    print(machine())
    values, labels, speakers, source = corpus(args.utterances, args.speakers)
    print(
        f"corpus: {len(values)} utterances x {values.shape[1]}, {args.speakers} speakers; {source}"
    )
    rows, reference = [], None
    for name in args.models:
        seconds, extra = time_one_fold(name, values, labels, speakers)
        if name == "svm_linearsvc":
            reference = seconds
        rows.append(
            {
                "model": name,
                "one outer fold (s)": round(seconds, 1),
                f"x {args.speakers} folds (min)": round(seconds * args.speakers / 60, 1),
                "chosen": extra["chosen"],
            }
        )
        print(f"  {name}: {seconds:.1f} s for one outer fold", flush=True)
    for row in rows:
        row["LinearSVC / this"] = (
            f"{reference / row['one outer fold (s)']:.1f}x" if reference else "not measured"
        )
    print(table(rows))


if __name__ == "__main__":
    main()
