"""Typed, fail-closed configuration of the safety filter.

Every limit must be a finite positive number: a NaN, zero or negative limit would silently disable a check
(every comparison with NaN is False), so it is refused here with a ValueError naming the field.
Units: revolute joints rad, rad/s, rad/s^2; prismatic joints m, m/s, m/s^2; workspace box m in the root link frame.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
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


# Scene object shapes -> the `size_m` values each takes: box (x, y, z) edges, cylinder (radius, length) along its z,
# sphere (radius,), plane () (the pose's xy plane; everything on its -z side is solid, e.g. a floor or table top).
SCENE_SHAPES = {"box": 3, "cylinder": 2, "sphere": 1, "plane": 0}


def _finite_tuple(name: str, values: Any, length: int) -> tuple[float, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if len(values) != length:
        raise ValueError(f"{name} must have {length} values, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be finite numbers, got {values!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class SceneObject:
    """A static obstacle, posed in `frame` (a link fixed to the URDF root link; "" = the root link itself)."""

    name: str
    shape: str                                  # a key of SCENE_SHAPES
    size_m: tuple[float, ...]                   # see SCENE_SHAPES
    pose_xyz_rpy: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)   # m, rad (URDF rpy), the shape's centre
    frame: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"scene object name must be a non-empty string, got {self.name!r}")
        if self.shape not in SCENE_SHAPES:
            raise ValueError(f"scene object '{self.name}': shape must be one of {list(SCENE_SHAPES)}, "
                             f"got {self.shape!r}")
        size = _finite_tuple(f"scene object '{self.name}' size_m ({self.shape})", self.size_m,
                             SCENE_SHAPES[self.shape])
        if any(v <= 0 for v in size):
            raise ValueError(f"scene object '{self.name}' size_m must be > 0, got {size}")
        object.__setattr__(self, "size_m", size)
        object.__setattr__(self, "pose_xyz_rpy",
                           _finite_tuple(f"scene object '{self.name}' pose_xyz_rpy", self.pose_xyz_rpy, 6))
        if not isinstance(self.frame, str):
            raise ValueError(f"scene object '{self.name}' frame must be a link name or '', got {self.frame!r}")


@dataclass(frozen=True, kw_only=True)
class CollisionConfig:
    """What the collision checker refuses: any robot body within `padding_m` of another (pairs not disabled by the
    SRDF) or of a scene object, at any point of a trajectory or on the straight joint-space path between points.

    Between two checked configurations no robot surface point moves more than `max_link_travel_m` (a bound from
    the joint steps and each joint's lever arm), so with max_link_travel_m <= 2 * padding_m a body that clears
    the padding at both ends cannot touch anything in between: a fast joint cannot step through a thin object.
    A first pass tests configurations 2 * coarse_padding_m of travel apart with that larger padding; only the
    stretches it finds near something are tested again, by passes at paddings down to padding_m (the last at
    max_link_travel_m): same guarantee, fewer tests in free space and near objects (CollisionChecker.pass_paddings).
    """

    padding_m: float = 0.01
    max_link_travel_m: float | None = None          # None: 2 * padding_m
    coarse_padding_m: float = 0.03                  # first pass (>= padding_m)
    max_joint_step_rad: float = 0.1                 # revolute joints, between checked configurations
    srdf_path: str = ""                              # "": adjacent links and pairs touching at the default pose
    package_paths: Mapping[str, str] = field(default_factory=dict)   # package name -> folder, for package:// meshes
    scene_objects: tuple[SceneObject, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "padding_m", _number("collision padding_m", self.padding_m))
        travel = 2.0 * self.padding_m if self.max_link_travel_m is None else self.max_link_travel_m
        object.__setattr__(self, "max_link_travel_m", _number("collision max_link_travel_m", travel))
        object.__setattr__(self, "coarse_padding_m", _number("collision coarse_padding_m", self.coarse_padding_m))
        if self.coarse_padding_m < self.padding_m:
            raise ValueError(f"collision coarse_padding_m {self.coarse_padding_m} must be >= padding_m "
                             f"{self.padding_m}")
        object.__setattr__(self, "max_joint_step_rad",
                           _number("collision max_joint_step_rad", self.max_joint_step_rad))
        if self.max_link_travel_m > 2.0 * self.padding_m * (1 + 1e-9):
            raise ValueError(f"collision max_link_travel_m {self.max_link_travel_m} must be <= 2 * padding_m "
                             f"({2 * self.padding_m}): a body could pass through an object between two checks")
        if not isinstance(self.srdf_path, str):
            raise ValueError(f"srdf_path must be a path string ('' = none), got {self.srdf_path!r}")
        if not isinstance(self.package_paths, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.package_paths.items()):
            raise ValueError(f"package_paths must map package names to folders, got {self.package_paths!r}")
        object.__setattr__(self, "package_paths", MappingProxyType(dict(self.package_paths)))
        objects = tuple(o if isinstance(o, SceneObject) else SceneObject(**o) for o in self.scene_objects)
        names = [o.name for o in objects]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"scene object names must be unique, got {duplicates} more than once")
        object.__setattr__(self, "scene_objects", objects)


def scene_objects_from_lists(names, shapes, sizes_m, poses_xyz_rpy, frames=()) -> tuple[SceneObject, ...]:
    """Scene objects from flat, ROS-parameter-friendly lists (parameter names in the messages): one name, shape
    and frame per object ("" = the root link; an empty frames list = all in the root link), 3 size values per
    object (the unused ones 0: sphere (r, 0, 0), cylinder (r, length, 0), plane (0, 0, 0)) and 6 pose values per
    object (x, y, z m; roll, pitch, yaw rad). ValueError names the parameter."""
    names, shapes, frames = list(names), list(shapes), list(frames)
    sizes, poses = [float(v) for v in sizes_m], [float(v) for v in poses_xyz_rpy]
    count = len(names)
    for parameter, values, per in (("scene_object_shapes", shapes, 1), ("scene_object_sizes_m", sizes, 3),
                                   ("scene_object_poses", poses, 6)):
        if len(values) != per * count:
            raise ValueError(f"{parameter} has {len(values)} values for {count} scene objects "
                             f"(scene_object_names {names}): expected {per} per object")
    if frames and len(frames) != count:
        raise ValueError(f"scene_object_frames has {len(frames)} values for {count} scene objects: one per object, "
                         f"or none (all in the URDF root link)")
    objects = []
    for k, name in enumerate(names):
        shape = shapes[k]
        used = SCENE_SHAPES.get(shape, 3)
        size = sizes[3 * k:3 * k + 3]
        if any(v != 0.0 for v in size[used:]):
            raise ValueError(f"scene_object_sizes_m: object '{name}' ({shape}) takes {used} size values; the other "
                             f"{3 - used} of its 3 must be 0, got {size}")
        objects.append(SceneObject(name=name, shape=shape, size_m=tuple(size[:used]),
                                   pose_xyz_rpy=tuple(poses[6 * k:6 * k + 6]), frame=frames[k] if frames else ""))
    return tuple(objects)
