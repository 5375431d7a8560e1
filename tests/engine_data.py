"""Datasets for the engine tests: a few fixture clips (fast) or the synthetic small set (real)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from test_data_fixtures import AUDIO_CLASSES, VIDEO_CLASSES, make_dataset  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# A few optimizer steps on fixture clips: each run costs seconds, not minutes.
FAST = ["train.global_batch=8", "train.micro_batch=4", "data.test_crops=1", "data.test_clips=1",
        "loss.k=2", "loss.top_ya=2", "train.log_every=1", "train.deterministic=true"]


def prepare(root: Path, *options: str) -> Path:
    """`prepare --dataset synthetic` on root, plus options (e.g. --rgb-store on)."""
    subprocess.run([sys.executable, "-m", "imd_hpc", "prepare", "--dataset", "synthetic", "--root", str(root),
                    "--workers", "1", "--quiet", *options], cwd=REPO, env=ENV, check=True, timeout=600,
                   capture_output=True)
    return root


def fixture_dataset(root: Path, n_train: int = 32, n_val: int = 6) -> Path:
    """MJPEG fixture clips (DALI decodes them on the CPU), a random tagger, a rotated SAVLD."""
    make_dataset(root, n_train=n_train, n_val=n_val, codec="mjpeg")
    rows = [f"{v}\t{';'.join(AUDIO_CLASSES[i:] + AUDIO_CLASSES[:i])}\n" for i, v in enumerate(VIDEO_CLASSES)]
    (root / "savld.txt").write_text("".join(rows))
    return prepare(root)


def synthetic(size: str = "default") -> Path:
    """The project's synthetic dataset (with its tagger), generated and prepared once per machine.

    IMD_TEST_SYNTH names the cache directory; the generator resumes or reuses what is there. The
    default name carries the generator's fingerprint and the flow store's format version, so
    changed generator code gets fresh data, and code of another flow format (which `prepare`
    refuses to mix) does not share the directory.
    """
    from imd_hpc.data.flow import FORMAT_VERSION
    from imd_hpc.synth.generate import generator_fingerprint

    name = f"imd_hpc_synth_{size}_{generator_fingerprint()}_flow{FORMAT_VERSION}"
    root = Path(os.environ.get("IMD_TEST_SYNTH") or Path(tempfile.gettempdir()) / name)
    subprocess.run([sys.executable, "-m", "imd_hpc", "synth", "--out", str(root), "--size", size],
                   cwd=REPO, env=ENV, check=True, timeout=900, capture_output=True)
    return prepare(root)
