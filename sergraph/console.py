"""The console: what a person sees (notes, one line per cell, the study's progress bar)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
