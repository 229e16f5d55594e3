"""Soak / fuzz: everything an adversarial user or a bad day can throw at the nodes, and what held.

    python bench/fault_soak.py                        # the full soak (~10 min on a 2-core CPU)
    python bench/fault_soak.py --quick                # every section, small counts (the test suite runs this)
    python bench/fault_soak.py --sections executor dead_policy

Sections (each prints one row of the final table: tried, held, failed, worst):
  executor     >= 10,000 random chunks (drifting, NaN, past a limit, jumping) and >= 10,000 malformed joint states
               (a name twice, past a limit, NaN, 1e300, arrays cut short, joints missing, silence) through the
               executor core with a robot that follows each command: commands outside the URDF limits (must be 0).
  collision    >= 10,000 chunks (heading for random targets, the table, the arm itself, jumps) through the executor
               core with the panda YAML's collision checker and a robot that follows: sent points within half the
               padding, or contacts along the robot's path, by an independent all-pairs check at 1 mrad (must be 0);
               collision refusals that do not name the pair (must be 0).
  images       >= 10,000 malformed camera frames (raw layouts, compressed bombs, garbage) through the policy's decode
               path: frames refused with a reason vs anything else escaping (must be 0: an escape kills inference).
  checkpoints  every mutation of a valid checkpoint: refused naming the file (must be all).
  dead_policy  kill -9 of gem_policy mid-plan, robot / gem_policy / gem_executor each in its own process (as
               gem.launch.py starts them), wall clock: kill -> hold sent by gem_executor (goal <= 100 ms), and
               trajectories sent in between.
  recorder     kill -9 of gem_recorder mid-episode, then recovery: episodes lost (must be 0), seconds lost.
  trainer      kill -9 of gem_train between checkpoints, --resume: max |difference| to an uninterrupted run.
Prints the table and exits 1 if any row failed (tests assert the properties; this measures them at volume).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_overhead_report import HOME  # noqa: E402

# Camera frames exceed Fast DDS's default shared-memory segment; the shipped profile (as README) fixes that.
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))


@dataclass
class Row:
    section: str
    tried: int              # bad inputs or faults injected
    held: int               # handled as designed (refused with a reason, held, recovered)
    failed: int             # must be 0: a command past a limit, an escaped exception, a lost episode, ...
    worst: str              # the number that matters most for this section, with its unit
    note: str = ""


# ------------------------------------------------------------------------------------------------ executor
def _executor_values() -> dict:
    from gem_ros.core.executor_setup import PARAMETERS
    from gem_ros.nodes.params import bringup_config, node_parameters

    values = dict(PARAMETERS)
    values.update({p.name: p.value for p in node_parameters(
        bringup_config("panda"), "gem_executor", urdf_path=str(REPO / "urdf/panda/panda.urdf"), use_sim_time=False)})
    return values


def _executor_controller(on_violation: str):
    from gem_ros.core.executor_setup import build_controller

    return build_controller({**_executor_values(), "on_violation": on_violation})


def soak_executor(chunks: int, joint_states: int, seed: int = 0) -> Row:
    """Random chunks and joint states into the executor core, ticked at 50 Hz with a robot that follows."""
    rng = np.random.default_rng(seed)
    outside = refused_states = refused_chunks = commands = 0
    worst_excess = 0.0
    sent_chunks = sent_states = 0
    episode = 0
    while sent_chunks < chunks or sent_states < joint_states:
        ctrl = _executor_controller("clamp" if episode % 2 else "reject")
        episode += 1
        names = list(ctrl.cfg.joint_names)
        limits = ctrl.safety.limits
        lower = np.array([limits[n].lower for n in names])
        upper = np.array([limits[n].upper for n in names])
        robot = np.clip(np.array(HOME), lower, upper)
        t = 0.0
        ctrl.on_joint_state(names, robot, np.zeros(len(names)), t)
        channels = list(ctrl.expected_channels)
        for step in range(400):
            t = round(t + 0.02, 9)
            positions, state_names = robot.copy(), list(names)
            attack = rng.integers(8) if rng.random() < 0.5 else 0
            j = int(rng.integers(len(names)))
            if attack == 1:
                state_names.append(names[j])
                positions = np.append(positions, positions[j] + rng.uniform(-3, 3))
            elif attack == 2:
                positions[j] = upper[j] + rng.uniform(1e-3, 3.0)
            elif attack == 3:
                positions[j] = math.nan
            elif attack == 4:
                positions[j] = float(rng.choice([1e300, -1e300, math.inf]))
            elif attack == 5:
                positions = positions[:j]
            elif attack == 6:
                del state_names[j]
                positions = np.delete(positions, j)
            if attack != 7:
                refused_states += ctrl.on_joint_state(state_names, positions, [], t) is not None
                sent_states += 1
            if step % 5 == 0 and sent_chunks < chunks:
                actions = _random_chunk(rng, robot, channels)
                refused_chunks += ctrl.on_chunk(channels, 0.1, actions, ctrl.mapper.cfg.kind, t, t) is not None
                sent_chunks += 1
            command = ctrl.tick(t)
            if command.kind != "idle":
                commands += 1
                q = np.asarray(command.trajectory.positions)
                excess = max(float(np.max(q - upper)), float(np.max(lower - q)), 0.0) if np.all(np.isfinite(q)) \
                    else math.inf
                if excess > 0:
                    outside += 1
                    worst_excess = max(worst_excess, excess)
                robot = q[0].copy()
    return Row("executor", sent_chunks + sent_states, refused_chunks + refused_states, outside,
               f"{outside} of {commands} commands outside the URDF limits",
               f"{sent_chunks} chunks ({refused_chunks} refused), {sent_states} joint states ({refused_states} refused)")


def _random_chunk(rng, robot: np.ndarray, channels: list[str]) -> np.ndarray:
    arm = robot[:7] + np.outer(np.linspace(0.1, 1.0, 16), rng.uniform(-0.4, 0.4, 7))
    actions = np.hstack([arm, np.full((16, 1), 0.04)])
    kind = rng.integers(4)
    row, col = int(rng.integers(16)), int(rng.integers(len(channels)))
    if kind == 1:
        actions[row, col] = rng.choice([math.nan, math.inf, -math.inf])
    elif kind == 2:
        actions[row, col % 7] = rng.choice([-1, 1]) * rng.uniform(3.0, 1e6)
    elif kind == 3:
        actions[row:, col % 7] += rng.uniform(-2, 2)
    return actions


# ------------------------------------------------------------------------------------------------ collision
def soak_collision(chunks: int, seed: int = 0) -> Row:
    """Chunks aimed at the table and at the arm itself into controllers built from the panda YAML (collision checking
    on), ticked at 50 Hz with a robot that reaches each trajectory's first point by the next tick. What was sent is
    checked afterwards without the checker: every pair (no broadphase), in configurations 1 mrad apart."""
    import re

    import pinocchio as pin

    from gem_ros.core.executor_setup import collision_config
    from gem_ros.core.safety.collision_model import build_collision_model, joint_values_to_q

    sys.path.insert(0, str(REPO / "test"))
    import test_collision as collision_chunks

    rng = np.random.default_rng(seed)
    source = None
    pair = re.compile(r"'(panda_\w+)' and (scene object )?'(\w+)'")
    sent, moves, refused, at_tick, unnamed, crashes, tried = [], [], 0, 0, 0, 0, 0
    while tried < chunks:
        ctrl = _executor_controller("clamp" if (tried // 100) % 2 else "reject")
        names, channels = list(ctrl.cfg.joint_names), list(ctrl.expected_channels)
        if source is None:
            source = collision_chunks.ChunkSource(rng)   # test_collision's generator: one definition
        robot, t = np.array(HOME), 0.0
        for step in range(250):
            ctrl.on_joint_state(names, robot, np.zeros(len(names)), t)
            try:
                if step % 5 == 0:
                    reason = ctrl.on_chunk(channels, 0.1, source.chunk(robot), ctrl.mapper.cfg.kind, t, t)
                    tried += 1
                    if reason and "collision" in reason:
                        refused += 1
                        unnamed += pair.search(reason) is None
                command = ctrl.tick(t)
            except Exception:  # noqa: BLE001 - counted: an escape would kill the executor's tick
                crashes += 1
                break
            if command.kind == "trajectory":
                sent.append(command.trajectory.positions)
                moves.append((robot, command.trajectory.positions[0].copy()))
                robot = moves[-1][1]
            elif command.kind == "hold" and "collision" in command.reason:
                unnamed += pair.search(command.reason) is None
                at_tick += command.reason.startswith("safety filter rejected the plan")
            t = round(t + 0.02, 9)
    values = _executor_values()
    cfg = collision_config(values)
    built = build_collision_model(values["urdf_path"], cfg)
    pools = []
    for margin in (cfg.padding_m / 2, 0.0):   # points: half the padding; the path between them: contact
        pool = pin.GeometryPool(built.model, built.geometry, 1)
        for data in pool.getGeometryDatas():
            for request in data.collisionRequests:
                request.security_margin = margin
        pools.append(pool)
    points = np.concatenate(sent)
    close = int(np.sum(pin.computeCollisionsInParallel(1, pools[0], joint_values_to_q(built.model, points), True)))
    starts, ends = (np.array(side) for side in zip(*moves))
    counts = np.maximum(np.ceil(np.abs(ends - starts).max(axis=1) / 1e-3), 1).astype(int)
    segment = np.repeat(np.arange(len(counts)), counts)
    fraction = (np.arange(len(segment)) - np.repeat(np.cumsum(counts) - counts, counts) + 1) / counts[segment]
    path = starts[segment] + fraction[:, None] * (ends - starts)[segment]
    contacts = int(np.sum(pin.computeCollisionsInParallel(1, pools[1], joint_values_to_q(built.model, path), True)))
    return Row("collision", tried, refused, close + contacts + unnamed + crashes,
               f"{close} of {len(points)} sent points within {cfg.padding_m / 2 * 1e3:g} mm, {contacts} of {len(path)} "
               f"path configurations in contact",
               f"{refused} chunks refused for a collision, {at_tick} plans at a tick ({unnamed} without the pair "
               f"named), {crashes} crashes")


# ------------------------------------------------------------------------------------------------ checkpoints
def soak_checkpoints() -> Row:
    """Every mutation of bench/checkpoint_mutations.py applied to a valid tiny checkpoint, then loaded as gem_policy
    does: held = refused with a ValueError naming the damaged file and the field; anything else (loaded, another
    exception type, a message that names neither) is a failure. Pickle loading is made to raise, so a refusal that
    comes from torch.load's weights_only guard counts as a failure too."""
    import pickle
    from unittest import mock

    import torch

    import checkpoint_mutations
    from gem_ros.demo import make_random_sim_checkpoint
    from gem_ros.core.policy.gem_vla import GemVLAPolicy

    def no_pickle(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        valid = make_random_sim_checkpoint(Path(tmp))
        for mutation in checkpoint_mutations.MUTATIONS:
            broken = checkpoint_mutations.mutated_copy(valid, Path(tmp) / "broken", mutation)
            try:
                with mock.patch.object(torch, "load", no_pickle), mock.patch.object(pickle, "load", no_pickle):
                    GemVLAPolicy.from_pretrained(broken, device="cpu")
                failures.append(f"{mutation.name}: loaded")
            except ValueError as error:
                if mutation.file not in str(error) or mutation.field not in str(error):
                    failures.append(f"{mutation.name}: {str(error)[:100]}")
            except Exception as error:   # noqa: BLE001 - counted: this is what the soak looks for
                failures.append(f"{mutation.name}: {type(error).__name__}: {str(error)[:80]}")
    count = len(checkpoint_mutations.MUTATIONS)
    return Row("checkpoints", count, count - len(failures), len(failures),
               f"{count - len(failures)} of {count} refused naming the file and the field",
               f"first failure: {failures[0]}" if failures else "no pickle opened")


# ------------------------------------------------------------------------------------------------ dead policy
class _WireListener:
    """What reaches the controller's topic, seen from another process: (wall time, number of points) per message.
    A hold is one point; a plan is lookahead_s of points."""

    def __init__(self):
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from trajectory_msgs.msg import JointTrajectory

        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("fault_soak_wire", context=self.context)
        self.messages: list[tuple[float, int]] = []
        self.node.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                                      lambda m: self.messages.append((time.time(), len(m.points))), 100)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def plans_flowing(self, window_s: float = 1.0, at_least: int = 20) -> bool:
        now = time.time()
        return sum(1 for t, n in self.messages if t > now - window_s and n > 1) >= at_least

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.thread.join(5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def dead_policy(trials: int, timeout_s: float = 60.0) -> Row:
    """kill -9 of gem_policy while the executor streams its plan; kill time taken here just before SIGKILL, the
    hold when it arrives on the controller topic in this process (wall clock, one machine)."""
    from ros_overhead import Run, node_process
    from gem_ros.demo import make_random_sim_checkpoint
    from gem_ros.nodes.params import bringup_config, node_parameters

    names = next(tuple(p.value) for p in node_parameters(bringup_config("panda"), "gem_policy")
                 if p.name == "state_joint_names")
    latencies, between, missing = [], [], 0
    spawn = multiprocessing.get_context("spawn")
    wire = _WireListener()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = make_random_sim_checkpoint(Path(tmp))
            for trial in range(trials):
                run = Run(0.05, 600.0, str(checkpoint), 160, 120, names, "auto", threshold_s=0.8)
                stop = spawn.Event()
                procs = {role: spawn.Process(target=node_process, args=(role, str(Path(tmp) / f"{role}{trial}.json"),
                                                                        run, stop))
                         for role in ("robot", "executor", "policy")}
                for proc in procs.values():
                    proc.start()
                deadline = time.time() + timeout_s
                while not wire.plans_flowing() and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(float(np.random.default_rng(trial).uniform(0, 0.05)))   # kill at any phase of the beat
                killed_s = time.time()
                procs["policy"].kill()
                time.sleep(1.0)
                stop.set()
                for proc in procs.values():
                    proc.join(30)
                after = [(t, n) for t, n in wire.messages if t >= killed_s]
                wire.messages.clear()
                hold = next((t for t, n in after if n == 1), None)
                if hold is None:
                    missing += 1
                    continue
                latencies.append(1e3 * (hold - killed_s))
                between.append(sum(1 for t, n in after if n > 1 and t < hold))
    finally:
        wire.close()
    worst = f"kill -> hold on the wire max {max(latencies):.0f} ms (p50 {np.median(latencies):.0f})" \
        if latencies else "no hold"
    return Row("dead_policy", trials, len(latencies), missing + sum(v > 100.0 for v in latencies), worst,
               f"plans sent after the kill: max {max(between) if between else '-'}; {missing} trials without a hold")


# ------------------------------------------------------------------------------------------------ images
def _mutated_frames(rng, count: int):
    """(kind, format, bytes) compressed frames: a valid PNG and JPEG with bytes flipped, cut, a header size
    rewritten (up to 100000x100000 px), or plain noise."""
    import struct
    import zlib

    import cv2

    picture = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    valid = {"png": cv2.imencode(".png", picture)[1].tobytes(), "jpeg": cv2.imencode(".jpg", picture)[1].tobytes()}
    for i in range(count):
        fmt = "png" if i % 2 else "jpeg"
        data = bytearray(valid[fmt])
        kind = int(rng.integers(5))
        if kind == 0:     # flipped bytes anywhere
            for at in rng.integers(0, len(data), int(rng.integers(1, 16))):
                data[at] = int(rng.integers(256))
        elif kind == 1:   # cut
            data = data[:int(rng.integers(0, len(data)))]
        elif kind == 2:   # a declared size of up to 100000 px per side
            height, width = (int(v) for v in rng.integers(1, 100_001, 2))
            if fmt == "png":
                ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
                data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
            else:
                at = data.find(b"\xff\xc0")
                data[at + 5:at + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
        elif kind == 3:   # noise
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 4096)), dtype=np.uint8).tobytes())
        else:             # a wrong format field
            fmt = str(rng.choice(["", "gif", "rgb8", "16UC1; compressedDepth", "bgr8; jpeg compressed bgr8"]))
        yield "compressed", fmt, bytes(data)


