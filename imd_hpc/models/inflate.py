"""Inflate a timm ViT checkpoint file into the video streams (paper 3.2).

    RGB stream   every ViT weight by name (patch_embed, cls_token, pos_embed, blocks, norm)
    flow stream  the same, except the patch embedding: the RGB filters averaged over the
                 colour channels and repeated to the 2 flow channels
    divided blocks  temporal_norm1 / temporal_attn start as copies of norm1 / attn (as
                 TimeSformer initializes them); temporal_fc stays zero, time_embed stays zero,
                 so an inflated stream starts as the image model applied per frame
    pos_embed    resized bicubically when the checkpoint's patch grid differs

The file is a state dict saved by `torch.save` (optionally nested under "model" or
"state_dict") or a `.safetensors` file; the classifier head is not used.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Names our streams keep zero/fresh on purpose after inflation.
_NOT_INFLATED = ("time_embed", "temporal_fc.")


def load_vit_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.vit_checkpoint {path!r} is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which
            raise ValueError(f"model.vit_checkpoint {path!r} is not a readable torch checkpoint: {e}") from e
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or "patch_embed.proj.weight" not in sd:
        raise ValueError(f"model.vit_checkpoint {path!r} does not hold a timm ViT state dict "
                         "(no 'patch_embed.proj.weight')")
    return sd


def _resize_pos_embed(pos: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(1, 1+M, D) -> (1, 1+N, D), bicubic over the square patch grid."""
    if pos.shape[1] == 1 + num_patches:
        return pos
    old, new = round((pos.shape[1] - 1) ** 0.5), round(num_patches ** 0.5)
    if old * old != pos.shape[1] - 1 or new * new != num_patches:
        raise ValueError(f"cannot resize pos_embed of {pos.shape[1] - 1} patches to {num_patches}")
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(pos.dtype)], dim=1)


def stream_state_dict(vit: dict[str, torch.Tensor], stream: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors renamed/reshaped for one VideoStream."""
    target = stream.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, want in target.items():
        if name.startswith(_NOT_INFLATED) or any(s in name for s in _NOT_INFLATED):
            continue
        src = name.replace("temporal_norm1", "norm1").replace("temporal_attn", "attn")
        if src not in vit:
            raise KeyError(f"ViT checkpoint has no {src!r} for the stream's {name!r} "
                           "(fewer blocks than model.depth, or not a timm ViT?)")
        t = vit[src]
        if name == "patch_embed.proj.weight" and t.shape[1] != want.shape[1]:
            # Flow: colour filters averaged over channels, repeated to the flow channels.
            t = t.mean(dim=1, keepdim=True).repeat(1, want.shape[1], 1, 1)
        elif name == "pos_embed":
            t = _resize_pos_embed(t, want.shape[1] - 1)
        if t.shape != want.shape:
            raise ValueError(f"ViT checkpoint {src!r} has shape {tuple(t.shape)}, the stream's {name!r} "
                             f"needs {tuple(want.shape)} (model.embed_dim / patch_size / depth differ?)")
        out[name] = t.to(want.dtype)
    return out


def inflate_stream(stream: nn.Module, vit: dict[str, torch.Tensor]) -> None:
    missing, unexpected = stream.load_state_dict(stream_state_dict(vit, stream), strict=False)
    assert not unexpected, unexpected
    left = [k for k in missing if not any(s in k for s in _NOT_INFLATED)]
    if left:
        raise KeyError(f"inflation left stream weights uninitialized: {left[:5]}")


def inflate_visual_encoder(visual: nn.Module, path: str) -> None:
    """Inflate every stream of a VisualEncoder from one timm ViT checkpoint file."""
    vit = load_vit_state_dict(path)
    used = 1 + max((int(k.split(".")[1]) for k in vit if k.startswith("blocks.")), default=-1)
    for name, stream in visual.streams().items():
        inflate_stream(stream, vit)
        log.info("inflated %s stream (%d blocks) from %s (checkpoint has %d blocks)",
                 name, len(stream.blocks), path, used)
