"""gem_collect_sim: record scripted-expert demonstrations in the embedded tabletop sim as training episodes.

    gem_collect_sim --episodes 100 --out data/sim_pick --seed 0 [--image-size 96] [--workers 4]

Per control step (the expert's 10 Hz): render every sim camera (RGB + metric depth), read the 9 joint
positions (state: panda_joint1..7 rad, panda_finger_joint1..2 m), take the expert's next target, send it,
step the physics one control period. The recorded action is what the motors were commanded (the target
after the sim's URDF-limit clip) as 8 channels: the 7 arm joints (rad, absolute) + gripper WIDTH in m
(finger1 + finger2, 0..0.08), the channel layout the executor maps back with gripper_scale 0.5.
Only successful episodes are kept (a failed attempt's scratch file is deleted); files are named by attempt,
so gaps mark failures. Episode seeds derive from (--seed, attempt), so results do not depend on --workers.
Images are stored at --image-size (INTER_AREA); depth is resized with INTER_NEAREST (no blended edges).
`--action-noise` (rad) perturbs the arm's executed targets with a slowly varying random offset during the approach
and the first half of the descent (DART-style): the recorded action stays the expert's, so the episodes show the
way back to the plan from states the clean expert never visits, which is where a learned policy drifts to.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from gem_train.data.episodes import COMPRESSIONS, EpisodeWriter
from gem_train.data.stats import compute_stats, write_action_stats

GRIPPER_CHANNEL = "gripper"


@dataclass
class CollectConfig:
    episodes: int                  # successful episodes wanted
    out_dir: Path
    seed: int = 0
    image_size: int = 96           # stored square side, px (rendered at the sim cameras' own sizes)
    workers: int = 1               # processes, each with its own pybullet client
    coarse_meshes: bool = False    # draw the Panda with collision meshes: ~2x faster renders, plainer look
    compression: str = "gzip"
    max_attempts: int = 0          # 0 -> 2 * episodes + 10
    colors: tuple[str, ...] | None = None   # cubes on the table (SimConfig.object_colors); None: the sim's default
    action_noise_rad: float = 0.0  # std of the executed arm targets' random offset (module docstring); 0: clean

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for key, low in (("episodes", 1), ("seed", 0), ("image_size", 8), ("workers", 1), ("max_attempts", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if self.max_attempts == 0:
            self.max_attempts = 2 * self.episodes + 10
        if self.colors is not None:
            from gem_ros.sim import CUBE_COLORS_RGBA
            self.colors = tuple(self.colors)
            unknown = [c for c in self.colors if c not in CUBE_COLORS_RGBA]
            if not self.colors or unknown or len(set(self.colors)) != len(self.colors):
                raise ValueError(f"colors must be distinct names from {sorted(CUBE_COLORS_RGBA)}, got {self.colors}")
        if not (np.isfinite(self.action_noise_rad) and 0.0 <= self.action_noise_rad <= 0.2):
            raise ValueError(f"action_noise_rad must be in [0, 0.2], got {self.action_noise_rad!r}")
        if self.max_attempts < self.episodes:
            raise ValueError(f"max_attempts ({self.max_attempts}) must be >= episodes ({self.episodes})")


class Attempt(NamedTuple):
    attempt: int
    episode_seed: int
    success: bool
    steps: int
    seconds: float
    path: Path | None              # None when the attempt failed
    megabytes: float


def episode_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0] % 2**31)


class ExecutionNoise:
    """Offset added to the executed arm targets: an AR(1) walk (correlation ~1 s at 10 Hz) with stationary std
    `std_rad`, on while the hand approaches and for the first half of the descent, then decaying to zero before
    the fingers close, so the grasp itself is the expert's."""

    def __init__(self, std_rad: float, joints: int, expert, rng: np.random.Generator):
        c = expert.cfg
        self.on_steps = int(round((c.approach_s + 0.5 * c.descend_s) * c.control_hz))
        self.std, self.rng, self.value, self.keep = std_rad, rng, np.zeros(joints), 0.9

    def next(self, step: int) -> np.ndarray:
        if step < self.on_steps:
            fresh = self.rng.normal(0.0, self.std * np.sqrt(1 - self.keep ** 2), self.value.shape)
            self.value = self.keep * self.value + fresh
        else:
            self.value = 0.5 * self.value
        return self.value


