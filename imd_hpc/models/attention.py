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

The PyTorch versions are `kernels.reference` (the one implementation the kernel tests check the
Triton kernels against); the package `kernels` implements the same three signatures in Triton.
`Ops(backend)` picks per call: "torch" (the reference), "triton" (always the kernels) or "auto"
(the kernels for CUDA tensors when `kernels` imports, the reference otherwise).
"""

from __future__ import annotations

import torch

import kernels
from kernels import reference

OP_NAMES = ("temporal_attention", "spatial_attention", "imd_threshold_mask")


def temporal_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    return reference.temporal_attention(qkv, T)


def spatial_attention(qkv: torch.Tensor, T: int) -> torch.Tensor:
    return reference.spatial_attention(qkv, T)


def imd_threshold_mask(rev_logit: torch.Tensor, z_audio: torch.Tensor, z_visual: torch.Tensor,
                       alpha: float, masking: str, detach: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return reference.imd_threshold_mask(rev_logit, z_audio, z_visual, alpha, masking, detach)


def kernels_available() -> bool:
    """Whether the package `kernels` (shipped with this one) provides every op."""
    return all(hasattr(kernels, name) for name in OP_NAMES)


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
            return getattr(kernels, name)
        return globals()[name]

    def temporal_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        return self._pick("temporal_attention", qkv)(qkv, T)

    def spatial_attention(self, qkv: torch.Tensor, T: int) -> torch.Tensor:
        return self._pick("spatial_attention", qkv)(qkv, T)

    def imd_threshold_mask(self, rev_logit, z_audio, z_visual, alpha, masking, detach):
        op = self._pick("imd_threshold_mask", rev_logit)
        return op(rev_logit, z_audio, z_visual, alpha, masking, detach)
