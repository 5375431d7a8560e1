"""prepare's status log: one line per clip in ROOT/prepared/status.jsonl, appended and fsynced by
one writer (the main process of a `prepare` run, or of one shard, which writes its own
status.shard-K-of-N.jsonl so that no two nodes append to one file), and the merge of shard logs
into status.jsonl. Reading them is manifest.read_prepared_status."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .manifest import STATUS_FILE, read_prepared_status, read_status_file, shard_status_files


def _fsync_append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_line(path: Path) -> None:
    """A line torn by a kill is dropped; its clip is redone."""
    data = path.read_bytes() if path.is_file() else b""
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def merge_shard_status(prepared: Path) -> int:
    """Append the shard logs' records that status.jsonl lacks (or has otherwise), then delete the
    shard logs. Safe to repeat after a kill: records already merged are not appended again."""
    main = prepared / STATUS_FILE
    _drop_torn_line(main)
    have = read_status_file(main)
    new: list[str] = []
    shards = shard_status_files(prepared)
    for path in shards:
        for cid, rec in read_status_file(path).items():
            if have.get(cid) != rec:
                have[cid] = rec
                new.append(json.dumps(rec) + "\n")
    if new:
        _fsync_append(main, new)
    for path in shards:
        path.unlink(missing_ok=True)
    return len(new)


class StatusLog:
    """Append-only status log (status.jsonl, or a shard's own) written by the main process only."""

    def __init__(self, prepared: Path, name: str = STATUS_FILE):
        self.path = prepared / name
        _drop_torn_line(self.path)
        self.records: dict[str, dict] = read_prepared_status(prepared)
        self._f = open(self.path, "a")

    def write(self, clip_id: str, status: str, reason: str = "") -> None:
        rec = {"clip_id": clip_id, "status": status, "reason": reason}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.records[clip_id] = rec

    def close(self) -> None:
        self._f.close()
