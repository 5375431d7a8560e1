"""Dataset manifests: the prepared layout's CSVs, and the raw lists of real datasets.

Every dataset ends up as ROOT/meta.json + ROOT/train.csv + ROOT/val.csv (docs/architecture.md);
the loaders read only that. The readers for the raw datasets (Kinetics-400 annotation CSVs,
UCF-101 classInd + train/test lists, a generic `path label` list) produce the same rows, and
`prepare` writes them out in the standard layout.

Bad input raises ManifestError naming the file and line; files a manifest names but the disk
lacks are counted by `missing_files` so that a job fails before it starts, not mid-epoch.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imd_hpc.atomic import atomic_open, atomic_write_text
from imd_hpc.labels import camel_to_words

MANIFEST_COLUMNS = ("clip_id", "video", "audio", "label", "label_name", "gt_relevance")
SPLITS = ("train", "val")
STATUS_FILE = "status.jsonl"  # in ROOT/prepared; shards of a run write status.shard-K-of-N.jsonl beside it


class ManifestError(ValueError):
    """A malformed or inconsistent dataset file; the message names the file and line."""


@dataclass(frozen=True)
class ClipRow:
    clip_id: str
    video: str  # path relative to the dataset root ("" for an audio-only row)
    audio: str  # path relative to the root; "" = no audio track
    label: int
    label_name: str
    gt_relevance: float  # 1/0 where known, -1 where unknown


@dataclass
class DatasetMeta:
    dataset: str
    video_classes: list[str]
    audio_classes: list[str]
    fps: float
    extra: dict

    @classmethod
    def read(cls, root: str | Path) -> DatasetMeta:
        path = Path(root) / "meta.json"
        if not path.is_file():
            raise ManifestError(f"{path}: missing; is {root} a prepared dataset directory "
                                "(run `python -m imd_hpc synth` or `python -m imd_hpc prepare`)?")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
        for key in ("video_classes", "audio_classes"):
            if not isinstance(d.get(key), list) or not d[key]:
                raise ManifestError(f"{path}: key {key!r} must be a non-empty list")
        known = {"dataset", "video_classes", "audio_classes", "fps"}
        return cls(dataset=str(d.get("dataset", "")), video_classes=[str(x) for x in d["video_classes"]],
                   audio_classes=[str(x) for x in d["audio_classes"]], fps=float(d.get("fps", 0.0) or 0.0),
                   extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "video_classes": self.video_classes,
                "audio_classes": self.audio_classes, "fps": self.fps, **self.extra}


# ---- the standard layout -------------------------------------------------------------------

def read_manifest(root: str | Path, split: str, num_classes: int | None = None) -> list[ClipRow]:
    """Rows of ROOT/<split>.csv, validated (columns, label range, unique clip ids)."""
    if split not in SPLITS:
        raise ManifestError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(root) / f"{split}.csv"
    if not path.is_file():
        raise ManifestError(f"{path}: missing manifest for split {split!r}")
    rows: list[ClipRow] = []
    seen: set[str] = set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}:1: header lacks columns {missing}; expected {','.join(MANIFEST_COLUMNS)}")
        for lineno, rec in enumerate(reader, start=2):
            try:
                label = int(rec["label"])
                gt = rec["gt_relevance"].strip()
                gt_rel = float(gt) if gt else -1.0
            except (TypeError, ValueError):
                raise ManifestError(f"{path}:{lineno}: label {rec['label']!r} or gt_relevance "
                                    f"{rec['gt_relevance']!r} is not a number") from None
            clip_id = (rec["clip_id"] or "").strip()
            if not clip_id or "/" in clip_id:
                raise ManifestError(f"{path}:{lineno}: clip_id {clip_id!r} is empty or contains '/'")
            if clip_id in seen:
                raise ManifestError(f"{path}:{lineno}: duplicate clip_id {clip_id!r}")
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise ManifestError(f"{path}:{lineno}: label {label} outside [0, {num_classes})")
            seen.add(clip_id)
            rows.append(ClipRow(clip_id, (rec["video"] or "").strip(), (rec["audio"] or "").strip(), label,
                                (rec["label_name"] or "").strip(), gt_rel))
    return rows


def parse_status(lines: Iterable[str]) -> dict[str, dict]:
    """clip_id -> last record of prepare's status.jsonl lines; lines that do not parse (a line torn
    by a kill) are skipped, so their clips count as not prepared."""
    out: dict[str, dict] = {}
    for line in lines:
        try:
            rec = json.loads(line)
            out[rec["clip_id"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return out


def read_status_file(path: str | Path) -> dict[str, dict]:
    """parse_status of a status.jsonl file ({} when there is none)."""
    if not Path(path).is_file():
        return {}
    with open(path) as f:
        return parse_status(f)


def shard_status_name(k: int, n: int) -> str:
    return f"status.shard-{k}-of-{n}.jsonl"


def shard_status_files(prepared: str | Path) -> list[Path]:
    """Status logs of `prepare --shard` runs not yet merged into status.jsonl."""
    return sorted(Path(prepared).glob("status.shard-*-of-*.jsonl"))


def read_prepared_status(prepared: str | Path) -> dict[str, dict]:
    """clip_id -> last status record of PREPARED/status.jsonl, then of any unmerged shard logs
    (a shard's record is newer than the merged file's)."""
    records = read_status_file(Path(prepared) / STATUS_FILE)
    for path in shard_status_files(prepared):
        records.update(read_status_file(path))
    return records


def read_status(root: str | Path) -> dict[str, dict]:
    """clip_id -> last status record of ROOT/prepared (status.jsonl and unmerged shard logs)."""
    return read_prepared_status(Path(root) / "prepared")


def write_manifest(path: str | Path, rows: Iterable[ClipRow]) -> None:
    """Atomic CSV write in the standard column order."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(MANIFEST_COLUMNS)
        for r in rows:
            w.writerow([r.clip_id, r.video, r.audio, r.label, r.label_name,
                        "" if r.gt_relevance < 0 else f"{r.gt_relevance:g}"])


