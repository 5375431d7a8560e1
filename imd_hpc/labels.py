"""Label readers: AudioSet class_labels_indices.csv, Kinetics-400 label list or annotation CSV,
UCF-101 classInd.txt, and a transformers `id2label` (dict or config.json).

Every reader returns a list of label names in class-index order. A malformed file raises
LabelFileError naming the file, the line and the reason, so a bad download is caught before any
embedding or training starts.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from pathlib import Path


class LabelFileError(ValueError):
    """A label file that cannot be read; the message names the file, line and reason."""

    def __init__(self, path: str | Path, reason: str, line: int | None = None):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


def _read_text(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise LabelFileError(p, "no such file")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelFileError(p, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _check_nonempty(path: str | Path, labels: list[str]) -> list[str]:
    if not labels:
        raise LabelFileError(path, "no labels found (empty label list)")
    return labels


def _check_unique(path: str | Path, labels: list[str], lines: list[int]) -> None:
    seen: dict[str, int] = {}
    for name, line in zip(labels, lines):
        if name in seen:
            raise LabelFileError(path, f"duplicate label {name!r} (first on line {seen[name]})", line)
        seen[name] = line


def camel_to_words(name: str) -> str:
    """'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo', 'PlayingDaf' -> 'playing daf'.

    Labels become sentences for the text embedder (paper 3.1); runs of capitals stay together
    ('TaiChi' -> 'tai chi', 'JumpingJack' -> 'jumping jack').
    """
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name.replace("_", " "))
    return " ".join(words.split()).lower()


def read_audioset_labels(path: str | Path) -> list[str]:
    """AudioSet class_labels_indices.csv: header `index,mid,display_name`, names may be quoted."""
    text = _read_text(path)
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise LabelFileError(path, "no labels found (empty file)")
    header = [h.strip().lower() for h in rows[0]]
    if header[:3] != ["index", "mid", "display_name"]:
        raise LabelFileError(path, f"expected header 'index,mid,display_name', found {','.join(rows[0])!r}", 1)
    labels: list[str] = []
    lines: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != 3:
            raise LabelFileError(path, f"expected 3 fields (index,mid,display_name), found {len(row)}", lineno)
        try:
            index = int(row[0])
        except ValueError:
            raise LabelFileError(path, f"index {row[0]!r} is not an integer", lineno) from None
        if index != len(labels):
            raise LabelFileError(path, f"index {index} out of order (expected {len(labels)})", lineno)
        name = row[2].strip()
        if not name:
            raise LabelFileError(path, "empty display_name", lineno)
        labels.append(name)
        lines.append(lineno)
    _check_unique(path, labels, lines)
    return _check_nonempty(path, labels)


_KINETICS_CSV_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def read_kinetics_labels(path: str | Path) -> list[str]:
    """Kinetics label list (one name per line) or annotation CSV (label,youtube_id,...,split).

    From a CSV the class list is the sorted set of its `label` column, the order Kinetics uses.
    """
    text = _read_text(path)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if first.strip().lower().startswith("label,"):
        return _read_kinetics_csv(path, lines)
    labels: list[str] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if "\t" in name or name.count(",") >= 3:
            raise LabelFileError(path, f"looks like a table row, not a label name: {name[:60]!r}", lineno)
        labels.append(name.strip('"'))
        linenos.append(lineno)
    _check_unique(path, labels, linenos)
    return _check_nonempty(path, labels)


def _read_kinetics_csv(path: str | Path, lines: list[str]) -> list[str]:
    rows = list(csv.reader(lines))
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _KINETICS_CSV_COLUMNS if c not in header]
    if missing:
        raise LabelFileError(path, f"annotation CSV lacks columns {missing}", 1)
    col = header.index("label")
    names: set[str] = set()
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise LabelFileError(path, f"expected {len(header)} fields, found {len(row)}", lineno)
        name = row[col].strip()
        if not name:
            raise LabelFileError(path, "empty label", lineno)
        names.add(name)
    return _check_nonempty(path, sorted(names))


def read_ucf101_classind(path: str | Path) -> list[str]:
    """UCF-101 classInd.txt: `1 ApplyEyeMakeup` per line, 1-based, -> 'apply eye makeup'."""
    text = _read_text(path)
    labels: list[str] = []
    linenos: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LabelFileError(path, f"expected '<index> <ClassName>', found {line.strip()[:60]!r}", lineno)
        try:
            index = int(parts[0])
        except ValueError:
            raise LabelFileError(path, f"index {parts[0]!r} is not an integer", lineno) from None
        if index != len(labels) + 1:
            raise LabelFileError(path, f"index {index} out of order (expected {len(labels) + 1})", lineno)
        labels.append(camel_to_words(parts[1]))
        linenos.append(lineno)
    _check_unique(path, labels, linenos)
    return _check_nonempty(path, labels)


def read_id2label(source: Mapping | str | Path) -> list[str]:
    """A transformers id2label: the dict itself, a config.json, or a save_pretrained directory."""
    where: str | Path = "id2label"
    if isinstance(source, Mapping):
        mapping = source
    else:
        p = Path(source)
        if p.is_dir():
            p = p / "config.json"
        where = p
        try:
            config = json.loads(_read_text(p))
        except json.JSONDecodeError as e:
            raise LabelFileError(p, f"not valid JSON: {e.msg}", e.lineno) from None
        if not isinstance(config, dict) or "id2label" not in config:
            raise LabelFileError(p, "no 'id2label' key")
        mapping = config["id2label"]
        if not isinstance(mapping, Mapping):
            raise LabelFileError(p, f"'id2label' is a {type(mapping).__name__}, expected an object")
    try:
        items = sorted((int(k), str(v)) for k, v in mapping.items())
    except (TypeError, ValueError):
        raise LabelFileError(where, "id2label keys must be integers") from None
    ids = [i for i, _ in items]
    if ids != list(range(len(ids))):
        raise LabelFileError(where, f"id2label ids are not 0..{len(ids) - 1} without gaps")
    labels = [v for _, v in items]
    _check_unique(where, labels, ids)
    return _check_nonempty(where, labels)


def read_labels(path: str | Path, kind: str = "auto") -> list[str]:
    """Read any supported label file; kind: auto | audioset | kinetics | ucf101 | id2label."""
    readers = {"audioset": read_audioset_labels, "kinetics": read_kinetics_labels,
               "ucf101": read_ucf101_classind, "id2label": read_id2label}
    if kind != "auto":
        if kind not in readers:
            raise ValueError(f"label kind must be auto or one of {sorted(readers)}, not {kind!r}")
        return readers[kind](path)
    p = Path(path)
    if p.is_dir() or p.suffix == ".json":
        return read_id2label(p)
    first = next((ln for ln in _read_text(p).splitlines() if ln.strip()), "")
    if first.strip().lower().startswith("index,mid,display_name"):
        return read_audioset_labels(p)
    if re.match(r"^\s*\d+\s+\S+\s*$", first):
        return read_ucf101_classind(p)
    return read_kinetics_labels(p)
