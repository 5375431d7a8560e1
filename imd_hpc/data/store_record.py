"""The record of how a prepared store was written (prepared/flow.json, prepared/rgb.json): one
versioned JSON object per store, written atomically, and refused when this code would misread the
store (another format version) or when a run asks for other settings than the store was made with."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from imd_hpc.atomic import atomic_write_text

T = TypeVar("T")


def write_record(path: Path, settings) -> None:
    """The settings dataclass as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(asdict(settings), indent=2) + "\n")


def read_record(path: Path, cls: type[T], version: int, error: type[Exception], kind: str, store_dir: Path) -> T | None:
    """cls(**record) of the JSON at path, or None when there is none. `error` (one line) for a record
    that does not parse and for one of another format version than `version`."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not a {kind} record ({e})") from None
    if not isinstance(record, dict):
        raise error(f"{path}: not a {kind} record")
    if record.get("version") != version:
        raise error(f"{path}: {kind} in format version {record.get('version')}, this code reads version {version}; "
                    f"delete {store_dir} and {path} and run prepare again")
    try:
        return cls(**record)
    except TypeError as e:
        raise error(f"{path}: not a {kind} record ({e})") from None


def recorded_or_refused(settings: T, have: T | None, path: Path, error: type[Exception], holds: str, store_dir: Path,
                        options: str) -> T:
    """The settings a run asks for, written as the store's record when it has none; `error` (one
    line) when the store was made otherwise, so that a dataset's store stays uniform."""
    if have is None:
        write_record(path, settings)
    elif have != settings:
        raise error(f"{store_dir} holds {holds} {have}, this run asks for {settings}: pass the same {options} "
                    f"options, or delete {store_dir} and {path} to store it again")
    return settings
