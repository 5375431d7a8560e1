"""`prepare`: outputs, no-work rerun, kill-and-resume, real clips (AVI/MKV/no audio/corrupt), flow methods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import SHARED, make_dataset, moving_frames, write_panning_clip, write_tagger

from imd_hpc.config import build_config
from imd_hpc.data import build_loader
from imd_hpc.data.flow import FlowFormat, FlowFormatError, compute_flow, dequantize, quantize
from imd_hpc.data.manifest import read_manifest
from imd_hpc.data.prepare import main as prepare_main
from imd_hpc.data.pyav_loader import packet_index

REPO = Path(__file__).resolve().parents[1]


def _status_lines(root: Path) -> list[dict]:
    return [json.loads(s) for s in (root / "prepared" / "status.jsonl").read_text().splitlines()]


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*tmp*")]


def _stored_flow(path: Path) -> np.ndarray:
    """(T, Hf, Wf, 2) pixels of a flow store file, decoded with PyAV."""
    import av

    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
        codes = np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])
    return dequantize(codes, FlowFormat())


def test_prepare_outputs_and_second_run_does_no_work(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n_train=3, n_val=2, no_audio=("train_002",))
    args = ["--dataset", "synthetic", "--root", str(root), "--workers", "2", "--quiet"]
    assert prepare_main(args) == 0
    assert "5 clips: 5 done, 0 skipped" in capsys.readouterr().out
    with np.load(root / "prepared" / "audio" / "train_000.npz") as z:
        assert z["embedding"].shape == (32,) and z["probs"].shape == (6,) and bool(z["has_audio"])
        assert int(z["num_frames"]) == 32 and (int(z["height"]), int(z["width"])) == (40, 40)
        assert (int(z["flow_height"]), int(z["flow_width"])) == (40, 40)
        assert 0 < z["probs"].min() and z["probs"].max() < 1
    with np.load(root / "prepared" / "audio" / "train_002.npz") as z:  # no audio track: zeros, has_audio False
        assert not bool(z["has_audio"]) and not z["embedding"].any() and not z["probs"].any()
    flow = _stored_flow(root / "prepared" / "flow" / "val_001.webm")
    assert flow.shape == (32, 40, 40, 2) and np.array_equal(flow[-1], flow[-2])  # one per frame, last repeated
    assert json.loads((root / "prepared" / "flow.json").read_text())["bound"] == FlowFormat().bound
    lines = _status_lines(root)
    assert sorted(r["clip_id"] for r in lines) == sorted(r.clip_id for s in ("train", "val")
                                                         for r in read_manifest(root, s))
    assert {r["clip_id"]: r["reason"] for r in lines}["train_002"] == "no audio track"
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "prepared").rglob("*.*")}
    assert prepare_main(args) == 0
    assert "5 clips: 0 done, 5 skipped" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in (root / "prepared").rglob("*.*")}
    assert len(_status_lines(root)) == 5
    # Flow made with other store settings is not mixed in: one line, nothing touched.
    assert prepare_main(args + ["--flow-bound", "20"]) == 2
    assert "holds flow stored as" in capsys.readouterr().err
    assert mtimes == {p: p.stat().st_mtime_ns for p in (root / "prepared").rglob("*.*")}


def test_prepare_killed_midway_then_rerun_finishes_each_clip_once(tmp_path):
    root = make_dataset(tmp_path / "ds", n_train=8, n_val=2)
    cmd = [sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "synthetic", "--root", str(root),
           "--workers", "1", "--tagger-batch", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    status = root / "prepared" / "status.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if status.is_file() and status.read_text().count("\n") >= 2:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its decode workers, mid-run
    proc.wait()
    killed_after = len(_status_lines(root))
    assert 2 <= killed_after < 10, f"the run was not interrupted midway ({killed_after} of 10 done)"
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"10 clips: {10 - killed_after} done, {killed_after} skipped" in out.stdout
    ids = [r["clip_id"] for r in _status_lines(root)]
    assert len(ids) == 10 and len(set(ids)) == 10  # every clip exactly once
    assert not _temps(root)
    for cid in ids:  # every output complete and readable
        assert _stored_flow(root / "prepared" / "flow" / f"{cid}.webm").shape == (32, 40, 40, 2)
        with np.load(root / "prepared" / "audio" / f"{cid}.npz") as z:
            assert z["probs"].shape == (6,)


def _prepare_peak_rss(root: Path, frames: int) -> tuple[int, int, float]:
    """(peak RSS of the decode worker, of the whole tree, wall seconds) of one prepare run on one
    1920x1080 clip of `frames` frames, sampled over the process tree while it runs."""
    from imd_hpc.machine import TreeMemory

    root.mkdir(parents=True)
    (root / "videos").mkdir()
    write_panning_clip(root / "videos" / "long.mp4", frames, 1920, 1080)
    (root / "train.txt").write_text("videos/long.mp4 panning\n")
    (root / "val.txt").write_text("videos/long.mp4 panning\n")
    write_tagger(root / "tagger")
    cmd = [sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "list", "--root", str(root), "--workers", "1",
           "--train-list", str(root / "train.txt"), "--val-list", str(root / "val.txt"), "--quiet"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "1 done" in out, out
    with np.load(root / "prepared" / "audio" / "videos__long.npz") as z:
        assert int(z["num_frames"]) == frames and (int(z["flow_height"]), int(z["flow_width"])) == (256, 456)
    # main process -> forkserver -> pool worker: the worker is two levels down
    return mem.peak_at_depth(2), mem.peak_total, time.time() - t0


def test_prepare_memory_is_bounded_on_a_long_1080p_clip(tmp_path):
    """Streaming prepare: a 1920x1080 clip five times longer costs the decode worker no more memory.
    (Holding a clip, as the first version did, costs 6 MB of RGB per frame plus its flow.)"""
    short_worker, _, _ = _prepare_peak_rss(tmp_path / "short", 30)
    long_worker, long_tree, _ = _prepare_peak_rss(tmp_path / "long", 150)
    mb = 1 << 20
    assert 0 < long_worker < 1024 * mb, f"worker peaked at {long_worker / mb:.0f} MB"
    assert long_worker - short_worker < 48 * mb, (short_worker / mb, long_worker / mb)
    assert long_tree > long_worker  # the tree was sampled, not only the worker


def test_flow_methods_recover_translation():
    frames = moving_frames(6, velocity=(-2, 1))  # content moves (+2, -1) px per frame
    for method in ("dis", "dis_fast", "farneback"):
        f = compute_flow(frames, method)[:-1, 8:-8, 8:-8]
        assert np.median(f[..., 0]) == pytest.approx(2.0, abs=0.3), method
        assert np.median(f[..., 1]) == pytest.approx(-1.0, abs=0.3), method
    small = compute_flow(frames, "dis", short_side=20)
    assert small.shape == (6, 20, 20, 2)
    with pytest.raises(ValueError, match="flow method"):
        compute_flow(frames, "tvl1")


def test_flow_code_is_odd_fine_near_zero_and_round_trips_within_half_a_local_step():
    fmt = FlowFormat()
    table = fmt.code_values()
    assert table[128] == 0 and np.all(np.diff(table) > 0)
    k = np.arange(128)
    assert np.array_equal(table[128 + k], -table[128 - k])  # odd: the loaders' flip negation commutes with it
    assert table[255] == pytest.approx(fmt.bound) and fmt.step_at(0.0) < 0.15
    v = np.linspace(-1.5 * fmt.bound, 1.5 * fmt.bound, 40001, dtype=np.float32)
    flow = np.stack([v, -v[::-1]], axis=-1)[None]  # (1, N, 2)
    codes = quantize(flow, fmt)
    assert codes.shape == (1, 2 * v.size) and codes.min() == 1 and codes.max() == 255
    # the docstring's formula in float64, x left and y right; float32 rounding may move a tie by one code
    f64 = flow.astype(np.float64)
    c = np.minimum(127, np.rint(127 * np.log1p(fmt.mu * np.abs(f64) / fmt.bound) / np.log1p(fmt.mu)))
    formula = (np.sign(f64) * c + 128).astype(np.int64)
    formula = np.concatenate([formula[..., 0], formula[..., 1]], axis=1)
    off = np.abs(codes.astype(np.int64) - formula)
    assert off.max() <= 1 and (off > 0).mean() < 1e-3
    back = dequantize(codes, fmt)
    inside = np.abs(flow) <= fmt.bound
    err = np.abs(back - flow)[inside]
    assert (err <= 0.5 * fmt.step_at(np.maximum(np.abs(flow), np.abs(back))[inside]) + 1e-4).all()
    assert np.array_equal(np.abs(back[~inside]), np.full((~inside).sum(), table[255]))  # beyond: clipped
    linear = FlowFormat(bound=32.0, mu=0.0)
    assert np.allclose(np.diff(linear.code_values()), 32 / 127) and linear.step_at(50.0) == pytest.approx(32 / 127)


def test_flow_store_of_an_older_format_is_refused_in_one_line(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds", n_train=1, n_val=1)
    (root / "prepared").mkdir()
    (root / "prepared" / "flow.json").write_text(json.dumps(
        {"method": "dis", "short_side": 256, "bound": 32.0, "crf": 20, "gop": 16, "version": 1}))
    with pytest.raises(FlowFormatError, match="format version 1, this code reads version"):
        FlowFormat.read(root / "prepared")
    capsys.readouterr()
    assert prepare_main(["--dataset", "synthetic", "--root", str(root), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "format version 1" in err and "run prepare again" in err and len(err.splitlines()) == 1


def test_missing_video_named_by_its_list_line(tmp_path, caplog):
    """A class name with spaces in the space form turns the path into a missing file: the warning
    names the list line and the path, and says how to write such labels."""
    root = tmp_path / "ds"
    root.mkdir()
    write_tagger(root / "tagger")
    (root / "train.txt").write_text("videos/a.mp4 dancing ballet\n")
    (root / "val.txt").write_text("videos/b.mp4 salsa\n")
    args = ["--dataset", "list", "--root", str(root), "--train-list", str(root / "train.txt"),
            "--val-list", str(root / "val.txt"), "--quiet"]
    assert prepare_main(args) == 0
    assert f"{root / 'train.txt'}:1: {root}/videos/a.mp4 dancing does not exist" in caplog.text
    assert f"{root / 'val.txt'}:1: {root}/videos/b.mp4 does not exist" in caplog.text
    assert "'path<TAB>label'" in caplog.text


@pytest.mark.skipif(not (SHARED / "data" / "videos").is_dir(), reason="../shared test clips absent")
def test_real_clips_through_prepare_and_loader(tmp_path, capsys, caplog):
    root = tmp_path / "real"
    (root / "videos").mkdir(parents=True)
    for f in (SHARED / "data" / "videos").iterdir():
        os.symlink(f.resolve(), root / "videos" / f.name)
    (root / "train.txt").write_text("videos/decord_corrupted.mp4 dancing\nvideos/mmaction2_test.avi cooking\n"
                                    "videos/decord_flipping_a_pancake.mkv cooking\nvideos/mmaction2_demo.mp4 dancing\n")
    (root / "val.txt").write_text("videos/mmaction2_demo.mp4 dancing\nvideos/missing.mp4 cooking\n")
    write_tagger(root / "tagger")
    args = ["--dataset", "list", "--root", str(root), "--train-list", str(root / "train.txt"),
            "--val-list", str(root / "val.txt"), "--workers", "2", "--flow-short-side", "48", "--quiet"]
    assert prepare_main(args) == 0
    out = capsys.readouterr().out
    assert "5 clips: 3 done, 0 skipped (finished in an earlier run), 1 failed, 1 missing video files" in out
    assert f"{root / 'val.txt'}:2: {root}/videos/missing.mp4 does not exist" in caplog.text
    status = {r["clip_id"]: r for r in _status_lines(root)}
    corrupt = status["videos__decord_corrupted"]
    assert corrupt["status"] == "failed" and "decord_corrupted.mp4" in corrupt["reason"]
    assert status["videos__mmaction2_demo"]["reason"] == "no audio track"
    for cid, has_audio in (("videos__mmaction2_test", True), ("videos__decord_flipping_a_pancake", True),
                           ("videos__mmaction2_demo", False)):
        with np.load(root / "prepared" / "audio" / f"{cid}.npz") as z:
            assert bool(z["has_audio"]) == has_audio and bool(z["probs"].any()) == has_audio
        flow = _stored_flow(root / "prepared" / "flow" / f"{cid}.webm")
        with np.load(root / "prepared" / "audio" / f"{cid}.npz") as z:
            assert flow.shape[0] == int(z["num_frames"]) > 100
            assert flow.shape[1:3] == (int(z["flow_height"]), int(z["flow_width"]))
        assert min(flow.shape[1:3]) == 48 and np.abs(flow).max() > 0.1
        # The training store (a list dataset gets one): a keyframe every 4 frames, read with PyAV,
        # and frame for frame the clip.
        keys, frames = packet_index(str(root / "prepared" / "rgb" / f"{cid}.mp4"))
        with np.load(root / "prepared" / "audio" / f"{cid}.npz") as z:
            assert frames == int(z["num_frames"])
        assert keys == list(range(0, frames, 4))
    meta = json.loads((root / "meta.json").read_text())
    assert meta["video_classes"] == ["cooking", "dancing"] and len(meta["audio_classes"]) == 6
    train = {r.clip_id: r for r in read_manifest(root, "train")}
    assert train["videos__mmaction2_demo"].audio == "" and train["videos__mmaction2_test"].audio
    assert [r.clip_id for r in read_manifest(root, "val")] == ["videos__mmaction2_demo"]  # missing file left out
    # H.264 / MPEG-4: DALI-CPU cannot decode them, so 'auto' decodes with PyAV; the failed clip is dropped.
    cfg = build_config("tiny", [f"data.root={root}", "train.micro_batch=3", "data.loader=auto"])
    loader = build_loader(cfg, "train")
    assert "1 clips dropped because prepare failed" in caplog.text
    batch = next(iter(loader))
    assert batch["rgb"].shape == (3, 3, 8, 32, 32) and batch["flow"].shape == (3, 2, 8, 32, 32)
    assert batch["has_audio"].sum() == 2
    assert sorted(batch["index"].tolist()) == [1, 2, 3]  # manifest rows; row 0 (corrupt) dropped
    with pytest.raises(ValueError, match=r"data.loader=dali: .* is (h264|mpeg4), which DALI does not decode"):
        build_loader(cfg, "train", loader="dali", device_id=None)  # DALI-CPU: VP8/VP9/MJPEG only
    assert prepare_main(args) == 0
    assert "5 clips: 0 done, 4 skipped" in capsys.readouterr().out
