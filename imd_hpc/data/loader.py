"""`build_loader`: batches of the prepared dataset as the batch dict of docs/architecture.md.

    loader = build_loader(cfg, split="train", rank=0, world_size=1)
    loader.set_epoch(e); len(loader)          # batches per epoch on this rank
    for batch in loader: ...
    sd = loader.state_dict(); loader.load_state_dict(sd)   # exact mid-epoch resume
    loader.dataset_meta                       # class names, tagger dims, SAVLD path

Before anything is decoded, the split's manifest is checked against the disk: clips whose
`prepare` failed (status.jsonl) are dropped with a logged count, and any other clip that lacks
its video or prepared files makes build_loader raise one error listing the counts. At load
time a clip that fails to decode is logged, counted (`loader.skipped`) and replaced by the
next clip of the manifest, so an epoch never stops on a bad file.

RGB comes from `prepare`'s training store (prepared/rgb, a short-GOP copy at short side 256)
where it holds the clip and data.rgb_store is on, else from the source video.

Backends: `dali` (DALI's video decoder, CPU with device_id=None or NVDEC on a GPU; its pipeline
runs data.prefetch batches ahead, fed by the sampler), `pyav` (any codec, CPU, in DataLoader
workers), `auto` (DALI for the clips it decodes here, PyAV for the rest). Both turn the same
ViewRequests into the same tensors (transforms.py).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .flow import FLOW_EXT, FORMAT_FILE, FlowFormat, flow_size
from .manifest import ClipRow, DatasetMeta, ManifestError, read_manifest, read_status
from .rgb_store import RgbFormat, store_path
from .sampling import (
    epoch_order,
    eval_crops,
    eval_starts,
    frame_indices,
    random_resized_crop,
    sample_rng,
    shard,
    swap_partner,
)
from .transforms import ViewRequest

log = logging.getLogger(__name__)

# Codecs DALI's decoder reads on each device (DESIGN.md, measured for DALI 2.4).
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = DALI_CPU_CODECS | {"h264", "hevc", "mpeg4", "av1"}

# Views in one evaluation batch, at most: a batch of train.micro_batch clips x test views (IMD-B:
# 64 x 12 = 768 views, about 6 GB of float32 RGB and flow, held in DALI's queue, the loader's and
# one forward) would far outgrow a training batch. The tiny preset's 16 x 12 = 192 stays whole.
EVAL_BATCH_VIEWS = 256


def eval_clips_per_batch(micro_batch: int, views: int) -> int:
    """Clips in one evaluation batch of `views` views each: micro_batch, fewer where that would pass
    EVAL_BATCH_VIEWS views, at least one."""
    return max(1, min(micro_batch, EVAL_BATCH_VIEWS // views))


class MissingPreparedFiles(ManifestError):
    """Clips of a split lack their video or prepared files; raised before any job starts."""


class DatasetMismatch(ManifestError):
    """The dataset cannot serve this configuration (a split smaller than one batch, a codec the
    chosen decoder does not read); raised before any job starts."""


@dataclass(frozen=True)
class ClipInfo:
    num_frames: int
    hw: tuple[int, int]
    flow_hw: tuple[int, int]  # (0, 0) when prepare stored no flow
    embedding: np.ndarray
    probs: np.ndarray
    has_audio: bool


def prepared_dir(root: str | Path) -> Path:
    return Path(root) / "prepared"


def check_split(root: str | Path, rows: list[ClipRow], need_video: bool, need_flow: bool, split: str,
                store: RgbFormat | None = None) -> tuple[list[int], dict[str, int], set[str]]:
    """Kept row indices, drop counts and the clip ids whose RGB is read from the training store
    (`store`: the dataset's, when the loader reads it); raises MissingPreparedFiles listing what is
    missing. A clip in the store needs no source video; one that is not is read from its source."""
    root = Path(root)
    status = read_status(root)
    prep = prepared_dir(root)
    failed = {cid for cid, rec in status.items() if rec.get("status") in ("failed", "skipped")}
    keep, dropped = [], {"prepare_failed": 0}
    in_store: set[str] = set()
    missing: dict[str, list[str]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.clip_id in failed:
            dropped["prepare_failed"] += 1
            continue
        ok = True
        if need_video and store is not None and store_path(prep, r.clip_id, store).is_file():
            in_store.add(r.clip_id)
        elif need_video and not (root / r.video).is_file():
            missing["video"].append(r.video)
            ok = False
        if not (prep / "audio" / f"{r.clip_id}.npz").is_file():
            missing["prepared/audio"].append(r.clip_id)
            ok = False
        if need_flow and not (prep / "flow" / f"{r.clip_id}{FLOW_EXT}").is_file():
            missing["prepared/flow"].append(r.clip_id)
            ok = False
        if ok:
            keep.append(i)
    if missing:
        parts = [f"{len(v)} missing {k} (e.g. {v[0]})" for k, v in missing.items()]
        raise MissingPreparedFiles(
            f"{root}/{split}.csv: {len(rows)} clips, " + "; ".join(parts)
            + f". Run `python -m imd_hpc prepare --dataset ... --root {root}` first.")
    if dropped["prepare_failed"]:
        log.warning("%s/%s.csv: %d clips dropped because prepare failed on them (see %s)", root, split,
                    dropped["prepare_failed"], prep / "status.jsonl")
    if store is not None and need_video and len(in_store) < len(keep):
        log.warning("%s/%s.csv: %d of %d clips are not in the training store (%s); they are decoded from their "
                    "source videos", root, split, len(keep) - len(in_store), len(keep), prep / "rgb")
    return keep, dropped, in_store


class ClipDataset:
    """Rows of one split plus their cached per-clip info; picklable for DataLoader workers."""

    def __init__(self, root: str, rows: list[ClipRow], meta: DatasetMeta, need_rgb: bool, need_flow: bool,
                 need_audio: bool, fbank_from: str = "", manifest_index: list[int] | None = None,
                 flow_format: FlowFormat | None = None, store: RgbFormat | None = None,
                 in_store: set[str] | None = None):
        self.root = str(root)
        self.rows = rows
        # row i of this dataset is data row manifest_index[i] of <split>.csv (after drops and subsets)
        self.manifest_index = manifest_index if manifest_index is not None else list(range(len(rows)))
        self.meta = meta
        self.need_rgb, self.need_flow, self.need_audio = need_rgb, need_flow, need_audio
        self.flow_format = flow_format  # prepared/flow.json: what a flow code means in pixels
        self.store = store  # prepared/rgb.json: the training store RGB is read from (None: sources only)
        self.in_store = in_store or set()  # clip ids whose RGB the training store holds
        self.fbank_from = fbank_from  # tagger dir whose feature extractor makes `audio_fbank` ("" = off)
        self._extractor = None
        self.by_class: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            self.by_class[r.label].append(i)

    def __len__(self) -> int:
        return len(self.rows)

    def video_path(self, i: int) -> str:
        """The source video (what `prepare` read)."""
        return os.path.join(self.root, self.rows[i].video)

    def from_store(self, i: int) -> bool:
        return self.store is not None and self.rows[i].clip_id in self.in_store

    def rgb_path(self, i: int) -> str:
        """The file RGB is decoded from: the training store's copy when it holds the clip, else the source."""
        if self.from_store(i):
            return str(store_path(os.path.join(self.root, "prepared"), self.rows[i].clip_id, self.store))
        return self.video_path(i)

    def rgb_hw(self, i: int) -> tuple[int, int]:
        """The frame size of rgb_path(i): the store's is the source's scaled to its short side."""
        hw = self.info(i).hw
        return flow_size(*hw, self.store.short_side) if self.from_store(i) else hw

    def flow_path(self, i: int) -> str:
        return os.path.join(self.root, "prepared", "flow", f"{self.rows[i].clip_id}{FLOW_EXT}")

    def fbank(self, i: int) -> torch.Tensor:
        """(frames, mel) AST input of row i's audio, for model.audio_input=raw. A clip without audio
        gets zeros (has_audio False tells the model and the loss)."""
        from imd_hpc.audio.tagger import fbank_features, fbank_seconds

        from .pyav_loader import read_audio

        if self._extractor is None:
            from transformers import ASTFeatureExtractor

            self._extractor = ASTFeatureExtractor.from_pretrained(self.fbank_from)
        ex = self._extractor
        shape = (int(ex.max_length), int(ex.num_mel_bins))
        row = self.rows[i]
        wave = read_audio(os.path.join(self.root, row.audio), fbank_seconds(ex.max_length)) if row.audio else None
        if wave is None:
            return torch.zeros(shape)
        return fbank_features([wave], ex)[0].float()

    def info(self, i: int) -> ClipInfo:
        return _load_info(os.path.join(self.root, "prepared", "audio", f"{self.rows[i].clip_id}.npz"))


@lru_cache(maxsize=65536)
def _load_info(path: str) -> ClipInfo:
    with np.load(path) as z:
        flow_hw = (int(z["flow_height"]), int(z["flow_width"])) if "flow_height" in z else (0, 0)
        return ClipInfo(num_frames=int(z["num_frames"]), hw=(int(z["height"]), int(z["width"])), flow_hw=flow_hw,
                        embedding=z["embedding"].astype(np.float32), probs=z["probs"].astype(np.float32),
                        has_audio=bool(z["has_audio"]))


@dataclass
class SamplePlan:
    row: int  # the visual clip
    audio_row: int  # whose audio (differs after an intra-class swap)
    views: list[ViewRequest]


class Planner:
    """Turns (epoch, position in the epoch order, row) into a SamplePlan; deterministic."""

    def __init__(self, ds: ClipDataset, train: bool, num_frames: int, rate: int, min_scale: float,
                 flip: bool, swap_p: float, crops: int, clips: int, seed: int):
        self.ds, self.train = ds, train
        self.t, self.rate, self.min_scale, self.flip = num_frames, rate, min_scale, flip
        self.swap_p, self.crops, self.clips, self.seed = swap_p, crops, clips, seed

    def plan(self, epoch: int, position: int, row: int) -> SamplePlan:
        rng = sample_rng(self.seed, epoch, position)
        audio_row = row
        if self.train and self.swap_p > 0 and rng.random() < self.swap_p:
            audio_row = swap_partner(rng, row, self.ds.by_class[self.ds.rows[row].label])
        return SamplePlan(row, audio_row, self.views(rng, row))

    def views(self, rng: np.random.Generator, row: int) -> list[ViewRequest]:
        if not (self.ds.need_rgb or self.ds.need_flow):
            return []
        info = self.ds.info(row)
        h, w = self.ds.rgb_hw(row)
        common = dict(row=row, video_path=self.ds.rgb_path(row), flow_path=self.ds.flow_path(row),
                      video_hw=(h, w), flow_hw=info.flow_hw, from_store=self.ds.from_store(row))
        if self.train:
            idx = frame_indices(info.num_frames, self.t, self.rate, float(rng.random()))
            roi = random_resized_crop(rng, h, w, self.min_scale)
            flip = bool(self.flip and rng.random() < 0.5)
            return [ViewRequest(frame_indices=tuple(idx), roi=roi, flip=flip, **common)]
        out = []
        for start in eval_starts(self.clips):
            idx = tuple(frame_indices(info.num_frames, self.t, self.rate, start))
            for roi in eval_crops(h, w, self.crops):
                out.append(ViewRequest(frame_indices=idx, roi=roi, flip=False, **common))
        return out


def make_backend(kind: str, crop_size: int, max_views: int, threads: int, need_rgb: bool, need_flow: bool,
                 device_id: int | None = None, flow_format: FlowFormat | None = None, prefetch: int = 2):
    if kind == "pyav":
        from .pyav_loader import PyAVBackend
        return PyAVBackend(crop_size, flow_format=flow_format)
    if kind == "dali":
        from .dali_loader import DaliBackend
        return DaliBackend(crop_size, max_views, threads, need_rgb, need_flow, device_id, flow_format, prefetch)
    raise ValueError(f"unknown loader backend {kind!r}")


class BatchProducer:
    """Plans and loads whole batches; runs in DataLoader workers (PyAV, `produce`) or in-process
    (DALI, `stream`: the pipeline decodes batches ahead of the one handed out)."""

    def __init__(self, ds: ClipDataset, planner: Planner, backend_kind: str, crop_size: int, max_views: int,
                 threads: int, device_id: int | None, prefetch: int = 2):
        self.ds, self.planner = ds, planner
        self.backend_kind, self.crop_size = backend_kind, crop_size
        self.max_views, self.threads, self.device_id = max_views, threads, device_id
        self.prefetch = prefetch
        self._backends: dict[str, object] = {}
        self._codecs: dict[int, str] = {}
        self.bad_rows: set[int] = set()
        self.dali_error = ""  # why DALI's pipeline could not be built here ("" = not failed); PyAV from then on
        self.pyav_fallbacks = 0  # batches meant for DALI that PyAV decoded because DALI failed

    def backend(self, kind: str):
        if kind not in self._backends:
            self._backends[kind] = make_backend(kind, self.crop_size, self.max_views, self.threads,
                                                self.ds.need_rgb, self.ds.need_flow, self.device_id,
                                                self.ds.flow_format, self.prefetch)
        return self._backends[kind]

    def _dali_backend(self):
        """The DALI backend, built on first use; None when its pipeline cannot be built here (no CUDA,
        an unusable GPU, out of memory): the failure is logged once and every later batch of this
        producer is decoded with PyAV."""
        if self.dali_error:
            return None
        try:
            return self.backend("dali")
        except Exception as e:
            self.dali_error = first_line(e)
            log.warning("DALI pipeline could not be built (%s); decoding with PyAV instead", self.dali_error)
            return None

    def _dali_can_decode(self, row: int) -> bool:
        if not self.ds.need_rgb:
            return True  # flow-only views decode the VP9 flow store, which DALI reads on either device
        if row not in self._codecs:
            from .pyav_loader import DecodeError, probe_video
            try:
                self._codecs[row] = (self.ds.store.codec if self.ds.from_store(row)
                                     else probe_video(self.ds.rgb_path(row))["codec"])
            except DecodeError:
                self._codecs[row] = ""
        codecs = DALI_CPU_CODECS if self.device_id is None else DALI_GPU_CODECS
        return self._codecs[row] in codecs

    def _use_dali(self, plans: list[SamplePlan]) -> bool:
        if not (self.ds.need_rgb or self.ds.need_flow):
            return False
        return self.backend_kind == "dali" or (
            self.backend_kind == "auto" and _dali_available() and all(self._dali_can_decode(p.row) for p in plans))

    def _load_pyav(self, plans: list[SamplePlan]):
        """Each sample on its own with PyAV; returns (rgbs, flows, failed_sample_indices)."""
        from .pyav_loader import DecodeError

        pyav = self.backend("pyav")
        n = len(plans)
        rgbs, flows, failed = [None] * n, [None] * n, []
        for i, p in enumerate(plans):
            try:
                rgbs[i], flows[i] = pyav.load(p.views, self.ds.need_rgb, self.ds.need_flow)
            except (DecodeError, ValueError, OSError) as e:
                log.warning("skipping clip %s: %s", self.ds.rows[p.row].clip_id, e)
                failed.append(i)
        return rgbs, flows, failed

    def _load_views(self, plans: list[SamplePlan], dali: bool):
        """Load all views; returns (rgb, flow, failed_sample_indices)."""
        if dali and self._use_dali(plans):
            backend = self._dali_backend()
            if backend is None:
                self.pyav_fallbacks += 1
                return self._load_pyav(plans)
            reqs = [v for p in plans for v in p.views]
            try:
                rgb, flow = backend.load(reqs)
                return rgb, flow, []
            except Exception as e:  # a bad file fails DALI's whole batch: redo it per sample with PyAV
                log.warning("DALI batch failed (%s); decoding this batch with PyAV", first_line(e))
                self._backends.pop("dali", None)
                self.pyav_fallbacks += 1
        return self._load_pyav(plans)

    def _plan(self, epoch: int, items: list[tuple[int, int]]) -> list[SamplePlan]:
        """The batch's samples, each row already known to be undecodable replaced by a later one."""
        plans = [self.planner.plan(epoch, pos, row) for pos, row in items]
        for i, p in enumerate(plans):
            tries = 0
            while p.row in self.bad_rows and tries < len(self.ds):
                nxt = (p.row + 1) % len(self.ds)
                p = plans[i] = self.planner.plan(epoch, items[i][0] + 7919 * (tries + 1), nxt)
                tries += 1
            if tries >= len(self.ds):
                raise RuntimeError(f"{self.ds.root}: no clip of this split decodes")
        return plans

    def produce(self, epoch: int, items: list[tuple[int, int]], dali: bool = True) -> tuple[dict, list[str]]:
        """items: (position, row) pairs -> (batch dict, clip ids skipped as undecodable). One batch
        at a time; dali=False decodes it with PyAV whatever the backend."""
        skipped: list[str] = []
        plans = self._plan(epoch, items)
        if self.ds.need_rgb or self.ds.need_flow:
            for attempt in range(len(self.ds)):
                rgb, flow, failed = self._load_views(plans, dali)
                if not failed:
                    break
                for i in failed:
                    self.bad_rows.add(plans[i].row)
                    skipped.append(self.ds.rows[plans[i].row].clip_id)
                if attempt == len(self.ds) - 1:
                    raise RuntimeError(f"{self.ds.root}: no clip of this split decodes")
                plans = self._plan(epoch, items)
            if isinstance(rgb, list):  # per-sample PyAV results
                rgb = torch.stack(rgb) if self.ds.need_rgb else None
                flow = torch.stack(flow) if self.ds.need_flow else None
        else:
            rgb = flow = None
        return self.assemble(plans, rgb, flow), skipped

    def _feed(self, epoch: int, todo: list[list[tuple[int, int]]], j: int, plans: list[SamplePlan],
              fed: deque[tuple[int, list[SamplePlan]]]) -> Iterator[list[ViewRequest]]:
        """The view requests of batches j, j + 1, ... for DALI, as long as DALI decodes them here;
        each batch's plan is recorded in `fed` when DALI takes it (DALI asks ahead)."""
        while True:
            fed.append((j, plans))
            yield [v for p in plans for v in p.views]
            j += 1
            if j == len(todo):
                return
            plans = self._plan(epoch, todo[j])
            if not self._use_dali(plans):
                return  # made with PyAV after this run's batches are out

    def stream(self, epoch: int, todo: list[list[tuple[int, int]]]) -> Iterator[tuple[dict, list[str]]]:
        """The batches of `todo`, in order, as (batch dict, clip ids skipped). Runs of batches that
        DALI decodes go through one pipeline that pulls each batch's plan `prefetch` batches ahead
        (the sampler feeds it as it has room); a batch DALI cannot decode here is made with PyAV; a
        batch on which DALI fails is redone per sample with PyAV (which finds the bad clip) and a
        new pipeline takes over from the next batch; when no pipeline can be built, PyAV decodes
        every batch from then on."""
        from .dali_loader import DaliBatchError

        k = 0
        while k < len(todo):
            first = self._plan(epoch, todo[k])
            dali = self._dali_backend() if self._use_dali(first) else None
            if dali is None:  # DALI does not decode this batch here, or no pipeline can be built (then
                yield self.produce(epoch, todo[k], dali=True)  # _load_views counts the fallback): PyAV
                k += 1
                continue
            fed: deque[tuple[int, list[SamplePlan]]] = deque()
            outputs = dali.stream(self._feed(epoch, todo, k, first, fed))
            try:
                for rgb, flow in outputs:
                    j, plans = fed.popleft()
                    k = j + 1
                    yield self.assemble(plans, rgb, flow), []
            except DaliBatchError as e:
                log.warning("DALI batch failed (%s); decoding this batch with PyAV", first_line(e))
                self._backends.pop("dali", None)
                self.pyav_fallbacks += 1
                yield self.produce(epoch, todo[k], dali=False)
                k += 1
            finally:
                outputs.close()
            if k < len(todo) and not fed:  # the run ended on a batch DALI does not decode here
                yield self.produce(epoch, todo[k], dali=False)
                k += 1

    def assemble(self, plans: list[SamplePlan], rgb, flow) -> dict:
        b = len(plans)
        v = len(plans[0].views) if plans and plans[0].views else 0
        batch: dict[str, torch.Tensor] = {}
        train = self.planner.train
        if rgb is not None:
            rgb = rgb.reshape(b, v, *rgb.shape[-4:])
            batch["rgb"] = rgb[:, 0] if train else rgb
        if flow is not None:
            flow = flow.reshape(b, v, *flow.shape[-4:])
            batch["flow"] = flow[:, 0] if train else flow
        rows = self.ds.rows
        if self.ds.need_audio:
            infos = [self.ds.info(p.audio_row) for p in plans]
            batch["audio_embed"] = torch.from_numpy(np.stack([i.embedding for i in infos]))
            batch["audio_probs"] = torch.from_numpy(np.stack([i.probs for i in infos]))
            batch["has_audio"] = torch.tensor([i.has_audio for i in infos], dtype=torch.bool)
            if self.ds.fbank_from:
                batch["audio_fbank"] = torch.stack([self.ds.fbank(p.audio_row) for p in plans])
        batch["label"] = torch.tensor([rows[p.row].label for p in plans], dtype=torch.int64)
        batch["gt_relevance"] = torch.tensor([rows[p.audio_row].gt_relevance for p in plans], dtype=torch.float32)
        batch["index"] = torch.tensor([self.ds.manifest_index[p.row] for p in plans], dtype=torch.int64)
        return batch


def first_line(e: Exception) -> str:
    """An error's informative line (DALI's messages start with a generic one)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Critical error in pipeline", "Current pipeline object"))]
    return (useful or lines or [repr(e)])[0][:300]


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


class _EpochBatches(torch.utils.data.Dataset):
    """Batch i of an epoch, for torch DataLoader workers (each worker decodes whole batches)."""

    def __init__(self, producer: BatchProducer, epoch: int, batches: list[list[tuple[int, int]]]):
        self.producer, self.epoch, self.batches = producer, epoch, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.producer.produce(self.epoch, self.batches[i])


def _prefetch(gen, depth: int):
    """Run a batch generator in a background thread, `depth` batches ahead, so that decoding
    (DALI and PyAV release the GIL) overlaps the consumer's training step. Order is unchanged;
    an exception in the producer is raised in the consumer; closing the consumer stops the thread
    and closes `gen` in it, so no decoder is left running behind a stopped loop (a training run
    that stops mid-epoch, at max_steps or on preemption, closes its loader this way)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:  # False once the consumer has gone: nobody will take it
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in gen:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((done, e))
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="imd-loader-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("loader prefetch thread still decoding 30 s after the loop stopped")


class VideoLoader:
    """Iterable over one rank's batches of one split; see the module docstring."""

    def __init__(self, producer: BatchProducer, train: bool, batch_size: int, rank: int, world_size: int,
                 seed: int, num_workers: int, in_process: bool, dataset_meta: dict, start_batch: int = 0):
        self.producer, self.train, self.batch_size = producer, train, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.in_process = num_workers, in_process
        self.dataset_meta = dataset_meta
        self.epoch = 0
        self._start_batch = start_batch
        self._next_batch = start_batch
        self.skipped: list[str] = []
        n = len(producer.ds)
        per_rank = len(shard(np.arange(n), rank, world_size, pad=True))
        if train and per_rank < batch_size:
            raise DatasetMismatch(f"train split has {n} clips, {per_rank} per rank: fewer than "
                             f"train.micro_batch={batch_size}; lower it or use more data")

    @property
    def dataset(self) -> ClipDataset:
        return self.producer.ds

    def set_epoch(self, epoch: int) -> None:
        """Epoch of the next pass; a resume offset (start_batch / load_state_dict) applies to that pass."""
        self.epoch = epoch

    def _batches(self) -> list[list[tuple[int, int]]]:
        n = len(self.producer.ds)
        order = epoch_order(n, self.seed, self.epoch, shuffle=self.train)
        positions = shard(np.arange(n), self.rank, self.world_size, pad=True)
        items = [(int(p), int(order[p % n])) for p in positions]
        b = self.batch_size
        count = len(items) // b if self.train else -(-len(items) // b)
        return [items[i * b:(i + 1) * b] for i in range(count)]

    def __len__(self) -> int:
        n = len(self.producer.ds)
        per_rank = len(shard(np.arange(n), self.rank, self.world_size, pad=True))
        return per_rank // self.batch_size if self.train else -(-per_rank // self.batch_size)

    def __iter__(self):
        batches = self._batches()
        start = self._start_batch
        self._start_batch = 0  # the offset is consumed: a later pass (even after a break) starts at 0
        self._next_batch = start
        todo = batches[start:]
        if self.in_process:
            stream = _prefetch(self.producer.stream(self.epoch, todo), depth=self.producer.prefetch)
        elif self.num_workers == 0:
            stream = (self.producer.produce(self.epoch, items) for items in todo)
        else:
            stream = iter(torch.utils.data.DataLoader(
                _EpochBatches(self.producer, self.epoch, todo), batch_size=None, shuffle=False,
                num_workers=self.num_workers, persistent_workers=False, prefetch_factor=self.producer.prefetch))
        for batch, skipped in stream:
            skipped = [c for c in skipped if c not in self.skipped]  # workers may each meet the same bad clip
            if skipped:
                self._mark_skipped(skipped)
                log.warning("%d undecodable clips skipped so far this run (latest: %s)", len(self.skipped),
                            ", ".join(skipped))
            self._next_batch += 1
            yield batch

    def _mark_skipped(self, clip_ids: list[str]) -> None:
        """Count clips as skipped (once each) and keep the producer from decoding them again."""
        ids = set(clip_ids)
        self.skipped.extend(c for c in dict.fromkeys(clip_ids) if c not in self.skipped)
        self.producer.bad_rows.update(i for i, r in enumerate(self.producer.ds.rows) if r.clip_id in ids)

    def state_dict(self) -> dict:
        """Position of the next batch, and the clips found undecodable so far this run."""
        return {"epoch": self.epoch, "batch": self._next_batch, "seed": self.seed, "skipped": list(self.skipped)}

    def load_state_dict(self, sd: dict) -> None:
        """Continue where `state_dict` was taken: the same position, the same clips skipped
        (and counted once, not again when they are met after a resume)."""
        if sd.get("seed", self.seed) != self.seed:
            raise ValueError(f"loader state was saved with seed {sd['seed']}, this loader uses {self.seed}")
        self.epoch = int(sd["epoch"])
        self._start_batch = self._next_batch = int(sd["batch"])
        self.skipped = []
        self._mark_skipped(list(sd.get("skipped", [])))


def _subset(keep: list[int], limit: int, seed: int) -> list[int]:
    """Manifest rows to use: the kept ones, or a seeded random `limit` of them in manifest order."""
    if limit and limit < len(keep):
        pick = sorted(np.random.default_rng([seed, 0xC11F]).permutation(len(keep))[:limit].tolist())
        return [keep[i] for i in pick]
    return keep


def _probe_first_codecs(ds: ClipDataset, n: int = 3) -> list[tuple[str, str]]:
    """(path, codec) of the first n clips that open; the dataset's codec is decided from these."""
    from .pyav_loader import DecodeError, probe_video

    found = []
    for i in range(min(n, len(ds))):
        try:
            found.append((ds.rgb_path(i), probe_video(ds.rgb_path(i))["codec"]))
        except DecodeError:
            continue
    return found


def _dali_codecs(device_id: int | None) -> frozenset[str]:
    return DALI_CPU_CODECS if device_id is None else DALI_GPU_CODECS


def _resolve_auto(ds: ClipDataset, need_rgb: bool, device_id: int | None) -> str:
    """'auto' stays mixed (DALI per batch, PyAV for batches DALI cannot decode) when the dataset's
    first clips are in a codec DALI reads on this device; otherwise it is plain PyAV with workers."""
    if not _dali_available():
        return "pyav"
    if not need_rgb:
        return "auto"
    codecs = _dali_codecs(device_id)
    return "auto" if any(codec in codecs for _, codec in _probe_first_codecs(ds)) else "pyav"


def _check_dali_codec(ds: ClipDataset, device_id: int | None) -> None:
    """data.loader=dali on clips DALI cannot decode here would fall back on every batch: refuse early."""
    codecs = _dali_codecs(device_id)
    for path, codec in _probe_first_codecs(ds):
        if codec not in codecs:
            where = "the CPU (device_id=None)" if device_id is None else f"GPU {device_id}"
            raise DatasetMismatch(f"data.loader=dali: {path} is {codec}, which DALI does not decode on "
                             f"{where} (it reads {', '.join(sorted(codecs))}); use data.loader=auto or pyav")


def _audio_dims(ds: ClipDataset) -> tuple[int, int]:
    if not len(ds):
        return 0, 0
    info = ds.info(0)
    return int(info.embedding.shape[0]), int(info.probs.shape[0])


def build_loader(cfg, split: str = "train", rank: int = 0, world_size: int = 1, start_batch: int = 0,
                 loader: str | None = None, device_id: int | str | None = "auto") -> VideoLoader:
    """The loader of one split for one rank (see module docstring).

    loader overrides cfg.data.loader; device_id selects the DALI device: an int = that GPU (NVDEC),
    None = CPU pipelines, "auto" (default) = the current CUDA device when CUDA is available.
    """
    d, m = cfg.data, cfg.model
    if not d.root:
        raise ManifestError("data.root is empty: set it to a prepared dataset directory (--set data.root=DIR)")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    modalities = set(m.modalities.split("-"))
    need_rgb, need_flow, need_audio = "RGB" in modalities, "F" in modalities, "A" in modalities
    meta = DatasetMeta.read(d.root)
    rows = read_manifest(d.root, split, num_classes=len(meta.video_classes))
    store = RgbFormat.read(prepared_dir(d.root)) if need_rgb and d.rgb_store else None
    keep, _, in_store = check_split(d.root, rows, need_rgb, need_flow, split, store)
    limit = d.max_train_samples if split == "train" else d.max_val_samples
    used = _subset(keep, limit, cfg.train.seed)
    rows = [rows[i] for i in used]
    if not rows:
        raise ManifestError(f"{d.root}/{split}.csv: no usable clips")
    fbank_from = ""
    if need_audio and m.audio_input == "raw":
        fbank_from = m.tagger_path or os.path.join(d.root, "tagger")
        if not os.path.isfile(os.path.join(fbank_from, "preprocessor_config.json")):
            raise ManifestError(f"model.audio_input=raw needs the tagger's feature extractor: "
                                f"{fbank_from}/preprocessor_config.json is missing (set model.tagger_path)")
    fmt = None
    if need_flow:
        fmt = FlowFormat.read(prepared_dir(d.root))
        if fmt is None:
            raise MissingPreparedFiles(f"{prepared_dir(d.root) / FORMAT_FILE}: missing, so the flow store cannot be "
                                       f"read; run `python -m imd_hpc prepare --dataset ... --root {d.root}`")
    ds = ClipDataset(d.root, rows, meta, need_rgb, need_flow, need_audio, fbank_from, used, fmt, store, in_store)
    train = split == "train"
    views = 1 if train else d.test_crops * d.test_clips
    planner = Planner(ds, train, d.num_frames, d.sampling_rate, d.min_crop_scale, d.flip,
                      d.audio_swap_p if train else 0.0, d.test_crops, d.test_clips, cfg.train.seed)
    kind = loader or d.loader
    if device_id == "auto":
        device_id = torch.cuda.current_device() if kind != "pyav" and torch.cuda.is_available() else None
    if kind == "dali" and not _dali_available():
        raise ImportError("data.loader=dali but nvidia.dali is not importable; use data.loader=pyav")
    if kind == "auto":
        kind = _resolve_auto(ds, need_rgb, device_id)
    elif kind == "dali" and need_rgb:
        _check_dali_codec(ds, device_id)
    # DALI parallelizes inside its pipeline (threads); PyAV through DataLoader worker processes.
    in_process = kind in ("dali", "auto")
    threads = max(1, d.num_workers)
    clips = cfg.train.micro_batch if train else eval_clips_per_batch(cfg.train.micro_batch, views)
    producer = BatchProducer(ds, planner, kind, d.crop_size, clips * views, threads, device_id, d.prefetch)
    embed_dim, num_labels = _audio_dims(ds)
    savld = cfg.savld.path or os.path.join(d.root, "savld.txt")
    dataset_meta = {"dataset": meta.dataset, "video_classes": meta.video_classes,
                    "audio_classes": meta.audio_classes, "num_classes": len(meta.video_classes),
                    "audio_embed_dim": embed_dim, "num_audio_labels": num_labels, "savld_path": savld,
                    "num_clips": len(rows), "views": views}
    return VideoLoader(producer, train, clips, rank, world_size, cfg.train.seed, d.num_workers, in_process,
                       dataset_meta, start_batch)
