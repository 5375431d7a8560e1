"""Loaders: DALI-CPU vs PyAV agreement, flow flip/resize, determinism, resume, sharding, swap, eval."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import torch
from test_data_fixtures import make_dataset, moving_frames, write_clip

from imd_hpc.config import build_config
from imd_hpc.data import build_loader
from imd_hpc.data.flow import FlowFormat, compute_flow, open_flow_writer
from imd_hpc.data.loader import MissingPreparedFiles, _prefetch
from imd_hpc.data.prepare import main as prepare_main
from imd_hpc.data.transforms import FLOW_DIVISOR, IMAGENET_MEAN, IMAGENET_STD, ViewRequest


def _prepared(root):
    assert prepare_main(["--dataset", "synthetic", "--root", str(root), "--workers", "1", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def vp9_root(tmp_path_factory):
    return _prepared(make_dataset(tmp_path_factory.mktemp("vp9"), n_train=6, n_val=3, codec="vp9"))


@pytest.fixture(scope="module")
def mjpeg_root(tmp_path_factory):
    return _prepared(make_dataset(tmp_path_factory.mktemp("mjpeg"), n_train=3, n_val=2, codec="mjpeg"))


def _cfg(root, *overrides):
    return build_config("tiny", [f"data.root={root}", "train.micro_batch=3", "data.test_crops=3",
                                 "data.test_clips=2", *overrides])


def _write_flow(path, flow: np.ndarray, fps: float = 8.0) -> None:
    """(T, H, W, 2) flow (last entry repeated, as compute_flow gives it) -> a flow store file."""
    with open_flow_writer(path, flow.shape[1], flow.shape[2], fps, FlowFormat()) as w:
        for f in flow[:-1]:
            w.add(f)


def _flow_step_out(req: ViewRequest, size: int, flow: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The store's quantization step at each value of a loaded flow tensor of this view, in its
    units (the code's steps grow with the magnitude; the larger of the view's two axis scales)."""
    scale = size / min(req.roi[2], req.roi[3]) / FLOW_DIVISOR
    stored = torch.as_tensor(flow).abs().cpu().numpy() / scale
    return torch.as_tensor(FlowFormat().step_at(stored) * scale, dtype=torch.float32)


