"""Collision-check cost on this CPU: per chunk, per control tick, and against the number of scene objects.

    python bench/collision_check.py                  # Panda + table + two boxes, then 1..32 scene boxes (~1 min)
    python bench/collision_check.py --quick          # small counts (the test suite runs this)

The Panda (pybullet_data's URDF, collision meshes as convex hulls) with gem.yaml's padding and interpolation,
no SRDF (adjacent + default-pose pairs exempt). A chunk: 32 points, 0.1 s apart, random joint velocities up to
`--chunk-speed` rad/s from poses above the table, checked at its points and between them (as on_chunk does). A tick:
10 points 20 ms apart (lookahead 0.2 s at 50 Hz) from the anchor, as each control tick checks. Only collision-free
paths are timed (a hit stops the check early, which would flatter the numbers); "near the table" rows keep only
paths the fine pass had to look at. Goal: <= 2 ms per chunk and <= 0.3 ms per tick (median, away from objects).
Prints median / p95 and the configurations tested per path, with the checker's passes as configured and with
the coarse and fine passes only (no middle ones), on the same paths.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gem_ros.core.safety.collision import CollisionChecker  # noqa: E402
from gem_ros.core.safety.config import CollisionConfig, SceneObject  # noqa: E402
from gem_ros.sim.arm_wiring import read_sections  # noqa: E402
from gem_ros.sim.arms import SIM_ARMS, urdf_path  # noqa: E402

ARM = SIM_ARMS["panda"]
NAMES = list(ARM.joint_names)
HOME = np.array([*ARM.home_rad, 0.04, 0.04])
TABLE = SceneObject(name="table", shape="box", size_m=(1.5, 1.0, 0.05), pose_xyz_rpy=(0.5, 0.0, -0.025, 0, 0, 0))


def boxes(count: int) -> tuple[SceneObject, ...]:
    """`count` 10 cm boxes on a ring around the base, beyond the arm's usual reach over the table."""
    angles = np.linspace(0.6, 2 * np.pi - 0.6, count, endpoint=True) if count > 1 else [np.pi]
    return tuple(SceneObject(name=f"box{k}", shape="box", size_m=(0.1, 0.1, 0.1),
                             pose_xyz_rpy=(0.75 * np.cos(a), 0.75 * np.sin(a), 0.3, 0, 0, 0))
                 for k, a in enumerate(angles))


TWO_PASSES = 1e9   # level_ratio that leaves only the coarse and the fine pass (no middle ones)


def checker(scene: tuple[SceneObject, ...], level_ratio: float | None = None) -> CollisionChecker:
    executor = read_sections(REPO / "gem_bringup/config/panda/gem.yaml")["gem_executor"]
    cfg = CollisionConfig(padding_m=executor["collision_padding_m"],
                          max_link_travel_m=executor.get("collision_max_link_travel_m") or None,
                          coarse_padding_m=executor.get("collision_coarse_padding_m", 0.03), scene_objects=scene)
    return CollisionChecker(urdf_path(ARM), cfg, **({} if level_ratio is None else {"level_ratio": level_ratio}))


LOW = np.array([0.0, 0.75, 0.0, -1.7, 0.0, 2.4, 0.785, 0.04, 0.04])   # fingers a few cm above the table


def free_paths(ck: CollisionChecker, rng, count: int, points: int, dt_s: float, speed: float, start: bool,
               near: bool = False):
    """Collision-free random paths: (start or None, points (P, 9)), fingers fixed open. `near`: only paths that
    pass within the coarse padding of something (the fine pass runs), from poses with the hand low."""
    paths, tries = [], 0
    while len(paths) < count:
        tries += 1
        origin = (LOW if near else HOME) + np.r_[rng.uniform(-0.5, 0.5, 7) * (0.3 if near else 1.0), 0.0, 0.0]
        velocity = np.r_[rng.uniform(-speed, speed, 7), 0.0, 0.0]
        path = origin + np.arange(1, points + 1)[:, None] * dt_s * velocity
        if ck.check(NAMES, path, origin if start else None) is None and (
                not near or ck.last_samples > points + (0 if start else 1)):
            paths.append((origin if start else None, path))
    return paths, tries


