"""URDF parsing for limits and kinematics: the joint tree, origins, axes, `<limit>` and `<mimic>` tags.

Only what safety and FK/IK need is read (no meshes, inertias or collisions), with the standard library's
ElementTree, so the core needs no URDF dependency. URDFs are trusted local files (robot descriptions we ship
or the robot_description parameter), not untrusted input.

Units: revolute/continuous positions in rad, velocities rad/s, efforts N*m; prismatic in m, m/s, N.
Acceleration limits are not part of standard URDF; they come from our YAML via `load_urdf_limits(accelerations=)`.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from gem_ros.core.kinematics.transforms import make_transform

JOINT_TYPES = ("revolute", "continuous", "prismatic", "fixed", "floating", "planar")
MOVING_1DOF_TYPES = ("revolute", "continuous", "prismatic")


@dataclass(frozen=True, eq=False)
class UrdfJoint:
    """One `<joint>`; `origin` is the (4, 4) pose of the child frame in the parent link frame at q = 0."""

    name: str
    joint_type: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray                      # unit (3,) vector in the joint frame
    lower: float | None = None            # None when the <limit> tag or attribute is absent
    upper: float | None = None
    velocity: float | None = None
    effort: float | None = None
    mimic_joint: str | None = None        # q = multiplier * q[mimic_joint] + offset
    mimic_multiplier: float = 1.0
    mimic_offset: float = 0.0


@dataclass(frozen=True, eq=False)
class UrdfDescription:
    name: str
    root_link: str
    links: tuple[str, ...]
    joints: tuple[UrdfJoint, ...]


def _read_xml(source: str | os.PathLike) -> str:
    """A path (str or PathLike) or the XML text itself (e.g. the robot_description parameter)."""
    if isinstance(source, os.PathLike) or not str(source).lstrip().startswith("<"):
        return Path(source).read_text(encoding="utf-8")
    return str(source)


def _floats(text: str | None, default: tuple[float, ...], what: str) -> np.ndarray:
    if text is None:
        return np.array(default, dtype=float)
    values = np.array([float(v) for v in text.split()], dtype=float)
    if values.shape != (len(default),) or not np.all(np.isfinite(values)):
        raise ValueError(f"URDF {what}: expected {len(default)} finite numbers, got {text!r}")
    return values


def _optional_float(element: ET.Element | None, attribute: str, what: str) -> float | None:
    if element is None or element.get(attribute) is None:
        return None
    try:
        value = float(element.get(attribute))
    except ValueError:
        raise ValueError(f"URDF {what} {attribute}={element.get(attribute)!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"URDF {what} {attribute} is NaN")
    return value


def parse_urdf(source: str | os.PathLike) -> UrdfDescription:
    """Parse the joint tree of a URDF given as a file path or as XML text. Raises ValueError on a malformed tree."""
    root = ET.fromstring(_read_xml(source))
    if root.tag != "robot":
        raise ValueError(f"URDF root element must be <robot>, got <{root.tag}>")
    links = tuple(link.get("name") for link in root.findall("link"))
    joints = []
    for element in root.findall("joint"):
        name, joint_type = element.get("name"), element.get("type")
        if joint_type not in JOINT_TYPES:
            raise ValueError(f"URDF joint '{name}' has unknown type {joint_type!r}")
        origin = element.find("origin")
        xyz = _floats(origin.get("xyz") if origin is not None else None, (0.0, 0.0, 0.0), f"joint '{name}' origin xyz")
        rpy = _floats(origin.get("rpy") if origin is not None else None, (0.0, 0.0, 0.0), f"joint '{name}' origin rpy")
        axis_el = element.find("axis")
        axis = _floats(axis_el.get("xyz") if axis_el is not None else None, (1.0, 0.0, 0.0), f"joint '{name}' axis")
        if joint_type in MOVING_1DOF_TYPES:
            norm = float(np.linalg.norm(axis))
            if norm < 1e-9:
                raise ValueError(f"URDF joint '{name}' ({joint_type}) has a zero axis")
            axis = axis / norm
        parent, child = element.find("parent"), element.find("child")
        if parent is None or child is None or not parent.get("link") or not child.get("link"):
            raise ValueError(f"URDF joint '{name}' needs <parent link=...> and <child link=...>")
        limit, mimic = element.find("limit"), element.find("mimic")
        what = f"joint '{name}' limit"
        joints.append(UrdfJoint(
            name=name, joint_type=joint_type,
            parent=parent.get("link"), child=child.get("link"),
            origin=make_transform(xyz, rpy), axis=axis,
            lower=_optional_float(limit, "lower", what), upper=_optional_float(limit, "upper", what),
            velocity=_optional_float(limit, "velocity", what), effort=_optional_float(limit, "effort", what),
            mimic_joint=mimic.get("joint") if mimic is not None else None,
            mimic_multiplier=float(mimic.get("multiplier", 1.0)) if mimic is not None else 1.0,
            mimic_offset=float(mimic.get("offset", 0.0)) if mimic is not None else 0.0,
        ))
    children = {j.child for j in joints}
    roots = [link for link in links if link not in children]
    if len(roots) != 1:
        raise ValueError(f"URDF must form one tree with a single root link, found roots {roots}")
    return UrdfDescription(name=root.get("name", ""), root_link=roots[0], links=links, joints=tuple(joints))


@dataclass(frozen=True)
class JointLimit:
    """Limits of one 1-DoF joint. Positions rad (m if prismatic); continuous joints have +-inf positions."""

    name: str
    joint_type: str
    lower: float
    upper: float
    max_velocity: float            # rad/s or m/s
    max_effort: float              # N*m or N
    max_acceleration: float = math.inf  # rad/s^2 or m/s^2; inf = not configured

    @property
    def is_prismatic(self) -> bool:
        return self.joint_type == "prismatic"


class JointLimits(Mapping[str, JointLimit]):
    """Read-only mapping joint name -> JointLimit. Joints are looked up by name, never by index."""

    def __init__(self, limits: Mapping[str, JointLimit] | list[JointLimit]):
        items = limits.values() if isinstance(limits, Mapping) else limits
        self._by_name = MappingProxyType({limit.name: limit for limit in items})

    def __getitem__(self, name: str) -> JointLimit:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no limits for joint {name!r}; known joints: {sorted(self._by_name)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"JointLimits({list(self._by_name.values())!r})"


def load_urdf_limits(source: str | os.PathLike | UrdfDescription,
                     accelerations: Mapping[str, float] | None = None) -> JointLimits:
    """Limits of every revolute, continuous and prismatic joint, by name.

    `source` is a path, URDF XML text, or an already parsed description. `accelerations` (rad/s^2 or m/s^2 by
    joint name, from YAML) fills `max_acceleration`; unknown names or non-positive values raise ValueError.
    Revolute/prismatic joints must carry `<limit lower upper velocity effort>` as the URDF spec requires; a
    continuous joint without `<limit>` gets infinite velocity, which the safety filter then refuses to command.
    """
    description = source if isinstance(source, UrdfDescription) else parse_urdf(source)
    accelerations = dict(accelerations or {})
    limits = []
    for joint in description.joints:
        if joint.joint_type not in MOVING_1DOF_TYPES:
            continue
        if joint.joint_type == "continuous":
            lower, upper = -math.inf, math.inf
        else:
            missing = [a for a in ("lower", "upper", "velocity", "effort") if getattr(joint, a) is None]
            if missing:
                raise ValueError(f"URDF joint '{joint.name}' ({joint.joint_type}) lacks <limit> attributes {missing}")
            lower, upper = joint.lower, joint.upper
            infinite = [a for a, v in (("lower", lower), ("upper", upper)) if not math.isfinite(v)]
            if infinite:   # "-inf" or "1e309" would make the position check guard nothing
                raise ValueError(f"URDF joint '{joint.name}' ({joint.joint_type}) has an infinite {infinite[0]} "
                                 f"limit: a revolute or prismatic joint needs finite limits (use type continuous "
                                 f"for a joint without position limits)")
            if lower > upper:
                raise ValueError(f"URDF joint '{joint.name}' has lower limit {lower} > upper limit {upper}")
        acceleration = accelerations.pop(joint.name, math.inf)
        if isinstance(acceleration, bool) or not (isinstance(acceleration, (int, float)) and acceleration > 0):  # NaN too
            raise ValueError(f"acceleration limit of joint '{joint.name}' must be > 0, got {acceleration!r}")
        limits.append(JointLimit(
            name=joint.name, joint_type=joint.joint_type, lower=float(lower), upper=float(upper),
            max_velocity=math.inf if joint.velocity is None else float(joint.velocity),
            max_effort=math.inf if joint.effort is None else float(joint.effort),
            max_acceleration=float(acceleration),
        ))
    if accelerations:
        raise ValueError(f"acceleration limits given for joints not in the URDF: {sorted(accelerations)}")
    return JointLimits(limits)
