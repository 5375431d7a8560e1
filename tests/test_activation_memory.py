"""benchmarks/activation_memory.py counts the saved activations on the meta device, with the Triton
kernels' custom ops standing in through their fake implementations: the script as a user runs it
(a fresh process, the kernels defined for the GPU, no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from engine_data import ENV, REPO


def test_script_counts_both_kernel_paths_on_the_meta_device(tmp_path):
    out = tmp_path / "mem.json"
    env = {k: v for k, v in ENV.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "activation_memory.py"), "--presets", "tiny",
                          "--kernels", "triton", "torch", "--micro-batches", "16", "--json", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| tiny | triton |" in run.stdout and "| tiny | torch |" in run.stdout
    saved = {r["kernels"]: r["saved_per_sample_gib"] for r in json.loads(out.read_text())}
    # The kernels keep q, k, v, the output and a log-sum-exp per row; SDPA's math path (the meta
    # device has no flash path) also keeps each frame's attention matrix.
    assert 0 < saved["triton"] < saved["torch"]
