"""A built, non-editable wheel works outside the clone: configs and sbatch templates ship in it.

The wheel is built from a copy of the source tree (``pip wheel --no-deps``) and installed with
``--no-deps`` into a fresh venv. Its dependencies (torch, Lightning, ...) are not installed
again: a ``.pth`` file puts this interpreter's site-packages *after* the venv's own, so the
imported ``sergraph`` is the wheel's (checked), and everything else is what the tests already
use. Commands run from an empty folder without ``PYTHONPATH``, so nothing of the clone is
reachable.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "runs", ".cache", "*.egg-info", "__pycache__", "configs"
)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: a source tree on it would satisfy pip and shadow the wheel.
    env = kwargs.pop("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=IGNORED, symlinks=True)
    shutil.copytree(REPO / "configs", source / "configs")  # the top-level folder only
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", root / "dist", source]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("sergraph-*.whl")
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    install = run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel]
    )
    if "no such option: --python" in install.stderr:
        pytest.skip("pip older than 22.3 cannot install into another interpreter")
    assert install.returncode == 0, install.stderr[-3000:]
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(site.stdout.strip()) / "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SERGRAPH_CACHE=str(root / "cache"), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return venv, work, env


def test_the_wheel_holds_configs_and_sbatch_templates(installed):
    venv, work, env = installed
    where = run(
        [venv / "bin" / "python", "-c", "import sergraph; print(sergraph.__file__)"],
        cwd=work,
        env=env,
    )
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    version = run([venv / "bin" / "sergraph", "--version"], cwd=work, env=env)
    from sergraph.version import __version__

    assert version.returncode == 0 and version.stdout.strip() == f"sergraph {__version__}"


def test_slurm_dry_run_from_the_installed_wheel(installed):
    venv, work, env = installed
    result = run(
        [
            venv / "bin" / "sergraph",
            "slurm",
            "--dry-run",
            "slurm.partition=gpu",
            "data.options.n_speakers=3",
            "data.options.n_per_class=2",
        ],
        cwd=work,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for script in ("features", "train_array", "report"):
        assert f"slurm/{script}.sbatch" in result.stdout
    assert "#SBATCH --partition=gpu" in result.stdout
    assert "--array=0-2" in result.stdout  # one task per cell: 3 folds of 3 speakers


def test_cells_of_the_installed_wheel_record_its_version(installed):
    """No git checkout, so no commit: the version from the package metadata says what ran."""
    import json

    venv, work, env = installed
    version = run(
        [
            venv / "bin" / "python",
            "-c",
            "from importlib import metadata as m; print(m.version('sergraph'))",
        ],
        cwd=work,
        env=env,
    ).stdout.strip()
    from sergraph.version import __version__

    assert version == __version__
    train = [
        venv / "bin" / "sergraph",
        "train",
        "model=svm",
        "data.options.n_speakers=3",
        "data.options.n_per_class=2",
        "folds.only=[0]",
        "folds.val_speakers=0",
        "features.workers=1",
        "logger.kind=none",
        "run.name=wheel_provenance",
    ]
    result = run(train, cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (cell,) = (work / "runs" / "wheel_provenance").glob("svm/seed-0/fold-00")
    provenance = json.loads((cell / "metrics.json").read_text())["provenance"]
    assert provenance["sergraph"] == version and provenance["commit"] == "unknown"
    report = run(
        [venv / "bin" / "sergraph", "report", "runs/wheel_provenance/svm"], cwd=work, env=env
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert f"installed package {version}" in report.stdout
    assert "cells without git provenance" not in report.stdout
