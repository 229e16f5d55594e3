"""Joint limits that prefer a URDF's `<safety_controller soft_lower_limit soft_upper_limit>` over `<limit>`.

Vendors put their conservative range there: franka_description writes the datasheet limits (the Panda's
+-2.8973 rad inside +-2.9671), the UR driver's description (safety_limits:=true, its default) 0.15 rad inside
the hard limits. A soft limit only ever narrows a joint's range: one outside `<limit>` (or lower > upper) is
ignored, the hard limit kept. Velocity, effort and acceleration come from `load_urdf_limits` unchanged.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import replace

from gem_ros.core.kinematics.urdf import JointLimits, _read_xml, load_urdf_limits


def soft_position_limits(source: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """joint name -> (soft_lower, soft_upper) for every joint with both attributes; ValueError names a bad one."""
    soft = {}
    for joint in ET.fromstring(_read_xml(source)).findall("joint"):
        element = joint.find("safety_controller")
        if element is None or element.get("soft_lower_limit") is None or element.get("soft_upper_limit") is None:
            continue
        name = joint.get("name")
        try:
            lower, upper = float(element.get("soft_lower_limit")), float(element.get("soft_upper_limit"))
        except ValueError:
            raise ValueError(f"URDF joint '{name}' <safety_controller> soft limits are not numbers") from None
        if math.isnan(lower) or math.isnan(upper):
            raise ValueError(f"URDF joint '{name}' <safety_controller> soft limit is NaN")
        soft[name] = (lower, upper)
    return soft


def load_soft_urdf_limits(source: str | os.PathLike, accelerations: Mapping[str, float] | None = None
                          ) -> JointLimits:
    """`load_urdf_limits(source, accelerations)` with each position range narrowed to the soft limits."""
    limits = load_urdf_limits(source, accelerations)
    soft = soft_position_limits(source)
    narrowed = []
    for name, limit in limits.items():
        lower, upper = soft.get(name, (limit.lower, limit.upper))
        if not limit.lower <= lower <= upper <= limit.upper:   # never widen, never invert: keep the hard range
            lower, upper = limit.lower, limit.upper
        narrowed.append(replace(limit, lower=lower, upper=upper))
    return JointLimits(narrowed)