def write_meta(root: str | Path, meta: DatasetMeta) -> None:
    atomic_write_text(Path(root) / "meta.json", json.dumps(meta.to_dict(), indent=2))


def missing_files(root: str | Path, rows: Sequence[ClipRow], need_video: bool = True,
                  need_audio: bool = False) -> list[tuple[str, str]]:
    """(clip_id, path) for every file the rows name that is not on disk."""
    root = Path(root)
    out = []
    for r in rows:
        if need_video and r.video and not (root / r.video).is_file():
            out.append((r.clip_id, r.video))
        if need_audio and r.audio and not (root / r.audio).is_file():
            out.append((r.clip_id, r.audio))
    return out


def clip_id_from_path(rel: str) -> str:
    """A file-name-safe unique id from a path relative to the dataset root."""
    stem = os.path.splitext(rel)[0]
    return stem.replace(os.sep, "__").replace("/", "__")


# ---- raw real-dataset lists ----------------------------------------------------------------

@dataclass
class RawDataset:
    """Rows per split plus the video class names, before `prepare` adds audio and flow."""
    name: str
    video_classes: list[str]
    splits: dict[str, list[ClipRow]]
    origins: dict[str, str] = field(default_factory=dict)  # clip_id -> "list file:line" it came from


def _index_videos(video_dir: Path) -> dict[str, str]:
    """basename -> path relative to video_dir, for datasets whose files may sit in subfolders."""
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(video_dir):
        for name in files:
            index.setdefault(name, os.path.relpath(os.path.join(dirpath, name), video_dir))
    return index


def _rel_to_root(root: Path, video_dir: Path, rel: str) -> str:
    return os.path.relpath(video_dir / rel, root)


def read_kinetics(root: str | Path, annotations: dict[str, str | Path], video_dir: str | Path | None = None,
                  ) -> RawDataset:
    """Kinetics-400 from the official annotation CSVs (label, youtube_id, time_start, time_end, split).

    annotations: {"train": path, "val": path}. Clip files are `{youtube_id}_{start:06d}_{end:06d}.mp4`
    anywhere under video_dir (flat or per-label folders); class index = sorted label names over
    both splits. Rows whose file is absent are kept (prepare counts and reports them).
    """
    root = Path(root)
    vdir = Path(video_dir) if video_dir else root
    records: dict[str, list[tuple[str, str, str]]] = {}
    labels: set[str] = set()
    for split, ann in annotations.items():
        recs = []
        with open(ann, newline="") as f:
            reader = csv.DictReader(f)
            need = ("label", "youtube_id", "time_start", "time_end")
            if any(c not in (reader.fieldnames or []) for c in need):
                raise ManifestError(f"{ann}:1: header {reader.fieldnames} lacks one of {need}")
            for lineno, rec in enumerate(reader, start=2):
                try:
                    start, end = int(float(rec["time_start"])), int(float(rec["time_end"]))
                except (TypeError, ValueError):
                    raise ManifestError(f"{ann}:{lineno}: time_start/time_end not numbers") from None
                name = f"{rec['youtube_id']}_{start:06d}_{end:06d}.mp4"
                label = rec["label"].strip().strip('"')
                if not label:
                    raise ManifestError(f"{ann}:{lineno}: empty label")
                labels.add(label)
                recs.append((name, label, f"{ann}:{lineno}"))
        records[split] = recs
    classes = sorted(labels)
    index = {c: i for i, c in enumerate(classes)}
    files = _index_videos(vdir)
    splits, origins = {}, {}
    for split, recs in records.items():
        splits[split] = [ClipRow(os.path.splitext(name)[0],
                                 _rel_to_root(root, vdir, files.get(name, os.path.join(label, name))),
                                 "", index[label], label, -1.0) for name, label, _ in recs]
        origins.update((os.path.splitext(name)[0], where) for name, _, where in recs)
    return RawDataset("kinetics400", classes, splits, origins)


