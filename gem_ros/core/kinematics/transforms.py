"""Rotation and homogeneous-transform helpers (numpy, float64). Angles in rad, lengths in m.

Conventions follow URDF: `rpy` is (roll, pitch, yaw) about fixed x, y, z, i.e. R = Rz(yaw) @ Ry(pitch) @ Rx(roll).
A pose is a (4, 4) homogeneous matrix mapping child-frame coordinates to parent-frame coordinates.
"""
from __future__ import annotations

import numpy as np


def rpy_to_matrix(rpy) -> np.ndarray:
    """(3,) roll, pitch, yaw [rad] -> (3, 3) rotation, URDF convention."""
    roll, pitch, yaw = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def matrix_to_rpy(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) roll, pitch, yaw [rad]; pitch in [-pi/2, pi/2]."""
    r = np.asarray(rotation, dtype=float)
    pitch = np.arctan2(-r[2, 0], np.hypot(r[0, 0], r[1, 0]))
    roll = np.arctan2(r[2, 1], r[2, 2])
    yaw = np.arctan2(r[1, 0], r[0, 0])
    return np.array([roll, pitch, yaw])


def axis_angle_to_matrix(axis, angle: float) -> np.ndarray:
    """Rodrigues' formula; `axis` must be a unit (3,) vector, `angle` in rad."""
    x, y, z = (float(v) for v in axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def rotation_vector_to_matrix(rotation_vector) -> np.ndarray:
    """(3,) axis * angle [rad] -> (3, 3) rotation."""
    rv = np.asarray(rotation_vector, dtype=float)
    angle = float(np.linalg.norm(rv))
    if angle < 1e-12:
        return np.eye(3)
    return axis_angle_to_matrix(rv / angle, angle)


def matrix_to_rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) axis * angle [rad], angle in [0, pi]. Robust near 0 and near pi."""
    r = np.asarray(rotation, dtype=float)
    cos_angle = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    vee = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if angle < 1e-6:
        return vee / 2.0  # first-order: R ~ I + [w]x
    if np.pi - angle < 1e-4:
        # sin(angle) ~ 0 makes the vee formula ill-conditioned; (R + I) / 2 ~ a a^T there.
        outer = (r + np.eye(3)) / 2.0
        column = int(np.argmax(np.diag(outer)))
        axis = outer[:, column] / np.sqrt(max(outer[column, column], 1e-12))
        if np.dot(axis, vee) < 0:  # keep the sign consistent with the small antisymmetric part
            axis = -axis
        return axis / np.linalg.norm(axis) * angle
    return vee * (angle / (2.0 * np.sin(angle)))


def make_transform(xyz=(0.0, 0.0, 0.0), rpy=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) pose from a translation [m] and URDF rpy [rad]."""
    pose = np.eye(4)
    pose[:3, :3] = rpy_to_matrix(rpy)
    pose[:3, 3] = np.asarray(xyz, dtype=float)
    return pose


def pose_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(6,) [translation m, rotation vector rad] taking `current` to `target`, both expressed in the base frame."""
    translation = target[:3, 3] - current[:3, 3]
    rotation = matrix_to_rotation_vector(target[:3, :3] @ current[:3, :3].T)
    return np.concatenate([translation, rotation])
