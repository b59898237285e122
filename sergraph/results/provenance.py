"""Provenance of a result: which code, which config files, which packages and machine made it.

:func:`provenance` is recorded in every cell's ``metrics.json`` (key ``provenance``); the report
reads it back (:func:`row_provenance`, :func:`changed_sources`) to say per row whether all cells
came from one commit of a clean tree, and whether an experiment file changed since its cells
ran. A reviewer can so check that a study's configuration was committed before its results.
"""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sergraph.config import config_dir
from sergraph.io import file_sha256

UNKNOWN = "unknown"
#: Distribution names whose versions are recorded (importable name in the key).
PACKAGES = {
    "torch": "torch",
    "torch_geometric": "torch_geometric",
    "lightning": "lightning",
    "opensmile": "opensmile",
    "numpy": "numpy",
    "sklearn": "scikit-learn",
}


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def project_root() -> Path:
    """The folder above the installed ``sergraph`` package (a checkout's root when run from one)."""
    return Path(__file__).resolve().parents[2]


def git_state(root: Path | None = None) -> dict:
    """``{"commit", "dirty"}`` of the checkout holding the package; ``"unknown"`` for both when
    the package does not run from a git checkout (an installed wheel). ``dirty``: tracked or
    untracked, not ignored files differ from the commit."""
    root = root or project_root()
    top = _git("rev-parse", "--show-toplevel", cwd=root)
    if top is None or Path(top).resolve() != root.resolve():
        return {"commit": UNKNOWN, "dirty": UNKNOWN}
    commit = _git("rev-parse", "HEAD", cwd=root)
    status = _git("status", "--porcelain", cwd=root)
    return {
        "commit": commit or UNKNOWN,
        "dirty": UNKNOWN if status is None else bool(status),
    }


def sergraph_version() -> str:
    """The installed sergraph's version, from its package metadata (what a wheel install has);
    the source tree's own version where the package is not installed."""
    try:
        return metadata.version("sergraph")
    except metadata.PackageNotFoundError:
        from sergraph.version import __version__

        return __version__


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {}
    for name, distribution in PACKAGES.items():
        try:
            out[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux), else what :mod:`platform` knows."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


@lru_cache(maxsize=1)
def hardware() -> dict:
    cpu = cpu_name()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a broken CUDA setup is reported as no GPU
        gpu = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu, "platform": platform.platform()}


def provenance(cfg: DictConfig, started: str, ended: str | None = None) -> dict:
    """Everything :mod:`sergraph.results.provenance` records for one cell."""
    import torch

    sources = OmegaConf.select(cfg, "run.sources", default=None)
    return {
        **git_state(),
        "sergraph": sergraph_version(),
        "config_files": dict(OmegaConf.to_container(sources)) if sources else {},
        "packages": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "hardware": hardware(),
        "started": started,
        "ended": ended or now(),
    }


def row_provenance(records: list[dict]) -> dict:
    """Per report row: ``clean`` (every cell from a clean tree), ``commits`` (distinct
    commits), ``versions`` (distinct sergraph versions recorded) and a short text (``clean @
    abc1234``, ``DIRTY``, ``2 commits``, ``installed package 0.2.0`` for cells run from an
    installed package rather than a checkout, ``unknown``)."""
    states = [record.get("provenance") or {} for record in records]
    commits = sorted({str(state.get("commit", UNKNOWN)) for state in states})
    versions = sorted({str(state["sergraph"]) for state in states if state.get("sergraph")})
    dirty = [state.get("dirty", UNKNOWN) for state in states]
    clean = all(flag is False for flag in dirty)
    if UNKNOWN in commits or any(flag == UNKNOWN for flag in dirty):
        if versions and all(state.get("sergraph") for state in states):
            text = f"installed package {', '.join(versions)}"
        else:
            text = "unknown (cells without git provenance)"
    elif len(commits) > 1:
        text = f"{len(commits)} commits" + ("" if clean else ", DIRTY tree")
    else:
        text = f"{'clean' if clean else 'DIRTY'} @ {commits[0][:8]}"
    return {"clean": clean, "commits": commits, "versions": versions, "text": text}


def changed_sources(records: list[dict], root: Path | None = None) -> list[str]:
    """Config files whose current SHA-256 differs from the one a cell recorded (or that are
    gone), as ``path (recorded abc…, now def…)`` lines."""
    root = root or config_dir()
    recorded: dict[str, set[str]] = {}
    for record in records:
        files = (record.get("provenance") or {}).get("config_files") or {}
        for name, digest in files.items():
            recorded.setdefault(name, set()).add(digest)
    out = []
    for name, digests in sorted(recorded.items()):
        path = root / name
        current = file_sha256(path) if path.is_file() else "missing"
        stale = sorted(d for d in digests if d != current)
        if stale:
            out.append(f"{name} (recorded {', '.join(d[:12] for d in stale)}, now {current[:12]})")
    return out
