"""The offline GPU check's wheels: with only what a GPU image holds, plus the wheels of
``benchmarks/device_wheels.txt`` installed with ``--no-index --no-deps --target``, sergraph runs a
fold from the source tree.

"What a GPU image holds" is built here from the test environment: a folder of links to every
installed distribution except the ones the list names (and sergraph itself, and wandb, which the
image lacks too), put on the path of a Python started without its site-packages. Without the
wheels sergraph does not import (the control); with them it trains one fold, offline.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.cli import tiny_study

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def listed_packages() -> list[str]:
    text = (REPO / "benchmarks" / "device_wheels.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [line for line in lines if line]


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_like_site(target: Path) -> Path:
    """Links to the test environment's site-packages, less the listed packages, sergraph and
    wandb (and everything those distributions installed)."""
    excluded = {normal(r.split("==")[0]) for r in listed_packages()} | {"sergraph", "wandb"}
    site = Path(sysconfig.get_paths()["purelib"])
    dropped = set()
    for dist in importlib.metadata.distributions():
        if normal(dist.metadata["Name"]) in excluded:
            for file in dist.files or []:
                dropped.add(Path(file).parts[0])
    target.mkdir()
    for entry in site.iterdir():
        if entry.name in dropped or entry.suffix == ".pth" or entry.name.startswith("__editable__"):
            continue
        (target / entry.name).symlink_to(entry)
    return target


def python(env_path: list[Path], *args, cwd: Path) -> subprocess.CompletedProcess:
    # -S: no site-packages, no .pth files (the test venv's editable sergraph stays out);
    # -E is not used, so PYTHONPATH below is the whole path besides the standard library
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "PYTHONPATH": os.pathsep.join(map(str, env_path)),
        "OMP_NUM_THREADS": "1",
        "SERGRAPH_CACHE": str(cwd / "cache"),
        "WANDB_MODE": "disabled",
    }
    return subprocess.run(
        [sys.executable, "-S", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_the_wheel_list_runs_a_fold_offline_on_an_image_without_those_packages(tmp_path):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels = tmp_path / "whl"
    download = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_wheels.sh"), "--python-version", version]
        + ["--dest", str(wheels)],
        capture_output=True,
        text=True,
    )
    if download.returncode != 0:
        pytest.skip(f"no package index reachable for the wheels: {download.stderr[-300:]}")
    image = image_like_site(tmp_path / "image")

    control = python([REPO, image], "-c", "import sergraph.cli", cwd=tmp_path)
    assert control.returncode != 0 and "ModuleNotFoundError" in control.stderr

    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        + ["--no-compile", "--target", str(tmp_path / "site"), *map(str, wheels.glob("*.whl"))],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    run = python(
        [REPO, tmp_path / "site", image],
        "-m",
        "sergraph.cli",
        "train",
        *tiny_study(tmp_path),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (predictions,) = (tmp_path / "runs").rglob("predictions.csv")
    assert len(predictions.read_text().splitlines()) > 1
