"""Typed configuration of a GEM-VLA policy: I/O schema, RDT action expert, whole policy.

Everything here is JSON round-trippable; `config.json` of a checkpoint is `GemVLAConfig.to_dict()`.
Validation happens once, in `__post_init__`, and names the offending field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

ACTION_SPACES = ("absolute_joint", "delta_joint", "ee_delta")
SAMPLERS = ("euler", "one_step")
PROMPT_ORDERS = ("images_first", "instruction_first")
IMAGE_RESIZES = ("fixed", "native")
CAMERA_DROPOUTS = ("blank", "remove")


# Upper bounds of the sizes a checkpoint may declare: far above any real GEM-VLA (224 px cameras, 14-dim arms,
# 32-step chunks, 2048-wide VLM), far below what would exhaust memory or stall a prediction (a 1e9 px camera, a
# billion sampler steps). Widths and depths of the weights are also checked against model.safetensors.
MAX_IMAGE_SIDE = 4096          # px per camera side
MAX_PROCESSOR_PIXELS = 1 << 30  # image processor pixel bounds (Qwen3-VL ships longest_edge 16,777,216)
MAX_ASPECT_RATIO = 200         # the Qwen-VL image processor refuses longer images
MAX_CAMERAS = 16
MAX_CHANNELS = 1024            # state_dim, action_dim
MAX_CHUNK_LEN = 1024           # actions per chunk
MAX_CONTROL_RATE_HZ = 1000.0
MAX_INFERENCE_STEPS = 1000
MAX_HIDDEN_STATES = 1024       # selected_layers index bound before the backbone's own count is known
MAX_WIDTH = 65536              # any model width (hidden, ffn multiple, frequency dim)
MAX_BLOCKS = 256               # rdt.depth
MAX_HEADS = 1024
MAX_REGISTER_TOKENS = 1024


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: Any, maximum: int | None = None) -> None:
    _require(_is_int(value) and value > 0 and (maximum is None or value <= maximum),
             f"{name} must be a positive integer{'' if maximum is None else f' <= {maximum}'}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """A finite int/float in [low, high] ((low, high] with low_open): NaN, Inf, bools and strings are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and value <= high
    _require(ok, f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


def _names(name: str, value: Any) -> list[str]:
    _require(isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value),
             f"{name} must be a list of non-empty strings, got {value!r}")
    duplicates = sorted({v for v in value if list(value).count(v) > 1})
    _require(not duplicates, f"{name} has duplicate names {duplicates}")
    return list(value)


