"""gem_demo: the closed loop in one process: simulated arm + GEM-VLA policy + executor, over real ROS 2 topics.

    gem_demo                                 # shipped tiny policy, 3 episodes (colours in turn), outputs/demo/
    gem_demo --instruction "pick up the blue cube" --episodes 2
    gem_demo --interactive                   # type an instruction, watch the episode, type the next (EOF/quit ends)
    gem_demo --checkpoint PATH --episodes 5
    gem_demo --arm ur5e                      # dry run of a real arm's configuration on its simulation model

Each episode lays out the cubes from --seed + episode and sends its instruction as an ExecuteInstruction goal;
without --instruction the episodes name the colours in turn (and the phrasings in turn after each round).
Success means the named cube was lifted; lifting another is reported as "wrong object".
Per episode it prints success, steps, chunk latency p50/p95, control-loop rate and safety interventions, and
writes a GIF of the scene camera plus a PNG panel (camera views, executed joint trajectories).
`--arm` takes any gem_bringup configuration whose arm has a simulation model (gem_ros/sim/arms.py: panda, ur5e,
ur10e, xarm7, panda_franka_ros2): the chain runs with that arm's joint names, limits and safety settings. An arm
without the Panda's gripper runs dry: an untrained policy with its I/O schema, no task success measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gem_ros.nodes.spinning import EXECUTOR_KINDS

REPO = Path(__file__).resolve().parents[1]
# The default stays the one-red-cube policy: checkpoints/sim_pick_lang (three cubes, the instruction names one) does
# not pick the named cube yet (0 of 54 held-out episodes, README); run it with --checkpoint.
SHIPPED_CHECKPOINT = REPO / "checkpoints" / "sim_pick_tiny"
ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]


def make_random_sim_checkpoint(path: Path, sim_scene: dict | None = None, arm: str = "panda") -> Path:
    """A tiny, randomly initialised GEM-VLA with the I/O schema of `arm`'s simulation model (its joints as state,
    its arm joints and gripper width as actions): what runs when nothing is trained yet. `sim_scene` gives it a
    trained checkpoint's scene, for an untrained baseline on the same task."""
    import torch

    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config, write_tiny_backbone
    from gem_ros.sim.arms import sim_arm

    model = sim_arm(arm)
    arm_names, gripper = list(model.arm_joints), model.has_gripper
    torch.manual_seed(0)
    config = tiny_policy_config(image_size=96, state_dim=len(model.joint_names),
                                action_dim=len(arm_names) + gripper, chunk_len=8, state_names=list(model.joint_names),
                                action_names=arm_names + ["gripper"] * gripper,
                                gripper_channels=[len(arm_names)] if gripper else [], control_rate_hz=10.0)
    config.sim_scene = sim_scene
    home = np.array(model.home_rad)
    # Actions span home +- 0.15 rad and the middle of the gripper range: an untrained policy wiggles near home
    # (its samples can still leave the range; the executor's safety filter then refuses them, as it should).
    normalizer = MinMaxNormalizer(np.r_[home - 0.15, [0.03] * gripper], np.r_[home + 0.15, [0.05] * gripper])
    backbone = write_tiny_backbone(path / "_backbone_src", text_layers=3)
    policy = GemVLAPolicy.build(config, backbone, normalizer, device="cpu")
    return policy.save_pretrained(path / "random_tiny")


def executor_overrides(checkpoint: Path) -> dict:
    """The checkpoint decides what its numbers mean (action space, control rate); the robot YAML the rest."""
    from gem_ros.core.policy.checkpoint import read_config

    io = read_config(checkpoint).io
    overrides = {"action_space": io.action_space, "chunk_dt_s": 1.0 / io.control_rate_hz}
    if io.action_space == "delta_joint":
        overrides["delta_reference"] = "observation"   # how gem_train stores delta actions
    return overrides


def home_overrides(wiring, scene: dict) -> dict:
    """A named state "home" for the executor (the sim's episode-start pose: arm home, fingers open) so that
    gem_demo resets the arm through ~/move_to_named between episodes, as on a real arm; {} when the
    executor's joints are not all the model's."""
    from gem_ros.sim.scene import FINGER_OPEN_M

    model = wiring.arm
    home = {**dict(zip(model.arm_joints, scene.get("home_arm_rad") or model.home_rad)),
            **{n: FINGER_OPEN_M for n in model.finger_joints}}
    joints = [n for n in wiring.executor["joint_names"] if n]
    if not all(n in home for n in joints):
        return {}
    return {"named_state_names": ["home"], "named_state_positions": [float(home[n]) for n in joints]}


