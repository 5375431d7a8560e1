"""Every kernel compiles for Hopper (sm_90) on this machine, GPU or not, through Triton's NVIDIA
backend and the ptxas it ships; the production dtype (bf16) uses the tensor cores and does not
spill. Runs `python -m imd_kernels.compile_report` in a fresh process because compiling needs the
kernels defined without the interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _ptxas_shipped() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _ptxas_shipped(), reason="this triton wheel ships no ptxas for the NVIDIA backend")
def test_kernels_compile_for_sm90_with_tensor_cores_and_no_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "imd_kernels.compile_report", "--arch", "90", "--dtypes", "bfloat16", "float32", "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"compile_report failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["failures"]
    reports = result["reports"]
    assert {(r["kernel"], r["dtype"]) for r in reports} >= {("spatial bwd", "bfloat16"),
                                                          ("temporal fwd", "float32"), ("imd_mask bwd", "bfloat16")}
    for r in reports:
        if r["kernel"].startswith(("temporal", "spatial")) and r["kernel"] != "spatial cls sum":
            assert r["ops"]["HGMMA"] > 0, f"{r['kernel']} {r['dtype']}: no Hopper tensor-core products"
        if r["dtype"] == "bfloat16":
            assert r["ops"]["LDL"] == 0 and r["ops"]["STL"] == 0 and r["stack"] == 0, f"spills: {r}"
