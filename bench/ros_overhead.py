"""ROS overhead of the closed loop, with the policy replaced by a constant-time stand-in.

    python bench/ros_overhead.py                         # all layouts, stand-ins of 50 and 300 ms, both executors
    python bench/ros_overhead.py --layout processes --duration 10 --executor events
    python bench/ros_overhead.py --layout processes --executor auto --realtime-priority 0 50
    python bench/ros_overhead.py --layout processes --executor auto --realtime-priority 50 --cpu-dma-latency-us -1 0
    python bench/ros_overhead.py --layout processes --cameras raw jpeg-eager jpeg --request-threshold 0.3

A fake robot publishes /joint_states (100 Hz) and 2 cameras at 30 Hz: 640x480 rgb8 Images, or with --cameras JPEG
CompressedImages. gem_policy (tiny checkpoint,
predict replaced by sleep(d) + a fixed chunk) and gem_executor (50 Hz) run as in production, in one of 3 layouts:
  processes    robot, gem_policy and gem_executor each in its own process (what gem.launch.py starts; a real
               camera driver is its own process too); the chunk goes policy -> executor over DDS
  composed     robot in its own process; gem_policy and gem_executor in one (gem_policy_executor), the chunk
               handed over in memory on the inference thread (gem_ros.nodes.composed)
  one-process  all three nodes in one process under one executor, handed over in memory (gem_demo)
Each layout runs once per --executor (default: single, and auto = what the nodes' main()s pick per process:
events where no inference runs, single where it does; gem_ros.nodes.spinning), one executor thread per process:
rclpy's MultiThreadedExecutor burned a whole core in the policy
process on this load and dropped half the camera frames (--executor multi-4 shows it).
Every node times its own work with the wall clock (one machine, one clock), per chunk:
  frame age     observation stamp -> inference start: waiting for the newest frame (<= 1 / camera rate), not
                overhead. Inference is started by the worker's poll (every 10 ms), so this also holds the poll wait.
  overhead      inference end -> ActionChunk published / handed over + DDS to the executor (0 composed) + chunk
                planning + the replan (or tick) work that builds and publishes the JointTrajectory: goal <= 1 ms.
  planned->sent chunk planned -> its trajectory sent: ~0 with replan_on_chunk (the default: sent from the chunk
                callback), up to one 50 Hz period without it (--no-replan: sent by the next tick).
and the control loop: tick period / jitter at 50 Hz and starvation holds (0 while inference < horizon).
Prints numbers side by side; asserts nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_overhead_report import HOME, ROWS, analyse, compute_floor, pct  # noqa: E402
INSTRUCTION = "pick up the red cube"


def timed(fn, sink):
    """Wrap fn so each call appends (wall start, wall end) to sink."""
    def wrapper(*args, **kwargs):
        start = time.time()
        out = fn(*args, **kwargs)
        sink.append((start, time.time()))
        return out
    return wrapper


@dataclass(frozen=True)
class Run:
    """One column of the table: what runs, and how."""
    standin_s: float              # stand-in inference time; 0 = the tiny policy itself
    duration_s: float
    checkpoint: str
    width: int
    height: int
    names: tuple[str, ...]        # joint names
    executor_kind: str
    replan: bool = True
    threshold_s: float = 0.8
    priority: int = 0             # SCHED_FIFO of the executor process (processes layout only)
    wakeup_latency_us: int = -1   # CPU wake-up latency the executor process holds (-1: none; processes layout only)
    cameras: str = "raw"          # raw | jpeg (decoded when the policy picks a frame) | jpeg-eager (on arrival)


CAMERA_KINDS = ("raw", "jpeg", "jpeg-eager")


def camera_frame(width: int, height: int) -> np.ndarray:
    """A camera-like picture (smooth colour field + noise): JPEG costs what it costs on a real scene."""
    ys, xs = np.mgrid[0:height, 0:width]
    field = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], axis=-1)
    noise = np.random.default_rng(0).integers(-12, 13, field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ the three nodes
def make_robot(context, run: Run, record: dict):
    """Fake robot: cameras + joint states out; records when chunks and trajectories arrive."""
    import cv2
    from rclpy.node import Node
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import Header
    from trajectory_msgs.msg import JointTrajectory

    from gem_ros.nodes.conversions import rgb_to_image_msg

    robot = Node("fake_robot", context=context)
    frame, names = camera_frame(run.width, run.height), list(run.names)
    jpeg = run.cameras != "raw"
    cams = {c: robot.create_publisher(CompressedImage if jpeg else Image,
                                      f"/camera/{c}/image_raw{'/compressed' if jpeg else ''}", 10)
            for c in ("scene", "wrist")}
    encoded = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    joint_pub = robot.create_publisher(JointState, "/joint_states", 10)

    def publish_cameras():
        stamp = robot.get_clock().now().to_msg()
        for cam, pub in cams.items():
            header = Header(stamp=stamp, frame_id=f"{cam}_optical_frame")
            pub.publish(CompressedImage(header=header, format="jpeg", data=encoded) if jpeg
                        else rgb_to_image_msg(frame, stamp, header.frame_id))

    def publish_joints():
        msg = JointState(name=names, position=HOME, velocity=[0.0] * len(names))
        msg.header.stamp = robot.get_clock().now().to_msg()
        joint_pub.publish(msg)

    robot.create_timer(1 / 30, publish_cameras)
    robot.create_timer(1 / 100, publish_joints)
    record["trajectory_in"] = []
    robot.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                              lambda m: record["trajectory_in"].append(time.time()), 100)
    return robot


def _stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def make_policy(context, run: Run, record: dict):
    from gem_ros.nodes import conversions, policy_node
    from gem_ros.nodes.params import bringup_config, node_parameters

    standin_s = run.standin_s
    cameras = {}
    if run.cameras != "raw":
        cameras = dict(camera_transports=["compressed"] * 2,
                       camera_topics=[f"/camera/{c}/image_raw/compressed" for c in ("scene", "wrist")])
    # jpeg-eager: the node before 2026-11-26, every frame decoded in its callback. Set for every run: one-process
    # runs share this module.
    policy_node.compressed_msg_to_frame = (conversions.compressed_msg_to_rgb if run.cameras == "jpeg-eager"
                                           else conversions.compressed_msg_to_frame)
    node = policy_node.PolicyNode(context=context, parameter_overrides=node_parameters(
        bringup_config("panda"), "gem_policy", checkpoint=str(run.checkpoint), device="cpu", use_sim_time=False,
        request_threshold_s=run.threshold_s, **cameras))
    node.trigger_configure()
    io = node.policy.config.io
    # Hold the pose the fake robot reports: the gripper channel is the finger *width* (2 x 0.04 m). A width of 0.04
    # (what this stand-in sent before) closes the fingers and every tick went through the rate limiter.
    chunk = np.tile(np.r_[HOME[:7], HOME[7] + HOME[8]], (io.chunk_len, 1)).astype(np.float32)
    record.update(inference=[], published=[], image_callback=[], frame_types=[])
    add_image = node.buffer.add_image

    def add_and_note_type(camera, stamp_s, image):   # what the buffer keeps: pixels, or frames still encoded
        if type(image).__name__ not in record["frame_types"]:
            record["frame_types"].append(type(image).__name__)
        add_image(camera, stamp_s, image)

    node.buffer.add_image = add_and_note_type

    def standin(observation):
        time.sleep(standin_s)
        return chunk

    def predict(observation):
        start = time.time()
        standin(observation)
        record["inference"].append((start, time.time()))
        return chunk, {"total": standin_s * 1e3}

    if standin_s > 0:
        node.worker.predict = predict
    else:   # the tiny policy itself: shows what the executor thread's GIL use does to inference
        node.worker.predict = timed(node.worker.predict, record["inference"])
    publish = node.chunk_pub.publish

    def publish_and_note(msg):   # the chunk has left the policy when publish returns ...
        publish(msg)
        if msg.num_points and not node.chunk_listeners:
            record["published"].append((msg.chunk_index, _stamp_s(msg), time.time()))

    node.chunk_pub.publish = publish_and_note
    node._on_image = timed(node._on_image, record["image_callback"])
    return node


def hand_over(policy, executor, record: dict) -> None:
    """Compose: the executor gets each chunk in memory (gem_ros.nodes.composed), noted when it is handed over."""
    from gem_ros.nodes.composed import connect_in_process

    connect_in_process(policy, executor)
    deliver = policy.chunk_listeners.pop()

    def note_and_deliver(msg):   # ... or, composed, when it is handed to the executor
        if msg.num_points:
            record["published"].append((msg.chunk_index, _stamp_s(msg), time.time()))
        deliver(msg)

    policy.chunk_listeners.append(note_and_deliver)


def make_executor(context, record: dict, replan: bool = True, subscribe: bool = True):
    from gem_ros.nodes.executor_node import ExecutorNode, start_executor
    from gem_ros.nodes.params import bringup_config, node_parameters

    node = start_executor(ExecutorNode(context=context, parameter_overrides=node_parameters(
        bringup_config("panda"), "gem_executor", urdf_path=str(REPO / "urdf/panda/panda.urdf"), use_sim_time=False,
        replan_on_chunk=replan, subscribe_chunks=subscribe)))
    controller = node.controller
    record.update(chunk_work=[], tick_work=[], replan_work=[], sent=[])
    controller.on_chunk = timed(controller.on_chunk, record["chunk_work"])
    controller.replan = timed(controller.replan, record["replan_work"])
    record["holds"] = []
    tick = timed(controller.tick, record["tick_work"])

    def tick_and_note_holds(now_s):
        command = tick(now_s)
        if command.kind == "hold" and command.new_episode:
            record["holds"].append((time.time(), command.reason))
        return command

    controller.tick = tick_and_note_holds
    node.backend.send = timed(node.backend.send, record["sent"])
    return node


def spin(context, nodes, until, on_start=None, executor_kind: str = "single", runs_inference: bool = False) -> float:
    """Spin `nodes` on an executor of `executor_kind` ("multi-N": MultiThreadedExecutor with N threads, else one of
    gem_ros.nodes.spinning's kinds; `auto` picks as production does for a process that does or does not run
    inference) until `until()` is true, after `on_start`. Returns the process CPU use in % of one core."""
    from rclpy.executors import MultiThreadedExecutor

    from gem_ros.nodes.spinning import make_executor

    executor = MultiThreadedExecutor(num_threads=int(executor_kind[6:]), context=context) \
        if executor_kind.startswith("multi-") else make_executor(executor_kind, context, runs_inference)
    for node in nodes:
        executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    wall, cpu = time.time(), time.process_time()
    spinner.start()
    if on_start:
        on_start()
    while not until():
        time.sleep(0.05)
    executor.shutdown()
    spinner.join()
    return 100.0 * (time.process_time() - cpu) / (time.time() - wall)


def for_seconds(duration_s: float):
    deadline = []
    return lambda: time.time() >= (deadline or deadline.append(time.time() + duration_s) or deadline)[0]


def _start_policy(node) -> None:
    node.trigger_activate()
    deadline = time.time() + 10.0    # across processes, discovery can take seconds: start once inputs flow
    while time.time() < deadline and max(node.buffer.health(time.time()).values()) > 0.1:
        time.sleep(0.05)
    node.worker.run_instruction(INSTRUCTION)


# ------------------------------------------------------------------------------------------------ layouts
def node_process(role: str, out: str, run: Run, stop) -> None:
    """One node in its own process; writes what it recorded to `out` as JSON. The policy runs `duration_s` once
    its inputs flow; the robot and the executor run until the parent sets `stop`. `priority` > 0: the executor
    process under SCHED_FIFO, applied before rclpy starts as gem_executor's --realtime-priority does;
    `wakeup_latency_us` >= 0: the executor process holds that CPU wake-up latency, as its --cpu-dma-latency-us."""
    import rclpy

    from gem_ros.core.realtime import hold_cpu_wakeup_latency, make_calling_thread_realtime

    if run.priority and role == "executor":
        applied, line = make_calling_thread_realtime(run.priority)
        if not applied:
            raise SystemExit(line)
    latency_request = None
    if run.wakeup_latency_us >= 0 and role == "executor":
        latency_request, line = hold_cpu_wakeup_latency(run.wakeup_latency_us)
        if latency_request is None:
            raise SystemExit(line)
    context = rclpy.context.Context()
    rclpy.init(context=context)
    record: dict = {}
    if role == "robot":
        nodes = [make_robot(context, run, record)]
    elif role == "policy":
        nodes = [make_policy(context, run, record)]
    elif role == "executor":
        nodes = [make_executor(context, record, run.replan)]
    else:   # "composed": gem_policy_executor, the chunk handed over in memory
        nodes = [make_policy(context, run, record), make_executor(context, record, run.replan, subscribe=False)]
        hand_over(*nodes, record)
    policy = nodes[0] if role in ("policy", "composed") else None
    record[f"cpu_{role}"] = spin(context, nodes, for_seconds(run.duration_s) if policy else stop.is_set,
                                 (lambda: _start_policy(policy)) if policy else None, run.executor_kind,
                                 runs_inference=policy is not None)
    if policy:
        record["worker_reason"] = policy.worker.snapshot().reason
        policy.worker.shutdown()
    if role in ("executor", "composed"):
        record["stats"] = nodes[-1].controller.stats
    if latency_request is not None:
        latency_request.close()
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown(context=context)
    Path(out).write_text(json.dumps(record, default=float))


def run_processes(run: Run, roles=("robot", "executor", "policy")) -> dict:
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    with tempfile.TemporaryDirectory() as tmp:
        outs = {role: str(Path(tmp) / f"{role}.json") for role in roles}
        procs = {role: spawn.Process(target=node_process, args=(role, outs[role], run, stop)) for role in outs}
        for proc in procs.values():
            proc.start()
        # The robot and the executor stop after the policy, so the policy's whole run is observed.
        procs[roles[-1]].join()
        time.sleep(0.5)
        stop.set()
        for proc in procs.values():
            proc.join()
        bad = [role for role, proc in procs.items() if proc.exitcode != 0]
        if bad:
            raise RuntimeError(f"bench processes failed: {bad}")
        record = {}
        for out in outs.values():
            record.update(json.loads(Path(out).read_text()))
    if not record["published"]:
        raise RuntimeError(f"the policy process published no chunk: {record['worker_reason']}")
    return record


def run_one_process(run: Run) -> dict:
    import rclpy

    if run.priority or run.wakeup_latency_us >= 0:
        raise ValueError("only gem_executor in its own process takes --realtime-priority / --cpu-dma-latency-us")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    record: dict = {}
    nodes = [make_policy(context, run, record), make_executor(context, record, run.replan, subscribe=False),
             make_robot(context, run, record)]
    hand_over(nodes[0], nodes[1], record)   # as gem_demo
    record["cpu_all"] = spin(context, nodes, for_seconds(run.duration_s), lambda: _start_policy(nodes[0]),
                             run.executor_kind, runs_inference=True)
    nodes[0].worker.shutdown()
    record["stats"] = nodes[1].controller.stats
    for node in nodes:
        node.destroy_node()
    rclpy.shutdown(context=context)
    return record


def run_composed(run: Run) -> dict:
    if run.priority or run.wakeup_latency_us >= 0:
        raise ValueError("only gem_executor in its own process takes --realtime-priority / --cpu-dma-latency-us")
    return run_processes(run, roles=("robot", "composed"))


RUNNERS = {"processes": run_processes, "composed": run_composed, "one-process": run_one_process}


def _hop_listener(ready, stop, out: str, executor_kind: str) -> None:
    import rclpy
    from std_msgs.msg import Header

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("hop_listener", context=context)
    delays = []
    node.create_subscription(Header, "/bench/hop", lambda m: delays.append(time.time() - float(m.frame_id)), 100)
    ready.set()
    spin(context, [node], stop.is_set, executor_kind=executor_kind)
    node.destroy_node()
    rclpy.shutdown(context=context)
    Path(out).write_text(json.dumps(delays))


def bare_hop(executor_kind: str, count: int = 300, wakeup_latency_us: int = -1) -> list[float]:
    """The platform's floor: one small message from one rclpy process to another (publish -> subscriber callback
    spun by an executor of `executor_kind`, nothing else running), in ms; with `wakeup_latency_us` >= 0 held for
    the CPUs meanwhile (system-wide: it does not matter which process holds it)."""
    import rclpy
    from std_msgs.msg import Header

    from gem_ros.core.realtime import hold_cpu_wakeup_latency

    latency_request, line = hold_cpu_wakeup_latency(wakeup_latency_us)
    if wakeup_latency_us >= 0 and latency_request is None:
        raise SystemExit(line)
    spawn = multiprocessing.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "hop.json")
        listener = spawn.Process(target=_hop_listener, args=(ready, stop, out, executor_kind))
        listener.start()
        ready.wait(30)
        context = rclpy.context.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("hop_talker", context=context)
        pub = node.create_publisher(Header, "/bench/hop", 100)
        deadline = time.time() + 10.0
        while pub.get_subscription_count() == 0 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        for _ in range(count):
            pub.publish(Header(frame_id=repr(time.time())))
            time.sleep(0.01)
        time.sleep(0.5)
        stop.set()
        listener.join()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if latency_request is not None:
            latency_request.close()
        return [1e3 * d for d in json.loads(Path(out).read_text())]


def executor_kind_arg(value: str) -> str:
    from gem_ros.nodes.spinning import EXECUTOR_KINDS

    if value in EXECUTOR_KINDS or (value.startswith("multi-") and value[6:].isdigit() and int(value[6:]) > 1):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: one of {EXECUTOR_KINDS} or multi-N (N > 1)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standin-ms", type=float, nargs="+", default=[50.0, 300.0],
                        help="stand-in inference durations; 0: the tiny random policy itself (CPU inference)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of policy activity per run")
    parser.add_argument("--layout", nargs="+", choices=["all", *RUNNERS], default=["all"])
    parser.add_argument("--executor", nargs="+", default=["single", "auto"], type=executor_kind_arg,
                        help="executors to compare side by side: single, events, auto (per process as the nodes' "
                             "mains pick: events without inference, single with; gem_ros.nodes.spinning), multi-N "
                             "(rclpy's MultiThreadedExecutor with N threads)")
    parser.add_argument("--no-replan", action="store_true",
                        help="replan_on_chunk false: trajectories only at the 50 Hz ticks (as before 2026-11-26)")
    # 0.8 s (> the stand-in checkpoint's 0.8 s horizon minus latency): the policy re-plans back to back, many chunks
    # per run, comparable with the logs before 2026-11-26. The panda YAML's 0.3 gives one chunk per ~0.45 s, and
    # with the executor's code colder between chunks its per-chunk overhead reads ~0.1-0.3 ms higher.
    parser.add_argument("--request-threshold", type=float, default=0.8,
                        help="gem_policy request_threshold_s in s (default 0.8: back-to-back chunks)")
    parser.add_argument("--realtime-priority", type=int, nargs="+", default=[0], metavar="N",
                        help="SCHED_FIFO priorities to compare (0 = off) for the gem_executor process, as its "
                             "--realtime-priority (processes layout only)")
    parser.add_argument("--cpu-dma-latency-us", type=int, nargs="+", default=[-1], metavar="N",
                        help="CPU wake-up latencies to compare (-1 = off) held by the gem_executor process, as its "
                             "--cpu-dma-latency-us (processes layout only; needs write access to "
                             "/dev/cpu_dma_latency); the idle hop is measured with each too")
    parser.add_argument("--cameras", nargs="+", choices=CAMERA_KINDS, default=["raw"],
                        help="raw Image, or JPEG CompressedImage decoded when the policy picks a frame (jpeg) or on "
                             "arrival in the callback (jpeg-eager: gem_policy before 2026-11-26)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    # The shipped Fast DDS profile: a 640x480 frame does not fit the default 512 kB shared-memory segment.
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from gem_ros.demo import make_random_sim_checkpoint
    from gem_ros.nodes.params import bringup_config, node_parameters

    names = next(list(p.value) for p in node_parameters(bringup_config("panda"), "gem_policy")
                 if p.name == "state_joint_names")
    layouts = list(RUNNERS) if "all" in args.layout else args.layout
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_random_sim_checkpoint(Path(tmp))
        for layout in layouts:
            for d in args.standin_ms:
                for kind in args.executor:
                    for priority, latency in itertools.product(
                            *((args.realtime_priority, args.cpu_dma_latency_us) if layout == "processes"
                              else ([0], [-1]))):
                        for cameras in args.cameras:
                            run = Run(d / 1e3, args.duration, str(checkpoint), args.width, args.height, tuple(names),
                                      kind, not args.no_replan, args.request_threshold, priority, latency, cameras)
                            results[(layout, d, kind, priority, latency, cameras)] = analyse(RUNNERS[layout](run))
    print(f"\nROS overhead: 2 cameras {args.width}x{args.height} at 30 Hz, joint states 100 Hz, executor 50 Hz, "
          f"{args.duration:.0f} s per run, wall clock; one executor of the named kind per process")
    keys = list(results)

    def label(layout, d, kind, rt, latency, cameras) -> str:
        return (f"{layout} {f'{d:.0f} ms' if d else 'policy'} {kind}{f' rt{rt}' if rt else ''}"
                f"{f' dma{latency}' if latency >= 0 else ''}{'' if cameras == 'raw' else ' ' + cameras}")

    print(f"{'':46}" + "".join(f"{label(*key):>32}" for key in keys))
    for label, fmt in ROWS:
        print(f"{label:46}" + "".join(f"{fmt(results[k]):>32}" for k in keys))
    floor = compute_floor(names)
    print(f"\nexecutor compute alone (no ROS, quiet loop) p50 ms: chunk planning {floor['planning']:.2f}, tick "
          f"{floor['tick']:.2f}, JointTrajectory message {floor['message']:.2f}; sum "
          f"{sum(floor.values()):.2f} (the rest of OVERHEAD is publishing, DDS, executor wake-ups and CPU sharing)")
    from gem_ros.nodes.spinning import resolve_kind

    latencies = dict.fromkeys(args.cpu_dma_latency_us if "processes" in layouts else [-1])
    for kind in dict.fromkeys(resolve_kind(k) if not k.startswith("multi-") else k for k in args.executor):
        for latency in latencies:
            hops = bare_hop(kind, wakeup_latency_us=latency)
            held = f", CPU wake-up latency held <= {latency} us" if latency >= 0 else ""
            print(f"one rclpy hop between two otherwise idle processes (small message, {kind} listener{held}) "
                  f"p50 / p95 ms: {pct(hops, 50):.2f} / {pct(hops, 95):.2f} ({len(hops)} messages, publish included)")
    print("OVERHEAD across processes holds one such hop (policy -> executor) plus the executor's compute and the "
          "trajectory's publish")


if __name__ == "__main__":
    main()