def reset_arm(node, executor_node, timeout_s: float) -> tuple[bool, str, float]:
    """Move the arm home through gem_executor's ~/move_to_named and wait until the move ends (wall time).
    Returns (reached, message, wall seconds)."""
    from gem_msgs.srv import MoveToNamed

    start = time.monotonic()
    client = node.create_client(MoveToNamed, f"{executor_node.get_fully_qualified_name()}/move_to_named")
    try:
        if not client.wait_for_service(timeout_sec=timeout_s):
            return False, "~/move_to_named not available", time.monotonic() - start
        future = client.call_async(MoveToNamed.Request(name="home"))
        while not future.done() and time.monotonic() - start < timeout_s:
            time.sleep(0.01)
        reply = future.result() if future.done() else None
        if reply is None or not reply.success:
            return False, reply.message if reply else "no reply from ~/move_to_named", time.monotonic() - start
        while executor_node.controller.stats["named_move"] and time.monotonic() - start < timeout_s:
            time.sleep(0.02)
        stats = executor_node.controller.stats
        reached = not stats["named_move"] and stats["last_reason"].endswith("done")
        return reached, reply.message if reached else f"{reply.message}; ended: {stats['last_reason']}", \
            time.monotonic() - start
    finally:
        node.destroy_client(client)


def sim_overrides(checkpoint: Path) -> dict:
    """The scene the checkpoint was trained in (its `sim_scene`), as gem_sim parameters."""
    from gem_ros.core.policy.checkpoint import read_config
    from gem_ros.sim.scene import scene_overrides

    return scene_overrides(read_config(checkpoint).sim_scene)


def policy_overrides(checkpoint: Path) -> dict:
    """A checkpoint with a depth expert also shows what it predicts (every 5th chunk, short sampler: cheap)."""
    from gem_ros.core.policy.checkpoint import read_config

    if read_config(checkpoint).depth_expert is None:
        return {}
    return {"predicted_depth_every_n_chunks": 5, "predicted_depth_steps": 10}


@dataclass
class EpisodeLog:
    frames: list = field(default_factory=list)            # scene camera RGB
    last_images: dict = field(default_factory=dict)
    predicted_depth: np.ndarray | None = None             # last /gem/predicted_depth/scene image (depth expert)
    joint_t: list = field(default_factory=list)
    joint_q: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)
    trajectory_times: list = field(default_factory=list)  # sim time of each trajectory sent to the controller


class Recorder:
    """Subscribes like any other tool would and keeps what the report needs."""

    def __init__(self, node, frame_every: int = 2, trajectory_topic: str = "/arm_controller/joint_trajectory"):
        from gem_msgs.msg import ActionChunk
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from trajectory_msgs.msg import JointTrajectory

        from gem_ros.nodes.conversions import image_msg_to_rgb, stamp_to_s

        self._to_rgb, self._to_s = image_msg_to_rgb, stamp_to_s
        self.log, self._lock, self._frame_every, self._n = EpisodeLog(), threading.Lock(), frame_every, 0
        node.create_subscription(Image, "/camera/scene/image_raw", lambda m: self._image("scene", m),
                                 qos_profile_sensor_data)
        node.create_subscription(Image, "/camera/wrist/image_raw", lambda m: self._image("wrist", m),
                                 qos_profile_sensor_data)
        node.create_subscription(Image, "/gem/predicted_depth/scene", self._depth, 1)
        node.create_subscription(JointState, "/joint_states", self._joints, 50)
        node.create_subscription(ActionChunk, "/gem/action_chunk", self._chunk, 10)
        node.create_subscription(JointTrajectory, trajectory_topic, self._trajectory, 50)
        self._clock = node.get_clock()

    def new_episode(self) -> EpisodeLog:
        with self._lock:
            done, self.log, self._n = self.log, EpisodeLog(), 0
        return done

    def _image(self, camera, msg) -> None:
        rgb = self._to_rgb(msg)
        with self._lock:
            self.log.last_images[camera] = rgb
            if camera == "scene":
                self._n += 1
                if self._n % self._frame_every == 0:
                    self.log.frames.append(rgb)

    def _depth(self, msg) -> None:
        rgb = self._to_rgb(msg)
        with self._lock:
            self.log.predicted_depth = rgb

    def _joints(self, msg) -> None:
        with self._lock:
            self.log.joint_t.append(self._to_s(msg.header.stamp))
            self.log.joint_q.append(np.array(msg.position))

    def _chunk(self, msg) -> None:
        if msg.num_points:
            with self._lock:
                self.log.latencies_ms.append(msg.inference_latency_ms)

    def _trajectory(self, msg) -> None:
        with self._lock:
            self.log.trajectory_times.append(self._clock.now().nanoseconds * 1e-9)