def record_attempt(cfg: CollectConfig, attempt: int) -> Attempt:
    """Run one expert episode with its own sim and write it; keep the file only if the task succeeded."""
    from gem_ros.sim import ARM_JOINTS, ScriptedPickExpert, SimConfig, TabletopSim
    from gem_ros.sim.language import phrasings

    t0 = time.perf_counter()
    seed = episode_seed(cfg.seed, attempt)
    size = (cfg.image_size, cfg.image_size)
    scene = {"coarse_robot_meshes": cfg.coarse_meshes, **({"object_colors": list(cfg.colors)} if cfg.colors else {})}
    with TabletopSim(SimConfig(seed=seed, **scene)) as sim:
        instruction = sim.reset(seed)
        color = sim.target_object.removesuffix("_cube")
        # Every phrasing of the target (the sim's own first): the dataset samples one per training sample.
        instructions = [instruction, *[i for i in phrasings(color) if i != instruction]]
        expert = ScriptedPickExpert(sim)
        cameras = [c.name for c in sim.cfg.cameras]
        extra = {"episode_seed": seed, "attempt": attempt, "sim": "gem_ros.sim.TabletopSim",
                 "coarse_robot_meshes": cfg.coarse_meshes, "object_colors": list(sim.cfg.object_colors),
                 "target_object": sim.target_object,
                 # where the named cube starts (m, world frame): gem_train.grounding's auxiliary target
                 "target_position": [float(v) for v in sim.object_position(sim.target_object)],
                 "render_sizes": {c.name: [c.height, c.width] for c in sim.cfg.cameras},
                 "gripper_action": "width_m = finger1 + finger2 target", "depth_unit": "m",
                 "action_noise_rad": cfg.action_noise_rad}
        writer = EpisodeWriter(cfg.out_dir / f"episode_{attempt:06d}.hdf5", instructions=instructions,
                               control_rate_hz=expert.cfg.control_hz, camera_names=cameras,
                               state_names=sim.joint_names, action_names=[*ARM_JOINTS, GRIPPER_CHANNEL],
                               action_space="absolute_joint", extra=extra, compression=cfg.compression)
        noise = ExecutionNoise(cfg.action_noise_rad, len(ARM_JOINTS), expert, np.random.default_rng([seed, 7]))
        try:
            for step, target in enumerate(expert):
                images, depth = {}, {}
                for cam in cameras:
                    rgb, metres = sim.render(cam)
                    images[cam] = cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA) \
                        if rgb.shape[:2] != size else rgb
                    depth[cam] = cv2.resize(metres, size[::-1], interpolation=cv2.INTER_NEAREST) \
                        if metres.shape[:2] != size else metres
                _, positions, _ = sim.joint_state()
                sim.set_joint_targets(sim.joint_names, target)
                commanded = sim.joint_targets             # after the URDF clip: the expert's command
                action = np.concatenate([commanded[:len(ARM_JOINTS)], [commanded[-2] + commanded[-1]]])
                writer.add_step(images, positions, action, depth)
                if cfg.action_noise_rad > 0:
                    drift = np.zeros_like(target)
                    drift[:len(ARM_JOINTS)] = noise.next(step)        # the fingers stay the expert's
                    sim.set_joint_targets(sim.joint_names, target + drift)
                sim.step(1.0 / expert.cfg.control_hz)
            success = sim.task_success()
        except BaseException:
            writer.abort()
            raise
        steps = writer.num_steps
        path = writer.close() if success else writer.abort()
    megabytes = path.stat().st_size / 1e6 if path else 0.0
    return Attempt(attempt, seed, success, steps, time.perf_counter() - t0, path, megabytes)


