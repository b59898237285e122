"""The project's own SLURM job scripts on a real single-node SLURM, brought up from Debian packages.

The session fixture installs ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` when they
are missing (as root, with apt-get; ``.ci/run`` installs them beforehand), writes a private
``slurm.conf`` (no accounting: jobs are followed with ``scontrol`` and their output files), and
starts ``munged``, ``slurmctld`` and ``slurmd``. Where that is impossible the tests skip and say
why. Everything runs on CPU; DDP uses gloo.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("sbatch", "scontrol", "sinfo", "slurmctld", "slurmd", "munged", "munge")

# A study of 2 cells (2 folds); early stopping after a few epochs; dropout (random state).
STUDY = [
    "model.params.dropout=0.3",
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "folds.only=[0,1]",
    "trainer.max_epochs=12",
    "trainer.patience=3",
    "trainer.accelerator=cpu",
    "optim.lr=3e-3",
    "optim.batch_size=8",
    "trainer.resume_every_s=0",  # a resume point every epoch: the requeue test waits for one
]
# 9 test utterances over 2 processes (odd on purpose).
DDP_STUDY = [
    "data.options.n_speakers=4",
    "data.options.n_per_class=3",
    "data.classes=[neutral,happy,sad]",
    "folds.only=[0]",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "optim.batch_size=4",
]
CELL = Path("synthetic", "lstm_gin", "seed-0")


def _run(command, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """slurmctld + slurmd (+ munged when not already running) for this test session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = [root / "slurmctld.pid", root / "slurmd.pid"]
        self.munged_pid: int | None = None

    def start(self) -> str | None:
        """Start the daemons; returns why not, or ``None`` when the cluster is up."""
        reason = self._install() or self._munge() or self._configure()
        if reason:
            return reason
        for daemon in ("slurmctld", "slurmd"):
            started = _run([daemon, *(["-i"] if daemon == "slurmctld" else [])], env=self.env)
            if started.returncode != 0:
                return f"{daemon} did not start: {(started.stderr or started.stdout)[-500:]}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = _run(["sinfo", "-h", "-o", "%T"], env=self.env, timeout=30).stdout.strip()
            if state == "idle":
                return None
            time.sleep(0.5)
        logs = "".join(
            (self.root / "log" / name).read_text(errors="replace")[-800:]
            for name in ("slurmctld.log", "slurmd.log")
            if (self.root / "log" / name).is_file()
        )
        return f"the SLURM node did not become idle within 60 s (state {state!r}); {logs}"

    def _install(self) -> str | None:
        if all(shutil.which(name) for name in DAEMONS):
            return None
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return f"SLURM is not installed and cannot be (needs root and apt-get): {PACKAGES}"
        install = ["apt-get", "install", "-y", "-q", *PACKAGES]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        result = _run(install, env=env)
        if result.returncode != 0:
            _run(["apt-get", "update", "-q"], env=env)
            result = _run(install, env=env)
        if result.returncode != 0 or not all(shutil.which(name) for name in DAEMONS):
            return f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr[-500:]}"
        return None

    def _munge(self) -> str | None:
        if _run(["munge", "-n"], timeout=30).returncode == 0:
            return None  # a munged is running already
        if os.geteuid() != 0:
            return "munged is not running and only root can start it for the test"
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_bytes(os.urandom(1024))
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        for path in (key.parent, key, run_dir):
            shutil.chown(path, "munge", "munge")
        key.chmod(0o400)
        run_dir.chmod(0o755)  # clients (every job) must reach the socket
        started = _run(["runuser", "-u", "munge", "--", "munged"], timeout=60)
        if started.returncode != 0 or _run(["munge", "-n"], timeout=30).returncode != 0:
            return f"munged did not start: {(started.stderr or started.stdout)[-500:]}"
        pid_file = run_dir / "munged.pid"
        self.munged_pid = int(pid_file.read_text()) if pid_file.is_file() else None
        return None

    def _configure(self) -> str | None:
        host = socket.gethostname().split(".")[0]
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(exist_ok=True)
        self.root.chmod(0o755)
        self.conf.write_text(
            f"""ClusterName=sergraphtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=10
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.pid_files[0]}
SlurmdPidFile={self.pid_files[1]}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        return None

    def stop(self) -> None:
        if shutil.which("scontrol") and self.conf.is_file():
            _run(["scontrol", "shutdown"], env=self.env, timeout=60)
        pids = [int(p.read_text()) for p in self.pid_files if p.is_file()]
        if self.munged_pid is not None:
            pids.append(self.munged_pid)
        deadline = time.monotonic() + 20
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                if pid == self.munged_pid:
                    os.kill(pid, signal.SIGTERM)
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    reason = cluster.start()
    if reason is not None:
        cluster.stop()
        pytest.skip(f"no SLURM for the slurm tests: {reason}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Submission folder of the module (the jobs read and write relative to it)."""
    return tmp_path_factory.mktemp("jobs")


def job_env(cluster: Cluster, workdir: Path) -> dict[str, str]:
    """What the jobs inherit (sbatch exports the submitting environment): sergraph on PATH."""
    env = {
        **cluster.env,
        "SERGRAPH_CACHE": str(workdir / "cache"),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for key in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        env.pop(key)  # this test may itself run inside a SLURM job
    return env


def sergraph(args, env, cwd, timeout=600) -> subprocess.CompletedProcess:
    result = _run([sys.executable, "-m", "sergraph.cli", *args], env=env, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def direct_env(env: dict[str, str], cache: Path) -> dict[str, str]:
    """The same environment without SLURM, for the runs done directly (with their own cache)."""
    return {**{k: v for k, v in env.items() if k != "SLURM_CONF"}, "SERGRAPH_CACHE": str(cache)}


@pytest.fixture(scope="module")
def direct_cache(tmp_path_factory) -> Path:
    """The feature cache of the direct runs, shared with the session's other CLI tests."""
    return tmp_path_factory.getbasetemp() / "shared-sergraph-cache"


def job_state(env, job: str) -> dict[str, str]:
    text = _run(["scontrol", "show", "job", job], env=env, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(env, job: str, states=("COMPLETED",), timeout=600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(env, job)
        if state.get("JobState") in states:
            return state
        if state.get("JobState") in (
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
        ):
            pytest.fail(f"job {job} ended {state.get('JobState')}: {state}")
        time.sleep(0.5)
    pytest.fail(f"job {job} not {states} after {timeout} s: {job_state(env, job)}")


def job_output(path: Path) -> str:
    """A job's output file. srun forwards stdout and stderr in chunks, so a character of a
    progress bar can be split between them: undecodable bytes are replaced."""
    return path.read_text(errors="replace") if path.is_file() else ""


def results(cell: Path) -> tuple[dict, str]:
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics.pop("seconds")
    metrics.pop("timing")  # wall seconds per phase: how long, not what
    metrics.pop("provenance")  # when and with how many threads a cell ran is not a result
    # The corpus table's hash holds its paths: the synthetic corpus of each cache folder has
    # its own (same audio, same utterances and labels: the speakers' hashes must agree).
    metrics["data"].pop("table")
    # The checkpoint's bytes hold its own folder's path (best_model_path): its recorded hash
    # differs between two run folders; the predictions file's must not.
    metrics["files"].pop("checkpoints/best.ckpt", None)
    return metrics, (cell / "predictions.csv").read_text()


@pytest.fixture(scope="module")
def direct_study(slurm, workdir, direct_cache) -> Path:
    """The 2-cell study run directly (no SLURM), for comparison."""
    env = direct_env(job_env(slurm, workdir), direct_cache)
    sergraph(["train", *STUDY, "run.out_dir=direct"], env, workdir)
    return workdir / "direct"


def activation() -> list[str]:
    venv = Path(sys.prefix)
    if sys.prefix != sys.base_prefix and (venv / "bin" / "activate").is_file():
        return [f"slurm.activate=. {venv / 'bin' / 'activate'}"]
    return []


@pytest.mark.slurm
def test_features_array_and_report_chain_equals_a_direct_run(slurm, workdir, request):
    env = job_env(slurm, workdir)
    submitted = sergraph(
        [
            "slurm",
            "--wait",
            *STUDY,
            "run.out_dir=array",
            "slurm.gpus=0",
            "slurm.cpus_per_task=1",
            "slurm.feature_shards=2",
            "slurm.time=00:20:00",
            *activation(),
        ],
        env,
        workdir,
        timeout=900,
    )
    ids = dict(re.findall(r"^(\w+): job (\d+)", submitted.stdout, flags=re.M))
    assert sorted(ids) == ["features", "report", "train_array"], submitted.stdout
    for task in ("0", "1"):
        assert job_state(env, f"{ids['features']}_{task}")["JobState"] == "COMPLETED"
        assert job_state(env, f"{ids['train_array']}_{task}")["JobState"] == "COMPLETED"
    assert job_state(env, ids["report"])["JobState"] == "COMPLETED"

    logs = workdir / "array" / "synthetic" / "slurm"
    shards = sorted(
        re.search(r"shard (\d)/2 of 48 files: (\d+) files", job_output(p)).groups()
        for p in logs.glob("sergraph-features-*.out")
    )
    assert shards == [("0", "24"), ("1", "24")]  # every file extracted once, by one task
    assert len(list((workdir / "cache" / "features").rglob("*.npy"))) == 48

    # Each array task ran its own cell; together they equal the direct run, cell by cell.
    direct_study = request.getfixturevalue("direct_study")  # after the jobs filled the cache
    for fold in ("fold-00", "fold-01"):
        assert results(workdir / "array" / CELL / fold) == results(direct_study / CELL / fold)
    array_summary = json.loads((workdir / "array" / CELL.parent / "summary.json").read_text())
    direct_summary = json.loads((direct_study / CELL.parent / "summary.json").read_text())
    assert array_summary == direct_summary  # written by the report job
    assert (workdir / "array" / "synthetic" / "report").is_dir()  # sergraph report


@pytest.mark.slurm
def test_ddp_job_over_two_tasks_equals_a_direct_ddp_run(slurm, workdir, direct_cache):
    env = job_env(slurm, workdir)
    # The same run done directly (Lightning starts the 2 processes), alongside the job.
    direct = [*DDP_STUDY, "trainer.devices=2", "trainer.strategy=ddp", "run.out_dir=local"]
    local = subprocess.Popen(
        [sys.executable, "-m", "sergraph.cli", "train", *direct],
        env=direct_env(env, direct_cache),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = workdir / "ddp.out"
    result = _run(
        [
            "sbatch",
            "--wait",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            f"--output={output}",
            str(REPO / "slurm" / "train_ddp.sbatch"),
            *DDP_STUDY,
            "run.out_dir=srun",
        ],
        env=env,
        cwd=workdir,
        timeout=900,
    )
    _, local_errors = local.communicate(timeout=900)
    assert local.returncode == 0, local_errors[-4000:]
    log = job_output(output)
    assert result.returncode == 0, (result.stderr + log)[-4000:]
    # Two processes from SLURM (not from the configuration, which says devices=1), one group.
    assert "SLURM job step: 2 process(es) per node on 1 node(s)" in log
    # Lightning's own messages go to the study's log file (the console stays quiet).
    study_logs = "".join(path.read_text() for path in (workdir / "srun").rglob("sergraph.log"))
    assert "Starting with 2 processes" in study_logs

    srun_metrics, srun_predictions = results(workdir / "srun" / CELL / "fold-00")
    local_metrics, local_predictions = results(workdir / "local" / CELL / "fold-00")
    assert srun_predictions == local_predictions
    # The configurations differ in trainer.devices/strategy only, hence in their identity.
    srun_metrics.pop("config_id")
    local_metrics.pop("config_id")
    assert srun_metrics == local_metrics and srun_metrics["world_size"] == 2
    assert srun_metrics["n_test"] == 9


@pytest.mark.slurm
def test_requeued_cell_resumes_with_the_results_of_an_uninterrupted_run(
    slurm, workdir, direct_study
):
    import torch

    env = job_env(slurm, workdir)
    output = workdir / "requeue.out"
    job = _run(
        [
            "sbatch",
            "--parsable",
            "--array=0-0",
            "--cpus-per-task=1",
            f"--output={output}",
            str(REPO / "slurm" / "train_array.sbatch"),
            *STUDY,
            "run.out_dir=requeue",
        ],
        env=env,
        cwd=workdir,
    )
    assert job.returncode == 0, job.stderr
    task = f"{job.stdout.strip().split(';')[0]}_0"
    cell = workdir / "requeue" / CELL / "fold-00"
    last = cell / "checkpoints" / "last.ckpt"
    deadline, epoch = time.monotonic() + 300, -1
    while epoch < 1:  # at least two epochs done, more to come
        assert time.monotonic() < deadline, f"no checkpoint; {job_state(env, task)}"
        assert job_state(env, task).get("JobState") in ("PENDING", "RUNNING"), job_state(env, task)
        try:
            epoch = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
        except (FileNotFoundError, EOFError, RuntimeError):
            pass
        time.sleep(0.05)
    # What SLURM does --signal=SIGUSR1@90 before the time limit: signal the job step.
    signalled = _run(["scancel", "--signal=USR1", task], env=env, timeout=60)
    assert signalled.returncode == 0, signalled.stderr

    state = wait_for(env, task, states=("PENDING", "COMPLETED"), timeout=120)
    assert state["JobState"] == "PENDING", "the signal came too late: the job had finished"
    assert state["Restarts"] == "1"
    # SLURM holds a requeued job for about two minutes (BeginTime); release it now.
    _run(["scontrol", "update", f"JobId={task}", "StartTime=now"], env=env, timeout=60)
    state = wait_for(env, task, timeout=600)
    assert state["Restarts"] == "1"

    log = job_output(output)
    # Lightning's own messages are in the study's log file (the console stays quiet).
    study_log = (workdir / "requeue" / CELL.parts[0] / "sergraph.log").read_text()
    assert "Handling auto-requeue signal" in study_log
    assert "resuming from checkpoints/last.ckpt" in log
    assert results(cell) == results(direct_study / CELL / "fold-00")
    assert not (cell / "hpc").exists() and not last.exists()


def test_dry_run_renders_the_scripts_with_the_slurm_settings(tmp_path, monkeypatch):
    """No SLURM needed: the scripts and sbatch commands that `sergraph slurm` would submit."""
    from argparse import Namespace

    from sergraph.training.slurm import plan_jobs, run_slurm

    monkeypatch.setenv("SERGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    settings = [
        "data.options.n_speakers=4",
        "data.options.n_per_class=1",
        "run.seeds=[0,1]",
        "slurm.partition=gpu-a100",
        "slurm.account=proj42",
        "slurm.time=1-00:00:00",
        "slurm.gpus=4",
        "slurm.nodes=2",
        "slurm.max_running=3",
        "slurm.activate=conda activate sergraph",
        "slurm.extra=[--qos=long]",
    ]
    jobs, folder = plan_jobs(settings)
    by_name = {job.name: job for job in jobs}
    assert list(by_name) == ["features", "train_array", "report"]
    assert folder == tmp_path / "runs" / "synthetic" / "slurm"
    assert by_name["train_array"].options == ["--array=0-7%3"]  # 4 folds x 2 seeds
    assert by_name["features"].options == ["--array=0-7"]  # slurm.feature_shards
    train = by_name["train_array"].script
    for line in (
        "#SBATCH --partition=gpu-a100",
        "#SBATCH --account=proj42",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --gres=gpu:4",
        "#SBATCH --qos=long",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "\nconda activate sergraph\n",
        'run.cell="${SLURM_ARRAY_TASK_ID}"',
    ):
        assert line in train, line
    assert train.count("#SBATCH --time=") == 1  # the template's default is replaced
    assert by_name["report"].after == "train_array" and by_name["train_array"].after == "features"
    command = by_name["report"].command(folder / "report.sbatch", "123")
    assert "--dependency=afterok:123" in command and command[-len(settings) :] == settings

    ddp, _ = plan_jobs(settings, ddp=True, features=False)
    assert [job.name for job in ddp] == ["train_ddp", "report"]
    script = ddp[0].script
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=4" in script
    assert "srun" in script and ddp[0].after is None

    arguments = Namespace(
        overrides=settings, ddp=False, no_features=False, dry_run=True, wait=False
    )
    assert run_slurm(arguments) == 0 and not folder.exists()  # a dry run writes nothing


@pytest.mark.slurm
def test_a_grid_is_submitted_as_one_array_chain(slurm, workdir):
    """`sergraph slurm -m`: one array over the cells of every grid point, then the report."""
    env = job_env(slurm, workdir)
    grid = ["-m", "graph.k=2,4", "model.params.readout=sum,mean"]
    settings = [
        "data.options.n_speakers=3",
        "data.options.n_per_class=2",
        "folds.only=[0]",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "run.name=grid",
        "run.out_dir=grid_runs",
        "slurm.gpus=0",
        "slurm.cpus_per_task=1",
        "slurm.time=00:20:00",
        *activation(),
    ]
    submitted = sergraph(
        ["slurm", "--wait", "--no-features", *grid, *settings], env, workdir, timeout=900
    )
    ids = dict(re.findall(r"^(\w+): job (\d+)", submitted.stdout, flags=re.M))
    assert sorted(ids) == ["report", "train_array"], submitted.stdout
    assert "(array 0-3)" in submitted.stdout  # 2 x 2 points x 1 fold
    for task in range(4):
        assert job_state(env, f"{ids['train_array']}_{task}")["JobState"] == "COMPLETED"
    study = workdir / "grid_runs" / "grid"
    labels = sorted(p.parents[2].name for p in study.glob("*/seed-0/fold-00/metrics.json"))
    assert labels == ["k=2,readout=mean", "k=2,readout=sum", "k=4,readout=mean", "k=4,readout=sum"]
    report = (study / "report" / "report.md").read_text()  # the report job's
    assert "Reference: k=2,readout=sum." in report and "| Holm p |" in report
