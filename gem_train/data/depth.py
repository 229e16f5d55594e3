"""Depth-expert targets: the GEM-VLA recipe (gem_reference §7, GEM-VLA train/dataset_joint.py).

Relative depth in [0, 1] (0 near) -> invert (near bright) -> OpenCV INFERNO colormap -> BGR to RGB ->
bilinear resize to the square depth-expert size -> [-1, 1], channels first. How raw depth becomes [0, 1]
follows the reference per dtype: uint8 / 255 (Depth-Anything-3 PNGs, channel 0), uint16 / 65535, float
per-image min-max. Float depth is metric by default (sim render, sensor), so pixels that are not finite, <= 0
or beyond `max_depth_m` (the renderer's far plane, sensor dropouts) count as background: excluded from the
min-max and drawn as the farthest value. kind="disparity" marks float relative inverse depth (Depth Anything /
DPT outputs stored by gem_depth_targets; larger = nearer, unknown scale and shift): per-image min-max, flipped
so that 0 is nearest; only non-finite pixels are background.
"""
from __future__ import annotations

import cv2
import numpy as np

DEPTH_KINDS = ("metric", "disparity")   # what a float depth frame holds: metres | relative inverse depth


def relative_depth(depth: np.ndarray, max_depth_m: float, kind: str = "metric") -> tuple[np.ndarray, bool]:
    """(H, W) float32 in [0, 1], 0 = nearest, and whether any pixel carried depth."""
    if kind not in DEPTH_KINDS:
        raise ValueError(f"depth kind must be one of {DEPTH_KINDS}, got {kind!r}")
    depth = np.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., 0]
    if depth.dtype == np.uint8:
        return depth.astype(np.float32) / 255.0, True
    if depth.dtype == np.uint16:
        return depth.astype(np.float32) / 65535.0, True
    depth = depth.astype(np.float32)
    if kind == "disparity":
        valid = np.isfinite(depth)
    else:
        valid = np.isfinite(depth) & (depth > 0) & (depth < max_depth_m)
    if not valid.any():
        return np.ones_like(depth), False
    lo, hi = float(depth[valid].min()), float(depth[valid].max())
    out = np.ones_like(depth)
    if kind == "disparity":   # larger disparity = nearer -> 0
        out[valid] = (hi - depth[valid]) / (hi - lo) if hi > lo else 0.0
    else:
        out[valid] = (depth[valid] - lo) / (hi - lo) if hi > lo else 0.0
    return out, True


def depth_target(depth: np.ndarray, size: int, max_depth_m: float = 4.0,
                 kind: str = "metric") -> tuple[np.ndarray, bool]:
    """(3, size, size) float32 in [-1, 1] and validity (False: no usable depth, mask the loss)."""
    rel, valid = relative_depth(depth, max_depth_m, kind)
    inverted = np.clip((1.0 - rel) * 255.0, 0, 255).astype(np.uint8)
    rgb = cv2.cvtColor(cv2.applyColorMap(inverted, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    return (rgb.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1), valid
