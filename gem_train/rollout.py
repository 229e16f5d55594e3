"""Fast checks of a sim checkpoint without ROS: direct closed-loop rollouts and an input-sensitivity probe.

    gem_eval rollout --checkpoint CKPT --episodes 20 [--execute 8]     # success rate in ~2 s per episode
    gem_eval rollout --checkpoint CKPT --executor [--latency 0.1]      # + the executor core, as gem_demo runs it
    gem_eval sensitivity --checkpoint CKPT --data data/sim_pick        # does it look at its cameras, and listen?

`rollout` lays out episode k from seed * 100003 + k and names the colours in turn (gem_ros.sim.language), as
gem_eval sim does; it reports success and wrong-object rates per colour and instruction (95 % Wilson intervals).
It drives `TabletopSim` at the checkpoint's control rate: render, predict a chunk, execute its first
`--execute` actions (mapped to joints by the executor's `ActionMapper`), repeat. No scheduler blending, latency or
safety filter: it measures the policy, while `gem_eval sim` measures the whole ROS pipeline (~10x slower).
`--executor` puts the execution layer back without ROS: the ExecutionController built from the robot YAML's
gem_executor parameters (chunk alignment, blending, safety filter, setpoint anchoring) ticking at its control
rate, the JTC-semantics TrajectoryFollower of gem_sim, cameras at gem_sim's camera_rate_hz, the next chunk
requested as gem_policy's request_threshold_s says and delivered `--latency` seconds later. A gap between the two
modes is the execution layer's; a gap between `--executor` and `gem_eval sim` is ROS transport and timing.

`sensitivity` answers the usual reason a small imitation policy fails in closed loop while its offline error is
low: it copies the proprioceptive trajectory and ignores the images ("copycat"). For held-out frames at a few
episode steps it reports the mean |change| of the predicted chunk when the images, or the state, are swapped
with another episode's, next to the recorded chunks' own spread across episodes. The instruction swap keeps the
images and state and names another cube of the table (same phrasing); it is set beside the change between two
samples (sampler seeds) of the same input: a policy that listens moves far more for the first.
"""
from __future__ import annotations

import json
import re
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


def _bringup_parameters(arm: str) -> dict:
    """{node name: ros__parameters} of gem_bringup/config/<arm>/gem.yaml in the source tree (no rclpy needed)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "gem_bringup" / "config" / arm / "gem.yaml"
    if not path.exists():
        raise ValueError(f"no bringup config for arm '{arm}': {path} does not exist")
    return {node: body.get("ros__parameters", {}) for node, body in yaml.safe_load(path.read_text()).items()}


class _ExecutorLoop:
    """One episode's execution path as gem_demo wires it, minus ROS (module docstring)."""

    def __init__(self, checkpoint: Path, io, arm: str, latency_s: float):
        from gem_ros.core.executor_setup import PARAMETERS, build_controller

        nodes = _bringup_parameters(arm)
        values = {**PARAMETERS, **nodes["gem_executor"], "checkpoint": str(checkpoint),
                  "urdf_path": str(Path(__file__).resolve().parents[1] / "urdf" / arm / f"{arm}.urdf")}
        self.values, self.latency_s = values, latency_s
        self.request_threshold_s = float(nodes["gem_policy"].get("request_threshold_s", 0.3))
        self.camera_period_s = 1.0 / float(nodes["gem_sim"].get("camera_rate_hz", 10.0))
        self.tick_s = 1.0 / float(values["control_rate_hz"])
        self.horizon_s = io.chunk_len / io.control_rate_hz
        self.controller = build_controller(values)

    def run(self, sim, policy, io, instruction: str, max_s: float, observe) -> dict:
        from gem_ros.core.policy.observation import Observation
        from gem_ros.sim.follower import TrajectoryFollower

        names, q, _ = sim.joint_state()
        follower = TrajectoryFollower(names, q)
        controller, t0 = self.controller, sim.time_s
        frame, pending, last_obs_s = None, None, -np.inf   # frame: (stamp, images, q); pending: (due, chunk, stamp)
        counts = {"trajectory": 0, "hold": 0, "idle": 0, "interventions": 0, "chunks": 0}
        while sim.time_s - t0 < max_s and not sim.task_success():
            t = sim.time_s
            names, q, v = sim.joint_state()
            controller.on_joint_state(names, q, v, t, t)
            if frame is None or t - frame[0] >= self.camera_period_s - 1e-9:
                frame = (t, observe(), q.copy())
            if pending is not None and t >= pending[0]:
                controller.on_chunk(list(controller.expected_channels), 1.0 / io.control_rate_hz, pending[1],
                                    io.action_space, pending[2], t)
                pending = None
            if pending is None and last_obs_s + self.horizon_s - t <= self.request_threshold_s + self.latency_s:
                stamp, images, q_obs = frame
                chunk = policy.predict_action_chunk(Observation(images, q_obs.astype(np.float32), instruction),
                                                    seed=counts["chunks"])
                pending, last_obs_s = (t + self.latency_s, chunk, stamp), stamp
                counts["chunks"] += 1
            command = controller.tick(t)
            counts[command.kind] += 1
            if command.kind != "idle":
                traj = command.trajectory
                follower.set_trajectory(list(traj.joint_names), t, traj.times_s, traj.positions, t)
                counts["interventions"] += bool(traj.interventions)
            sim.set_joint_targets(follower.joint_names, follower.target(t))
            sim.step(self.tick_s)
        return counts


