"""benchmarks/gpu_validate.sh in its CPU rehearsal: a call cut short (as the device tool cuts one at
its timeout) still leaves the summary of the steps it finished in $OUT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the script and its children: `timeout` puts each step
    in a process group of its own, so killing the script's group alone would leave them running)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid:  # after the command name: state, ppid, pgrp, session
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_summary_is_written_after_each_step_not_only_at_the_end(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_VALIDATE_DRY": "1", "GPU_VALIDATE_STEPS": "kbench train", "OUT": str(out),
           "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    # kbench says it needs CUDA and exits at once; train (the tiny preset through Triton's interpreter)
    # runs for a minute or more: the call is cut while it runs.
    proc = subprocess.Popen(["bash", str(REPO / "benchmarks" / "gpu_validate.sh")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    summary = out / "summary.md"
    try:
        deadline = time.monotonic() + 240
        while not summary.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        running = proc.poll() is None
    finally:
        _kill_session(proc.pid)  # the cut: the script gets no chance to write anything more
        proc.wait()
    assert summary.is_file(), "no summary.md while the call ran"
    assert running, "summary.md appeared only once every step had ended"
    text = summary.read_text()
    assert "| kbench | ok |" in text and "| train |" not in text.split("| check |")[0]
