"""Piecewise-linear interpolation of joint targets between chunk points.

Linear, not cubic, on purpose: a linear segment never leaves the box spanned by its two end points, so it
cannot overshoot a joint limit the safety filter checked at the points, and its speed between two points is
exactly the finite difference the filter limits. Smoothness at chunk switches comes from blending instead.
"""
from __future__ import annotations

import numpy as np


def interpolate_linear(times_s: np.ndarray, positions: np.ndarray, query_s) -> np.ndarray:
    """Sample a piecewise-linear path at `query_s`, holding the end values outside [times[0], times[-1]].

    times_s: (M,) strictly increasing; positions: (M, J); query_s: scalar or (Q,). Returns (J,) or (Q, J).
    """
    times = np.asarray(times_s, dtype=float)
    values = np.asarray(positions, dtype=float)
    query = np.asarray(query_s, dtype=float)
    flat = np.atleast_1d(query)
    if len(times) == 1:
        result = np.repeat(values[:1], len(flat), axis=0)
    else:
        left = clip(np.searchsorted(times, flat, side="right") - 1, 0, len(times) - 2)
        alpha = clip((flat - times[left]) / (times[left + 1] - times[left]), 0.0, 1.0)[:, None]
        result = mix(values[left], values[left + 1], alpha)
    return result[0] if query.ndim == 0 else result


def clip(values, low, high) -> np.ndarray:
    """np.clip (NaN stays NaN) without its Python dispatch, ~5 us per call on the executor's small arrays: the
    executor clips ~10 times per chunk and per tick."""
    return np.minimum(np.maximum(values, low), high)


def mix(start: np.ndarray, end: np.ndarray, weight) -> np.ndarray:
    """(1 - weight) * start + weight * end, clipped to [min, max] of the two.

    The clip removes the last-bit round-off that would otherwise put a target held exactly at a joint limit
    (e.g. a fully open gripper) 1 ulp beyond it, which the safety filter rightly rejects.
    """
    result = start + weight * (end - start)
    return clip(result, np.minimum(start, end), np.maximum(start, end))


def crossfade_weight(progress, shape: str = "linear") -> np.ndarray:
    """Weight of the NEW chunk as a function of progress through the blend window (0 -> 0, >= 1 -> 1)."""
    x = clip(np.asarray(progress, dtype=float), 0.0, 1.0)
    if shape == "smoothstep":
        return x * x * (3.0 - 2.0 * x)
    return x