def timed(ck: CollisionChecker, paths) -> tuple[float, float, float]:
    """(median ms, p95 ms, mean configurations tested) over `paths`, after one untimed warm-up call."""
    ck.check(NAMES, paths[0][1], paths[0][0])
    times, samples = [], []
    for start, path in paths:
        t0 = time.perf_counter()
        ck.check(NAMES, path, start)
        times.append((time.perf_counter() - t0) * 1e3)
        samples.append(ck.last_samples)
    return float(np.median(times)), float(np.percentile(times, 95)), float(np.mean(samples))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--chunk-speed", type=float, default=0.5, help="max joint speed of a chunk, rad/s")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    chunks, ticks = (20, 50) if args.quick else (300, 2000)
    rng = np.random.default_rng(args.seed)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    t0 = time.perf_counter()
    ck = checker((TABLE, *boxes(2)))
    print(f"configure: {(time.perf_counter() - t0) * 1e3:.0f} ms ({ck.pair_count} pairs, padding {ck.cfg.padding_m} m, "
          f"max link travel {ck.cfg.max_link_travel_m} m; coarse pass {ck.cfg.coarse_padding_m} m)")
    two = checker((TABLE, *boxes(2)), TWO_PASSES)
    print("passes (padding / travel mm): " + ", ".join(f"{p * 1e3:.1f} / {t * 1e3:.1f}" for p, t in ck.pass_paddings())
          + "; coarse + fine only: " + ", ".join(f"{p * 1e3:.1f} / {t * 1e3:.1f}"
                                                          for p, t in two.pass_paddings()))
    print(f"{'':34s} {'as configured':>44s} | {'coarse + fine only':>44s}")
    rows = []
    for label, count, points, dt_s, speed, start, near in (
            ("chunk 32 pts @ 10 Hz", chunks, 32, 0.1, args.chunk_speed, False, False),
            ("chunk 32 pts @ 10 Hz, 2x speed", chunks, 32, 0.1, 2 * args.chunk_speed, False, False),
            ("chunk 32 pts near the table", chunks, 32, 0.1, args.chunk_speed, False, True),
            ("tick 10 pts @ 50 Hz", ticks, 10, 0.02, args.chunk_speed, True, False),
            ("tick 10 pts near the table", ticks, 10, 0.02, args.chunk_speed, True, True)):
        # "near": paths where the two-pass checker's fine pass ran (the same paths for both)
        paths, tries = free_paths(two, rng, count, points, dt_s, speed, start, near)
        paths = [(s, p) for s, p in paths if ck.check(NAMES, p, s) is None]   # a hit stops early: free for both
        median, p95, samples = timed(ck, paths)
        before = timed(two, paths)
        rows.append((label, median, p95, samples))
        print(f"{label:34s} median {median:6.3f} ms  p95 {p95:6.3f} ms  {samples:6.1f} cfg | median {before[0]:6.3f} "
              f"ms  p95 {before[1]:6.3f} ms  {before[2]:6.1f} cfg  ({count} free of {tries} drawn)")
    print("\nscene objects (table + boxes): per chunk / per tick, median ms")
    for extra in ((0, 1, 2, 4, 8) if args.quick else (0, 1, 2, 4, 8, 16, 32)):
        ck = checker((TABLE, *boxes(extra))) if extra else checker((TABLE,))
        chunk_paths, _ = free_paths(ck, rng, max(5, chunks // 3), 32, 0.1, args.chunk_speed, False)
        tick_paths, _ = free_paths(ck, rng, max(10, ticks // 3), 10, 0.02, args.chunk_speed, True)
        chunk, tick = timed(ck, chunk_paths)[0], timed(ck, tick_paths)[0]
        print(f"  {1 + extra:3d} objects, {ck.pair_count:3d} pairs: chunk {chunk:6.3f} ms  tick {tick:6.3f} ms")
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"\ngoal per chunk <= 2 ms: {verdict(rows[0][1] <= 2.0)}; per tick <= 0.3 ms: {verdict(rows[3][1] <= 0.3)} "
          f"(near the table: {verdict(rows[4][1] <= 0.3)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