def control_rate_hz(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="GEM-VLA checkpoint folder")
    parser.add_argument("--random-policy", action="store_true",
                        help="the untrained baseline: a tiny randomly initialised GEM-VLA, in the scene of "
                             "--checkpoint (or of the shipped one)")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--instruction", default=None,
                        help='run this instruction every episode, e.g. "pick up the blue cube" (default: the '
                             "colours in turn)")
    parser.add_argument("--interactive", action="store_true",
                        help="read instructions from stdin, one episode each, until EOF or 'quit' (--episodes "
                             "ignored)")
    parser.add_argument("--episode-timeout", type=float, default=12.0, help="sim seconds per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", default="panda")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--gui", action="store_true", help="open pybullet's window (needs a display)")
    parser.add_argument("--cpu-threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="torch threads of a CPU policy (default: all cores but one, left to the sim's "
                             "rendering; 2 on 2 cores doubled the chunk latency)")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS, default="auto",
                        help="rclpy executor of the nodes (gem_ros.nodes.spinning); auto = single here: with the "
                             "events one, pybullet rendering on its thread starves inference (3x slower chunks)")
    # One process shares one GIL: pybullet rendering holds it, so a sim racing at full speed starves inference.
    # Sim time keeps every node consistent at any factor; 0.5 leaves the policy its share of a 2-core laptop.
    parser.add_argument("--real-time-factor", type=float, default=0.5, help="sim seconds per wall second")
    args = parser.parse_args(argv)
    if args.instruction is not None and args.interactive:
        parser.error("--instruction and --interactive exclude each other")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from tqdm import tqdm

    from gem_ros.commander import GemCommander
    from gem_ros.core.policy.checkpoint import read_config
    from gem_ros.demo_report import outcome_summary, outcome_table, write_episode_outputs
    from gem_ros.nodes.composed import connect_in_process
    from gem_ros.nodes.executor_node import ExecutorNode, start_executor
    from gem_ros.nodes.params import bringup_config, node_parameters
    from gem_ros.nodes.policy_node import PolicyNode
    from gem_ros.nodes.sim_node import SimNode
    from gem_ros.nodes.spinning import make_executor
    from gem_ros.sim.scene import SimConfig
    from gem_ros.sim.arm_wiring import read_sections, sim_wiring
    from gem_ros.sim.language import episode_instruction, named_color, typed_instructions

    try:   # the arm's own YAML, pointed at its simulation model (what that changes is printed below)
        config = bringup_config(args.arm)
        wiring = sim_wiring(read_sections(config), str(config))
    except ValueError as error:
        print(f"gem_demo: cannot run arm {args.arm!r} in the embedded simulator: {error}", file=sys.stderr)
        return 1
    checkpoint = args.checkpoint
    if checkpoint is not None:   # the sim and executor settings come from its config: a broken one stops here
        try:
            read_config(checkpoint)
        except ValueError as error:
            print(f"gem_demo: cannot use checkpoint {checkpoint}: {error}", file=sys.stderr)
            return 1
    scratch = tempfile.TemporaryDirectory(prefix="gem_demo_")
    if not wiring.task and (checkpoint is None or args.random_policy):
        model = wiring.arm
        print(f"policy: a tiny RANDOMLY INITIALISED GEM-VLA with the I/O schema of {args.arm} (state "
              f"{list(model.joint_names)}, actions {list(model.arm_joints)}{' + gripper' * model.has_gripper}): a DRY "
              f"RUN of the whole chain on the {model.name} model, not a trained policy")
        checkpoint = make_random_sim_checkpoint(Path(scratch.name), arm=model.name)
    elif args.random_policy:
        scene_of = checkpoint or (SHIPPED_CHECKPOINT if SHIPPED_CHECKPOINT.exists() else None)
        print("policy: a tiny RANDOMLY INITIALISED GEM-VLA (--random-policy: the untrained baseline)")
        checkpoint = make_random_sim_checkpoint(Path(scratch.name), sim_overrides(scene_of) if scene_of else None,
                                                arm=wiring.arm.name)
    elif checkpoint is None and SHIPPED_CHECKPOINT.exists():
        checkpoint = SHIPPED_CHECKPOINT
        print(f"policy: shipped checkpoint {checkpoint}")
    elif checkpoint is None:
        print("policy: no trained checkpoint found -> a tiny RANDOMLY INITIALISED GEM-VLA (it moves, it will not "
              "solve the task; train one with gem_train)")
        checkpoint = make_random_sim_checkpoint(Path(scratch.name), arm=wiring.arm.name)
    for note in wiring.notes:
        print(f"sim ({args.arm}): {note}")
    args.out.mkdir(parents=True, exist_ok=True)

    rclpy.init()
    scene = sim_overrides(Path(checkpoint))
    if scene:
        print(f"scene: {scene} (the checkpoint's training scene)")
    colors = list(scene.get("object_colors") or SimConfig().object_colors)
    if args.instruction is not None:
        try:
            named_color(args.instruction, colors)
        except ValueError as error:
            print(f"gem_demo: --instruction: {error}", file=sys.stderr)
            rclpy.try_shutdown()
            scratch.cleanup()
            return 2
    sim = SimNode(parameter_overrides=node_parameters(config, "gem_sim", seed=args.seed, gui=args.gui,
                                                      real_time_factor=args.real_time_factor, **scene,
                                                      **wiring.sim))
    # Sim time for the policy and executor, as the launch file gives them with sim:=true (gem_ros.bringup)
    policy = PolicyNode(parameter_overrides=node_parameters(config, "gem_policy", checkpoint=str(checkpoint),
                                                            cpu_threads=args.cpu_threads, use_sim_time=True,
                                                            **wiring.policy, **policy_overrides(Path(checkpoint))))
    executor_node = start_executor(ExecutorNode(parameter_overrides=node_parameters(
        config, "gem_executor", **wiring.executor, use_sim_time=True,
        subscribe_chunks=False, **executor_overrides(Path(checkpoint)), **home_overrides(wiring, scene))))
    connect_in_process(policy, executor_node)   # as gem_policy_executor: chunks in memory, no DDS hop
    # On sim time like the other nodes: the recorder stamps trajectories with it (trajectories per sim second).
    tools = Node("gem_demo", parameter_overrides=[Parameter("use_sim_time", value=True)])
    recorder = Recorder(tools, trajectory_topic=f"/{wiring.sim['controller_name']}/joint_trajectory")
    # One thread: rclpy's multi-threaded executor burns a core on this load.
    executor = make_executor(args.executor, runs_inference=True)
    for node in (sim, policy, executor_node, tools):
        executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    results = []
    try:
        if policy.trigger_configure() != TransitionCallbackReturn.SUCCESS:   # else: no action server, ever
            print(f"gem_demo: gem_policy could not load {checkpoint}: {policy.configure_error}", file=sys.stderr)
            return 1
        policy.trigger_activate()
        commander = GemCommander(node=tools)
        if args.interactive:
            print(f"cubes on the table: {', '.join(colors)}. Type an instruction (e.g. "
                  f"'{episode_instruction(1, colors)}'); 'quit' or EOF ends.")
            typed = typed_instructions(sys.stdin, colors, lambda text: print(text, end="", flush=True),
                                       lambda text: print(f"  refused: {text}", flush=True))
            bar = tqdm(typed, desc="episodes", unit="ep", disable=True)
        else:
            bar = tqdm([args.instruction or episode_instruction(k, colors) for k in range(args.episodes)],
                       desc="episodes", unit="ep")
        for episode, wanted in enumerate(bar):
            if episode and executor_node.controller.named_states:   # home through the executor, as a real arm
                reached, message, reset_s = reset_arm(tools, executor_node, 60.0)
                results[-1].update(reset_home=reached, reset_message=message, reset_wall_s=reset_s)
                bar.write(f"reset: {message} ({'reached' if reached else 'NOT reached'}, wall {reset_s:.1f} s)")
            sim.reset_episode(args.seed + episode)
            instruction = sim.set_instruction(wanted)   # before the goal: the target the sim scores
            recorder.new_episode()
            stats_before = executor_node.controller.stats
            t0_sim, t0_wall = sim.time_s, time.monotonic()
            handle = commander.run_instruction(instruction, timeout=args.episode_timeout)
            result = handle.wait(args.episode_timeout * 20 + 60)
            log = recorder.new_episode()
            sim_s = sim.time_s - t0_sim
            task = sim.outcome() if wiring.task else "dry run"
            row = {"episode": episode, "seed": args.seed + episode, "instruction": instruction,
                   "target": f"{named_color(instruction, colors)}_cube",
                   # the sim's verdict over the episode (named cube lifted in both fingers); the goal ends
                   # SUCCEEDED on the same test, live, from gem/task_success
                   "success": task == "success",
                   "task": task, "lifted": sim.sim.lifted_this_episode,
                   "outcome": result.outcome_name if result else "NO_RESULT",
                   "steps": result.chunks_executed if result else 0,
                   "sim_s": sim_s, "wall_s": time.monotonic() - t0_wall,
                   "latency_p50_ms": float(np.percentile(log.latencies_ms, 50)) if log.latencies_ms else float("nan"),
                   "latency_p95_ms": float(np.percentile(log.latencies_ms, 95)) if log.latencies_ms else float("nan"),
                   "control_hz": 1.0 / executor_node.controller.stats["tick_period_mean_s"],
                   "trajectories_per_s": control_rate_hz(log.trajectory_times),
                   **{key: executor_node.controller.stats[f"safety_{key}"] - stats_before[f"safety_{key}"]
                      for key in ("interventions", "interventions_arm", "interventions_gripper")},
                   "safety_rejections": executor_node.controller.stats["safety_rejections"]
                   - stats_before["safety_rejections"]}
            write_episode_outputs(args.out, episode, instruction, log, row)
            results.append(row)
            verdict = "DRY RUN" if not wiring.task else "SUCCESS" if row["success"] else \
                "WRONG OBJECT" if task == "wrong object" else "fail   "
            bar.write(f"ep {episode}: {verdict} {row['outcome']:<9} "
                      f"'{instruction}'  chunks {row['steps']:3d}  sim {sim_s:4.1f} s  wall {row['wall_s']:4.1f} s  "
                      f"latency p50/p95 {row['latency_p50_ms']:.0f}/{row['latency_p95_ms']:.0f} ms  "
                      f"control {row['control_hz']:.0f} Hz  safety interventions {row['interventions']} "
                      f"(arm {row['interventions_arm']}, gripper {row['interventions_gripper']})")
    finally:
        policy.worker and policy.worker.shutdown()
        executor.shutdown()
        spin.join(timeout=10.0)   # a sim tick still running would publish on a destroyed publisher
        for node in (sim, policy, executor_node, tools):
            node.destroy_node()
        rclpy.try_shutdown()
        scratch.cleanup()
    rate = float(np.mean([r["success"] for r in results])) if results and wiring.task else None
    summary = outcome_summary(results) if results and wiring.task else None
    (args.out / "summary.json").write_text(json.dumps(
        {"checkpoint": str(checkpoint), "arm": args.arm, "sim_model": wiring.arm.name, "dry_run": not wiring.task,
         "sim_notes": wiring.notes, "success_rate": rate, "outcomes": summary, "episodes": results}, indent=2))
    if summary:
        print(outcome_table(summary))
    if wiring.task:
        rate_text = f"{rate:.0%}" if rate is not None else "n/a"
        print(f"success rate {rate_text} over {len(results)} episodes; outputs in {args.out.resolve()}")
        return 0
    chunks = sum(r["steps"] for r in results)
    print(f"dry run of {args.arm} on the {wiring.arm.name} model: {chunks} chunks executed over {len(results)} "
          f"episodes, no task success measured; outputs in {args.out.resolve()}")
    return 0 if chunks > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
