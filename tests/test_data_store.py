"""The training store: `prepare` writes it (short GOP, frame for frame the source's and the flow's),
the loaders read it from its keyframes, DALI's pipeline runs ahead of the consumer, and training on
it finishes without the source videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_fixtures import AUDIO_CLASSES, VIDEO_CLASSES, make_dataset

from imd_hpc.config import build_config
from imd_hpc.data import build_loader
from imd_hpc.data.flow import FlowFormat
from imd_hpc.data.prepare import main as prepare_main
from imd_hpc.data.pyav_loader import decode_video, packet_index, video_frames
from imd_hpc.data.rgb_store import RgbFormat, RgbFormatError
from imd_hpc.data.transforms import IMAGENET_MEAN, IMAGENET_STD

STORE_ARGS = ["--rgb-store", "on", "--rgb-codec", "vp9", "--rgb-gop", "4", "--rgb-short-side", "32",
              "--flow-short-side", "32"]


def _prepare(root: Path, *extra: str) -> int:
    return prepare_main(["--dataset", "synthetic", "--root", str(root), "--workers", "1", "--quiet", *STORE_ARGS,
                         *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """H.264 sources (40x40, 40 frames, libx264's long GOP), a VP9 store at short side 32 with a
    keyframe every 4 frames (VP9: DALI's CPU decoder reads it), flow at the same size."""
    root = make_dataset(tmp_path_factory.mktemp("store") / "ds", n_train=6, n_val=2, codec="h264", frames=40)
    rows = [f"{v}\t{';'.join(AUDIO_CLASSES[i:] + AUDIO_CLASSES[:i])}\n" for i, v in enumerate(VIDEO_CLASSES)]
    (root / "savld.txt").write_text("".join(rows))
    assert _prepare(root) == 0
    return root


def _to_pixels(rgb: torch.Tensor) -> torch.Tensor:
    shape = [1] * rgb.dim()
    shape[-4] = 3
    return rgb * torch.tensor(IMAGENET_STD).view(shape) + torch.tensor(IMAGENET_MEAN).view(shape)


def test_store_is_short_gop_frame_for_frame_the_source_at_the_flow_size(root):
    prep = root / "prepared"
    assert json.loads((prep / "rgb.json").read_text()) == {"codec": "vp9", "short_side": 32, "gop": 4, "crf": 23,
                                                          "version": 1}
    for cid in ("train_000", "train_004", "val_001"):
        store, flow = prep / "rgb" / f"{cid}.webm", prep / "flow" / f"{cid}.webm"
        src = root / "videos" / f"{cid}.avi"
        assert max(np.diff(packet_index(str(src))[0] + [40])) > 4  # the source: libx264's long GOP
        assert packet_index(str(store)) == (list(range(0, 40, 4)), 40)  # a keyframe every 4 frames
        with np.load(prep / "audio" / f"{cid}.npz") as z:
            n, flow_hw = int(z["num_frames"]), (int(z["flow_height"]), int(z["flow_width"]))
        got = decode_video(str(store))
        assert got.shape == (n, 32, 32, 3) and decode_video(str(flow), fmt="gray").shape == (n, *flow_hw[:1],
                                                                                          2 * flow_hw[1])
        # Frame i is the source's frame i scaled: closer to it than to either neighbour (the texture moves).
        ref = np.stack([f.reformat(width=32, height=32, format="yuv420p", interpolation="AREA")
                        .to_ndarray(format="rgb24") for f in video_frames(str(src))]).astype(np.float64)
        err = ((got[:, None].astype(np.float64) - ref[None]) ** 2).mean(axis=(2, 3, 4))
        assert (err.argmin(axis=1) == np.arange(n)).all()
        assert err.diagonal().mean() < 30  # about 33 dB


def test_rerun_does_no_work_and_other_settings_or_versions_are_refused(root, tmp_path, capsys):
    capsys.readouterr()
    assert _prepare(root) == 0
    assert "8 clips: 0 done, 8 skipped" in capsys.readouterr().out
    assert _prepare(root, "--rgb-gop", "8") == 2
    err = capsys.readouterr().err.strip()
    assert "training store written as" in err and len(err.splitlines()) == 1
    old = tmp_path / "old"
    shutil.copytree(root, old)
    (old / "prepared" / "rgb.json").write_text(json.dumps({**RgbFormat("vp9", 32, 4).__dict__, "version": 0}))
    assert _prepare(old) == 2
    err = capsys.readouterr().err.strip()
    assert "format version 0" in err and "run prepare again" in err and len(err.splitlines()) == 1
    with pytest.raises(RgbFormatError, match="format version 0"):
        build_loader(build_config("tiny", [f"data.root={old}"]), "train")


def test_keyframe_reads_equal_sequential_decoding(root):
    rng = np.random.default_rng(0)
    for path, fmt in ((root / "prepared" / "rgb" / "train_001.webm", "rgb24"),
                      (root / "prepared" / "flow" / "train_001.webm", "gray")):
        for _ in range(4):
            idx = sorted(rng.choice(40, size=8, replace=False).tolist())
            idx = idx + idx[:2]  # repeats, out of order
            assert np.array_equal(decode_video(str(path), idx, fmt=fmt, from_keyframes=True),
                                  decode_video(str(path), idx, fmt=fmt))


def test_loaders_read_the_store_dali_cpu_agrees_and_missing_copies_fall_back(root, tmp_path, caplog):
    cfg = build_config("tiny", [f"data.root={root}", "train.micro_batch=3", "data.audio_swap_p=0"])
    loader = build_loader(cfg, "train", loader="dali")
    assert loader.dataset.in_store == {r.clip_id for r in loader.dataset.rows}
    views = loader.producer.planner.plan(0, 0, 0).views
    assert views[0].video_path.endswith("prepared/rgb/" + loader.dataset.rows[0].clip_id + ".webm")
    assert views[0].video_hw == (32, 32) and views[0].from_store
    da = next(iter(loader))
    py = next(iter(build_loader(cfg, "train", loader="pyav")))
    assert torch.equal(da["index"], py["index"])
    assert (_to_pixels(da["rgb"]) - _to_pixels(py["rgb"])).abs().mean() < 3
    assert torch.allclose(da["flow"], py["flow"], atol=1e-4) and da["flow"].abs().mean() > 0.01
    # data.rgb_store=false decodes the sources; a clip missing from the store comes from its source.
    off = build_loader(build_config("tiny", [f"data.root={root}", "data.rgb_store=false", "train.micro_batch=3"]),
                       "train", loader="pyav")
    assert not off.dataset.in_store and off.producer.planner.plan(0, 0, 0).views[0].video_path.endswith(".avi")
    part = tmp_path / "part"
    shutil.copytree(root, part)
    (part / "prepared" / "rgb" / "train_002.webm").unlink()
    mixed = build_loader(build_config("tiny", [f"data.root={part}", "train.micro_batch=3"]), "train", loader="pyav")
    assert "1 of 6 clips are not in the training store" in caplog.text
    assert len(mixed.dataset.in_store) == 5 and len(list(mixed)) == 2


def test_dali_pipeline_runs_ahead_in_order_and_a_pass_left_early_leaves_it_clean(root):
    from imd_hpc.data.dali_loader import DaliBackend

    loader = build_loader(build_config("tiny", [f"data.root={root}", "train.micro_batch=2"]), "train", loader="pyav")
    planner = loader.producer.planner
    batches = [[planner.plan(0, 2 * b + i, (2 * b + i) % 6).views[0] for i in range(2)] for b in range(4)]
    dali = DaliBackend(32, 2, 1, need_rgb=True, need_flow=True, flow_format=FlowFormat(), prefetch=2)
    one_by_one = [dali.load(b) for b in batches]
    stream = dali.stream(batches)
    first = next(stream)
    assert len(dali._in_flight) >= 1  # the next batch was taken from the sampler before the consumer asked
    stream.close()  # left early: the batches in flight are finished and dropped
    assert not dali._in_flight and not dali.broken
    got = list(dali.stream(batches))  # the next pass starts clean: every batch, in order
    assert len(got) == 4
    for (r0, f0), (r1, f1) in zip([first, *got], [one_by_one[0], *one_by_one]):
        assert torch.equal(r0, r1) and torch.equal(f0, f1)


def test_training_on_the_store_finishes_without_the_source_videos(root, tmp_path):
    from engine_data import FAST

    from imd_hpc.engine.train import run

    data = tmp_path / "store_only"
    shutil.copytree(root, data)
    shutil.rmtree(data / "videos")  # the store holds every clip: the sources are not needed to train
    cfg = build_config("tiny", [*FAST, f"data.root={data}", "train.epochs=1", "train.micro_batch=3",
                                "train.global_batch=6"])
    res = run(cfg, run_dir=tmp_path / "run", progress=False)
    assert res["steps"] >= 1 and res["skipped_clips"] == 0 and 0 <= res["top1"] <= 100
