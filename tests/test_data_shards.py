"""`prepare` across machines: --shard K/N by hand, --cluster local|slurm --jobs N as submitit jobs.
Sharded runs must leave exactly what one process leaves: the same flow files byte for byte, the
same statuses, tagger outputs equal within 1e-5 (the batches differ), one merged status.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slurm_cluster import slurm_up
from test_data_fixtures import SHARED, make_dataset, write_tagger

from imd_hpc.data.manifest import read_manifest
from imd_hpc.data.prepare import shard_of

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def prepare(root: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "imd_hpc", "prepare", "--root", str(root), "--quiet", *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def synthetic_prepare(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return prepare(root, "--dataset", "synthetic", "--workers", "1", *extra)


def outputs(root: Path) -> dict:
    """Everything prepare leaves, in comparable form."""
    prep = root / "prepared"
    lines = (prep / "status.jsonl").read_text().splitlines()
    status = {r["clip_id"]: r for r in map(json.loads, lines)}
    audio = {}
    for p in sorted((prep / "audio").glob("*.npz")):
        with np.load(p) as z:
            audio[p.stem] = {k: z[k].copy() for k in z.files}
    flow = {p.stem: p.read_bytes() for p in sorted((prep / "flow").glob("*.webm"))}
    return {"lines": len(lines), "status": status, "audio": audio, "flow": flow,
            "shard_logs": sorted(p.name for p in prep.glob("status.shard-*"))}


def assert_same_outputs(sharded: dict, single: dict) -> None:
    assert sharded["shard_logs"] == [] and sharded["lines"] == len(sharded["status"])  # merged, once each
    assert sharded["status"] == single["status"]
    assert sharded["flow"].keys() == single["flow"].keys() and len(single["flow"]) > 0
    for cid, data in single["flow"].items():
        assert sharded["flow"][cid] == data, f"flow of {cid} differs"
    assert sharded["audio"].keys() == single["audio"].keys()
    for cid, z in single["audio"].items():
        for key, value in z.items():
            if key in ("embedding", "probs"):
                np.testing.assert_allclose(sharded["audio"][cid][key], value, atol=1e-5, rtol=0, err_msg=cid)
            else:
                assert np.array_equal(sharded["audio"][cid][key], value), (cid, key)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    """The fixture dataset, unprepared, and what one prepare process makes of it."""
    raw = make_dataset(tmp_path_factory.mktemp("shards") / "raw", n_train=6, n_val=3, codec="vp9",
                       no_audio=("train_004",))
    ref = raw.parent / "single"
    shutil.copytree(raw, ref)
    out = synthetic_prepare(ref, "--tagger-batch", "4")
    assert out.returncode == 0, out.stderr
    return raw, outputs(ref)


def test_shards_by_hand_partition_the_clips_and_a_plain_run_merges_them(single, tmp_path):
    raw, ref = single
    root = tmp_path / "ds"
    shutil.copytree(raw, root)
    ids = sorted(ref["status"])
    assert sorted(c for k in range(3) for c in ids if shard_of(c, 3) == k) == ids
    # Temporaries as a shard running elsewhere holds them open: no other shard may delete them.
    (root / "prepared" / "rgb").mkdir(parents=True, exist_ok=True)
    elsewhere = [root / "prepared" / "rgb" / ".x.mp4.tmp4194301", root / ".train.csv.tmp4194301"]
    for p in elsewhere:
        p.write_bytes(b"in flight")
    for k in range(3):
        out = synthetic_prepare(root, "--shard", f"{k}/3", "--tagger-batch", "2")
        assert out.returncode == 0, out.stderr
        assert all(p.is_file() for p in elsewhere), f"shard {k} deleted another writer's temporary"
        mine = [c for c in ids if shard_of(c, 3) == k]
        assert f"shard {k}/3: {len(mine)} clips: {len(mine)} done" in out.stdout
        log = root / "prepared" / f"status.shard-{k}-of-3.jsonl"
        assert sorted(json.loads(s)["clip_id"] for s in log.read_text().splitlines()) == mine
    again = synthetic_prepare(root, "--shard", "1/3")  # a shard run twice does nothing twice
    assert again.returncode == 0 and " 0 done" in again.stdout
    merged = synthetic_prepare(root)  # the plain run merges the shard logs and finds nothing left
    assert merged.returncode == 0 and f"{len(ids)} clips: 0 done, {len(ids)} skipped" in merged.stdout
    assert not any(p.exists() for p in elsewhere)  # no shard runs now: what is left is stale, swept
    assert_same_outputs(outputs(root), ref)
    bad = synthetic_prepare(root, "--shard", "3/3")
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr


def test_cluster_local_runs_shards_as_submitit_jobs(single, tmp_path):
    raw, ref = single
    root = tmp_path / "ds"
    shutil.copytree(raw, root)
    stale = root / "prepared" / "audio" / ".train_000.npz.tmp4194301"  # a killed run's
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"killed")
    out = synthetic_prepare(root, "--cluster", "local", "--jobs", "3", "--max-parallel", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not stale.exists()  # swept by the launcher before it submitted the shards
    assert "in 3 shards (local: 2 at a time" in out.stdout
    assert f"{len(ref['status'])} clips: {len(ref['status'])} done, 0 skipped" in out.stdout
    assert_same_outputs(outputs(root), ref)
    assert len(list((root / "prepared" / "logs").glob("*/*_log.out"))) == 3  # one submitit job per shard
    rerun = synthetic_prepare(root, "--cluster", "local", "--jobs", "3")  # nothing left: nothing submitted
    assert rerun.returncode == 0 and "in 3 shards" not in rerun.stdout


@pytest.mark.skipif(not (SHARED / "data" / "videos").is_dir(), reason="../shared test clips absent")
def test_cluster_local_writes_the_real_layout_after_merging(tmp_path):
    """A list dataset: the manifests come after the shards, with the audio tracks they found."""
    root = tmp_path / "real"
    (root / "videos").mkdir(parents=True)
    for name in ("mmaction2_test.avi", "decord_flipping_a_pancake.mkv", "decord_corrupted.mp4",
                 "mmaction2_demo.mp4"):
        os.symlink((SHARED / "data" / "videos" / name).resolve(), root / "videos" / name)
    (root / "train.txt").write_text("videos/mmaction2_test.avi\tcooking food\n"
                                    "videos/decord_corrupted.mp4\tdancing\n"
                                    "videos/mmaction2_demo.mp4\tdancing\n")
    (root / "val.txt").write_text("videos/decord_flipping_a_pancake.mkv\tcooking food\n")
    write_tagger(root / "tagger")
    out = prepare(root, "--dataset", "list", "--train-list", str(root / "train.txt"), "--val-list",
                  str(root / "val.txt"), "--flow-short-side", "64", "--cluster", "local", "--jobs", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 clips: 3 done, 0 skipped (finished in an earlier run), 1 failed" in out.stdout
    status = {json.loads(s)["clip_id"]: json.loads(s) for s in (root / "prepared" / "status.jsonl").read_text().splitlines()}
    assert status["videos__decord_corrupted"]["status"] == "failed"
    train = {r.clip_id: r for r in read_manifest(root, "train")}
    assert train["videos__mmaction2_test"].audio and train["videos__mmaction2_demo"].audio == ""
    assert read_manifest(root, "val")[0].label_name == "cooking food"
    assert json.loads((root / "meta.json").read_text())["video_classes"] == ["cooking food", "dancing"]


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster with accounting answers (slurm/local-cluster.sh start)")
def test_three_shard_slurm_array_equals_one_process(single, tmp_path):
    raw, ref = single
    root = tmp_path / "ds"
    shutil.copytree(raw, root)
    out = synthetic_prepare(root, "--cluster", "slurm", "--jobs", "3", "--cpus-per-task", "1", "--timeout-min", "20")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "slurm job array" in out.stdout and "(3 tasks)" in out.stdout
    assert_same_outputs(outputs(root), ref)
