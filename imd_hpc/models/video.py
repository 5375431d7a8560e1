"""The two-stream factorized video Transformer (paper 3.2).

One `VideoStream` is a ViT over the frames of a clip (RGB: C=3, optical flow: C=2):

    patch embed per frame -> [CLS] + patches, pos embed (ViT) + time embed (zero init)
    tokens (B, 1 + N*T, D), patch n of frame t at index 1 + n*T + t (t fastest)
    blocks 1 .. L-k      SpatialBlock: each frame's patches attend with the CLS token,
                         the CLS outputs are averaged over frames; then the MLP
    blocks L-k+1 .. L    DividedBlock (k = model.divided_blocks, 2 in the paper): temporal
                         attention over each patch's T tokens -> temporal_fc (zero init)
                         -> residual; then the spatial step; then the MLP. Numerically the
                         function of TimeSformer's `divided_space_time` block.
    final LayerNorm on CLS -> (B, D)

Parameter names follow timm's ViT (patch_embed.proj, cls_token, pos_embed, blocks.i.attn.qkv,
...) so that a timm checkpoint inflates by name (see inflate.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Ops


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class FactorizedAttention(nn.Module):
    """qkv + output projection around one of the factorized attention ops."""

    def __init__(self, dim: int, num_heads: int, ops: Ops, kind: str):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.ops = ops
        self.kind = kind  # "spatial" | "temporal"

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads)
        op = self.ops.spatial_attention if self.kind == "spatial" else self.ops.temporal_attention
        return self.proj(op(qkv, T).reshape(B, L, D))


class SpatialBlock(nn.Module):
    """Blocks 1..L-2: per-frame spatial attention (CLS shared, averaged over frames), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ops: Ops, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = FactorizedAttention(dim, num_heads, ops, "spatial")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), T))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DividedBlock(SpatialBlock):
    """Blocks L-1, L: temporal attention -> temporal_fc -> residual, then the spatial block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, ops: Ops, drop_path: float = 0.0):
        super().__init__(dim, num_heads, mlp_ratio, ops, drop_path)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = FactorizedAttention(dim, num_heads, ops, "temporal")
        # Zero init: the inflated block starts as the pretrained image block.
        self.temporal_fc = nn.Linear(dim, dim)
        nn.init.zeros_(self.temporal_fc.weight)
        nn.init.zeros_(self.temporal_fc.bias)

    def forward(self, x: torch.Tensor, T: int) -> torch.Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        res = self.temporal_fc(self.temporal_attn(self.temporal_norm1(patches), T))
        patches = patches + self.drop_path(res)
        return super().forward(torch.cat([cls, patches], dim=1), T)


class VideoStream(nn.Module):
    """A factorized ViT over one visual modality: (B, C, T, H, W) -> CLS feature (B, D)."""

    def __init__(self, in_chans: int, img_size: int, patch_size: int, num_frames: int, embed_dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, divided_blocks: int, ops: Ops,
                 drop_path: float = 0.0):
        super().__init__()
        self.num_frames = num_frames
        self.num_patches = (img_size // patch_size) ** 2
        self.embed_dim = embed_dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))  # zero init (paper 3.2)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            (DividedBlock if i >= depth - divided_blocks else SpatialBlock)(
                embed_dim, num_heads, mlp_ratio, ops, rates[i])
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_linear)
        for blk in self.blocks:  # _init_linear must not undo the zero init
            if isinstance(blk, DividedBlock):
                nn.init.zeros_(blk.temporal_fc.weight)
                nn.init.zeros_(blk.temporal_fc.bias)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens (B, 1 + N*T, D), t fastest."""
        B, C, T, H, W = video.shape
        if T != self.num_frames:
            raise ValueError(f"clip has {T} frames, the stream was built for "
                             f"model.num_frames={self.num_frames}")
        x = self.patch_embed.proj(video.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B*T, N, D)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"frames of {H}x{W} give {x.shape[1]} patches, the stream expects "
                             f"{self.num_patches} (model.img_size)")
        x = x + self.pos_embed[:, 1:]
        x = x.view(B, T, -1, self.embed_dim) + self.time_embed[:, :, None]
        x = x.transpose(1, 2).reshape(B, -1, self.embed_dim)  # (B, N*T, D), t fastest
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(B, -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.embed(video)
        for blk in self.blocks:
            x = blk(x, self.num_frames)
        return self.norm(x[:, 0])


def _init_linear(m: nn.Module) -> None:
    # Xavier (the original ViT's Linear init) scales with the width. timm's fixed std 0.02 suits
    # width 768; at width 64 each Linear shrinks its input ~6x, so from scratch the CLS token got
    # almost no input-dependent signal and SGD never left the constant prediction.
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class VisualEncoder(nn.Module):
    """RGB and/or flow streams; CLS features concatenated -> two Linear+ReLU to width D."""

    def __init__(self, mcfg, use_rgb: bool, use_flow: bool, ops: Ops):
        super().__init__()
        if not (use_rgb or use_flow):
            raise ValueError("VisualEncoder needs RGB or flow")
        kw = dict(img_size=mcfg.img_size, patch_size=mcfg.patch_size, num_frames=mcfg.num_frames,
                  embed_dim=mcfg.embed_dim, depth=mcfg.depth, num_heads=mcfg.num_heads,
                  mlp_ratio=mcfg.mlp_ratio, divided_blocks=mcfg.divided_blocks, ops=ops,
                  drop_path=mcfg.drop_path)
        self.rgb = VideoStream(in_chans=3, **kw) if use_rgb else None
        self.flow = VideoStream(in_chans=2, **kw) if use_flow else None
        D = mcfg.embed_dim
        width = D * (int(use_rgb) + int(use_flow))
        self.fuse = nn.Sequential(nn.Linear(width, D), nn.ReLU(inplace=True),
                                  nn.Linear(D, D), nn.ReLU(inplace=True))
        self.fuse.apply(_init_linear)

    def streams(self) -> dict[str, VideoStream]:
        return {name: s for name, s in (("rgb", self.rgb), ("flow", self.flow)) if s is not None}

    def forward(self, batch: dict) -> torch.Tensor:
        feats = []
        for name, stream in self.streams().items():
            if name not in batch:
                raise KeyError(f"batch has no {name!r} tensor, which the model's modalities need")
            feats.append(stream(batch[name]))
        return self.fuse(torch.cat(feats, dim=1))
