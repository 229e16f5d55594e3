"""Typed configuration of a GEM-VLA policy: I/O schema, RDT action expert, whole policy.

Everything here is JSON round-trippable; `config.json` of a checkpoint is `GemVLAConfig.to_dict()`.
Validation happens once, in `__post_init__`, and names the offending field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

ACTION_SPACES = ("absolute_joint", "delta_joint", "ee_delta")
SAMPLERS = ("euler", "one_step")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _positive_int(name: str, value: Any) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
             f"{name} must be a positive integer, got {value!r}")


@dataclass
class CameraSpec:
    """One camera the policy sees, in the fixed order of the prompt. Images are H x W x 3 uint8 RGB."""

    name: str
    height: int = 224
    width: int = 224

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "", "camera name must be a non-empty string")
        _positive_int(f"camera '{self.name}' height", self.height)
        _positive_int(f"camera '{self.name}' width", self.width)


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
        self.cameras = [c if isinstance(c, CameraSpec) else CameraSpec(**c) for c in self.cameras]
        _require(len(self.cameras) > 0, "io.cameras must list at least one camera")
        names = [c.name for c in self.cameras]
        _require(len(set(names)) == len(names), f"io.cameras has duplicate names: {names}")
        _positive_int("io.state_dim", self.state_dim)
        _positive_int("io.action_dim", self.action_dim)
        _positive_int("io.chunk_len", self.chunk_len)
        _require(self.action_space in ACTION_SPACES,
                 f"io.action_space must be one of {ACTION_SPACES}, got {self.action_space!r}")
        _require(isinstance(self.control_rate_hz, (int, float)) and math.isfinite(self.control_rate_hz)
                 and self.control_rate_hz > 0, f"io.control_rate_hz must be a positive number, got {self.control_rate_hz!r}")
        _require(not self.state_names or len(self.state_names) == self.state_dim,
                 f"io.state_names has {len(self.state_names)} names but state_dim is {self.state_dim}")
        _require(not self.action_names or len(self.action_names) == self.action_dim,
                 f"io.action_names has {len(self.action_names)} names but action_dim is {self.action_dim}")
        bad = [i for i in self.gripper_channels if not 0 <= i < self.action_dim]
        _require(not bad, f"io.gripper_channels {bad} are outside 0..{self.action_dim - 1}")

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
        for name in ("hidden_size", "depth", "num_heads", "num_kv_heads", "ffn_multiple_of",
                     "timestep_freq_dim", "cond_hidden_size"):
            _positive_int(f"rdt.{name}", getattr(self, name))
        _require(self.num_register_tokens >= 0, "rdt.num_register_tokens must be >= 0")
        _require(self.hidden_size % self.num_heads == 0,
                 f"rdt.hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"rdt.num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0 and self.hidden_size % 2 == 0, "rdt head and hidden sizes must be even")
        _require(self.norm_eps > 0, "rdt.norm_eps must be > 0")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self) -> int:
        """SwiGLU width: 2/3 of 4x hidden, rounded up to a multiple (1024 -> 2816)."""
        width = int(2 * 4 * self.hidden_size / 3)
        return self.ffn_multiple_of * math.ceil(width / self.ffn_multiple_of)


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
    # Embedded-sim scene the policy was trained in (e.g. {"object_colors": ["red"]}), from the episodes
    # gem_collect_sim wrote; gem_demo / gem_eval build the same scene. None: not trained in the sim, or defaults.
    sim_scene: dict | None = None

    def __post_init__(self) -> None:
        if isinstance(self.io, dict):
            self.io = IOSchema(**self.io)
        if isinstance(self.rdt, dict):
            self.rdt = RDTConfig(**self.rdt)
        _require(len(self.selected_layers) in (1, self.rdt.depth),
                 f"selected_layers must have 1 or rdt.depth={self.rdt.depth} entries, got {len(self.selected_layers)}")
        _require(all(isinstance(i, int) and i >= 0 for i in self.selected_layers),
                 f"selected_layers must be non-negative hidden-state indices, got {self.selected_layers}")
        _positive_int("num_inference_steps", self.num_inference_steps)
        _require(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _require(isinstance(self.noise_scale, (int, float)) and not isinstance(self.noise_scale, bool)
                 and 0 <= self.noise_scale <= 1,
                 f"noise_scale must be in [0, 1], got {self.noise_scale!r}")
        _require(self.depth_loss_weight >= 0, "depth_loss_weight must be >= 0")

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format_version"})
        _require(not unknown, f"unknown GemVLAConfig fields: {unknown}")
        return cls(**{k: v for k, v in data.items() if k in known})