def soak_images(count: int, seed: int = 0) -> Row:
    """Malformed frames through the policy node's decode paths (compressed: check on arrival then decode; raw:
    geometry check then decode): refused with a ValueError, decoded, or escaped (any other exception: a bug)."""
    import resource

    from gem_ros.core.observation.images import decode_frame, decode_raw

    rng = np.random.default_rng(seed)
    refused = decoded = 0
    escaped: list[str] = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compressed = count // 2
    for _, fmt, data in _mutated_frames(rng, compressed):
        try:
            decode_frame(fmt, data)
            decoded += 1
        except ValueError:
            refused += 1
        except Exception as error:   # noqa: BLE001 - counted: this is what the soak looks for
            escaped.append(f"{type(error).__name__}: {error}"[:120])
    encodings = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "yuv422", "", "rgb16"]
    for _ in range(count - compressed):
        height, width = (int(v) for v in rng.choice([0, 1, 48, 64, 100_000, 2**31 - 1, -1], 2))
        step = int(rng.choice([0, width * 3, width * 3 + 1, width, -5, 2**40]))
        data = bytes(int(rng.choice([0, 48 * 64 * 3, 100, 48 * 65 * 3])))
        try:
            decode_raw(str(rng.choice(encodings)), height, width, step, data)
            decoded += 1
        except ValueError:
            refused += 1
        except Exception as error:   # noqa: BLE001
            escaped.append(f"{type(error).__name__}: {error}"[:120])
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return Row("images", count, refused + decoded, len(escaped),
               f"{len(escaped)} escaped exceptions; peak memory +{growth_mb:.0f} MB",
               f"{refused} refused with a reason, {decoded} decoded" + (f"; first escape: {escaped[0]}" if escaped
                                                                       else ""))


