"""Refuse a dataset the running code would misread, before a run builds its loaders.

Synthetic data records the generator code that made it (meta.json: generator_version,
generator_fingerprint); data made by other generator code may have labels that no longer match
its pixels. The check lives with the engine, not in the data package: the loaders read any
prepared dataset and know nothing of the generator.
"""

from __future__ import annotations

from pathlib import Path

from imd_hpc.data.manifest import DatasetMeta, ManifestError


def refuse_stale_synthetic(root: str | Path) -> None:
    """ManifestError naming both versions when `root` was made by other generator code. Data
    the generator did not make (no generator_version in meta.json) passes."""
    meta = DatasetMeta.read(root)
    if "generator_version" not in meta.extra:
        return
    from imd_hpc.synth.generate import StaleDatasetError, check_generator

    try:
        check_generator(root, meta.to_dict())
    except StaleDatasetError as e:
        raise ManifestError(str(e)) from None
