"""Fast checks of a sim checkpoint without ROS: direct closed-loop rollouts and an input-sensitivity probe.

    gem_eval rollout --checkpoint CKPT --episodes 20 [--execute 8]     # success rate in ~2 s per episode
    gem_eval sensitivity --checkpoint CKPT --data data/sim_pick        # does the policy look at its cameras?

`rollout` drives `TabletopSim` at the checkpoint's control rate: render, predict a chunk, execute its first
`--execute` actions (mapped to joints by the executor's `ActionMapper`), repeat. No scheduler blending, latency or
safety filter: it measures the policy, while `gem_eval sim` measures the whole ROS pipeline (~10x slower).

`sensitivity` answers the usual reason a small imitation policy fails in closed loop while its offline error is
low: it copies the proprioceptive trajectory and ignores the images ("copycat"). For held-out frames at a few
episode steps it reports the mean |change| of the predicted chunk when the images, or the state, are swapped
with another episode's, next to the recorded chunks' own spread across episodes.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm


def _mapper(io):
    from gem_ros.core.chunking import ActionMapper, ActionSpaceConfig
    from gem_ros.sim.scene import ARM_JOINTS, FINGER_JOINTS

    cfg = ActionSpaceConfig(kind=io.action_space, joint_names=tuple(ARM_JOINTS), action_dim=io.action_dim,
                            gripper_joint_names=tuple(FINGER_JOINTS), gripper_scale=0.5,
                            delta_reference="observation")
    return ActionMapper(cfg)


def rollout(checkpoint: Path, episodes: int, seed: int = 0, execute: int = 0, max_s: float = 12.0,
            out: Path | None = None, device: str = "cpu") -> dict:
    """Success rate of `episodes` seeded sim episodes; `execute` actions per chunk (0: half the chunk)."""
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_ros.sim import SimConfig, TabletopSim
    from gem_ros.sim.scene import scene_overrides

    policy = GemVLAPolicy.from_pretrained(checkpoint, device=device)
    io = policy.config.io
    mapper = _mapper(io)
    execute = execute or max(1, io.chunk_len // 2)
    dt = 1.0 / io.control_rate_hz
    rows = []
    with TabletopSim(SimConfig(seed=seed, **scene_overrides(policy.config.sim_scene))) as sim:
        for episode in tqdm(range(episodes), desc="rollout", unit="episode"):
            instruction = sim.reset(seed * 100_003 + episode)
            steps, lowest = 0, None     # EE xy distance to every object when the hand was lowest (the grasp try)
            while steps * dt < max_s and not sim.task_success():
                images = {}
                for cam in io.cameras:
                    rgb, _ = sim.render(cam.name)
                    images[cam.name] = rgb if rgb.shape[:2] == (cam.height, cam.width) else cv2.resize(
                        rgb, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
                names, q, _ = sim.joint_state()
                chunk = policy.predict_action_chunk(Observation(images, q.astype(np.float32), instruction),
                                                    seed=steps)
                targets = mapper.map_chunk(chunk[:execute], dict(zip(names, q.tolist())))
                for target in targets:
                    sim.set_joint_targets(mapper.output_joint_names, target)
                    sim.step(dt)
                    steps += 1
                    ee, _ = sim.ee_pose()
                    if lowest is None or ee[2] < lowest[0]:
                        lowest = (ee[2], {name: float(np.linalg.norm((ee - sim.object_position(name))[:2]))
                                          for name in sim.object_names})
            ee, _ = sim.ee_pose()
            target = sim.object_position(sim.target_object)
            rows.append({"episode": episode, "instruction": instruction, "target": sim.target_object, "success": bool(sim.task_success()),
                         "seconds": round(steps * dt, 2),
                         "final_ee_to_target_xy_m": round(float(np.linalg.norm((ee - target)[:2])), 4),
                         # Which cube the grasp went for: tells a wrong-colour policy from an imprecise one.
                         "grasp_nearest_object": min(lowest[1], key=lowest[1].get) if lowest else None,
                         "grasp_to_target_xy_m": round(lowest[1][sim.target_object], 4) if lowest else None})
    report = {"checkpoint": str(checkpoint), "episodes": episodes, "execute_per_chunk": execute,
              "success_rate": float(np.mean([r["success"] for r in rows])),
              "grasp_went_for_target": float(np.mean([r["grasp_nearest_object"] == r["target"] for r in rows])),
              "rows": rows}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rollout.json").write_text(json.dumps(report, indent=2))
    return report


def sensitivity(checkpoint: Path, data_dir: Path, steps=(0, 15, 30), episodes: int = 10, val_fraction: float = 0.1,
                split_seed: int = 0, device: str = "cpu") -> dict:
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_train.data.dataset import ChunkDataset, ChunkDatasetConfig, split_episodes
    from gem_train.data.episodes import find_episodes

    policy = GemVLAPolicy.from_pretrained(checkpoint, device=device)
    io = policy.config.io
    _, held_out = split_episodes(find_episodes(data_dir), val_fraction, split_seed)
    held_out = held_out[:episodes]
    if len(held_out) < 2:
        raise ValueError(f"sensitivity needs >= 2 held-out episodes in {data_dir}, found {len(held_out)}")
    dataset = ChunkDataset(held_out, ChunkDatasetConfig.from_io_schema(io))
    spans = [dataset.episode_span(k) for k in range(len(held_out))]

    def predict(images_of, state_of, instruction_of):
        obs = Observation(dict(zip(io.camera_names, images_of["images"])), state_of["state"],
                          instruction_of["instruction"])
        return policy.predict_action_chunk(obs, seed=0)

    report = {}
    for t in steps:
        samples = [dataset[start + min(t, length - 1)] for start, length in spans]
        n = len(samples)
        base = np.array([predict(s, s, s) for s in samples])
        images_swapped = np.array([predict(samples[(i + 1) % n], s, s) for i, s in enumerate(samples)])
        state_swapped = np.array([predict(s, samples[(i + 1) % n], s) for i, s in enumerate(samples)])
        recorded = np.array([s["actions"] for s in samples])
        report[f"step_{t}"] = {
            "error": float(np.abs(base - recorded).mean()),
            "change_when_images_swapped": float(np.abs(images_swapped - base).mean()),
            "change_when_state_swapped": float(np.abs(state_swapped - base).mean()),
            "recorded_spread_across_episodes": float(recorded.std(axis=0).mean())}
    return report