def _to_pixels(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalization of (..., 3, T, H, W) -> 0..255."""
    shape = [1] * rgb.dim()
    shape[-4] = 3
    return rgb * torch.tensor(IMAGENET_STD).view(shape) + torch.tensor(IMAGENET_MEAN).view(shape)


@pytest.mark.parametrize("root_name", ["vp9_root", "mjpeg_root"])
def test_dali_cpu_and_pyav_agree_on_same_view(root_name, request):
    from imd_hpc.data.dali_loader import DaliBackend
    from imd_hpc.data.pyav_loader import PyAVBackend

    root = request.getfixturevalue(root_name)
    ext = ".webm" if root_name == "vp9_root" else ".avi"
    req = [ViewRequest(row=0, video_path=str(root / "videos" / f"train_00{i}{ext}"),
                       flow_path=str(root / "prepared" / "flow" / f"train_00{i}.webm"),
                       frame_indices=(3, 5, 7, 9, 11, 13, 15, 17), roi=(2, 5, 30, 33), video_hw=(40, 40),
                       flip=bool(i % 2), flow_hw=(40, 40)) for i in range(3)]
    fmt = FlowFormat()
    dali = DaliBackend(32, 8, 1, need_rgb=True, need_flow=True, device_id=None, flow_format=fmt)
    rgb_d, flow_d = dali.load(req)
    rgb_p, flow_p = PyAVBackend(32, flow_format=fmt).load(req, True, True)
    assert rgb_d.shape == rgb_p.shape == (3, 3, 8, 32, 32)
    diff = (_to_pixels(rgb_d) - _to_pixels(rgb_p)).abs().mean().item()
    assert diff < 3, f"DALI-CPU and PyAV differ by {diff:.2f} on 0-255"
    # A different start frame must not agree as well: the test sees frame selection.
    shifted = [ViewRequest(**{**r.__dict__, "frame_indices": tuple(i + 6 for i in r.frame_indices)}) for r in req]
    rgb_s, _ = dali.load(shifted)
    assert (_to_pixels(rgb_s) - _to_pixels(rgb_p)).abs().mean().item() > 2 * diff
    # Flow of the same views: DALI-CPU decodes the VP9 flow store in its pipeline, PyAV reads it;
    # they agree within the code's step at each value, and the flow is not trivially zero.
    assert flow_d.shape == flow_p.shape == (3, 2, 8, 32, 32)
    assert ((flow_d - flow_p).abs() <= _flow_step_out(req[0], 32, flow_p)).all()
    assert flow_p.abs().mean().item() > 3 * _flow_step_out(req[0], 32).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI's GPU path (NVDEC) needs a CUDA GPU")
def test_dali_gpu_views_are_cuda_tensors_and_agree_with_pyav(tmp_path):
    """NVDEC decode, GPU resize and flow finishing: CUDA tensors out (no host copy), same view as PyAV."""
    pytest.importorskip("nvidia.dali")
    from imd_hpc.data.dali_loader import DaliBackend
    from imd_hpc.data.pyav_loader import PyAVBackend, decode_video

    req = []
    for i in range(3):  # 128 px: NVDEC's smallest VP9 frame (its H.264 minimum is 48)
        video, flow = tmp_path / f"clip{i}.mp4", tmp_path / f"clip{i}.webm"
        write_clip(video, moving_frames(24, size=128, velocity=(1.0 + i, 0.5), seed=i), "h264")
        _write_flow(flow, compute_flow(decode_video(str(video))))
        req.append(ViewRequest(row=0, video_path=str(video), flow_path=str(flow),
                               frame_indices=(1, 3, 5, 7, 9, 11, 13, 15), roi=(4, 10, 100, 106),
                               video_hw=(128, 128), flip=bool(i % 2), flow_hw=(128, 128)))
    fmt = FlowFormat()
    dali = DaliBackend(64, 8, 2, need_rgb=True, need_flow=True, device_id=torch.cuda.current_device(),
                       flow_format=fmt)
    rgb_d, flow_d = dali.load(req)
    assert rgb_d.is_cuda and flow_d.is_cuda  # RGB and flow both decoded by NVDEC and finished there
    rgb_p, flow_p = PyAVBackend(64, flow_format=fmt).load(req, True, True)
    assert rgb_d.shape == rgb_p.shape == (3, 3, 8, 64, 64)
    diff = (_to_pixels(rgb_d.cpu()) - _to_pixels(rgb_p)).abs().mean().item()
    assert diff < 3, f"DALI-GPU and PyAV differ by {diff:.2f} on 0-255"
    assert ((flow_d.cpu() - flow_p).abs() <= _flow_step_out(req[0], 64, flow_p)).all()


def test_flow_matches_motion_flip_negates_x_and_resize_scales(vp9_root):
    from imd_hpc.data.pyav_loader import PyAVBackend, decode_video

    video = str(vp9_root / "videos" / "train_001.webm")  # label 1: window moves (+2, 0), content (-2, 0) px/frame
    flow = compute_flow(decode_video(video))
    inner = flow[:-1, 8:-8, 8:-8]
    assert abs(np.median(inner[..., 0]) + 2.0) < 0.3 and abs(np.median(inner[..., 1])) < 0.3
    base = dict(row=0, video_path=video, flow_path=str(vp9_root / "prepared" / "flow" / "train_001.webm"),
                frame_indices=tuple(range(0, 16, 2)), video_hw=(40, 40), flow_hw=(40, 40))
    backend = PyAVBackend(32, flow_format=FlowFormat())
    views = [ViewRequest(roi=(0, 0, 40, 40), flip=False, **base),  # 40 -> 32: vectors x 0.8
             ViewRequest(roi=(0, 0, 40, 40), flip=True, **base),
             ViewRequest(roi=(4, 4, 16, 16), flip=False, **base)]  # 16 -> 32: vectors x 2
    _, f = backend.load(views, False, True)
    med = [float(f[i, 0, :, 6:-6, 6:-6].median()) * FLOW_DIVISOR for i in range(3)]
    assert med[0] == pytest.approx(-2.0 * 32 / 40, abs=0.25)
    assert med[1] == pytest.approx(-med[0], abs=0.05)
    assert med[2] == pytest.approx(-2.0 * 32 / 16, abs=0.5)
    assert torch.allclose(f[1], torch.stack([-f[0, 0], f[0, 1]]).flip(-1), atol=1e-5)


def test_train_batches_deterministic_resumable_and_sharded(vp9_root):
    cfg = _cfg(vp9_root, "data.loader=pyav", "train.micro_batch=2")
    a = build_loader(cfg, "train")
    a.set_epoch(1)
    full = list(a)
    assert len(full) == len(a) == 3
    b = build_loader(cfg, "train")
    b.set_epoch(1)
    for x, y in zip(full, b):
        for k in x:
            assert torch.equal(x[k], y[k]), k
    workers = build_loader(_cfg(vp9_root, "data.loader=pyav", "train.micro_batch=2", "data.num_workers=2"), "train")
    workers.set_epoch(1)
    got = list(workers)  # DataLoader worker processes: same batches, same order
    assert len(got) == 3 and all(torch.equal(x[k], y[k]) for x, y in zip(full, got) for k in x)
    it = iter(b)
    next(it)
    sd = b.state_dict()
    assert sd == {"epoch": 1, "batch": 1, "seed": 0, "skipped": []}
    assert len(list(b)) == 3  # an interrupted pass does not shorten the next one
    c = build_loader(cfg, "train")
    c.load_state_dict(sd)
    rest = list(c)
    assert len(rest) == 2 and torch.equal(rest[0]["rgb"], full[1]["rgb"])
    d = build_loader(cfg, "train", start_batch=2)
    d.set_epoch(1)
    assert torch.equal(next(iter(d))["index"], full[2]["index"])
    a.set_epoch(2)
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(full, a))
    ranks = [build_loader(cfg, "train", rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([bt["index"] for bt in ld]) for ld in ranks]
    assert len(ranks[0]) == 1 and not set(seen[0].tolist()) & set(seen[1].tolist())


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "imd-loader-prefetch" and t.is_alive()]


def test_prefetch_stops_and_closes_its_source_when_the_consumer_stops():
    """A run that stops mid-epoch (max_steps, preemption) closes its loader. The producer may
    have finished with the queue full; it must not wait on it, and the source is closed."""
    closed = threading.Event()

    def source():
        try:
            yield from range(4)
        finally:
            closed.set()

    before = set(_prefetch_threads())
    stream = _prefetch(source(), depth=2)
    assert [next(stream), next(stream)] == [0, 1]
    deadline = time.time() + 5
    while not closed.is_set() and time.time() < deadline:  # 2 and 3 fill the queue; source ends
        time.sleep(0.05)
    assert closed.is_set()
    t = time.time()
    stream.close()
    assert time.time() - t < 5
    assert set(_prefetch_threads()) <= before
    with pytest.raises(ZeroDivisionError):  # a producer error reaches the consumer
        list(_prefetch((1 // x for x in (1, 0)), depth=2))


def test_dali_loader_left_mid_epoch_leaves_no_decoder_thread(vp9_root):
    loader = build_loader(_cfg(vp9_root, "train.micro_batch=2"), "train", loader="dali")
    before = set(_prefetch_threads())
    it = iter(loader)
    next(it)
    time.sleep(1.0)  # the two remaining batches decode into the prefetch queue
    t = time.time()
    it.close()
    assert time.time() - t < 10
    assert set(_prefetch_threads()) <= before
    assert len(list(loader)) == 3  # the loader still gives full passes afterwards


def test_dali_loader_batches_match_pyav_loader(vp9_root):
    cfg = _cfg(vp9_root, "data.audio_swap_p=0.5")
    da = next(iter(build_loader(cfg, "train", loader="dali")))
    py = next(iter(build_loader(cfg, "train", loader="pyav")))
    assert set(da) == {"rgb", "flow", "audio_embed", "audio_probs", "has_audio", "label", "gt_relevance", "index"}
    for k in ("index", "label", "audio_embed", "gt_relevance", "has_audio"):
        assert torch.equal(da[k], py[k]), k
    assert (_to_pixels(da["rgb"]) - _to_pixels(py["rgb"])).abs().mean() < 3
    assert torch.allclose(da["flow"], py["flow"], atol=1e-4)


def test_audio_swap_takes_another_clip_of_the_same_class(vp9_root):
    cfg = _cfg(vp9_root, "data.loader=pyav", "data.audio_swap_p=1.0", "model.modalities=A", "train.micro_batch=6")
    loader = build_loader(cfg, "train")
    ds = loader.dataset
    batch = next(iter(loader))
    assert "rgb" not in batch and "flow" not in batch
    for i, row in enumerate(batch["index"].tolist()):
        own = ds.info(row)
        partners = [r for r in ds.by_class[ds.rows[row].label] if r != row]
        match = [r for r in partners if np.array_equal(ds.info(r).embedding, batch["audio_embed"][i].numpy())]
        assert match and not np.array_equal(own.embedding, batch["audio_embed"][i].numpy())
        assert batch["gt_relevance"][i].item() == ds.rows[match[0]].gt_relevance
        assert batch["has_audio"][i].item() == ds.info(match[0]).has_audio
    no_swap = next(iter(build_loader(_cfg(vp9_root, "data.loader=pyav", "data.audio_swap_p=0", "model.modalities=A",
                                          "train.micro_batch=6"), "train")))
    for i, row in enumerate(no_swap["index"].tolist()):
        assert np.array_equal(ds.info(row).embedding, no_swap["audio_embed"][i].numpy())


def test_eval_views_layout_and_dataset_meta(vp9_root):
    cfg = _cfg(vp9_root, "data.loader=auto")
    loader = build_loader(cfg, "val")
    meta = loader.dataset_meta
    assert meta["video_classes"][0] == "playing drums" and meta["audio_embed_dim"] == 32
    assert meta["num_audio_labels"] == 6 and meta["num_classes"] == 3
    batches = list(loader)
    assert [b["rgb"].shape[0] for b in batches] == [3]
    b = batches[0]
    assert b["rgb"].shape == (3, 6, 3, 8, 32, 32) and b["flow"].shape == (3, 6, 2, 8, 32, 32)
    assert b["label"].shape == (3,) and sorted(b["index"].tolist()) == [0, 1, 2]
    # views differ (crops x clips) and val has no flip: two runs are identical
    assert not torch.equal(b["rgb"][:, 0], b["rgb"][:, 5])
    assert torch.equal(b["rgb"], next(iter(build_loader(cfg, "val")))["rgb"])


def test_missing_prepared_files_reported_before_loading(vp9_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(vp9_root, root)
    (root / "prepared" / "flow" / "train_002.webm").unlink()
    (root / "prepared" / "flow" / "train_003.webm").unlink()
    (root / "prepared" / "audio" / "train_004.npz").unlink()
    with pytest.raises(MissingPreparedFiles, match=r"2 missing prepared/flow .*1 missing prepared/audio"):
        build_loader(_cfg(root), "train")
    # a model without the flow stream does not need the flow files
    cfg = _cfg(root, "model.modalities=A-RGB", "data.loader=pyav")
    with pytest.raises(MissingPreparedFiles, match="1 missing prepared/audio"):
        build_loader(cfg, "train")
    shutil.copy(vp9_root / "prepared" / "audio" / "train_004.npz", root / "prepared" / "audio")
    batch = next(iter(build_loader(cfg, "train")))
    assert "flow" not in batch and batch["rgb"].shape[1:] == (3, 8, 32, 32)


def test_corrupt_clip_at_load_time_is_skipped_and_counted(vp9_root, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(vp9_root, root)
    (root / "videos" / "train_001.webm").write_bytes(b"\x1aE\xdf\xa3 not a real webm" * 10)
    for kind in ("pyav", "dali"):
        loader = build_loader(_cfg(root, f"data.loader={kind}", "train.micro_batch=2"), "train")
        batches = list(loader)
        assert len(batches) == 3 and all(b["rgb"].shape[0] == 2 for b in batches)
        assert loader.skipped == ["train_001"] and "train_001" in caplog.text, kind
        assert 1 not in torch.cat([b["index"] for b in batches]).tolist()
        # A resumed loader keeps the clip skipped, counted once, and never decodes it again.
        resumed = build_loader(_cfg(root, f"data.loader={kind}", "train.micro_batch=2"), "train")
        resumed.load_state_dict(loader.state_dict())
        assert resumed.skipped == ["train_001"] and 1 in resumed.producer.bad_rows, kind
        resumed.load_state_dict({**loader.state_dict(), "batch": 0})
        caplog.clear()
        assert len(list(resumed)) == 3 and resumed.skipped == ["train_001"], kind
        assert "train_001" not in caplog.text, kind
        caplog.clear()


def test_raw_audio_mode_gives_fbank_of_the_swapped_audio(vp9_root):
    from imd_hpc.audio.tagger import AudioTagger

    cfg = _cfg(vp9_root, "data.loader=pyav", "model.modalities=A", "model.audio_input=raw",
               "data.audio_swap_p=0.5", "train.micro_batch=6")
    batch = next(iter(build_loader(cfg, "train")))
    assert batch["audio_fbank"].shape == (6, 128, 128)
    # the frozen tagger on the loader's fbank reproduces the cached outputs of the same (possibly swapped) audio
    out = AudioTagger.from_pretrained(str(vp9_root / "tagger"))(batch["audio_fbank"])
    assert torch.allclose(out.probs, batch["audio_probs"], atol=1e-5)


def test_dali_pipeline_that_cannot_be_built_falls_back_to_pyav(vp9_root, caplog):
    """A DALI pipeline on a GPU the machine lacks fails in its build: the loader decodes every batch
    with PyAV (the failure logged once, the batches counted) instead of ending the run."""
    absent = torch.cuda.device_count()  # one past the last GPU: there is no such device
    cfg = _cfg(vp9_root, "train.micro_batch=2")
    loader = build_loader(cfg, "train", loader="dali", device_id=absent)
    batches = list(loader)
    ref = list(build_loader(cfg, "train", loader="pyav"))
    assert len(batches) == len(ref) == 3
    for got, want in zip(batches, ref):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    producer = loader.producer
    assert producer.dali_error and producer.pyav_fallbacks == 3
    assert caplog.text.count("DALI pipeline could not be built") == 1


def test_eval_batch_is_capped_in_views(vp9_root):
    """An eval batch holds micro_batch videos, fewer where that would pass EVAL_BATCH_VIEWS (256)
    views; the tiny preset's evaluation (16 videos x 12 views) and single-view validation stay whole."""
    tiny = build_loader(build_config("tiny", [f"data.root={vp9_root}"]), "val")
    assert (tiny.batch_size, tiny.producer.max_views) == (16, 192)
    imd_b = build_loader(_cfg(vp9_root, "train.micro_batch=64", "data.test_crops=3", "data.test_clips=4"), "val")
    assert (imd_b.batch_size, imd_b.producer.max_views) == (21, 252)
    one_view = build_loader(_cfg(vp9_root, "train.micro_batch=64", "data.test_crops=1", "data.test_clips=1"), "val")
    assert one_view.batch_size == 64
    wide = build_loader(_cfg(vp9_root, "data.loader=pyav", "data.test_crops=3", "data.test_clips=43"), "val")
    assert [tuple(b["rgb"].shape[:2]) for b in wide] == [(1, 129)] * 3  # one video a batch, never none


def test_loader_bench_row_that_fails_leaves_the_others(vp9_root, capsys):
    """A backend failing in loader_bench (here PyAV with a worker count DataLoader refuses, and DALI
    on a GPU the machine lacks) ends only its own row; the other rows are measured and tabled."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import loader_bench

    rc = loader_bench.main(["--root", str(vp9_root), "--epochs", "1", "--rgb-from", "source", "--backends",
                            "pyav,dali-cpu", "--pyav-workers", "0,-1", "--set", "train.micro_batch=2"])
    rows = {ln.split("|")[2].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| source")}
    assert rc == 0 and set(rows) == {"pyav x0", "pyav x-1", "dali-cpu"}, rows
    assert "failed: ValueError: num_workers" in rows["pyav x-1"]
    for name in ("pyav x0", "dali-cpu"):
        assert float(rows[name].split("|")[5]) > 0, rows[name]  # clips/s measured
    cfg = _cfg(vp9_root, "train.micro_batch=2")
    with pytest.raises(RuntimeError, match="DALI pipeline not built"):  # never PyAV's speed under DALI's name
        loader_bench.bench_loader(cfg, "train", "dali", torch.cuda.device_count(), 1, 0.0)
