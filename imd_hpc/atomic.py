"""Atomic file writes: a temp file next to the target, renamed over it when complete.

A reader never sees a half-written file; a killed writer leaves at most `.NAME.tmpPID`, which
`prepare` sweeps up and every other writer simply replaces. `fsync=True` also makes the write
survive a machine crash (results, metrics, sweep records); per-clip data files skip it.
Standard library only, so every layer (data, synth, engine, sweeps) can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def temp_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, fsync: bool = False, mkdir: bool = False,
                **open_kwargs) -> Iterator[IO]:
    """`with atomic_open(p, "w") as f: ...` writes p only if the block completes."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False, mkdir: bool = False) -> None:
    with atomic_open(path, "wb", fsync=fsync, mkdir=mkdir) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False, mkdir: bool = False) -> None:
    with atomic_open(path, "w", fsync=fsync, mkdir=mkdir, encoding="utf-8") as f:
        f.write(text)
