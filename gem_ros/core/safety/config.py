"""Typed, fail-closed configuration of the safety filter.

Every limit must be a finite positive number: a NaN, zero or negative limit would silently disable a check
(every comparison with NaN is False), so it is refused here with a ValueError naming the field.
Units: revolute joints rad, rad/s, rad/s^2; prismatic joints m, m/s, m/s^2; workspace box m in the root link frame.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

ON_VIOLATION = ("reject", "clamp")


def _number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """`value` as float if it is a finite number > 0 (>= 0 with allow_zero); else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class WorkspaceBox:
    """Axis-aligned box [m] in the robot root link frame that `link`'s origin must stay inside."""

    link: str
    min_xyz_m: tuple[float, float, float]
    max_xyz_m: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not isinstance(self.link, str) or not self.link:
            raise ValueError(f"workspace_box.link must be a non-empty link name, got {self.link!r}")
        for field_name in ("min_xyz_m", "max_xyz_m"):
            values = tuple(getattr(self, field_name))
            if len(values) != 3:
                raise ValueError(f"workspace_box.{field_name} must have 3 values (x, y, z), got {values!r}")
            for axis, v in zip("xyz", values):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"workspace_box.{field_name} {axis} must be a finite number, got {v!r}")
            object.__setattr__(self, field_name, tuple(float(v) for v in values))
        for axis, lo, hi in zip("xyz", self.min_xyz_m, self.max_xyz_m):
            if not lo < hi:
                raise ValueError(f"workspace_box {axis}: min {lo} must be < max {hi}")


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """What the safety filter enforces on every trajectory before it reaches a controller.

    Frozen: a limit changed after validation would skip the checks here (and the filter caches its bounds).
    """

    max_step_delta_rad: float                # largest position change between consecutive points, revolute joints
    max_step_delta_m: float = 0.01           # same for prismatic joints (grippers)
    velocity_scale: float = 1.0              # fraction (0, 1] of the URDF velocity limit allowed
    max_acceleration: Mapping[str, float] | float | None = None  # one value for all joints, per joint name, or off
    position_margin_rad: float = 0.0         # stay this far inside URDF limits (revolute)
    position_margin_m: float = 0.0           # stay this far inside URDF limits (prismatic)
    workspace_box: WorkspaceBox | Mapping[str, Any] | None = None
    on_violation: str = "reject"             # "reject" | "clamp" (clamp only finite step/velocity/accel excess)
    hold_duration_s: float = 0.1             # time_from_start of the single point returned by `hold`

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)   # normalising in __post_init__ of a frozen dataclass

    def __post_init__(self) -> None:
        self._set("max_step_delta_rad", _number("max_step_delta_rad", self.max_step_delta_rad))
        self._set("max_step_delta_m", _number("max_step_delta_m", self.max_step_delta_m))
        self._set("velocity_scale", _number("velocity_scale", self.velocity_scale))
        if self.velocity_scale > 1.0:
            raise ValueError(f"velocity_scale must be <= 1 (a fraction of the URDF limit), got {self.velocity_scale}")
        self._set("position_margin_rad", _number("position_margin_rad", self.position_margin_rad, allow_zero=True))
        self._set("position_margin_m", _number("position_margin_m", self.position_margin_m, allow_zero=True))
        self._set("hold_duration_s", _number("hold_duration_s", self.hold_duration_s))
        if isinstance(self.max_acceleration, Mapping):
            if not self.max_acceleration:
                raise ValueError("max_acceleration is an empty mapping; use None to disable acceleration limits")
            self._set("max_acceleration", MappingProxyType({
                str(name): _number(f"max_acceleration['{name}']", value) for name, value in self.max_acceleration.items()}))
        elif self.max_acceleration is not None:
            self._set("max_acceleration", _number("max_acceleration", self.max_acceleration))
        if isinstance(self.workspace_box, Mapping):  # straight from YAML
            self._set("workspace_box", WorkspaceBox(**self.workspace_box))
        elif self.workspace_box is not None and not isinstance(self.workspace_box, WorkspaceBox):
            raise ValueError(f"workspace_box must be a WorkspaceBox, a mapping or None, got {self.workspace_box!r}")
        if self.on_violation not in ON_VIOLATION:
            raise ValueError(f"on_violation must be one of {ON_VIOLATION}, got {self.on_violation!r}")
