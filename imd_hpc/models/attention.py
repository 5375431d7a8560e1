"""The three hot ops of the model, in PyTorch, and the switch to their Triton kernels.

Token layout everywhere: patch tokens ordered (n, t) with t varying fastest, i.e. the
token of patch n in frame t sits at index n*T + t (after a leading CLS where present).

    temporal_attention(qkv, T)   qkv (B, N*T, 3, H, Dh), patch tokens only -> (B, N*T, H, Dh)
                                 the T tokens of each patch attend to each other
    spatial_attention(qkv, T)    qkv (B, 1+N*T, 3, H, Dh), CLS at index 0 -> (B, 1+N*T, H, Dh)
                                 per frame t, {CLS} U {patches of frame t} attend to each other;
                                 the CLS row is the mean over frames of the per-frame CLS outputs
    imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach) -> (z, rev, delta)
                                 paper Eq. 5-6: rev = sigmoid(rev_logit); M: delta = rev if
                                 rev >= alpha else 0; W: delta = rev; z = [z_audio * delta, z_visual]

The package `kernels` implements the same three signatures in Triton. `get_ops(backend)`
picks the implementation: "torch" (this file), "triton" (always the kernels) or "auto"
(the kernels for CUDA tensors when `kernels` imports, this file otherwise).
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F
from einops import rearrange

OP_NAMES = ("temporal_attention", "spatial_attention", "imd_threshold_mask")


def temporal_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    B, NT = qkv.shape[:2]
    q, k, v = rearrange(qkv, "b (n t) three h d -> three (b n) h t d", t=T).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "(b n) h t d -> b (n t) h d", b=B)


def spatial_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    B = qkv.shape[0]
    # CLS is one token shared by all frames: its q/k/v are replicated to every frame.
    cls = qkv[:, :1].unsqueeze(1).expand(-1, T, -1, -1, -1, -1)  # (B, T, 1, 3, H, Dh)
    patches = rearrange(qkv[:, 1:], "b (n t) three h d -> b t n three h d", t=T)
    frames = torch.cat([cls, patches], dim=2)  # (B, T, 1+N, 3, H, Dh)
    q, k, v = rearrange(frames, "b t n three h d -> three (b t) h n d").unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)  # (B*T, H, 1+N, Dh)
    out = rearrange(out, "(b t) h n d -> b t n h d", b=B)
    cls_out = out[:, :, :1].mean(dim=1)  # (B, 1, H, Dh): averaged over frames
    patch_out = rearrange(out[:, :, 1:], "b t n h d -> b (n t) h d")
    return torch.cat([cls_out, patch_out], dim=1)


def imd_threshold_mask(rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor,
                       alpha: float, masking: str, detach: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rev = torch.sigmoid(rev_logit)
    if masking == "M":
        delta = torch.where(rev >= alpha, rev, torch.zeros_like(rev))
    elif masking == "W":
        delta = rev
    else:
        raise ValueError(f"masking must be 'M' or 'W', not {masking!r}")
    scale = delta.detach() if detach else delta
    z = torch.cat([z_audio * scale.unsqueeze(1).to(z_audio.dtype), z_visual], dim=1)
    return z, rev, delta


@functools.cache
def _kernels_module():
    try:
        return importlib.import_module("kernels")
    except ImportError:
        return None


def kernels_available() -> bool:
    mod = _kernels_module()
    return mod is not None and all(hasattr(mod, name) for name in OP_NAMES)


class Ops:
    """Resolves each op per call, so that one model runs on CPU and GPU tensors alike."""

    def __init__(self, backend: str = "auto"):
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"model.kernels must be auto, triton or torch, not {backend!r}")
        if backend == "triton" and not kernels_available():
            raise ImportError("model.kernels=triton but the package `kernels` (with "
                              f"{', '.join(OP_NAMES)}) does not import")
        self.backend = backend

    def _pick(self, name: str, tensor: torch.Tensor):
        use_triton = self.backend == "triton" or (
            self.backend == "auto" and tensor.is_cuda and kernels_available())
        if use_triton:
            return getattr(_kernels_module(), name)
        return globals()[name]

    def temporal_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        return self._pick("temporal_attention", qkv)(qkv, T)

    def spatial_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        return self._pick("spatial_attention", qkv)(qkv, T)

    def imd_threshold_mask(self, rev_logit, z_audio, z_visual, alpha, masking, detach):
        op = self._pick("imd_threshold_mask", rev_logit)
        return op(rev_logit, z_audio, z_visual, alpha, masking, detach)
