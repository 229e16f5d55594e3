"""One typed training configuration: YAML recipe -> dataclass tree, dotted overrides, validated up front.

    config = load_config("gem_train/configs/sim_pick_tiny.yaml", ["train.lr=3e-4", "data.chunk_len=16"])

Every field is type-checked and range-checked in `__post_init__`; errors are ValueErrors naming the dotted
key (`train.lr must be > 0, got 0.0`), raised before any model is built. Unknown keys are errors too.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gem_ros.core.policy.config import (ACTION_SPACES, CAMERA_DROPOUTS, IMAGE_RESIZES, PROMPT_ORDERS, CameraSpec,
                                        IOSchema, RDTConfig)

DEPTH_INITS = ("pretrained", "random")     # gem_ros.core.policy.depth_expert.DEPTH_INITS (no diffusers import here)
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "bf16", "fp16")
TINY_BACKBONE = "tiny"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class DataConfig:
    """Episodes and what the policy sees of them. The I/O fields become the checkpoint's `IOSchema`."""

    dataset_dirs: list[str] = field(default_factory=list)   # folders of episode files (searched recursively)
    val_fraction: float = 0.05                               # share of EPISODES held out for evaluation
    cameras: list[str] = field(default_factory=lambda: ["scene", "wrist"])   # prompt order
    image_size: list[int] = field(default_factory=lambda: [224, 224])       # [H, W] px (one int = square)
    # fixed: frames resized to image_size. native: image_size is the cameras' own size, frames are never resized
    # (another size is refused) and the VLM processor's min/max pixels set the patch grid (the reference).
    image_resize: str = "fixed"
    chunk_len: int = 32                                      # actions per chunk
    state_dim: int = 14
    action_dim: int = 14
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    action_space: str = "absolute_joint"
    gripper_channels: list[int] = field(default_factory=list)
    control_rate_hz: float = 10.0                            # rate of consecutive actions in a chunk
    normalize_state: bool = False                            # GEM feeds raw states (gem_reference §8)
    image_drop_prob: float = 0.1                             # per camera image (gem_reference §9)
    camera_dropout: str = "blank"                            # blank: a black image; remove: out of the prompt (ref.)
    image_corruptions: bool = False                          # the reference's noise / blur / JPEG (gem_reference §9)
    instruction_drop_prob: float = 0.1
    color_jitter: bool = True                                # half the images get ColorJitter (gem_reference §9)
    state_noise_std: float = 0.0                             # Gaussian noise on the input state (rad, m)
    state_input: bool = True                                 # false: vision-only policy (state token zeroed)
    random_shift_px: int = 0                                 # random image translation, px (DrQ-style)
    cache_frames: bool = False                               # decoded frames kept in RAM (num_workers 0)

    def __post_init__(self) -> None:
        if isinstance(self.image_size, int) and not isinstance(self.image_size, bool):
            self.image_size = [self.image_size, self.image_size]
        _check_types(self, "data")
        _require(len(self.dataset_dirs) > 0, "data.dataset_dirs must list at least one episode folder")
        missing = [d for d in self.dataset_dirs if not Path(d).is_dir()]
        _require(not missing, f"data.dataset_dirs: {missing} do not exist or are not folders")
        _require(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        _require(len(self.image_size) == 2 and all(s > 0 for s in self.image_size),
                 f"data.image_size must be a positive int or [H, W], got {self.image_size}")
        _require(self.action_space in ACTION_SPACES,
                 f"data.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        for name in ("image_drop_prob", "instruction_drop_prob"):
            value = getattr(self, name)
            _require(0.0 <= value < 1.0, f"data.{name} must be a probability in [0, 1), got {value}")
        _require(self.image_resize in IMAGE_RESIZES,
                 f"data.image_resize must be one of {IMAGE_RESIZES}, got {self.image_resize!r}")
        _require(self.camera_dropout in CAMERA_DROPOUTS,
                 f"data.camera_dropout must be one of {CAMERA_DROPOUTS}, got {self.camera_dropout!r}")
        _require(self.random_shift_px >= 0, f"data.random_shift_px must be >= 0, got {self.random_shift_px}")
        _require(0.0 <= self.state_noise_std < float("inf"),
                 f"data.state_noise_std must be finite and >= 0, got {self.state_noise_std}")
        try:
            self.io_schema()
        except ValueError as error:
            raise ValueError(f"data: {error}") from error

    def io_schema(self) -> IOSchema:
        height, width = self.image_size
        return IOSchema(cameras=[CameraSpec(name, height, width) for name in self.cameras],
                        state_dim=self.state_dim, action_dim=self.action_dim, state_names=list(self.state_names),
                        action_names=list(self.action_names), action_space=self.action_space,
                        gripper_channels=list(self.gripper_channels), control_rate_hz=float(self.control_rate_hz),
                        chunk_len=self.chunk_len, normalize_state=self.normalize_state,
                        state_input=self.state_input)


@dataclass
class ModelConfig:
    """`backbone: tiny` writes a small random Qwen3-VL into the run folder; otherwise a GEM-2B / Qwen3-VL folder."""

    backbone: str = TINY_BACKBONE
    tiny_hidden: int = 64                   # tiny backbone width (text and vision)
    tiny_text_layers: int = 3
    tiny_patch_size: int = 16               # tiny vision patch, px (Qwen3-VL uses 16; 8 sees small objects)
    rdt: RDTConfig = field(default_factory=RDTConfig)   # rdt.cond_hidden_size is always taken from the backbone
    selected_layers: list[int] = field(default_factory=lambda: list(range(14)))
    num_inference_steps: int = 5
    noise_scale: float = 1.0                # serving: std of the sampler's starting noise (GemVLAConfig.noise_scale)
    depth_expert: bool = False              # auxiliary depth loss (needs depth targets in the episodes)
    depth_image_size: int = 256             # px, side of the depth targets (multiple of the VAE's 32)
    # Where the depth expert starts. "pretrained": SANA + DC-AE (+ connector) from the GEM-2B backbone folder, or,
    # with depth_sana_dir, SANA 1.5 + DC-AE + scheduler shift from that diffusers folder (connector random, as the
    # reference); refused when the weights are not there. "random": on purpose. The tiny backbone holds no depth
    # weights: its depth expert is random unless depth_sana_dir names a folder.
    depth_init: str = "pretrained"
    depth_sana_dir: str | None = None       # diffusers SANA folder: transformer/, vae/, scheduler/ (safetensors)
    max_pixels_per_image: int | None = None  # image processor bounds (pixels per image); null: the backbone's own
    min_pixels_per_image: int | None = None
    init_from: str | None = None            # a checkpoint to fine-tune: its normalizer, sizes and backbone win
    # Instruction before or after the images in the prompt (GemVLAConfig.prompt_order). images_first is GEM-2B's;
    # a backbone from gem_pretrain_sim must be trained in the order it was grounded with (checked at build).
    prompt_order: str = "images_first"

    def __post_init__(self) -> None:
        _check_types(self, "model")
        _require(self.backbone == TINY_BACKBONE or Path(self.backbone).is_dir(),
                 f"model.backbone must be '{TINY_BACKBONE}' or an existing backbone folder, got {self.backbone!r}")
        _require(self.tiny_hidden > 0 and self.tiny_hidden % 16 == 0,
                 f"model.tiny_hidden must be a positive multiple of 16, got {self.tiny_hidden}")
        _require(self.tiny_patch_size in (4, 8, 14, 16),
                 f"model.tiny_patch_size must be one of 4, 8, 14, 16, got {self.tiny_patch_size}")
        _require(self.tiny_text_layers > 0, f"model.tiny_text_layers must be > 0, got {self.tiny_text_layers}")
        _require(len(self.selected_layers) in (1, self.rdt.depth),
                 f"model.selected_layers must have 1 or model.rdt.depth={self.rdt.depth} entries, "
                 f"got {len(self.selected_layers)}")
        _require(all(i >= 0 for i in self.selected_layers), "model.selected_layers must be >= 0")
        if self.backbone == TINY_BACKBONE:
            _require(max(self.selected_layers) <= self.tiny_text_layers,
                     f"model.selected_layers {self.selected_layers} exceed the tiny backbone's "
                     f"{self.tiny_text_layers + 1} hidden states")
        _require(self.num_inference_steps > 0, "model.num_inference_steps must be > 0")
        _require(self.prompt_order in PROMPT_ORDERS,
                 f"model.prompt_order must be one of {PROMPT_ORDERS}, got {self.prompt_order!r}")
        _require(0 <= self.noise_scale <= 1, f"model.noise_scale must be in [0, 1], got {self.noise_scale}")
        _require(self.depth_init in DEPTH_INITS,
                 f"model.depth_init must be one of {DEPTH_INITS}, got {self.depth_init!r}")
        _require(self.depth_sana_dir is None or Path(self.depth_sana_dir).is_dir(),
                 f"model.depth_sana_dir {self.depth_sana_dir!r} is not a folder")
        _require(self.depth_sana_dir is None or self.depth_expert,
                 "model.depth_sana_dir is set but model.depth_expert is false")
        _require(self.depth_sana_dir is None or self.depth_init == "pretrained",
                 "model.depth_sana_dir names pretrained depth weights but model.depth_init is \"random\"")
        _require(self.depth_image_size > 0 and self.depth_image_size % 32 == 0,
                 f"model.depth_image_size must be a positive multiple of 32, got {self.depth_image_size}")
        for name in ("min_pixels_per_image", "max_pixels_per_image"):
            _require(getattr(self, name) is None or getattr(self, name) > 0, f"model.{name} must be > 0 or null")
        _require(None in (self.min_pixels_per_image, self.max_pixels_per_image)
                 or self.min_pixels_per_image <= self.max_pixels_per_image,
                 f"model.min_pixels_per_image {self.min_pixels_per_image} is above max_pixels_per_image "
                 f"{self.max_pixels_per_image}")
        _require(self.init_from is None or (Path(self.init_from) / "config.json").is_file(),
                 f"model.init_from {self.init_from!r} is not a checkpoint folder (no config.json)")


@dataclass
class OptimConfig:
    """The `train:` section. Defaults are the GEM-VLA reference (gem_reference §10)."""

    train_backbone: bool = True             # the language model of the VLM
    train_vision: bool = True               # the VLM's vision tower
    train_action_expert: bool = True
    train_depth_expert: bool = True         # SANA + connector; the VAE is always frozen
    action_loss_weight: float = 1.0
    depth_loss_weight: float = 0.1
    # Weight of gem_train.grounding's auxiliary loss (the RDT's registers regress the named object's xy); needs
    # episodes that record target_position (gem_collect_sim). 0 = off; not part of the reference recipe; the
    # one-step distillation stage (distill.teacher) does not use it.
    grounding_loss_weight: float = 0.0
    lr: float = 1e-5
    # The VLM (language model + vision tower) learns at lr x vlm_lr_scale: below 1 a pretrained backbone keeps what
    # it knows (a grounded tiny backbone lost its grounding at the action expert's 1e-3) while still adapting.
    vlm_lr_scale: float = 1.0
    lr_schedule: str = "constant"           # constant | cosine (to min_lr at max_steps)
    warmup_steps: int = 0                   # linear warm-up from 0
    min_lr: float = 0.0
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0                  # max global grad norm; 0 disables clipping
    batch_size: int = 16                    # per process and micro-step
    grad_accum_steps: int = 1
    max_steps: int = 1_000_000              # optimizer steps
    mixed_precision: str = "bf16"           # no | bf16 | fp16
    checkpoint_every: int = 5000
    keep_last: int = 40                     # training checkpoints kept (oldest deleted first)
    eval_every: int = 2500
    eval_batches: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 4
    ema_decay: float = 0.0                  # EMA of the weights, served and evaluated (gem_train/ema.py); 0 = off
    ema_power: float = 0.75                 # EMA warm-up: decay = 1 - (1 + step)^-power, capped at ema_decay

    def __post_init__(self) -> None:
        if self.mixed_precision is False:  # YAML 1.1 reads a bare `no` as false
            self.mixed_precision = "no"
        _check_types(self, "train")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0 < self.vlm_lr_scale <= 1, f"train.vlm_lr_scale must be in (0, 1], got {self.vlm_lr_scale}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _require(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, train.lr], got {self.min_lr}")
        _require(self.action_loss_weight > 0, f"train.action_loss_weight must be > 0, got {self.action_loss_weight}")
        _require(self.depth_loss_weight >= 0, f"train.depth_loss_weight must be >= 0, got {self.depth_loss_weight}")
        _require(self.grounding_loss_weight >= 0,
                 f"train.grounding_loss_weight must be >= 0, got {self.grounding_loss_weight}")
        _require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"train.betas must be two numbers in [0, 1), got {self.betas}")
        _require(self.eps > 0, f"train.eps must be > 0, got {self.eps}")
        _require(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        for name in ("batch_size", "grad_accum_steps", "max_steps", "checkpoint_every", "keep_last",
                     "eval_every", "eval_batches", "log_every"):
            _require(getattr(self, name) > 0, f"train.{name} must be > 0, got {getattr(self, name)}")
        _require(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(self.mixed_precision in MIXED_PRECISION,
                 f"train.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        _require(self.num_workers >= 0, f"train.num_workers must be >= 0, got {self.num_workers}")
        _require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _require(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        _require(self.ema_power > 0, f"train.ema_power must be > 0, got {self.ema_power}")


@dataclass
class DistillConfig:
    """Optional one-step distillation stage (gem_reference §5); on when `teacher` is set."""

    teacher: str | None = None              # a trained checkpoint; its action expert is teacher and generator init
    steps: int = 2000                       # optimizer steps of this stage (replaces train.max_steps)
    teacher_steps: int | None = None        # Euler steps of the teacher; default: its num_inference_steps

    def __post_init__(self) -> None:
        _check_types(self, "distill")
        _require(self.teacher is None or (Path(self.teacher) / "config.json").is_file(),
                 f"distill.teacher {self.teacher!r} is not a checkpoint folder (no config.json)")
        _require(self.steps > 0, f"distill.steps must be > 0, got {self.steps}")
        _require(self.teacher_steps is None or self.teacher_steps > 0, "distill.teacher_steps must be > 0 or null")


@dataclass
class TrainConfig:
    run_dir: str = "runs/gem"               # checkpoints/, tensorboard/, train_config.yaml
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        _check_types(self, "")
        _require(self.run_dir.strip() != "", "run_dir must be a non-empty path")
        if self.model.depth_expert and not self.distilling:
            _require(self.train.depth_loss_weight > 0 or not self.train.train_depth_expert,
                     "train.depth_loss_weight is 0 but the depth expert is trained; set train.train_depth_expert=false")
        trains_something = (self.train.train_backbone or self.train.train_vision or self.train.train_action_expert
                            or (self.model.depth_expert and self.train.train_depth_expert))
        _require(trains_something or self.distilling, "train: every train_* flag is false; nothing would be trained")

    @property
    def distilling(self) -> bool:
        return self.distill.teacher is not None

    @property
    def total_steps(self) -> int:
        return self.distill.steps if self.distilling else self.train.max_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML recipe (or start from defaults with None) and apply `a.b.c=value` overrides (values parsed
    with yaml.safe_load, so `train.betas=[0.9,0.95]`, `model.init_from=null`, `train.lr=1e-4` all work)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        _require(path.is_file(), f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        _require(isinstance(raw, dict), f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        key, sep, text = override.partition("=")
        _require(sep == "=" and key.strip() != "", f"override {override!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(text))
    return from_dict(TrainConfig, raw)


def save_config(config: TrainConfig, path: Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def from_dict(cls, data: Any, prefix: str = ""):
    """Build dataclass `cls` from nested dicts; unknown keys raise a ValueError naming the dotted key."""
    _require(isinstance(data, dict), f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    _require(not unknown, f"unknown config key(s): {', '.join(prefix + str(k) for k in unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        kwargs[key] = from_dict(hint, value, f"{prefix}{key}.") if dataclasses.is_dataclass(hint) else value
    if cls is RDTConfig:   # the policy's own config names its fields `rdt.x`; say where they live here
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{prefix.rstrip('.')}: {error}") from error
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        _require(isinstance(child, dict), f"override {dotted}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _check_types(obj, section: str) -> None:
    """Type-check every field against its annotation; ints become floats and '1e-5' strings (YAML 1.1 reads
    exponents without a dot as strings) become floats where a float is declared."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        name = f"{section}.{f.name}" if section else f.name
        setattr(obj, f.name, _coerce(getattr(obj, f.name), hints[f.name], name))


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is list:
        _require(isinstance(value, (list, tuple)), f"{name} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        _require(isinstance(value, hint), f"{name} must be a {hint.__name__} section, got {value!r}")
        return value
    if hint is bool:
        _require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
    elif hint is int:
        _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                 f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif hint is str:
        _require(isinstance(value, str), f"{name} must be a string, got {value!r}")
    return value
