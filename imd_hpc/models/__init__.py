"""Models: `create_model(cfg)` builds the audio-visual network named by `cfg.model`.

    model = create_model(cfg)
    out = model(batch)   # {"logits", "rev", "rev_logit", "delta", "aux_loss"} (+ "audio_probs"
                         # when model.audio_input=raw and the tagger ran inside the model)

Eval batches (rgb/flow with a view axis, (B, V, C, T, H, W)) are folded into the batch and
averaged back per video (see `average_views`): logits (B, num_classes) = log of the
view-averaged softmax, plus `view_logits` (B, V, num_classes).

Modality schemes (Table 3): A, RGB, A-F, A-RGB, RGB-F, A-RGB-F. Schemes with audio and a
visual stream use the fusion head `model.fusion`; audio-only and visual-only schemes
(A, RGB, RGB-F) have nothing to fuse and classify their one feature directly.
"""

from __future__ import annotations

from torch import nn

from .attention import Ops
from .audio import AudioEncoder
from .fusion import FUSION_HEADS, SingleModalityHead, create_fusion
from .inflate import inflate_visual_encoder
from .video import VideoStream, VisualEncoder

__all__ = ["IMDModel", "create_model", "FUSION_HEADS", "VideoStream", "VisualEncoder",
           "inflate_visual_encoder", "transformer_blocks"]


class IMDModel(nn.Module):
    def __init__(self, cfg, tagger=None):
        super().__init__()
        m = cfg.model
        mods = cfg.modality_set()
        self.use_audio = "A" in mods
        use_rgb, use_flow = "RGB" in mods, "F" in mods
        self.ops = Ops(m.kernels, m.spatial_path)
        self.audio = AudioEncoder(m, tagger) if self.use_audio else None
        self.visual = VisualEncoder(m, use_rgb, use_flow, self.ops) if (use_rgb or use_flow) else None
        self.fused = self.audio is not None and self.visual is not None
        if self.fused:
            self.head = create_fusion(m, self.ops)
        else:
            self.head = SingleModalityHead(m.embed_dim, m.num_classes)

    @property
    def has_relevance(self) -> bool:
        """True when the head has a relevance network (IMD); the loss adds BCE only then."""
        return bool(getattr(self.head, "has_relevance", False))

    def forward(self, batch: dict) -> dict:
        z_audio, probs = self.audio(batch) if self.audio is not None else (None, None)
        z_visual, views = None, 0
        if self.visual is not None:
            views = num_views(batch)
            if views:  # evaluation views: fold them into the batch, the audio is shared by all
                batch = {k: (v.flatten(0, 1) if k in ("rgb", "flow") else v) for k, v in batch.items()}
                z_audio = z_audio.repeat_interleave(views, 0) if z_audio is not None else None
            z_visual = self.visual(batch)
        if self.fused:
            out = self.head(z_audio, z_visual)
        else:
            out = self.head(z_audio if z_audio is not None else z_visual)
        if views:
            out = average_views(out, views)
        if probs is not None:
            out["audio_probs"] = probs
        return out


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The video streams' blocks, in order: the repeated regions a regional torch.compile compiles
    one by one (blocks of one class and width share one compiled graph)."""
    return [blk for stream in (model.visual.streams().values() if getattr(model, "visual", None) else [])
            for blk in stream.blocks]


def num_views(batch: dict) -> int:
    """V of eval batches (rgb/flow of shape (B, V, C, T, H, W)); 0 for train batches."""
    for key in ("rgb", "flow"):
        if key in batch and batch[key].dim() == 6:
            return int(batch[key].shape[1])
    return 0


def average_views(out: dict, views: int) -> dict:
    """Per-video output from per-view outputs: softmax scores averaged over the views (paper 4.1).

    `logits` becomes log(mean softmax), so softmax(logits) is the averaged score and its
    argmax / top-k are the view-averaged predictions; rev, rev_logit, delta are view means;
    `view_logits` (B, V, C) keeps the per-view logits.
    """
    view_logits = out["logits"].unflatten(0, (-1, views))
    avg = {"logits": view_logits.float().softmax(-1).mean(1).log(), "view_logits": view_logits,
           "aux_loss": None}
    for key in ("rev", "rev_logit", "delta"):
        avg[key] = out[key].unflatten(0, (-1, views)).mean(1) if out.get(key) is not None else None
    return avg


def _check_sizes(cfg, tagger) -> None:
    m = cfg.model
    unset = []
    if m.num_classes < 1:
        unset.append("model.num_classes")
    if "A" in cfg.modality_set() and tagger is None and m.audio_embed_dim < 1:
        unset.append("model.audio_embed_dim")
    if unset:
        raise ValueError(f"{', '.join(unset)} is 0 ('set from the dataset'); fill it from the dataset's "
                         "meta.json / tagger cache before create_model, or pass --set "
                         + " ".join(f"{k}=N" for k in unset))


def create_model(cfg, tagger=None) -> IMDModel:
    """Build the model for `cfg` (an imd_hpc.config.Config).

    With model.audio_input=raw the frozen tagger loads from model.tagger_path (or pass a
    loaded AudioTagger). With model.vit_checkpoint set, both visual streams inflate from it.
    """
    m = cfg.model
    if "A" in cfg.modality_set() and m.audio_input == "raw" and tagger is None:
        if not m.tagger_path:
            raise ValueError("model.audio_input=raw needs model.tagger_path (an AST save_pretrained dir)")
        from imd_hpc.audio.tagger import AudioTagger

        tagger = AudioTagger.from_pretrained(m.tagger_path)
    _check_sizes(cfg, tagger)
    model = IMDModel(cfg, tagger if "A" in cfg.modality_set() else None)
    if m.vit_checkpoint and model.visual is not None:
        inflate_visual_encoder(model.visual, m.vit_checkpoint)
    return model
