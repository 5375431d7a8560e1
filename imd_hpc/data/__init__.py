"""Data: dataset manifests, `prepare` (tagger cache, optical flow), DALI and PyAV loaders.

    from imd_hpc.data import build_loader
    loader = build_loader(cfg, split="train", rank=0, world_size=1)
"""

from __future__ import annotations


def build_loader(cfg, split: str = "train", rank: int = 0, world_size: int = 1, **kwargs):
    """See imd_hpc.data.loader.build_loader (imported lazily: it pulls in torch and DALI)."""
    from .loader import build_loader as _build

    return _build(cfg, split=split, rank=rank, world_size=world_size, **kwargs)


__all__ = ["build_loader"]