# ------------------------------------------------------------------------------------------------ recorder
def killed_recorder(trials: int, seed: int = 0) -> Row:
    """gem_recorder in its own process, SIGKILLed 2-5 s into an episode of 50 Hz joint states and 10 Hz images,
    then recovered (`recover_recordings`, what `gem_record recover` and the next recorder start run)."""
    import signal
    import subprocess
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    from gem_ros.nodes.bag_recovery import recover_recordings
    from rosbags.rosbag2 import Reader

    sys.path.insert(0, str(REPO / "test"))
    from test_record_recovery import publish_episode   # the episode the recorder's kill test publishes

    rng = np.random.default_rng(seed)
    lost, seconds_lost, recovered_total = 0, [], 0
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("fault_soak_recorder_feed", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    joints_pub = node.create_publisher(JointState, "/fault_soak/joint_states", 100)
    image_pub = node.create_publisher(Image, "/fault_soak/image_raw", 100)
    topics = "['/fault_soak/joint_states:sensor_msgs/msg/JointState', '/fault_soak/image_raw']"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for trial in range(trials):
                out = Path(tmp) / f"bags{trial}"
                proc = subprocess.Popen([sys.executable, "-m", "gem_ros.nodes.recorder_node", "--ros-args", "-r",
                                         f"__node:=fault_soak_recorder{trial}", "-p", f"out_dir:={out}", "-p",
                                         f"topics:={topics}", "-p", "instruction:=wave"], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    deadline = time.time() + 30
                    while not (joints_pub.get_subscription_count() and image_pub.get_subscription_count()) \
                            and time.time() < deadline:
                        time.sleep(0.05)
                    client = node.create_client(Trigger, f"/fault_soak_recorder{trial}/start")
                    client.wait_for_service(timeout_sec=30)
                    future = client.call_async(Trigger.Request())
                    while not future.done() and time.time() < deadline + 10:
                        time.sleep(0.01)
                    node.destroy_client(client)
                    if not future.done() or not future.result().success:
                        raise RuntimeError(f"recorder trial {trial}: the start service did not answer")
                    sent = publish_episode(joints_pub, image_pub, float(rng.uniform(2.0, 5.0)))
                    killed_at = time.monotonic()
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(10)
                summaries = recover_recordings(out)
                bags = [s.bag for s in summaries if not s.error and s.bag is not None]
                if len(bags) != 1:
                    print(f"[fault_soak] recorder trial {trial}: {[s.report() for s in summaries]}", flush=True)
                    lost += 1
                    continue
                with Reader(bags[0]) as reader:
                    joints = sum(1 for c, _, _ in reader.messages() if c.topic == "/fault_soak/joint_states")
                recovered_total += joints
                before_last_second = sum(t <= killed_at - 1.0 for t in sent)
                lost += joints < before_last_second
                seconds_lost.append((len(sent) - joints) * 0.02)
    finally:
        executor.shutdown()
        spinner.join(5)
        node.destroy_node()
        rclpy.shutdown(context=context)
    worst = f"{lost} episodes lost; at most {max(seconds_lost):.2f} s lost at the end" if seconds_lost \
        else f"{lost} episodes lost"
    return Row("recorder", trials, trials - lost, lost, worst, f"{recovered_total} joint states recovered")


# ------------------------------------------------------------------------------------------------ trainer
def killed_trainer(quick: bool) -> Row:
    """gem_train (tiny model, every augmentation on) SIGKILLed at a random moment after a checkpoint, resumed with
    --resume, final weights and optimizer compared tensor by tensor with an uninterrupted run. The tiny run is the
    one test/test_train_kill_resume.py builds (shared, not copied)."""
    import signal

    sys.path.insert(0, str(REPO / "test"))
    import test_train_kill_resume as tiny_run

    from gem_train.checkpointing import list_checkpoints, verify_checkpoint

    trials = 1 if quick else 3
    rng = np.random.default_rng(0)
    differences, not_exact = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_run.write_episodes(tmp / "episodes")
        straight_config = tiny_run.write_config(tmp, "straight")
        tiny_run.finish(tiny_run.gem_train(straight_config), straight_config)
        final = f"step_{tiny_run.STEPS}"
        expected = tiny_run.all_tensors(tmp / "straight" / "checkpoints" / final)
        for trial in range(trials):
            config = tiny_run.write_config(tmp, f"killed{trial}")
            proc = tiny_run.gem_train(config)
            deadline = time.monotonic() + 120
            while not any(not verify_checkpoint(p) for p in list_checkpoints(tmp / f"killed{trial}")) \
                    and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 1.0)))   # anywhere between two checkpoints, a write included
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            tiny_run.finish(tiny_run.gem_train(config, "--resume"), config)
            got = tiny_run.all_tensors(tmp / f"killed{trial}" / "checkpoints" / final)
            differences.append(tiny_run.max_difference(expected, got))
            not_exact += differences[-1] != 0.0
    return Row("trainer", trials, trials - not_exact, not_exact,
               f"max |resumed - uninterrupted| {max(differences):.3g} over every weight and optimizer tensor",
               f"{trials} kill -9 at random moments, augmentations on")