def _nested(cls, value: Any, name: str):
    """`cls(**value)` for a JSON object, with unknown and missing fields named (not a bare TypeError)."""
    if isinstance(value, cls):
        return value
    _require(isinstance(value, dict), f"{name} must be an object (a JSON dict), got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    _require(not unknown, f"{name} has unknown fields {unknown}")
    missing = [k for k, f in fields.items() if k not in value and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    _require(not missing, f"{name} is missing the fields {missing}")
    return cls(**value)


@dataclass
class CameraSpec:
    """One camera the policy sees, in the fixed order of the prompt. Images are H x W x 3 uint8 RGB."""

    name: str
    height: int = 224
    width: int = 224

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "", "camera name must be a non-empty string")
        _positive_int(f"camera '{self.name}' height", self.height, MAX_IMAGE_SIDE)
        _positive_int(f"camera '{self.name}' width", self.width, MAX_IMAGE_SIDE)
        _require(max(self.height, self.width) <= MAX_ASPECT_RATIO * min(self.height, self.width),
                 f"camera '{self.name}' {self.height} x {self.width} px: aspect ratio above {MAX_ASPECT_RATIO}")


@dataclass
class IOSchema:
    """What goes in and comes out of the policy; stored in the checkpoint and checked against the robot."""

    cameras: list[CameraSpec] = field(default_factory=lambda: [CameraSpec("left_stereo"), CameraSpec("right_stereo")])
    state_dim: int = 14
    action_dim: int = 14
    state_names: list[str] = field(default_factory=list)   # joint / channel names of the state vector (may be empty)
    action_names: list[str] = field(default_factory=list)  # names of the action channels (may be empty)
    action_space: str = "absolute_joint"                    # absolute_joint | delta_joint | ee_delta
    gripper_channels: list[int] = field(default_factory=list)  # action indices that command a gripper
    control_rate_hz: float = 10.0                            # rate of consecutive actions in a chunk
    chunk_len: int = 32
    normalize_state: bool = False                            # GEM feeds raw states; a checkpoint may opt in
    # False: the policy never sees the state (its state token is zero) and must read the arm from the cameras.
    # The state is still observed: delta actions are applied to it and the safety filter starts from it.
    state_input: bool = True

    def __post_init__(self) -> None:
        _require(isinstance(self.cameras, (list, tuple)) and 0 < len(self.cameras) <= MAX_CAMERAS,
                 f"io.cameras must list 1 to {MAX_CAMERAS} cameras, got {self.cameras!r}")
        self.cameras = [_nested(CameraSpec, c, f"io.cameras[{i}]") for i, c in enumerate(self.cameras)]
        names = [c.name for c in self.cameras]
        _require(len(set(names)) == len(names), f"io.cameras has duplicate names: {names}")
        _positive_int("io.state_dim", self.state_dim, MAX_CHANNELS)
        _positive_int("io.action_dim", self.action_dim, MAX_CHANNELS)
        _positive_int("io.chunk_len", self.chunk_len, MAX_CHUNK_LEN)
        _require(self.action_space in ACTION_SPACES,
                 f"io.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        _number("io.control_rate_hz", self.control_rate_hz, 0.0, MAX_CONTROL_RATE_HZ, low_open=True)
        self.state_names = _names("io.state_names", self.state_names)
        self.action_names = _names("io.action_names", self.action_names)
        _require(not self.state_names or len(self.state_names) == self.state_dim,
                 f"io.state_names has {len(self.state_names)} names but state_dim is {self.state_dim}")
        _require(not self.action_names or len(self.action_names) == self.action_dim,
                 f"io.action_names has {len(self.action_names)} names but action_dim is {self.action_dim}")
        _require(isinstance(self.gripper_channels, (list, tuple)) and all(map(_is_int, self.gripper_channels)),
                 f"io.gripper_channels must be a list of action indices, got {self.gripper_channels!r}")
        self.gripper_channels = list(self.gripper_channels)
        bad = [i for i in self.gripper_channels if not 0 <= i < self.action_dim]
        _require(not bad, f"io.gripper_channels {bad} are outside 0..{self.action_dim - 1}")
        for flag in ("normalize_state", "state_input"):
            _require(isinstance(getattr(self, flag), bool), f"io.{flag} must be true or false, "
                                                            f"got {getattr(self, flag)!r}")

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def mismatches(self, other: IOSchema) -> list[str]:
        """Human-readable differences that would make a checkpoint unusable on a robot configured as `other`."""
        problems = []
        for key in ("state_dim", "action_dim", "action_space", "chunk_len"):
            if getattr(self, key) != getattr(other, key):
                problems.append(f"{key}: checkpoint has {getattr(self, key)!r}, expected {getattr(other, key)!r}")
        if self.camera_names != other.camera_names:
            problems.append(f"cameras: checkpoint has {self.camera_names}, expected {other.camera_names}")
        for key in ("state_names", "action_names"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine and theirs and mine != theirs:
                problems.append(f"{key}: checkpoint has {mine}, expected {theirs}")
        return problems


@dataclass
class RDTConfig:
    """The RDT flow-matching action expert (gem_reference §3). Defaults are the GEM-VLA sizes."""

    hidden_size: int = 1024
    depth: int = 14
    num_heads: int = 8
    num_kv_heads: int = 4
    norm_eps: float = 1e-5
    num_register_tokens: int = 4
    ffn_multiple_of: int = 256
    timestep_freq_dim: int = 256
    cond_hidden_size: int = 2048          # width of the VLM hidden states the lang adaptor reads

    def __post_init__(self) -> None:
        for name, maximum in (("hidden_size", MAX_WIDTH), ("depth", MAX_BLOCKS), ("num_heads", MAX_HEADS),
                              ("num_kv_heads", MAX_HEADS), ("ffn_multiple_of", MAX_WIDTH),
                              ("timestep_freq_dim", MAX_WIDTH), ("cond_hidden_size", MAX_WIDTH)):
            _positive_int(f"rdt.{name}", getattr(self, name), maximum)
        _require(_is_int(self.num_register_tokens) and 0 <= self.num_register_tokens <= MAX_REGISTER_TOKENS,
                 f"rdt.num_register_tokens must be an integer in [0, {MAX_REGISTER_TOKENS}], "
                 f"got {self.num_register_tokens!r}")
        _require(self.hidden_size % self.num_heads == 0,
                 f"rdt.hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"rdt.num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0 and self.hidden_size % 2 == 0, "rdt head and hidden sizes must be even")
        _number("rdt.norm_eps", self.norm_eps, 0.0, 1.0, low_open=True)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        """SwiGLU width: 2/3 of 4x hidden, rounded up to a multiple (1024 -> 2816)."""
        width = int(2 * 4 * self.hidden_size / 3)
        return self.ffn_multiple_of * math.ceil(width / self.ffn_multiple_of)


@dataclass
class ImagePipelineConfig:
    """How camera frames became the VLM's pixels in training; config.json records it so serving repeats it.

    resize "fixed": frames are resized to each camera's height x width (a small square for tiny CPU models).
    "native": height x width is the camera's own size and frames are never resized to fit the model; the image
    processor's smart resize within [min_pixels, max_pixels] sets the patch grid, so the number of visual tokens
    follows the image size (the reference pipeline). Serving resizes only a camera that delivers another size.
    min_pixels / max_pixels: the processor's bounds (its size shortest_edge / longest_edge, in pixels) in training;
    null when not recorded (older checkpoints), where the processor saved in the backbone folder decides.
    camera_dropout ("blank" image or "remove" it from the prompt) and corruptions: training only, recorded to say
    what the policy saw; serving never drops nor corrupts.
    """

    resize: str = "fixed"
    min_pixels: int | None = None
    max_pixels: int | None = None
    camera_dropout: str = "blank"
    corruptions: bool = False

    def __post_init__(self) -> None:
        _require(self.resize in IMAGE_RESIZES,
                 f"image_pipeline.resize must be one of {IMAGE_RESIZES}, got {self.resize!r}")
        _require(self.camera_dropout in CAMERA_DROPOUTS,
                 f"image_pipeline.camera_dropout must be one of {CAMERA_DROPOUTS}, got {self.camera_dropout!r}")
        _require(isinstance(self.corruptions, bool),
                 f"image_pipeline.corruptions must be true or false, got {self.corruptions!r}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            _require(value is None or (_is_int(value) and 0 < value <= MAX_PROCESSOR_PIXELS),
                     f"image_pipeline.{name} must be null or a positive integer <= {MAX_PROCESSOR_PIXELS}, "
                     f"got {value!r}")
        _require(self.min_pixels is None or self.max_pixels is None or self.min_pixels <= self.max_pixels,
                 f"image_pipeline.min_pixels {self.min_pixels} is above max_pixels {self.max_pixels}")


# The embedded-sim fields a dataset (and so a trained checkpoint) records as its scene, e.g. one cube instead of
# three. Defined here, not in gem_ros.sim, so that training and serving never need pybullet to read them.
SIM_SCENE_FIELDS = ("object_colors", "coarse_robot_meshes")


@dataclass
class GemVLAConfig:
    """A whole GEM-VLA policy. `backbone_dir` is relative to the checkpoint folder."""

    io: IOSchema = field(default_factory=IOSchema)
    rdt: RDTConfig = field(default_factory=RDTConfig)
    selected_layers: list[int] = field(default_factory=lambda: list(range(14)))
    num_inference_steps: int = 5
    sampler: str = "euler"                # euler (N steps) | one_step (distilled generator, gem_reference §5)
    # Std of the sampler's starting noise (training always uses 1). Below 1 the sampler draws chunks nearer the
    # mode: less diverse, more precise. The tiny sim policy picks the cube in 65 % of episodes at 0.5 vs 35 % at 1.
    noise_scale: float = 1.0
    backbone_dir: str = "backbone"
    depth_expert: dict | None = None      # DepthExpertConfig.to_dict(), or None without a depth expert
    depth_loss_weight: float = 0.1
    max_pixels_per_image: int | None = None  # optional cap handed to the image processor
    image_pipeline: ImagePipelineConfig = field(default_factory=ImagePipelineConfig)
    # Embedded-sim scene the policy was trained in (e.g. {"object_colors": ["red"]}), from the episodes
    # gem_collect_sim wrote; gem_demo / gem_eval build the same scene. None: not trained in the sim, or defaults.
    sim_scene: dict | None = None
    # Where the instruction sits in the user turn. images_first is the reference's (and Qwen3-VL's) order; with
    # instruction_first the image tokens, which attend only to earlier tokens, see the instruction, so every patch
    # can say whether it shows the named object: a small backbone trained from scratch learns that grounding,
    # where with images_first it had to route colour -> patch -> position through the last text tokens.
    prompt_order: str = "images_first"

    def __post_init__(self) -> None:
        self.io = _nested(IOSchema, self.io, "io")
        self.rdt = _nested(RDTConfig, self.rdt, "rdt")
        self.image_pipeline = _nested(ImagePipelineConfig, self.image_pipeline, "image_pipeline")
        _require(isinstance(self.selected_layers, (list, tuple)) and len(self.selected_layers) in (1, self.rdt.depth),
                 f"selected_layers must be a list of 1 or rdt.depth={self.rdt.depth} hidden-state indices, "
                 f"got {self.selected_layers!r}")
        self.selected_layers = list(self.selected_layers)
        _require(all(_is_int(i) and 0 <= i < MAX_HIDDEN_STATES for i in self.selected_layers),
                 f"selected_layers must be hidden-state indices in [0, {MAX_HIDDEN_STATES}), "
                 f"got {self.selected_layers}")
        _positive_int("num_inference_steps", self.num_inference_steps, MAX_INFERENCE_STEPS)
        _require(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _require(self.prompt_order in PROMPT_ORDERS,
                 f"prompt_order must be one of {PROMPT_ORDERS}, got {self.prompt_order!r}")
        _number("noise_scale", self.noise_scale, 0.0, 1.0)
        _number("depth_loss_weight", self.depth_loss_weight, 0.0, 1e6)
        _require(self.max_pixels_per_image is None or (_is_int(self.max_pixels_per_image) and
                                                       0 < self.max_pixels_per_image <= MAX_IMAGE_SIDE ** 2),
                 f"max_pixels_per_image must be null or a positive integer <= {MAX_IMAGE_SIDE ** 2}, "
                 f"got {self.max_pixels_per_image!r}")
        # A folder inside the checkpoint: never an absolute path or one that climbs out of it.
        backbone = PurePosixPath(self.backbone_dir) if isinstance(self.backbone_dir, str) else None
        _require(backbone is not None and self.backbone_dir.strip() != "" and not backbone.is_absolute()
                 and ".." not in backbone.parts and "\\" not in self.backbone_dir,
                 f"backbone_dir must be a folder inside the checkpoint (relative, no '..'), got {self.backbone_dir!r}")
        for name in ("depth_expert", "sim_scene"):
            value = getattr(self, name)
            _require(value is None or isinstance(value, dict),
                     f"{name} must be null or an object (a JSON dict), got {type(value).__name__}")

    @property
    def layers_per_block(self) -> list[int]:
        """Hidden-state index read by each RDT block (one int broadcasts to every block)."""
        if len(self.selected_layers) == 1:
            return self.selected_layers * self.rdt.depth
        return list(self.selected_layers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GemVLAConfig:
        _require(isinstance(data, dict), f"a GemVLAConfig must be an object (a JSON dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        _require(not unknown, f"unknown GemVLAConfig fields: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})
