"""Read the records of a W&B offline run file (``run-<id>.wandb``) for assertions in tests.

The file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each chunk
with a 7-byte header (crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST) carrying a
serialised ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def run_contents(path: str | Path) -> dict:
    """Config, summary, history keys, run metadata and exit code of one offline run."""
    out = {"config": {}, "summary": {}, "history_keys": set(), "exit_code": None, "run": None}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "history":
            out["history_keys"].update(
                item.key or "/".join(item.nested_key) for item in record.history.item
            )
        elif kind == "run":
            for item in record.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
            out["run"] = {
                "group": record.run.run_group,
                "name": record.run.display_name,
                "job_type": record.run.job_type,
                "tags": list(record.run.tags),
            }
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out