# ------------------------------------------------------------------------------------------------ table
class _QuietStderr:
    """libjpeg / libpng print a warning per corrupt frame on fd 2: thousands of lines that say nothing here."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def run_sections(names: list[str], quick: bool) -> list[Row]:
    scale = 0.05 if quick else 1.0
    sections = {
        "executor": lambda: soak_executor(int(10_000 * scale), int(10_000 * scale)),
        "collision": lambda: soak_collision(int(10_000 * scale)),
        "images": lambda: soak_images(int(20_000 * scale)),
        "checkpoints": soak_checkpoints,
        "dead_policy": lambda: dead_policy(2 if quick else 10),
        "recorder": lambda: killed_recorder(1 if quick else 5),
        "trainer": lambda: killed_trainer(quick),
    }
    rows = []
    for name in names:
        start = time.time()
        print(f"[fault_soak] {name} ...", flush=True)
        if name == "images":
            with _QuietStderr():
                row = sections[name]()
        else:
            row = sections[name]()
        row.note += f" ({time.time() - start:.0f} s)"
        rows.append(row)
    return rows


def print_table(rows: list[Row]) -> None:
    import platform

    print(f"\nFault soak on {platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}), "
          f"python bench/fault_soak.py {' '.join(sys.argv[1:])}")
    print(f"{'section':12} {'tried':>7} {'held':>7} {'failed':>7}  worst / notes")
    for row in rows:
        print(f"{row.section:12} {row.tried:>7} {row.held:>7} {row.failed:>7}  {row.worst}")
        print(f"{'':36}  {row.note}")


SECTIONS = ("executor", "collision", "images", "checkpoints", "dead_policy", "recorder", "trainer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="every section at ~5 %% of its count")
    args = parser.parse_args(argv)
    rows = run_sections(args.sections, args.quick)
    print_table(rows)
    return 1 if any(row.failed for row in rows) else 0   # exit status for scripted soaks


if __name__ == "__main__":
    sys.exit(main())
