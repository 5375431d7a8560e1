"""Parameters and GFLOPs per component, per view and per 3x4 views: `python -m imd_hpc flops`.

    python -m imd_hpc flops --preset imd_b [--set model.modalities=A-RGB] [--json-only]

Counted with fvcore (one multiply-add = one flop) on one view (batch 1: T frames of
img_size^2 per visual stream, one 1024-frame fbank for the tagger), per component:

    rgb stream, flow stream   the factorized ViTs (video.py)
    audio tagger              frozen AST; for imd_b / imd_l AudioSet's AST (transformers'
                              ASTConfig defaults, 527 labels, 1024 frames) built randomly in
                              memory; for other presets the config of model.tagger_path if set
    heads                     audio bottleneck, visual fusion layers, fusion head

Two conventions, both printed and labelled:

    fvcore        fvcore as is: `scaled_dot_product_attention` is not counted (fvcore has no
                  handle for it), so the attention matmuls QK^T and AV are missing
    +attention    the same plus QK^T and AV of every SDPA call, B*H*Lq*Lk*(Dk + Dv),
                  read from the traced shapes

Views: evaluation runs test_crops x test_clips views, each through every component (the
paper's GFLOPs column is per-view GFLOPs x 12). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
import warnings

import torch
from torch import nn

from imd_hpc.config import ConfigError, build_config

AUDIOSET_LABELS = 527
PAPER_GFLOPS_PER_VIEW = {"imd_b": 4464 / 12, "imd_l": 8232 / 12}  # Table 6 over 3x4 views


def _sdpa_flops(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    rows = math.prod(q[:-1])  # B * H * Lq
    return int(rows * k[-2] * q[-1] + rows * k[-2] * v[-1])


def count_flops(module: nn.Module, inputs: tuple) -> dict[str, float]:
    """{'fvcore': GFLOPs as fvcore counts, 'attention': GFLOPs of the SDPA matmuls} for one call."""
    with warnings.catch_warnings():  # fvcore's import touches the deprecated torch.jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fa = (FlopCountAnalysis(module, inputs)
              .set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
              .unsupported_ops_warnings(False).uncalled_modules_warnings(False))
        by_op = fa.by_operator()
    attention = by_op.get("scaled_dot_product_attention", 0)
    total = sum(by_op.values())
    return {"fvcore": (total - attention) / 1e9, "attention": attention / 1e9}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _TaggerLogits(nn.Module):
    """AST as tensors in, tensors out (fvcore traces tensor outputs)."""

    def __init__(self, ast):
        super().__init__()
        self.ast = ast

    def forward(self, fbank):
        out = self.ast.audio_spectrogram_transformer(fbank)
        return out.pooler_output, self.ast.classifier(out.pooler_output)


class _Heads(nn.Module):
    """Everything after the backbones: audio bottleneck, visual fusion layers, fusion head."""

    def __init__(self, model):
        super().__init__()
        self.audio = model.audio.bottleneck if model.audio is not None else None
        self.fuse = model.visual.fuse if model.visual is not None else None
        self.head = model.head
        self.fused = model.fused

    def forward(self, audio_embed, visual_cls):
        za = self.audio(audio_embed) if self.audio is not None else None
        zv = self.fuse(visual_cls) if self.fuse is not None else None
        out = self.head(za, zv) if self.fused else self.head(za if za is not None else zv)
        return out["logits"]


def tagger_config(cfg, preset: str):
    """The AST config whose cost is reported, and where it came from (or None, reason)."""
    from transformers import ASTConfig

    if cfg.model.tagger_path:
        path = os.path.join(cfg.model.tagger_path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.tagger_path: {path} not found")
        return ASTConfig.from_pretrained(cfg.model.tagger_path), cfg.model.tagger_path
    if preset in PAPER_GFLOPS_PER_VIEW:
        return ASTConfig(num_labels=AUDIOSET_LABELS), "AudioSet AST (ASTConfig defaults, 527 labels)"
    return None, "not counted: model.tagger_path unset"


def component_report(cfg, preset: str | None = None, include_tagger: bool = True) -> dict:
    """Params and per-view GFLOPs of each component of cfg's model, built one at a time."""
    from imd_hpc.models import IMDModel
    from imd_hpc.models.attention import Ops
    from imd_hpc.models.video import VideoStream

    m = cfg.model
    mods = cfg.modality_set()
    comps: dict[str, dict] = {}
    T, S = m.num_frames, m.img_size
    for name, chans, key in (("rgb stream", 3, "RGB"), ("flow stream", 2, "F")):
        if key not in mods:
            continue
        stream = VideoStream(chans, S, m.patch_size, T, m.embed_dim, m.depth, m.num_heads, m.mlp_ratio,
                             m.divided_blocks, Ops("torch"))
        comps[name] = {"params": _params(stream), "trainable": True,
                       **count_flops(stream, (torch.zeros(1, chans, T, S, S),))}
        del stream
    tagger_note = "not used: no audio"
    embed_dim = m.audio_embed_dim
    if "A" in mods:
        tcfg, tagger_note = tagger_config(cfg, preset or cfg.preset)
        if tcfg is not None:
            embed_dim = tcfg.hidden_size
        if tcfg is not None and include_tagger:
            from transformers import ASTForAudioClassification

            ast = ASTForAudioClassification(tcfg)
            ast.config._attn_implementation = "sdpa"
            fbank = torch.zeros(1, tcfg.max_length, tcfg.num_mel_bins)
            comps["audio tagger"] = {"params": _params(ast), "trainable": False,
                                     **count_flops(_TaggerLogits(ast), (fbank,))}
            del ast
    # Heads: a model with one-block, one-patch streams, of which only the heads are counted.
    head_cfg = copy.deepcopy(cfg)
    head_cfg.model = dataclasses.replace(m, depth=1, divided_blocks=0, img_size=m.patch_size,
                                         audio_input="cached", vit_checkpoint="",
                                         audio_embed_dim=embed_dim or 768, num_classes=m.num_classes or 10)
    model = IMDModel(head_cfg)
    heads = _Heads(model)
    n_streams = int("RGB" in mods) + int("F" in mods)
    a = torch.zeros(1, head_cfg.model.audio_embed_dim)
    v = torch.zeros(1, m.embed_dim * max(n_streams, 1))
    comps["heads"] = {"params": _params(heads), "trainable": True, **count_flops(heads, (a, v))}
    report = {"components": comps, "tagger": tagger_note}
    unset = [f"model.num_classes (counted as {head_cfg.model.num_classes})"] if not m.num_classes else []
    if "A" in mods and not embed_dim:
        unset.append(f"model.audio_embed_dim (counted as {head_cfg.model.audio_embed_dim})")
    if unset:
        report["note"] = "set from the dataset, unset here: " + ", ".join(unset)
    return report


