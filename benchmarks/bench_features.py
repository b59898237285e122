"""Feature extraction speed (x realtime, per core, workers 1..N), cold vs warm cache, and the
warm start-up of an EmoDB study.

Cold: IS10 LLD + deltas of EmoDB files into an empty temporary cache with 1..N worker
processes. "x realtime" is seconds of audio per wall second; "per core" divides by the worker
count; "per CPU s" is audio seconds per CPU second actually used by the extracting processes
(on a loaded machine wall time per core understates what a free core does, CPU time does not).
Warm: the same files again (cache hits only). Warm start-up: a fresh Python process that loads
the EmoDB corpus table, its cached features and the folds (``sergraph.data.prepared.prepare``), timed
as a whole and inside; it needs a warm default cache (``$SERGRAPH_CACHE``), e.g. after
``sergraph features data=emodb data.root=...``, and is skipped otherwise.

Against openSMILE itself (first table): the ``opensmile`` package's bare ``Smile`` with the same
feature configuration (the IS10 LLD + delta config sergraph builds, one level, no cache), run
with ``process_file`` on the same files by N processes (each its own ``Smile``, every N-th
file), next to sergraph's extraction with N workers into an empty cache; the two alternate
round by round, and "pipeline / bare" is the median over rounds of bare wall time / pipeline
wall time (1: openSMILE's own speed; > 1 would be faster than it), "(CPU)" the same with CPU
seconds of all the processes of each side (on shared cores the steadier of the two). The
first round is shown too: the pipeline starts its fork server once per process, in the first
round with 2 workers, while bare openSMILE forks from this process every time.

EmoDB comes from $SERGRAPH_EMODB or ../shared/data/emodb.

    python benchmarks/bench_features.py            # all 535 files, workers 1..cpu count
    python benchmarks/bench_features.py --quick    # 24 files
    python benchmarks/bench_features.py --files 100 --skip-cold-warm   # bare vs pipeline only
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from common import REPO, emodb_root, machine, table


def cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants so far: the exited children it
    waited for, and the live ones with the exited children they waited for (a fork server is
    alive and reaps the workers it forked, so ``RUSAGE_CHILDREN`` alone misses them; Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return total + sum(_proc_cpu(pid) for pid in _live_descendants())


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 on (the name may hold spaces)


def _live_descendants() -> list[int]:
    if not os.path.isdir("/proc"):
        return []
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _proc_stat(int(name))) is not None:
            parents[int(name)] = int(fields[1])
    found, frontier = [], [os.getpid()]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _proc_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of a live process, in seconds."""
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def extraction(paths: list[str], audio_seconds: float, workers_list: list[int]) -> list[dict]:
    from sergraph.data.features import FeatureCache, FeatureConfig

    rows = []
    for workers in workers_list:
        with tempfile.TemporaryDirectory(prefix="sergraph-bench-") as folder:
            cache = FeatureCache(folder, FeatureConfig())
            cpu0, start = cpu_seconds(), time.perf_counter()
            cache.get(paths, workers=workers, progress=False)
            cold, cold_cpu = time.perf_counter() - start, cpu_seconds() - cpu0
            start = time.perf_counter()
            cache.get(paths, workers=workers, progress=False)
            warm = time.perf_counter() - start
        rows.append(
            {
                "workers": workers,
                "files": len(paths),
                "audio s": audio_seconds,
                "cold s": cold,
                "x realtime": audio_seconds / cold,
                "x realtime per core": audio_seconds / cold / workers,
                "x realtime per CPU s": audio_seconds / cold_cpu,
                "warm s": warm,
                "warm ms/file": 1000 * warm / len(paths),
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    speed1 = rows[0]["x realtime"]
    for row in rows:
        row["speed-up vs 1 worker"] = row["x realtime"] / speed1
    return rows


def _bare_share(job: tuple[str, str, int, list[str]]) -> int:
    """One process of the bare openSMILE run: its own ``Smile``, its share of the files; the
    number of nodes the pipeline pools its frames into (``pool`` frames a node), to compare."""
    import opensmile

    config, level, pool, paths = job
    smile = opensmile.Smile(config, level)
    return sum(-(-len(smile.process_file(path)) // pool) for path in paths)


def bare_opensmile(paths: list[str], workers: int) -> tuple[float, float, int]:
    """Wall s, CPU s and node count of bare openSMILE on ``paths`` with ``workers`` processes
    (started as ``ProcessPoolExecutor`` starts them on this platform: fork on Linux)."""
    from concurrent.futures import ProcessPoolExecutor

    from sergraph.data.features import FeatureConfig
    from sergraph.data.features.opensmile import smile_for

    config = FeatureConfig()
    smile = smile_for(config.feature_set, config.levels())  # the configuration sergraph uses
    jobs = [
        (smile.feature_set, smile.feature_level, config.pool, paths[i::workers])
        for i in range(workers)
    ]
    cpu0, start = cpu_seconds(), time.perf_counter()
    if workers == 1:
        frames = _bare_share(jobs[0])
    else:
        with ProcessPoolExecutor(workers) as pool:
            frames = sum(pool.map(_bare_share, jobs))
    return time.perf_counter() - start, cpu_seconds() - cpu0, frames


def pipeline_cold(paths: list[str], workers: int) -> tuple[float, float, int]:
    """Wall s, CPU s and node count of sergraph's extraction into an empty cache."""
    from sergraph.data.features import FeatureCache, FeatureConfig

    with tempfile.TemporaryDirectory(prefix="sergraph-bench-") as folder:
        cache = FeatureCache(folder, FeatureConfig())
        cpu0, start = cpu_seconds(), time.perf_counter()
        features = cache.get(paths, workers=workers, progress=False)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return wall, cpu, sum(len(f) for f in features)


def against_opensmile(
    paths: list[str], audio_seconds: float, workers_list: list[int], rounds: int
) -> list[dict]:
    """Bare openSMILE and the pipeline, alternating (bare first in odd rounds), per worker count."""
    import statistics

    rows = []
    for workers in workers_list:
        bare, pipe, ratios = [], [], []
        for round_ in range(rounds):
            order = [bare_opensmile, pipeline_cold]
            if round_ % 2:
                order.reverse()
            measured = {fn: fn(paths, workers) for fn in order}
            bare.append(measured[bare_opensmile])
            pipe.append(measured[pipeline_cold])
            ratios.append(bare[-1][0] / pipe[-1][0])
        bare_wall = statistics.median(b[0] for b in bare)
        pipe_wall = statistics.median(p[0] for p in pipe)
        rows.append(
            {
                "workers": workers,
                "files": len(paths),
                "audio s": audio_seconds,
                "bare openSMILE s": bare_wall,
                "pipeline s": pipe_wall,
                "pipeline / bare (speed)": statistics.median(ratios),
                "first round": ratios[0],
                "pipeline / bare (CPU)": statistics.median(
                    b[1] / p[1] for b, p in zip(bare, pipe, strict=True)
                ),
                "bare x realtime per core": audio_seconds / bare_wall / workers,
                "pipeline x realtime per core": audio_seconds / pipe_wall / workers,
                "bare x realtime per CPU s": audio_seconds / statistics.median(b[1] for b in bare),
                "pipeline x realtime per CPU s": audio_seconds
                / statistics.median(p[1] for p in pipe),
                "same node count": all(b[2] == p[2] for b, p in zip(bare, pipe, strict=True)),
                "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def warm_default_cache(paths: list[str]) -> bool:
    """Whether every file already has LLDs in the default cache (without extracting any)."""
    from omegaconf import OmegaConf

    from sergraph.config import Config
    from sergraph.data.features import file_sha256
    from sergraph.data.prepared import feature_cache

    cache = feature_cache(OmegaConf.structured(Config))
    key_dir = cache.key_dir("lld")
    for path in paths:
        digest = file_sha256(path)
        if not (key_dir / digest[:2] / f"{digest}.npy").is_file():
            return False
    return True


STARTUP = """
import time
start = time.perf_counter()
from sergraph.config import compose
from sergraph.data.prepared import prepare
imported = time.perf_counter()
study = prepare(compose(["data=emodb", "data.root={root}"]))
done = time.perf_counter()
assert study.features is not None and len(study.features) == {count}
print(imported - start, done - imported)
"""


def startup(root: str, count: int, runs: int) -> list[dict]:
    rows = []
    for run in range(runs):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", STARTUP.format(root=root, count=count)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        total = time.perf_counter() - start
        imports, prepare = (float(x) for x in result.stdout.split()[-2:])
        rows.append(
            {
                "run": run + 1,
                "whole process s": total,
                "imports s": imports,
                "corpus + cached features + folds s": prepare,
            }
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="24 files")
    parser.add_argument("--files", type=int, default=0, help="first N files (0: all)")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, bare vs ours")
    parser.add_argument("--skip-bare", action="store_true", help="no bare openSMILE comparison")
    parser.add_argument(
        "--skip-cold-warm", action="store_true", help="only the comparison with bare openSMILE"
    )
    args = parser.parse_args()

    import soundfile as sf

    root = emodb_root()
    if root is None:
        sys.exit("EmoDB not found: set SERGRAPH_EMODB or place it at ../shared/data/emodb")
    paths = sorted(str(p) for p in (root / "wav").glob("*.wav"))
    every = list(paths)
    count = 24 if args.quick else args.files
    if count:
        paths = paths[:: max(1, len(paths) // count)][:count]  # spread over the speakers
    audio = sum(sf.info(p).duration for p in paths)
    print(machine(), flush=True)
    print(f"EmoDB at {root}: {len(paths)} of {len(every)} files, {audio:.1f} s of audio\n")

    workers_list = list(range(1, args.max_workers + 1))
    if not args.skip_bare:
        rounds = 1 if args.quick else args.rounds
        rows = against_opensmile(paths, audio, workers_list, rounds)
        print(
            "\n## sergraph's extraction against bare openSMILE (same IS10 LLD + delta config, "
            f"same files, no cache), alternating, {rounds} round(s)\n"
        )
        print(table(rows))
    if args.skip_cold_warm:
        return

    rows = extraction(paths, audio, workers_list)
    print("\n## openSMILE IS10 LLD + deltas, cold (empty cache) and warm\n")
    print(table(rows))

    if warm_default_cache(every):
        runs = 1 if args.quick else args.startup_runs
        rows = startup(str(root), len(every), runs)
        print("\n## warm start-up of an EmoDB study (fresh process, default cache)\n")
        print(table(rows))
    else:
        print(
            "\nwarm start-up: skipped, the default cache is not warm for all of EmoDB "
            "(run `sergraph features data=emodb data.root=...` first)"
        )


if __name__ == "__main__":
    main()