def collect(cfg: CollectConfig) -> list[Attempt]:
    """Attempts in rounds of (episodes still missing) until enough succeed or max_attempts is spent."""
    from tqdm import tqdm

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(cfg.out_dir.glob("episode_*.hdf5"))
    if existing:
        raise ValueError(f"{cfg.out_dir} already holds {len(existing)} episodes; recorded episodes are never "
                         "overwritten, choose a new --out")
    work = functools.partial(record_attempt, cfg)
    pool = multiprocessing.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 else None
    attempts: list[Attempt] = []
    kept = 0
    try:
        with tqdm(total=cfg.episodes, unit="episode", desc="collect") as bar:
            while kept < cfg.episodes and len(attempts) < cfg.max_attempts:
                batch = range(len(attempts), min(len(attempts) + cfg.episodes - kept, cfg.max_attempts))
                for result in (pool.imap(work, batch) if pool else map(work, batch)):
                    attempts.append(result)
                    kept += result.success
                    bar.update(int(result.success))
                    bar.set_postfix(failed=len(attempts) - kept)
        if pool is not None:
            pool.close()
    except BaseException:
        # Ctrl-C or a crash: stop the workers now (a plain close() would let queued attempts run on). An
        # episode cut short stays a .tmp scratch file, which readers ignore.
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.join()
    paths = [a.path for a in attempts if a.success]
    if paths:
        write_action_stats(cfg.out_dir, compute_stats(paths))
    return attempts


def summarize(attempts: list[Attempt], wall_s: float) -> str:
    kept = [a for a in attempts if a.success]
    frames = sum(a.steps for a in kept)
    rate = len(kept) / max(1, len(attempts))
    mb = np.mean([a.megabytes for a in kept]) if kept else 0.0
    per_attempt = np.mean([a.seconds for a in attempts]) if attempts else 0.0
    return (f"episodes {len(kept)} (failed {len(attempts) - len(kept)} of {len(attempts)} attempts, "
            f"success rate {rate:.0%}), frames {frames}, wall {wall_s:.1f} s, "
            f"{wall_s / max(1, len(kept)):.2f} s per kept episode ({per_attempt:.2f} s compute per attempt), "
            f"{mb:.2f} MB per episode")


def parse_args(argv: list[str] | None) -> CollectConfig:
    parser = argparse.ArgumentParser(prog="gem_collect_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, required=True, help="successful episodes to record")
    parser.add_argument("--out", type=Path, required=True, help="output dataset folder (must hold no episodes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=96, help="stored square image side, px")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--coarse-meshes", action="store_true", help="render the robot with its collision meshes")
    parser.add_argument("--compression", choices=COMPRESSIONS, default="gzip")
    parser.add_argument("--max-attempts", type=int, default=0, help="0: 2 * episodes + 10")
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="std (rad) of a slow random offset on the executed arm targets while approaching "
                        "(recorded actions stay the expert's; 0: clean)")
    parser.add_argument("--colors", nargs="+", help="cubes on the table (default: the sim's red green blue); "
                        "the instruction names one of them")
    args = parser.parse_args(argv)
    try:
        return CollectConfig(episodes=args.episodes, out_dir=args.out, seed=args.seed, image_size=args.image_size,
                             workers=args.workers, coarse_meshes=args.coarse_meshes, compression=args.compression,
                             max_attempts=args.max_attempts, colors=args.colors, action_noise_rad=args.action_noise)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    try:
        attempts = collect(cfg)
    except ValueError as error:
        print(f"gem_collect_sim: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gem_collect_sim: interrupted; every episode_*.hdf5 in {cfg.out_dir} is complete, *.tmp files are "
              "partial and ignored; action_stats.json was not written", file=sys.stderr)
        return 130
    print(summarize(attempts, time.perf_counter() - t0))
    kept = sum(a.success for a in attempts)
    if kept < cfg.episodes:
        print(f"gem_collect_sim: only {kept} of {cfg.episodes} episodes succeeded within {cfg.max_attempts} attempts",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
