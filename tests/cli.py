"""Running the real command line in a subprocess, for the integration tests."""

from __future__ import annotations

import subprocess
import sys


def run_cli(args, env=None, cwd=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m sergraph.cli ARGS`` with ``env`` in ``cwd``; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "sergraph.cli", *map(str, args)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
