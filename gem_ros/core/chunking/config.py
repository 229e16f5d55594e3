"""Typed configuration of the chunk scheduler and of the action-space mapping, validated once in __post_init__."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SCHEDULER_MODES = ("replace", "blend", "temporal_ensemble")
BLEND_SHAPES = ("linear", "smoothstep")
ACTION_KINDS = ("absolute_joint", "delta_joint", "ee_delta")
DELTA_REFERENCES = ("cumulative", "observation")
EE_FRAMES = ("base", "ee")


def _finite(name: str, value: Any, *, positive: bool = False) -> float:
    """`value` as a float that is finite and >= 0 (> 0 with positive); ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


@dataclass(kw_only=True)
class ChunkSchedulerConfig:
    """How policy chunks become a continuous joint-target stream. Times in s, rates in Hz."""

    control_rate_hz: float = 50.0      # rate at which trajectories are sampled and sent to the controller
    chunk_dt_s: float                  # time between consecutive action points (1 / the checkpoint's control rate)
    mode: str = "blend"                # "replace" | "blend" | "temporal_ensemble"
    blend_duration_s: float = 0.2      # crossfade length from the old plan to the new chunk ("blend")
    blend_shape: str = "linear"        # "linear" or "smoothstep" (zero slope at both ends) crossfade weight
    ensemble_decay: float = 0.01       # ACT's m: weight exp(-m * i), i = 0 for the OLDEST chunk covering a time
    request_threshold_s: float = 0.3   # ask for the next chunk once less than this much plan remains
    max_latency_s: float = 1.0         # chunks observed longer ago than this are refused as stale

    def __post_init__(self) -> None:
        self.control_rate_hz = _finite("control_rate_hz", self.control_rate_hz, positive=True)
        self.chunk_dt_s = _finite("chunk_dt_s", self.chunk_dt_s, positive=True)
        self.mode = _choice("mode", self.mode, SCHEDULER_MODES)
        self.blend_duration_s = _finite("blend_duration_s", self.blend_duration_s)
        self.blend_shape = _choice("blend_shape", self.blend_shape, BLEND_SHAPES)
        self.ensemble_decay = _finite("ensemble_decay", self.ensemble_decay)
        self.request_threshold_s = _finite("request_threshold_s", self.request_threshold_s)
        self.max_latency_s = _finite("max_latency_s", self.max_latency_s, positive=True)


@dataclass(kw_only=True)
class ActionSpaceConfig:
    """What the numbers in one policy action mean, and which joints (by name) they drive.

    Layout of an action vector: the arm part first (len(joint_names) values for joint kinds; xyz [m] + rpy [rad]
    deltas for "ee_delta"), then one gripper channel if `gripper_joint_names` is non-empty. The gripper channel is
    absolute in every kind: each gripper joint gets `gripper_offset + gripper_scale * value` (Panda: width 0..0.08 m
    -> two fingers 0..0.04 m with scale 0.5).
    """

    kind: str                                   # "absolute_joint" | "delta_joint" | "ee_delta"
    joint_names: tuple[str, ...]                # arm joints driven by the action (IK joints for "ee_delta")
    action_dim: int
    gripper_joint_names: tuple[str, ...] = ()
    gripper_scale: float = 1.0
    gripper_offset: float = 0.0
    delta_reference: str = "cumulative"         # deltas add up along the chunk, or are each relative to the obs
    ee_link: str | None = None                  # end-effector link for "ee_delta"
    ee_frame: str = "base"                      # deltas expressed in the robot base frame or the current EE frame
    ik_max_iterations: int = 100

    def __post_init__(self) -> None:
        self.kind = _choice("kind", self.kind, ACTION_KINDS)
        self.joint_names = tuple(self.joint_names)
        self.gripper_joint_names = tuple(self.gripper_joint_names)
        names = self.joint_names + self.gripper_joint_names
        if not self.joint_names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"joint_names must be non-empty joint-name strings, got {self.joint_names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"joint_names and gripper_joint_names must be unique and disjoint, got {names}")
        if not isinstance(self.gripper_scale, (int, float)) or isinstance(self.gripper_scale, bool) \
                or not math.isfinite(self.gripper_scale) or self.gripper_scale == 0:
            raise ValueError(f"gripper_scale must be a finite non-zero number, got {self.gripper_scale!r}")
        if isinstance(self.gripper_offset, bool) or not isinstance(self.gripper_offset, (int, float)) \
                or not math.isfinite(self.gripper_offset):
            raise ValueError(f"gripper_offset must be a finite number, got {self.gripper_offset!r}")
        self.delta_reference = _choice("delta_reference", self.delta_reference, DELTA_REFERENCES)
        self.ee_frame = _choice("ee_frame", self.ee_frame, EE_FRAMES)
        if self.kind == "ee_delta" and not self.ee_link:
            raise ValueError("ee_link is required when kind is 'ee_delta'")
        if isinstance(self.ik_max_iterations, bool) or not isinstance(self.ik_max_iterations, int) \
                or self.ik_max_iterations <= 0:
            raise ValueError(f"ik_max_iterations must be a positive integer, got {self.ik_max_iterations!r}")
        gripper = 1 if self.gripper_joint_names else 0
        expected = (6 if self.kind == "ee_delta" else len(self.joint_names)) + gripper
        if self.action_dim != expected:
            raise ValueError(f"action_dim is {self.action_dim!r} but kind '{self.kind}' with {len(self.joint_names)} "
                             f"joints and {'a' if gripper else 'no'} gripper channel needs {expected}")
