"""Pinhole cameras of the tabletop sim: config, OpenGL view/projection, ROS-style intrinsics, metric depth.

Conventions: the world frame is `panda_link0` (x forward, z up, metres). A camera's optical frame follows
ROS REP 103 (x right, y down, z forward). Pixel coordinates are OpenCV-style: integer (u, v) is the
centre of pixel (column u, row v), row 0 at the top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pybullet as p

Vec3 = tuple[float, float, float]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class CameraConfig:
    """One simulated RGB-D camera.

    With `mount_link` empty the camera is fixed in the world and `eye_m` / `target_m` / `up` are world
    coordinates. With `mount_link` set (e.g. "panda_hand") the same three vectors are expressed in that
    link's frame and the camera rides along with the link (a wrist camera).
    """

    name: str
    width: int = 224                              # px
    height: int = 224                             # px
    fov_deg: float = 60.0                         # vertical field of view, deg
    eye_m: Vec3 = (1.0, 0.0, 0.6)                 # camera centre, m
    target_m: Vec3 = (0.5, 0.0, 0.0)              # point on the optical axis, m
    up: Vec3 = (0.0, 0.0, 1.0)                    # direction that appears upward in the image
    mount_link: str = ""                          # "" = fixed camera
    near_m: float = 0.01
    far_m: float = 5.0
    frame_id: str = ""                            # "" -> "<name>_optical_frame"

    def __post_init__(self) -> None:
        _require(isinstance(self.name, str) and self.name.strip() != "", "camera name must be a non-empty string")
        for key in ("width", "height"):
            value = getattr(self, key)
            _require(isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 4096,
                     f"camera '{self.name}' {key} must be an int in [8, 4096], got {value!r}")
        _require(0.0 < self.fov_deg < 170.0, f"camera '{self.name}' fov_deg must be in (0, 170), got {self.fov_deg}")
        _require(0.0 < self.near_m < self.far_m, f"camera '{self.name}' needs 0 < near_m < far_m")
        self.eye_m, self.target_m, self.up = (tuple(float(x) for x in v) for v in (self.eye_m, self.target_m, self.up))
        for key in ("eye_m", "target_m", "up"):
            _require(len(getattr(self, key)) == 3, f"camera '{self.name}' {key} must have 3 components")
        forward = np.subtract(self.target_m, self.eye_m)
        _require(np.linalg.norm(forward) > 1e-6, f"camera '{self.name}' eye_m and target_m coincide")
        _require(np.linalg.norm(np.cross(forward, self.up)) > 1e-6 * np.linalg.norm(forward),
                 f"camera '{self.name}' up is parallel to the viewing direction")
        if not self.frame_id:
            self.frame_id = f"{self.name}_optical_frame"


class Intrinsics(NamedTuple):
    """Pinhole intrinsics in pixels, as sensor_msgs/CameraInfo wants them (K = [fx 0 cx; 0 fy cy; 0 0 1])."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int


def intrinsics(cfg: CameraConfig) -> Intrinsics:
    """Intrinsics of images rendered with `projection_matrix(cfg)` by pybullet's TinyRenderer.

    Square pixels and the vertical fov give fx = fy. The principal point is not the textbook
    ((W-1)/2, (H-1)/2): TinyRenderer samples each pixel at its corner and flips rows as H-1-y, which puts
    it at (W/2, H/2 - 1). Measured: sphere centroids land within 0.1 px of this model at 64x64, 224x224,
    320x240 and 640x480 (the textbook centre is off by +0.5 / -0.5 px).
    """
    fy = 0.5 * cfg.height / math.tan(math.radians(cfg.fov_deg) / 2.0)
    return Intrinsics(fy, fy, cfg.width / 2.0, cfg.height / 2.0 - 1.0, cfg.width, cfg.height)


def projection_matrix(cfg: CameraConfig) -> list[float]:
    # aspect = W / H keeps pixels square, which is what `intrinsics` assumes (fx == fy).
    return list(p.computeProjectionMatrixFOV(cfg.fov_deg, cfg.width / cfg.height, cfg.near_m, cfg.far_m))


def world_eye_target_up(cfg: CameraConfig, link_pos: np.ndarray | None = None,
                        link_rot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye, target and up in the world; for a mounted camera pass the link pose (position, 3x3 rotation)."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (cfg.eye_m, cfg.target_m, cfg.up))
    if link_pos is None or link_rot is None:
        return eye, target, up
    return link_pos + link_rot @ eye, link_pos + link_rot @ target, link_rot @ up


def optical_frame(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """3x3 rotation whose columns are the optical x (right), y (down), z (forward) axes in the world."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def zbuffer_to_depth_m(zbuffer: np.ndarray, near_m: float, far_m: float) -> np.ndarray:
    """OpenGL [0, 1] depth buffer -> metric z-depth along the optical axis (m); background reads ~far_m."""
    z = np.asarray(zbuffer, dtype=np.float64)
    return (far_m * near_m / (far_m - (far_m - near_m) * z)).astype(np.float32)


def project(points_world: np.ndarray, eye: np.ndarray, rot_optical: np.ndarray, k: Intrinsics) -> np.ndarray:
    """World points (N, 3) -> pixel coordinates (N, 2) as (u, v); used by tests and label tooling."""
    cam = (np.atleast_2d(points_world) - eye) @ rot_optical   # world -> optical frame, (N, 3)
    return np.stack([k.fx * cam[:, 0] / cam[:, 2] + k.cx, k.fy * cam[:, 1] / cam[:, 2] + k.cy], axis=1)


def quat_from_matrix(rot: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w), Shepperd's method (robust near 180 deg)."""
    m = np.asarray(rot, dtype=float)
    trace = float(np.trace(m))
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i], q[j], q[k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q / np.linalg.norm(q)
