"""How cost grows with work: nodes per graph and corpus size, as a table and a log-log plot.

1. Nodes per graph (60/120/240/480, padded, k=4): one training step (forward, backward, Adam)
   of a model (default LSTM-GIN) at batch size 32: time and the growth of peak resident memory
   during the step (kernel peak counter reset first; Linux).
2. Corpus size (an EmoDB-sized synthetic fold of random pooled features scaled 1x/4x/16x, 535
   to 8560 utterances, generated before timing): datamodule set-up (normalisation and graph
   building), collating the training split once, one training epoch of a model (default GIN),
   and the growth of peak memory in each.

Both should be close to linear (slope 1 on the log-log plot); the plot is written to --png.

    python benchmarks/bench_scaling.py            # 60..480 nodes, 1x/4x/16x
    python benchmarks/bench_scaling.py --quick    # 60/120 nodes, 1x/4x, 10 steps per epoch
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"  # resident memory follows live memory
    os.execv(sys.executable, [sys.executable, *sys.argv])

from bench_data_path import emodb_like_fold, epoch_split  # noqa: E402
from bench_train_step import _reset_peak, _status_kib, make_batch, step_fn  # noqa: E402
from common import REPO, adam_step, build_named, machine, median, repeat, table  # noqa: E402


def peak_growth_mib(fn) -> tuple[float, float]:
    """(seconds, MiB the process's peak resident memory grew above the start) of ``fn()``."""
    _reset_peak()
    base = _status_kib("VmRSS") or 0
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return seconds, ((_status_kib("VmHWM") or 0) - base) / 1024


def nodes_scaling(model_name: str, nodes_list: list[int], steps: int) -> list[dict]:
    import torch

    rows = []
    for nodes in nodes_list:
        torch.manual_seed(0)
        model = build_named(model_name, 76, 4)
        batch = make_batch(32, nodes, "cpu")
        step = step_fn(model, batch, torch.optim.Adam(model.parameters(), lr=1e-4))
        step()
        _, memory = peak_growth_mib(step)
        seconds = median(repeat(step, steps, warmup=0))
        rows.append(
            {
                "nodes": nodes,
                "model": model_name,
                "ms/step": 1000 * seconds,
                "graphs/s": 32 / seconds,
                "step peak MiB": memory,
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def one_corpus_size(model_name: str, scale: int, max_steps: int | None) -> dict:
    from sergraph.data.datamodule import FoldDataModule

    table_, features, classes, fold = emodb_like_fold(scale=scale)  # not timed
    made = {"dm": FoldDataModule(table_, features, fold, classes, k=4, max_nodes=120)}
    setup_s, setup_mib = peak_growth_mib(made["dm"].setup)
    dm = made["dm"]
    collate_s, _ = peak_growth_mib(lambda: made.update(loader=dm.train_dataloader()))
    loader = made["loader"]
    step = adam_step(model_name, dm.num_features, dm.num_classes)
    _, epoch_mib = peak_growth_mib(lambda: made.update(split=epoch_split(loader, step, max_steps)))
    wait, compute, steps = made["split"]
    return {
        "scale": f"{scale}x",
        "utterances": len(dm.table),
        "train graphs": len(dm.datasets["train"]),
        "setup s": setup_s,
        "setup peak MiB": setup_mib,
        "collate split s": collate_s,
        "epoch s": (wait + compute) * len(loader) / steps,
        "epoch measured": f"{steps}/{len(loader)} steps",
        "epoch peak MiB": epoch_mib,
    }


def corpus_scaling(model_name: str, scales: list[int], max_steps: int | None) -> list[dict]:
    rows = []
    for scale in scales:
        rows.append(one_corpus_size(model_name, scale, max_steps))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def plot(nodes_rows: list[dict], corpus_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["nodes"] for r in nodes_rows]
    left.loglog(x, [r["ms/step"] / 1000 for r in nodes_rows], "o-", label="step time (s)")
    left.loglog(
        x,
        [max(r["step peak MiB"], 1e-3) / 1000 for r in nodes_rows],
        "s--",
        label="step peak memory (GiB)",
    )
    left.loglog(
        x,
        [x_ / x[0] * nodes_rows[0]["ms/step"] / 1000 for x_ in x],
        ":",
        color="grey",
        label="linear",
    )
    left.set_xlabel("nodes per graph")
    left.set_title(f"{nodes_rows[0]['model']}, batch 32")
    left.legend()
    sizes = [r["utterances"] for r in corpus_rows]
    right.loglog(sizes, [r["setup s"] for r in corpus_rows], "o-", label="datamodule setup (s)")
    right.loglog(sizes, [r["epoch s"] for r in corpus_rows], "s-", label="one epoch (s)")
    right.loglog(
        sizes,
        [max(r["setup peak MiB"], 1e-3) / 1000 for r in corpus_rows],
        "^--",
        label="setup peak memory (GiB)",
    )
    right.loglog(
        sizes,
        [s / sizes[0] * corpus_rows[0]["epoch s"] for s in sizes],
        ":",
        color="grey",
        label="linear",
    )
    right.set_xlabel("utterances in the corpus")
    right.set_title("synthetic EmoDB-sized corpus, scaled")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes-model", default="lstm_gin")
    parser.add_argument("--corpus-model", default="gin")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--png", default=str(REPO / "runs" / "bench" / "scaling.png"))
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    nodes, scales, steps, max_steps = [60, 120, 240, 480], [1, 4, 16], args.steps, None
    if args.quick:
        nodes, scales, steps, max_steps = [60, 120], [1, 4], 2, 10
    print(machine(), flush=True)
    import sergraph.data.datamodule  # noqa: F401  (imports are not part of any measurement)

    nodes_rows = nodes_scaling(args.nodes_model, nodes, steps)
    corpus_rows = corpus_scaling(args.corpus_model, scales, max_steps)
    print("\n## cost against nodes per graph (one training step, batch 32)\n")
    print(table(nodes_rows))
    print("\n## cost against corpus size (epoch time extrapolated when --quick cuts it short)\n")
    print(table(corpus_rows))
    plot(nodes_rows, corpus_rows, Path(args.png))
    print(f"\nlog-log plot: {args.png}")


if __name__ == "__main__":
    main()
