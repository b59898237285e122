"""Render and submit the SLURM job scripts of ``slurm/`` for a study (``sergraph slurm``).

The scripts in ``slurm/`` are complete sbatch scripts with generic defaults; they can be
submitted by hand (``sbatch [options] slurm/NAME.sbatch OVERRIDES...``, command-line options
win over the script's). ``sergraph slurm OVERRIDES`` composes the study, renders the scripts
with the ``slurm:`` section of the configuration (partition, account, time, GPUs, CPUs, memory,
environment activation), writes them to ``<study dir>/slurm/`` (or ``slurm.log_dir``) and
submits the chain::

    features.sbatch     array over slurm.feature_shards shards          (unless --no-features)
    train_array.sbatch  array over the study's cells      --dependency=afterok:features
      or train_ddp.sbatch  (--ddp) one run over slurm.nodes x tasks_per_node processes
    report.sbatch       aggregation                       --dependency=afterok:train

printing the job ids. ``--dry-run`` prints the rendered scripts and sbatch commands instead;
``--wait`` returns when the report job has ended (an error if any job of the chain failed).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

SCRIPTS = ("features", "train_array", "train_ddp", "report")
RESOURCES_MARKER = "# sergraph:resources"
SETUP_MARKER = "# sergraph:setup"


def script_dir() -> Path:
    """The folder of the sbatch templates: package data ``sergraph.slurm`` of an installed
    sergraph (wheel or editable), else the ``slurm/`` folder of a source tree on the path."""
    from sergraph.io import shipped_folder

    folder, candidates = shipped_folder("sergraph.slurm", "slurm", "train_array.sbatch")
    if folder is not None:
        return folder
    raise FileNotFoundError(
        f"the job scripts are not in {[str(c) for c in candidates]}; reinstall sergraph "
        "(pip install sergraph, or pip install -e . from a clone)"
    )


@dataclass
class Job:
    """One sbatch submission: a rendered script, its sbatch options and script arguments."""

    name: str  # features | train_array | train_ddp | report
    script: str
    options: list[str] = field(default_factory=list)  # given on the sbatch command line
    arguments: list[str] = field(default_factory=list)  # the script's "$@"
    after: str | None = None  # name of the job this one waits for (afterok)

    def command(
        self, path: Path | str, dependency: str | None = None, wait: bool = False
    ) -> list[str]:
        options = list(self.options)
        if dependency is not None:
            # A failed dependency cancels this job instead of leaving it pending forever.
            options += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
        if wait:
            options.append("--wait")
        return ["sbatch", "--parsable", *options, str(path), *self.arguments]


def render(name: str, options: dict[str, str | None], setup: list[str]) -> str:
    """The script ``slurm/<name>.sbatch`` with ``options`` as ``#SBATCH`` lines and ``setup``.

    A template ``#SBATCH --key`` line is dropped when ``options`` has ``key`` (a ``None``
    value drops it without a replacement); the rendered lines go where the template has
    ``# sergraph:resources``, the setup lines (environment activation, exports) where it has
    ``# sergraph:setup``.
    """
    if name not in SCRIPTS:
        raise ValueError(f"no job script {name!r}; choose one of {list(SCRIPTS)}")
    lines = (script_dir() / f"{name}.sbatch").read_text().splitlines()
    rendered: list[str] = []
    for line in lines:
        match = re.match(r"#SBATCH\s+--([\w-]+)", line)
        if match and match[1] in options:
            continue
        if line.strip() == RESOURCES_MARKER:
            rendered += [
                f"#SBATCH --{key}" + ("" if value == "" else f"={value}")
                for key, value in options.items()
                if value is not None
            ]
        elif line.strip() == SETUP_MARKER:
            rendered += setup or ["# (no environment activation configured: slurm.activate)"]
        else:
            rendered.append(line)
    return "\n".join(rendered) + "\n"


def _common_options(cfg: DictConfig, job_name: str, output: str) -> dict[str, str | None]:
    slurm = cfg.slurm
    options: dict[str, str | None] = {
        "job-name": job_name,
        "chdir": str(Path.cwd()),
        "output": output,
        "time": str(slurm.time),
        "cpus-per-task": str(slurm.cpus_per_task),
    }
    if slurm.partition:
        options["partition"] = str(slurm.partition)
    if slurm.account:
        options["account"] = str(slurm.account)
    if slurm.mem:
        options["mem"] = str(slurm.mem)
    for extra in slurm.extra:
        key, _, value = str(extra).lstrip("-").partition("=")
        options[key] = value
    return options


def plan_jobs(
    overrides: list[str], ddp: bool = False, features: bool = True
) -> tuple[list[Job], Path]:
    """The jobs of a study and the folder for their scripts and output files."""
    from sergraph.results.layout import study_dir
    from sergraph.training.study import plan

    if any(item.split("=", 1)[0] == "run.cell" for item in overrides):
        raise ValueError(
            "run.cell is set by the job array itself; leave it out of `sergraph slurm`"
        )
    configs, cells = plan(overrides)
    cfg = next(iter(configs.values()))
    slurm = cfg.slurm
    study = study_dir(cfg).resolve()
    log_dir = Path(slurm.log_dir).resolve() if slurm.log_dir else study / "slurm"
    name = study.name
    activate = [str(slurm.activate)] if slurm.activate else []
    jobs: list[Job] = []

    if features:
        shards = int(slurm.feature_shards)
        options = _common_options(cfg, f"sergraph-features-{name}", f"{log_dir}/%x-%A_%a.out")
        if cfg.features.feature_set == "ssl" and slurm.gpus > 0:
            options["gres"] = "gpu:1"  # one GPU per shard runs the SSL model
        jobs.append(
            Job(
                "features",
                render("features", options, [*activate, f"export SERGRAPH_SHARDS={shards}"]),
                options=[f"--array=0-{shards - 1}"],
                arguments=list(overrides),
            )
        )

    signal = f"SIGUSR1@{int(slurm.signal_seconds)}"
    if ddp:
        tasks = slurm.tasks_per_node or max(1, int(slurm.gpus))
        options = _common_options(cfg, f"sergraph-ddp-{name}", f"{log_dir}/%x-%j.out")
        options.update({"nodes": str(slurm.nodes), "ntasks-per-node": str(tasks), "signal": signal})
        if slurm.gpus > 0:
            options["gres"] = f"gpu:{int(slurm.gpus)}"
        train = Job("train_ddp", render("train_ddp", options, activate), arguments=list(overrides))
    else:
        throttle = f"%{slurm.max_running}" if slurm.max_running else ""
        options = _common_options(cfg, f"sergraph-train-{name}", f"{log_dir}/%x-%A_%a.out")
        options["signal"] = signal
        if slurm.gpus > 0:
            options["gres"] = f"gpu:{int(slurm.gpus)}"
        train = Job(
            "train_array",
            render("train_array", options, activate),
            options=[f"--array=0-{len(cells) - 1}{throttle}"],
            arguments=list(overrides),
        )
    train.after = "features" if features else None
    jobs.append(train)

    options = _common_options(cfg, f"sergraph-report-{name}", f"{log_dir}/%x-%j.out")
    options["cpus-per-task"] = "2"
    jobs.append(
        Job(
            "report",
            render(
                "report",
                options,
                [*activate, f"export SERGRAPH_STUDY_DIR={shlex.quote(str(study))}"],
            ),
            arguments=list(overrides),
            after=train.name,
        )
    )
    return jobs, log_dir


def submit(jobs: list[Job], folder: Path, wait: bool = False) -> dict[str, str]:
    """Write the scripts into ``folder`` and submit them in order; job id by job name.

    With ``wait`` the last submission (the report) blocks until that job ends (``sbatch
    --wait``) and a failure of any job of the chain raises.
    """
    if shutil.which("sbatch") is None:
        raise FileNotFoundError(
            "sbatch is not on PATH: run `sergraph slurm` on a SLURM login node, or use "
            "--dry-run to see the scripts"
        )
    folder.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        path = folder / f"{job.name}.sbatch"
        path.write_text(job.script)
        path.chmod(0o755)
        last = job is jobs[-1]
        command = job.command(path, ids[job.after] if job.after else None, wait=wait and last)
        if wait and last:
            print(f"waiting for the {job.name} job (sbatch --wait) ...", flush=True)
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if result.returncode != 0 and wait and last and result.stdout.strip():
            raise RuntimeError(
                f"the job chain did not succeed: the {job.name} job "
                f"{result.stdout.strip().split(';')[0]} ended with exit code "
                f"{result.returncode} or was cancelled because a job before it failed; see the "
                f"job output in {folder}"
            )
        if result.returncode != 0:
            submitted = ", ".join(f"{name} {job_id}" for name, job_id in ids.items())
            raise RuntimeError(
                f"sbatch failed for {job.name} ({shlex.join(command)}): "
                f"{result.stderr.strip() or result.stdout.strip()}"
                + (f"; already submitted: {submitted} (scancel them if needed)" if ids else "")
            )
        ids[job.name] = result.stdout.strip().split(";")[0]
    return ids


def run_slurm(args) -> int:
    """``sergraph slurm``: print the rendered scripts (--dry-run) or submit them."""
    jobs, folder = plan_jobs(list(args.overrides), ddp=args.ddp, features=not args.no_features)
    if args.dry_run:
        for job in jobs:
            path = folder / f"{job.name}.sbatch"
            dependency = f"<{job.after} job id>" if job.after else None
            print(f"# ==== {path}")
            print(f"# submit: {shlex.join(job.command(path, dependency))}")
            print(job.script)
        return 0
    ids = submit(jobs, folder, wait=args.wait)
    for job in jobs:
        waits = f", after {job.after} {ids[job.after]} succeeds" if job.after else ""
        array = next((o.split("=", 1)[1] for o in job.options if o.startswith("--array=")), None)
        print(f"{job.name}: job {ids[job.name]}" + (f" (array {array})" if array else "") + waits)
    print(f"scripts and job output: {folder}")
    return 0
