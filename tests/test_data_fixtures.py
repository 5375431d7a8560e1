"""Tiny real datasets for the data tests: VP9/MJPEG clips encoded with PyAV, WAV audio, a small
randomly initialized AST tagger saved with save_pretrained, in the prepared-dataset layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
SHARED_LABELS = SHARED / "data" / "labels"  # real label lists; tests that read them skip without ../shared
VIDEO_CLASSES = ["playing drums", "playing guitar", "riding a bike"]
AUDIO_CLASSES = ["Drum", "Guitar", "Speech", "Bicycle", "Engine", "Bird"]


def moving_frames(n: int = 32, size: int = 40, velocity=(1.0, 0.5), seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8: a smooth random texture translating by `velocity` px per frame."""
    rng = np.random.default_rng(seed)
    big = size * 3
    tex = rng.random((big, big))
    k = np.ones(5) / 5  # blur so that the texture has structure optical flow can track
    for ax in (0, 1):
        tex = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), ax, tex)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    # Luminance texture with a flat tint: 4:2:0 chroma subsampling would blur colored detail.
    tint = np.array([0.9, 0.7 + 0.3 * rng.random(), 0.6 + 0.4 * rng.random()])
    tex = (20 + 215 * tex[..., None] * tint).astype(np.uint8)
    out = []
    for t in range(n):
        y = int(round(size + velocity[1] * t)) % (big - size)
        x = int(round(size + velocity[0] * t)) % (big - size)
        out.append(tex[y:y + size, x:x + size])
    return np.stack(out)


def write_clip(path: Path, frames: np.ndarray, codec: str = "vp9", fps: int = 8) -> None:
    """Encode frames with PyAV: codec 'vp9' (.webm), 'mjpeg' (.avi) or 'h264' (.mp4, NVDEC only in DALI)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream({"vp9": "libvpx-vp9", "mjpeg": "mjpeg", "h264": "libx264"}[codec], rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "vp9":
            s.options = {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "h264":
            s.options = {"crf": "12", "preset": "veryfast", "bf": "0"}
        else:
            s.options = {"q": "2"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def write_panning_clip(path: Path, frames: int, width: int, height: int, fps: int = 30) -> None:
    """A large H.264 clip generated and encoded one frame at a time (never held whole): a blurred
    random texture panning 3 px right and 2 px down per frame."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, ((height + 2 * frames) // 8 + 2, (width + 3 * frames) // 8 + 2, 3), np.uint8)
    tex = np.kron(small, np.ones((8, 8, 1), np.uint8))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "28"}
        for t in range(frames):
            img = np.ascontiguousarray(tex[2 * t:2 * t + height, 3 * t:3 * t + width])
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def write_tagger(path: Path, labels=AUDIO_CLASSES) -> None:
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(0)
    cfg = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    max_length=128, num_mel_bins=128, num_labels=len(labels),
                    id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    ASTForAudioClassification(cfg).save_pretrained(path)
    ASTFeatureExtractor(num_mel_bins=128, max_length=128).save_pretrained(path)


def make_dataset(root: Path, n_train: int = 6, n_val: int = 3, codec: str = "vp9", frames: int = 32,
                 no_audio: tuple[str, ...] = ()) -> Path:
    """A synthetic-layout dataset (not yet prepared) with n clips per split."""
    import soundfile as sf  # here, not at the top: the GPU image has no soundfile, and its tests need none

    root.mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    ext = ".webm" if codec == "vp9" else ".avi"
    rng = np.random.default_rng(1)
    for split, n in (("train", n_train), ("val", n_val)):
        with open(root / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["clip_id", "video", "audio", "label", "label_name", "gt_relevance"])
            for i in range(n):
                cid = f"{split}_{i:03d}"
                label = i % len(VIDEO_CLASSES)
                vel = (1.0 + label, 0.5 * (label - 1))
                write_clip(root / "videos" / f"{cid}{ext}", moving_frames(frames, velocity=vel, seed=i), codec)
                audio = ""
                if cid not in no_audio:
                    t = np.arange(16000 * 2) / 16000
                    sf.write(root / "audio" / f"{cid}.wav",
                             (0.3 * np.sin(2 * np.pi * (200 + 150 * label + 17 * i) * t)).astype(np.float32), 16000)
                    audio = f"audio/{cid}.wav"
                w.writerow([cid, f"videos/{cid}{ext}", audio, label, VIDEO_CLASSES[label], int(rng.random() < 0.5)])
    (root / "meta.json").write_text(json.dumps({"dataset": "synthetic", "video_classes": VIDEO_CLASSES,
                                                "audio_classes": AUDIO_CLASSES, "fps": 8.0}))
    write_tagger(root / "tagger")
    return root


def test_fixture_clips_decode_with_their_codec(tmp_path):
    frames = moving_frames(8)
    for codec, ext in (("vp9", ".webm"), ("mjpeg", ".avi")):
        write_clip(tmp_path / f"c{ext}", frames, codec)
        with av.open(str(tmp_path / f"c{ext}")) as c:
            assert c.streams.video[0].codec_context.name == codec
            got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert got.shape == frames.shape
        assert np.abs(got.astype(float) - frames).mean() < 6  # lossy codecs