def read_ucf101(root: str | Path, list_dir: str | Path, split: int = 1, video_dir: str | Path | None = None,
                ) -> RawDataset:
    """UCF-101: classInd.txt (`1 ApplyEyeMakeup`) and trainlist0N/testlist0N (N = 1..3).

    Train lines are `Class/v_Class_gXX_cYY.avi 1` (1-based index); test lines carry no label, so
    the label is the folder name. Labels are 0-based in the manifest. Class names are made into
    words (`apply eye makeup`), as `imd_hpc.labels.read_ucf101_classind` gives them to the SAVLD.
    """
    if split not in (1, 2, 3):
        raise ManifestError(f"UCF-101 split must be 1, 2 or 3, not {split}")
    root, ldir = Path(root), Path(list_dir)
    vdir = Path(video_dir) if video_dir else root
    class_file = ldir / "classInd.txt"
    folders: list[str] = []
    with open(class_file) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(folders) + 1:
                raise ManifestError(f"{class_file}:{lineno}: expected '{len(folders) + 1} ClassName', got {line.strip()!r}")
            folders.append(parts[1])
    index = {c: i for i, c in enumerate(folders)}
    classes = [camel_to_words(c) for c in folders]
    splits: dict[str, list[ClipRow]] = {}
    origins: dict[str, str] = {}
    for split_name, fname in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
        path = ldir / fname
        rows = []
        with open(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parts = line.split()
                rel = parts[0]
                folder = rel.split("/")[0]
                if folder not in index:
                    raise ManifestError(f"{path}:{lineno}: class folder {folder!r} not in {class_file}")
                label = index[folder]
                if len(parts) > 1 and int(parts[1]) - 1 != label:
                    raise ManifestError(f"{path}:{lineno}: label {parts[1]} disagrees with folder {folder!r}")
                rows.append(ClipRow(clip_id_from_path(rel.split("/")[-1]), _rel_to_root(root, vdir, rel), "",
                                    label, classes[label], -1.0))
                origins[rows[-1].clip_id] = f"{path}:{lineno}"
        splits[split_name] = rows
    return RawDataset("ucf101", classes, splits, origins)


LIST_FORMS = ("csv with a header naming path and label", "path<TAB>label", "path label")


def _parse_list(path: str | Path) -> list[tuple[str, str, int]]:
    """(relative path, label, line number) of one list file, in whichever form it is written.

    - CSV with a header row that names a `path` and a `label` column (other columns ignored;
      CSV quoting allows commas in names);
    - `relative/path<TAB>label`: labels may contain spaces ("dancing ballet");
    - `relative/path label`: split at the last space, so single-word labels only.
    Blank lines and lines starting with # are skipped (not in the CSV form).
    """
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    header = [c.strip().lower() for c in next(csv.reader([first]))] if "," in first else []
    if "path" in header and "label" in header:
        out = []
        start = lines.index(first)
        reader = csv.DictReader(lines[start + 1:], fieldnames=header)
        for lineno, rec in enumerate(reader, start=start + 2):
            rel, label = (rec.get("path") or "").strip(), (rec.get("label") or "").strip()
            if not rel and not label:
                continue
            if not rel or not label:
                raise ManifestError(f"{path}:{lineno}: empty path or label in {rec}")
            out.append((rel, label, lineno))
        return out
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line:
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 2 or not all(parts):
                raise ManifestError(f"{path}:{lineno}: expected 'path<TAB>label', got {line.strip()!r}")
        else:
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2:
                raise ManifestError(f"{path}:{lineno}: expected 'path label' ({' or '.join(LIST_FORMS)}), "
                                    f"got {line.strip()!r}")
        out.append((parts[0], parts[1], lineno))
    return out


def read_path_list(root: str | Path, lists: dict[str, str | Path], classes_file: str | Path | None = None,
                   ) -> RawDataset:
    """Generic lists, one clip per line in one of three forms (see _parse_list): a CSV with a
    `path,label` header, `path<TAB>label`, or `path label` for single-word labels. Label: a class
    name, or an integer index when a classes file gives the names one per line. Paths are
    relative to root."""
    root = Path(root)
    parsed = {split: _parse_list(path) for split, path in lists.items()}
    if classes_file:
        classes = [s.strip() for s in Path(classes_file).read_text().splitlines() if s.strip()]
    else:
        classes = sorted({lab for recs in parsed.values() for _, lab, _ in recs})
    index = {c: i for i, c in enumerate(classes)}
    splits, origins = {}, {}
    for split, recs in parsed.items():
        rows, ids = [], set()
        for rel, lab, lineno in recs:
            if lab in index:
                label = index[lab]
            elif classes_file and lab.isdigit() and int(lab) < len(classes):
                label = int(lab)
            else:
                raise ManifestError(f"{lists[split]}:{lineno}: unknown label {lab!r}")
            cid = clip_id_from_path(rel)
            if cid in ids:
                raise ManifestError(f"{lists[split]}:{lineno}: duplicate clip {rel!r}")
            ids.add(cid)
            rows.append(ClipRow(cid, rel, "", label, classes[label], -1.0))
            origins[cid] = f"{lists[split]}:{lineno}"
        splits[split] = rows
    return RawDataset("list", classes, splits, origins)
