"""Making a finished cell look as an older sergraph left it, for the tests of what reads it."""

from __future__ import annotations

import json
from pathlib import Path


def drop_export_state(cell: Path, *keys: str) -> None:
    """Remove ``keys`` from the export state of ``cell``'s tested checkpoint (what the fold's
    data module saved for export), as a checkpoint written before they were stored, and record
    the rewritten checkpoint's hash in ``metrics.json`` so that the cell still verifies."""
    import torch

    from sergraph.results.layout import file_record, read_json

    metrics = read_json(cell / "metrics.json")
    path = cell / metrics["checkpoint"]
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["FoldDataModule"]["export"]
    for key in keys:
        del state[key]
    torch.save(checkpoint, path)
    metrics["files"][metrics["checkpoint"]] = file_record(path)
    (cell / "metrics.json").write_text(json.dumps(metrics))