def rollout(checkpoint: Path, episodes: int, seed: int = 0, execute: int = 0, max_s: float = 12.0,
            out: Path | None = None, device: str = "cpu", executor: bool = False, latency_s: float = 0.0,
            arm: str = "panda") -> dict:
    """Success rate of `episodes` seeded sim episodes; `execute` actions per chunk (0: half the chunk), or through
    the executor core (`executor`, chunks delivered `latency_s` after their request)."""
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_ros.demo_report import outcome_summary
    from gem_ros.sim import SimConfig, TabletopSim
    from gem_ros.sim.language import episode_instruction
    from gem_ros.sim.scene import scene_overrides

    policy = GemVLAPolicy.from_pretrained(checkpoint, device=device)
    io = policy.config.io
    mapper = _mapper(io)
    execute = execute or max(1, io.chunk_len // 2)
    dt = 1.0 / io.control_rate_hz
    rows = []
    with TabletopSim(SimConfig(seed=seed, **scene_overrides(policy.config.sim_scene))) as sim:
        for episode in tqdm(range(episodes), desc="rollout", unit="episode"):
            sim.reset(seed * 100_003 + episode)
            instruction = episode_instruction(episode, sim.cfg.object_colors)
            sim.set_instruction(instruction)
            steps, lowest, counts = 0, None, None   # lowest: EE xy distance to each object when the hand was lowest
            if executor:
                loop = _ExecutorLoop(checkpoint, io, arm, latency_s)
                t0 = sim.time_s
                counts = loop.run(sim, policy, io, instruction, max_s, lambda: observe(sim, io))
                steps = int(round((sim.time_s - t0) / dt))
            while not executor and steps * dt < max_s and not sim.task_success():
                images = observe(sim, io)
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
            outcome = sim.outcome()
            rows.append({"episode": episode, "seed": seed * 100_003 + episode, "instruction": instruction,
                         "target": sim.target_object, "success": outcome == "success", "task": outcome,
                         "lifted": sim.lifted_this_episode,
                         "seconds": round(steps * dt, 2),
                         "final_ee_to_target_xy_m": round(float(np.linalg.norm((ee - target)[:2])), 4),
                         # Which cube the grasp went for: tells a wrong-colour policy from an imprecise one.
                         "grasp_nearest_object": min(lowest[1], key=lowest[1].get) if lowest else None,
                         "grasp_to_target_xy_m": round(lowest[1][sim.target_object], 4) if lowest else None,
                         **({"executor": counts} if counts is not None else {})})
    report = {"checkpoint": str(checkpoint), "episodes": episodes,
              **({"executor": True, "latency_s": latency_s} if executor else {"execute_per_chunk": execute}),
              "success_rate": float(np.mean([r["success"] for r in rows])),
              "outcomes": outcome_summary(rows),
              # the executor loop does not track the grasp height
              "grasp_went_for_target": None if executor else float(np.mean([r["grasp_nearest_object"] == r["target"]
                                                                             for r in rows])),
              "rows": rows}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rollout.json").write_text(json.dumps(report, indent=2))
    return report


def observe(sim, io) -> dict:
    """Each camera of the schema rendered and resized (INTER_AREA) as the policy node's buffer would."""
    images = {}
    for cam in io.cameras:
        rgb, _ = sim.render(cam.name)
        images[cam.name] = rgb if rgb.shape[:2] == (cam.height, cam.width) else cv2.resize(
            rgb, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
    return images


def sensitivity(checkpoint: Path, data_dir: Path, steps=(0, 15, 30), episodes: int = 10, val_fraction: float = 0.1,
                split_seed: int = 0, device: str = "cpu") -> dict:
    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.observation import Observation
    from gem_ros.sim import SimConfig
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

    colors = list((policy.config.sim_scene or {}).get("object_colors") or SimConfig().object_colors)

    def predict(images_of, state_of, instruction_of, seed: int = 0):
        instruction = instruction_of if isinstance(instruction_of, str) else instruction_of["instruction"]
        obs = Observation(dict(zip(io.camera_names, images_of["images"])), state_of["state"], instruction)
        return policy.predict_action_chunk(obs, seed=seed)

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
        if len(colors) > 1 and all(_names_one(s["instruction"], colors) for s in samples):
            swapped = np.array([predict(s, s, swap_color(s["instruction"], colors)) for s in samples])
            resampled = np.array([predict(s, s, s, seed=1) for s in samples])
            report[f"step_{t}"].update({
                "change_when_instruction_swapped": float(np.abs(swapped - base).mean()),
                "change_between_samples_same_instruction": float(np.abs(resampled - base).mean())})
    return report


def _names_one(instruction: str, colors: list[str]) -> bool:
    from gem_ros.sim.language import named_color

    try:
        named_color(instruction, colors)
    except ValueError:
        return False
    return True


def swap_color(instruction: str, colors: list[str]) -> str:
    """The same phrasing naming the next colour of `colors` ("grab the red block" -> "grab the green block")."""
    from gem_ros.sim.language import named_color

    color = named_color(instruction, colors)
    other = colors[(colors.index(color) + 1) % len(colors)]
    return re.sub(rf"\b{color}\b", other, instruction, flags=re.IGNORECASE)
