"""benchmarks/train_step_bench.py --loader for real: the engine's loader over a prepared fixture
dataset, RGB from its training store, feeds the train step beside the random-batch row of the same
model, in one run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from engine_data import ENV, REPO, prepare
from test_data_fixtures import make_dataset

BENCH = REPO / "benchmarks" / "train_step_bench.py"
sys.path.insert(0, str(BENCH.parent))

import train_step_bench  # noqa: E402

N_TRAIN, MICRO, WARMUP, STEPS, LOADER_STEPS = 8, 2, 2, 3, 4


def _dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def store_data(tmp_path_factory):
    """8 MJPEG training clips prepared with flow and a VP9 training store (which DALI's CPU decoder reads)."""
    root = tmp_path_factory.mktemp("e2e") / "ds"
    make_dataset(root, n_train=N_TRAIN, n_val=2, codec="mjpeg")
    return prepare(root, "--rgb-store", "on", "--rgb-codec", "vp9")


def test_rows_pair_with_their_loader_fed_twin():
    rows = [train_step_bench.parse_row(r, "blocks") for r in ("torch", "triton+compile", "triton+loader")]
    assert [r["row"] for r in rows] == ["torch", "triton+compile:blocks", "triton+loader"]
    assert [r["batches"] for r in rows] == ["random", "random", "loader"]
    paired = train_step_bench.pair_with_loader(rows[:2] + [train_step_bench.parse_row("triton", "model")], "model")
    assert [r["row"] for r in paired] == ["torch", "torch+loader", "triton+compile:blocks",
                                          "triton+compile:blocks+loader", "triton", "triton+loader"]
    assert train_step_bench.pair_with_loader(rows[2:], "model") == rows[2:]  # named already: no second twin
    for bad in ("torch+loader+compile", "torch+compile+compile", "cuda+loader"):
        with pytest.raises(ValueError, match="KERNELS"):
            train_step_bench.parse_row(bad, "model")
    comparisons = train_step_bench.ratios([
        {"row": "torch", "batches": "random", "samples_per_s": 10.0},
        {"row": "torch+loader", "batches": "loader", "samples_per_s": 8.0},
        {"row": "triton+loader", "batches": "loader", "error": "x"}])
    assert comparisons == [{"what": "loader-fed / random batches (torch)", "rows": ["torch+loader", "torch"],
                            "target": 0.9, "ratio": 0.8}]


def test_loader_fed_row_trains_on_the_loaders_batches(store_data, tmp_path):
    backend = "dali" if _dali() else "pyav"
    out, md = tmp_path / "e2e.json", tmp_path / "e2e.md"
    cmd = [sys.executable, str(BENCH), "--preset", "tiny", "--kernels", "torch", "--no-deepspeed", "--one-process",
           "--micro-batch", str(MICRO), "--warmup", str(WARMUP), "--steps", str(STEPS), "--loader-steps",
           str(LOADER_STEPS), "--seconds", "600", "--loader", str(store_data),
           "--loader-backend", backend, "--backend-timeout", "240", "--out", str(out), "--markdown", str(md)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["row"]: r for r in data["results"]}
    assert list(rows) == ["torch", "torch+loader"]
    rand, fed = rows["torch"], rows["torch+loader"]
    assert (rand["batches"], fed["batches"]) == ("random", "loader")
    assert "loader" not in rand
    assert rand["params"] == fed["params"]  # one model: the dataset's sizes in both rows
    ld = fed["loader"]
    # Every warm-up and timed step drew one batch of the loader: 6 batches of 2 from 4 an epoch, so the
    # feed crossed into a second epoch, and all 8 clips were met, each read from the training store.
    assert ld["batches_drawn"] == WARMUP + LOADER_STEPS
    assert ld["batches_per_epoch"] == N_TRAIN // MICRO
    assert ld["epochs_done"] == 1
    assert ld["num_clips"] == ld["distinct_clips_seen"] == ld["clips_from_store"] == N_TRAIN
    assert ld["skipped_clips"] == 0
    assert ld["backend"] == backend and ld["tensors_on"] == "cpu"
    # The random row times --steps, the loader-fed row --loader-steps; neither ran into --seconds.
    assert (rand["steps"], fed["steps"]) == (STEPS, LOADER_STEPS)
    for r in (rand, fed):
        assert not r["stopped_by_time"] and r["samples_per_s"] > 0 and r["cpu_cores_busy"] > 0
        assert 0 <= r["input_wait_share"] < 1 and r["input_wait_ms_max"] >= r["input_wait_ms_mean"] >= 0
    (ratio,) = data["ratios"]
    assert ratio["what"] == "loader-fed / random batches (torch)" and ratio["target"] == 0.9
    assert ratio["ratio"] == pytest.approx(fed["samples_per_s"] / rand["samples_per_s"])
    table = md.read_text()
    assert "input wait ms/step (share)" in table and "CPU cores busy" in table
    assert f"{WARMUP + LOADER_STEPS} batches drawn ({N_TRAIN // MICRO} an epoch, 1 epochs completed)" in table
    assert "steps timed" not in table
    assert "loader-fed / random batches (torch):" in table


def test_a_row_stops_when_its_seconds_are_up(tmp_path):
    """--seconds bounds a row by time: far fewer steps than asked, the rate that of the steps done."""
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    cmd = [sys.executable, str(BENCH), "--preset", "tiny", "--kernels", "torch", "--no-deepspeed", "--one-process",
           "--micro-batch", "2", "--warmup", "1", "--steps", "100000", "--seconds", "0.5", "--out", str(out),
           "--markdown", str(md)]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["stopped_by_time"] and row["steps_asked"] == 100000 and 1 <= row["steps"] < 100000
    assert row["steps"] / row["steps_per_s"] > 0.4  # the rate is over the steps done, up to the deadline
    assert row["samples_per_s"] == pytest.approx(2 * row["steps_per_s"])
    assert f"torch: {row['steps']} of 100000 steps timed, the row's time (0.5 s) being up" in md.read_text()


def test_loader_errors_are_one_line(store_data):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCH), "--preset", "tiny", "--kernels", "torch", *args],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)

    too_big = run("--loader", str(store_data), "--micro-batch", "16")
    assert too_big.returncode == 2 and "fewer than train.micro_batch=16" in too_big.stderr
    assert "Traceback" not in too_big.stderr
    missing = run("--loader", str(store_data / "nope"))
    assert missing.returncode == 2 and "meta.json: missing" in missing.stderr
    no_dir = run("--kernels", "torch+loader")
    assert no_dir.returncode == 2 and "+loader rows need --loader" in no_dir.stderr
