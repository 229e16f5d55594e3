"""Collision checking of joint trajectories against the robot itself and static scene objects (pinocchio + coal).

`check(joint_names, positions, start)` returns the first configuration along the path where two bodies come
within `padding_m` (a Collision naming them), or None. The path is the straight joint-space line through the
points (from `start`, the configuration the controller is at, when given), sampled so that no robot surface
point moves more than `max_link_travel_m` and no revolute joint more than `max_joint_step_rad` between samples:
with max_link_travel_m <= 2 * padding_m, a body clear by the padding at every sample touches nothing between
them. Passes from coarse to fine keep that cheap: samples 2 * coarse_padding_m of travel apart checked with
coarse_padding_m; then, at each finer padding (a factor <= _LEVEL_RATIO down to padding_m, spaced twice the
padding, the last at max_link_travel_m), only the stretches next to a sample the pass before found near something.
A stretch whose two ends are clear by a padding p and at most 2 p of travel apart touches nothing, whichever pass
cleared it; so the middle passes clear a hand hovering a centimetre above the table without the finest spacing
(bench/collision_check.py: a tick near the table tests ~45 -> ~25 configurations). `start` itself is not checked
(the arm is already there); the path leaving it is.

Joints the URDF has but the caller does not command are checked at their default position (0, or the limit
nearest it); mimic joints follow their leader. What was left unchecked and why is in `notes` (and the log).
Thread-safe (one lock around the pinocchio data); built once at configure (~0.1-0.5 s for the Panda).
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pinocchio as pin

from gem_ros.core.safety.collision_model import (build_collision_model, default_positions, describe_pair,
                                                 is_prismatic, joint_values_to_q, lever_arms)
from gem_ros.core.safety.config import CollisionConfig

log = logging.getLogger(__name__)
_LEVEL_RATIO = 4.0   # padding of one pass / the next: each refines only where the one before found something near


@dataclass(frozen=True)
class Collision:
    """The first configuration found too close. `index` is the trajectory point at (fraction 1) or on the way
    to which (0 < fraction < 1, from the previous point or from `start`) it lies."""

    index: int
    body_a: str            # a robot link
    body_b: str            # a robot link, or a scene object when `scene`
    distance_m: float      # signed distance between the two bodies' geometry (< 0: penetrating)
    fraction: float = 1.0
    scene: bool = False
    padding_m: float = 0.0

    def describe(self) -> str:
        if self.fraction >= 1.0:
            where = f"at point {self.index}"
        else:
            origin = "the start" if self.index == 0 else f"point {self.index - 1}"
            where = f"between {origin} and point {self.index} ({self.fraction:.0%} of the way)"
        gap = f"{self.distance_m * 1e3:.1f} mm apart" if self.distance_m >= 0 else \
            f"{-self.distance_m * 1e3:.1f} mm into each other"
        return (f"collision {where}: {describe_pair(self.body_a, self.body_b, self.scene)} {gap} "
                f"(padding {self.padding_m * 1e3:g} mm)")


class CollisionChecker:
    def __init__(self, urdf: str | os.PathLike, cfg: CollisionConfig, level_ratio: float = _LEVEL_RATIO):
        """`urdf`: a path or the XML text. ValueError names a missing mesh, an SRDF or scene link not in the
        URDF, or an unusable geometry. `level_ratio`: padding of one pass / the next (1e9: coarse and fine only)."""
        if not level_ratio > 1.0:
            raise ValueError(f"level_ratio must be > 1, got {level_ratio!r}")
        self._level_ratio = float(level_ratio)
        if not isinstance(cfg, CollisionConfig):
            raise ValueError(f"cfg must be a CollisionConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        built = build_collision_model(urdf, cfg)
        self._model, self._geometry, self._bodies, self._scene = built.model, built.geometry, built.body_names, \
            built.scene
        model = self._model
        self.joint_names: tuple[str, ...] = tuple(model.names[1:])
        self._levers = lever_arms(model, self._geometry, len(self._bodies) - len(self._scene))
        prismatic = np.array([is_prismatic(model, j) for j in range(1, model.njoints)], dtype=bool)
        self._inverse_joint_step = np.where(prismatic, 0.0, 1.0 / cfg.max_joint_step_rad)
        self._default = default_positions(model)
        # Joint values are pinocchio's q as they are (transposed) unless a joint is continuous (cos, sin) or q is
        # ordered differently from the joints.
        self._plain_q = model.nq == len(self.joint_names) and all(
            model.joints[j].idx_q == j - 1 for j in range(1, model.njoints))
        index = {n: k for k, n in enumerate(self.joint_names)}
        self._mimic = [(index[j.name], index[j.mimic_joint], j.mimic_multiplier, j.mimic_offset)
                       for j in built.description.joints
                       if j.mimic_joint and j.name in index and j.mimic_joint in index]
        # Batch checks run in C++ (one thread, broadphase), one pool per pass: (travel between samples, pool with
        # that pass's padding); naming the pair reruns one configuration with per-pair results.
        self._passes = [(travel, self._pool(padding)) for padding, travel in self.pass_paddings()]
        self._data, self._geometry_data = model.createData(), pin.GeometryData(self._geometry)
        self._set_padding(self._geometry_data, cfg.padding_m)
        self.last_samples = 0   # configurations the last check tested (benchmarks)
        self._lock = threading.Lock()
        self._columns: dict[tuple[str, ...], np.ndarray] = {}
        self.pair_count = len(self._geometry.collisionPairs)
        source = f"SRDF {cfg.srdf_path}" if cfg.srdf_path else \
            "no SRDF: adjacent links and pairs within the padding at the default pose"
        self.notes = [f"collision checking {self.pair_count} pairs ({len(self._scene)} scene objects, padding "
                      f"{cfg.padding_m} m); disabled by {source}: " + (", ".join(built.disabled) or "none")]
        if not cfg.srdf_path:
            log.warning(self.notes[0])

    # ---- public API ---------------------------------------------------------------------------------------------
    def check_joints(self, joint_names: Sequence[str]) -> None:
        """Fail closed at configure: ValueError for a joint the collision model lacks; notes the joints that
        will be checked at their default position."""
        columns, _ = self._columns_of(tuple(joint_names))
        followers = {f for f, *_ in self._mimic}
        fixed = [n for k, n in enumerate(self.joint_names) if k not in set(columns) and k not in followers]
        if fixed:
            note = f"joints {fixed} are not commanded: collision-checked at {self._default_of(fixed)} (rad / m)"
            if note not in self.notes:
                self.notes.append(note)
                log.warning(note)

    def check(self, joint_names: Sequence[str], positions, start=None) -> Collision | None:
        """positions (N, J) rad / m in `joint_names` order; start (J,) or None. ValueError for bad shapes or
        names (the safety filter validates values before calling)."""
        columns, complete = self._columns_of(tuple(joint_names))
        points = np.asarray(positions, dtype=float)
        if points.ndim != 2 or points.shape[1] != len(columns) or not len(points):
            raise ValueError(f"positions must have shape (N, {len(columns)}), got {points.shape}")
        path = points if start is None else np.concatenate([np.asarray(start, dtype=float)[None, :], points])
        if complete:   # every joint given, in model order (the executor's usual case): no copy
            values = path
        else:
            values = np.repeat(self._default[None, :], len(path), axis=0)
            values[:, columns] = path
            for follower, leader, multiplier, offset in self._mimic:
                if follower not in columns:
                    values[:, follower] = multiplier * values[:, leader] + offset
        first = start is None   # u = 0 is a trajectory point (checked), else the start (not checked)
        travel, pool = self._passes[0]
        u, q = self._grid(values, travel, first)
        last = len(self._passes) - 1
        with self._lock:
            near = found = pin.computeCollisionsInParallel(1, pool, q, True, last == 0)
            tested, tested_u = len(u), u
            for level in range(1, last + 1):
                if not near.any():
                    break
                travel, pool = self._passes[level]
                finer, q = self._grid(values, travel, first)
                # A sample lies in (u[j - 1], u[j]] of the pass before: retest it if either end was near something
                # there (a sample that pass skipped lies in a stretch cleared before it, so it was not near).
                j = np.searchsorted(u, finer, side="left").clip(0, len(u) - 1)
                retest = near[j] | near[np.maximum(j - 1, 0)]
                tested_u, q = finer[retest], q[:, retest]
                found = pin.computeCollisionsInParallel(1, pool, q, True, level == last)   # the last: first hit only
                tested += len(tested_u)
                u, near = finer, np.zeros(len(finer), dtype=bool)
                near[retest] = found
            hit = None
            if near.any():   # only the last pass's near samples are collisions
                k = int(np.argmax(found))
                hit = (tested_u[k], *self._closest_pair(q[:, k]))
            self.last_samples = tested
        if hit is None:
            return None
        u, a, b, distance = hit
        if a == b:   # the batch saw a collision that no single pair confirms (never seen): refuse all the same
            return Collision(0, "an unidentified body", "another", math.nan, 1.0, False, self.cfg.padding_m)
        # u: path parameter (segment + fraction); point i of the trajectory is u = i (no start) or i + 1.
        end = math.ceil(u - 1e-9)
        return Collision(end - (0 if first else 1), self._bodies[a], self._bodies[b], distance,
                         float(1.0 - (end - u)) if end - u > 1e-9 else 1.0, b in self._scene, self.cfg.padding_m)

    def pass_paddings(self) -> list[tuple[float, float]]:
        """(padding m, travel m between samples) of each pass, coarse to fine: paddings a factor <= level_ratio
        apart (geometric), each spaced at twice its padding, the last at padding_m and max_link_travel_m."""
        coarse, fine = self.cfg.coarse_padding_m, self.cfg.padding_m
        steps = max(0, math.ceil(math.log(coarse / fine) / math.log(self._level_ratio) - 1e-9))
        paddings = [coarse * (fine / coarse) ** (k / steps) for k in range(steps)] + [fine]
        return [(p, 2.0 * p) for p in paddings[:-1]] + [(fine, self.cfg.max_link_travel_m)]

    # ---- internals ----------------------------------------------------------------------------------------------
    def _columns_of(self, names: tuple[str, ...]) -> tuple[np.ndarray, bool]:
        """Model columns of `names`, and whether they are all the model's joints in its order."""
        found = self._columns.get(names)
        if found is None:
            unknown = [n for n in names if n not in self.joint_names]
            if unknown or len(set(names)) != len(names):
                raise ValueError(f"joints {unknown or list(names)} are not (unique) joints of the collision model "
                                 f"{list(self.joint_names)}")
            found = self._columns[names] = (np.array([self.joint_names.index(n) for n in names], dtype=int),
                                            names == self.joint_names)
        return found

    def _default_of(self, names: list[str]) -> dict[str, float]:
        return {n: round(float(self._default[self.joint_names.index(n)]), 4) for n in names}

    def _pool(self, padding_m: float):
        pool = pin.BroadPhaseManagerPool_DynamicAABBTreeCollisionManager(self._model, self._geometry, 1)
        for geometry_data in pool.getGeometryDatas():
            self._set_padding(geometry_data, padding_m)
        return pool

    @staticmethod
    def _set_padding(geometry_data, padding_m: float) -> None:
        for request in geometry_data.collisionRequests:
            request.security_margin = padding_m   # a pair closer than this counts as colliding
            request.num_max_contacts = 1

    def _grid(self, values: np.ndarray, travel_m: float, include_first: bool) -> tuple[np.ndarray, np.ndarray]:
        """Path parameters u (segment + fraction, increasing) of the configurations to test along the
        piecewise-linear path `values` (K, J), and those configurations as pinocchio q (nq, M): every point and
        enough between them that no surface point moves more than `travel_m` and no revolute joint more than
        max_joint_step_rad from one to the next. (Hot path: few numpy calls.)"""
        deltas = values[1:] - values[:-1]
        moved = np.abs(deltas)
        counts = np.ceil(np.maximum((moved * self._inverse_joint_step).max(axis=1, initial=0.0),
                                    moved @ self._levers * (1.0 / travel_m)) - 1e-9)
        if counts.max(initial=0.0) <= 1.0:   # the points alone are close enough
            u = np.arange(0.0 if include_first else 1.0, len(values))
            return u, self._to_q(values if include_first else values[1:])
        counts = np.maximum(counts, 1.0).astype(int)
        segment = np.repeat(np.arange(len(counts)), counts)
        fraction = (np.arange(1, len(segment) + 1) - np.repeat(np.cumsum(counts) - counts, counts)) / counts[segment]
        samples = values[segment] + fraction[:, None] * deltas[segment]
        u = segment + fraction
        if include_first:
            u, samples = np.concatenate([[0.0], u]), np.concatenate([values[:1], samples])
        return u, self._to_q(samples)

    def _to_q(self, samples: np.ndarray) -> np.ndarray:
        return samples.T if self._plain_q else joint_values_to_q(self._model, samples)

    def _closest_pair(self, q: np.ndarray) -> tuple[int, int, float]:
        """The checked pair with the smallest distance at `q` among those within the padding (lock held)."""
        pin.computeCollisions(self._model, self._data, self._geometry, self._geometry_data, q, False)
        pairs = self._geometry.collisionPairs
        flagged = [k for k, result in enumerate(self._geometry_data.collisionResults) if result.isCollision()]
        # None flagged: the batch's pair sat within a few um of the padding, where coal's warm-started GJK can
        # answer either way; the closest pair of all is then the one it saw.
        best = (0, 0, math.inf)
        for k in flagged or range(len(pairs)):
            distance = pin.computeDistance(self._geometry, self._geometry_data, k).min_distance
            if distance < best[2]:
                best = (pairs[k].first, pairs[k].second, float(distance))
        return best
