"""Real speech: two leave-one-speaker-out folds of EmoDB, trained briefly."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_two_emodb_folds_are_well_above_chance(emodb, tmp_path):
    env = {
        **os.environ,
        "SERGRAPH_CACHE": os.environ.get("SERGRAPH_CACHE", str(tmp_path / "cache")),
    }
    args = [
        "train",
        "data=emodb",
        f"data.root={emodb}",
        "folds.only=[0,5]",
        "trainer.max_epochs=8",
        "trainer.accelerator=cpu",
        "optim.lr=1e-3",
        f"run.out_dir={tmp_path}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sergraph.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "emodb" / "lstm_gin" / "summary.json").read_text())
    # 7 classes: chance UA is 1/7 = 14.3 %; two speakers (03 and 12) are 84 test utterances.
    assert summary["pooled"]["per_seed"][0]["n"] == 49 + 35
    assert summary["pooled"]["ua"] > 0.35 and summary["pooled"]["wa"] > 0.35