def summarize(report: dict, views: int) -> dict:
    comps = report["components"]
    per_view = sum(c["fvcore"] for c in comps.values())
    attention = sum(c["attention"] for c in comps.values())
    return {
        "params": sum(c["params"] for c in comps.values()),
        "trainable_params": sum(c["params"] for c in comps.values() if c["trainable"]),
        "gflops_per_view": per_view,
        "gflops_per_view_with_attention": per_view + attention,
        "views": views,
        "gflops_all_views": per_view * views,
        "gflops_all_views_with_attention": (per_view + attention) * views,
    }


def count_model(cfg) -> dict:
    """Params and per-view GFLOPs (fvcore convention, plus the attention-counted figure) of the
    model cfg describes, tagger included when model.tagger_path is set and audio is used."""
    report = component_report(cfg)
    return {**summarize(report, cfg.data.test_crops * cfg.data.test_clips),
            "components": report["components"], "tagger": report["tagger"]}


def format_table(preset: str, report: dict, summary: dict) -> str:
    lines = [f"FLOP report, preset {preset}: GFLOPs per view (fvcore: one multiply-add = one flop)",
             "  fvcore      = fvcore as is (scaled_dot_product_attention not counted)",
             "  +attention  = fvcore plus the attention matmuls QK^T and AV", "",
             f"{'component':<14}{'params (M)':>12}{'fvcore':>12}{'+attention':>12}  note"]
    for name, c in report["components"].items():
        note = "frozen" if not c["trainable"] else ""
        lines.append(f"{name:<14}{c['params'] / 1e6:>12.2f}{c['fvcore']:>12.2f}"
                     f"{c['fvcore'] + c['attention']:>12.2f}  {note}")
    s = summary
    lines.append(f"{'per view':<14}{s['params'] / 1e6:>12.2f}{s['gflops_per_view']:>12.2f}"
                 f"{s['gflops_per_view_with_attention']:>12.2f}")
    views = f"x {s['views']} views"
    lines.append(f"{views:<14}{'':>12}"
                 f"{s['gflops_all_views']:>12.1f}{s['gflops_all_views_with_attention']:>12.1f}")
    lines.append(f"audio tagger: {report['tagger']}")
    if "note" in report:
        lines.append(report["note"])
    paper = PAPER_GFLOPS_PER_VIEW.get(preset)
    if paper is not None:
        diff = 100 * (s["gflops_per_view"] - paper) / paper
        diff_att = 100 * (s["gflops_per_view_with_attention"] - paper) / paper
        lines.append(f"paper (Table 6): {paper:.0f} GFLOPs per view ({paper * 12:,.0f} over 3x4 views); "
                     f"fvcore {diff:+.1f}%, +attention {diff_att:+.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imd_hpc flops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="imd_b", help="tiny | imd_b | imd_l")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (e.g. model.modalities=A-RGB)")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    args = ap.parse_args(argv)
    try:
        cfg = build_config(args.preset, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with torch.no_grad():  # scoped: main() also runs in-process (tests, notebooks)
        report = component_report(cfg, args.preset)
    views = cfg.data.test_crops * cfg.data.test_clips
    summary = summarize(report, views)
    if not args.json_only:
        print(format_table(args.preset, report, summary))
        print(f"(counted in {time.perf_counter() - start:.1f} s)")
    paper = PAPER_GFLOPS_PER_VIEW.get(args.preset)
    record = {"preset": args.preset, "modalities": cfg.model.modalities, "fusion": cfg.model.fusion,
              **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()},
              "paper_gflops_per_view": paper,
              "components": {k: {"params": c["params"], "gflops_fvcore": round(c["fvcore"], 6),
                                 "gflops_attention": round(c["attention"], 6)}
                             for k, c in report["components"].items()},
              "tagger": report["tagger"], "note": report.get("note")}
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
