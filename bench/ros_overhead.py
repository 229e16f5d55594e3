"""ROS overhead of the closed loop, with the policy replaced by a constant-time stand-in.

    python bench/ros_overhead.py                 # 2 cameras 640x480 rgb8 at 30 Hz, stand-ins of 50 and 300 ms

One process, real rclpy topics: a fake robot publishes the cameras and /joint_states; gem_policy (tiny checkpoint,
predict replaced by sleep(d) + a fixed chunk) and gem_executor (50 Hz) run as in production. Printed per stand-in:
  - overhead per chunk = (chunk ready at the executor) - (observation stamp) - d: message conversion, buffering,
    time alignment, resize, publish, DDS; and the executor's own work per chunk (map, schedule) and per tick
    (segment, safety filter, message) measured around the calls;
  - end-to-end observation -> first JointTrajectory out (includes waiting for the next 50 Hz tick);
  - control-loop period / jitter at 50 Hz, and starvation holds while inference < horizon (should be 0).
Prints numbers side by side; asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def run(standin_s: float, duration_s: float, checkpoint: Path, width: int, height: int) -> dict:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory

    from gem_msgs.msg import ActionChunk
    from gem_ros.nodes.conversions import rgb_to_image_msg, stamp_to_s
    from gem_ros.nodes.executor_node import ExecutorNode
    from gem_ros.nodes.params import bringup_config, node_parameters
    from gem_ros.nodes.policy_node import PolicyNode

    repo = Path(__file__).resolve().parents[1]
    config = bringup_config("panda")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    policy = PolicyNode(context=context, parameter_overrides=node_parameters(
        config, "gem_policy", checkpoint=str(checkpoint), device="cpu", use_sim_time=False))
    executor_node = ExecutorNode(context=context, parameter_overrides=node_parameters(
        config, "gem_executor", urdf_path=str(repo / "urdf/panda/panda.urdf"), use_sim_time=False))
    robot = Node("fake_robot", context=context)
    policy.trigger_configure()
    io = policy.policy.config.io
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04])
    chunk = np.tile(np.r_[home[:7], 0.04], (io.chunk_len, 1)).astype(np.float32)

    def standin(observation):
        time.sleep(standin_s)
        return chunk

    policy.policy.predict_action_chunk = standin
    policy.policy.last_timings = {"total": standin_s * 1e3}

    # Time the executor's own work around its entry points.
    controller = executor_node.controller
    chunk_work, tick_work = [], []

    def timed(fn, sink):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sink.append(time.perf_counter() - t)
            return out
        return wrapper

    controller.on_chunk = timed(controller.on_chunk, chunk_work)
    controller.tick = timed(controller.tick, tick_work)

    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    cams = {c: robot.create_publisher(Image, f"/camera/{c}/image_raw", 10) for c in ("scene", "wrist")}
    joint_pub = robot.create_publisher(JointState, "/joint_states", 10)
    names = list(policy.get_parameter("state_joint_names").value)

    def publish_cameras():
        stamp = robot.get_clock().now().to_msg()
        for cam, pub in cams.items():
            pub.publish(rgb_to_image_msg(frame, stamp, f"{cam}_optical_frame"))

    def publish_joints():
        msg = JointState(name=names, position=home.tolist(), velocity=[0.0] * 9)
        msg.header.stamp = robot.get_clock().now().to_msg()
        joint_pub.publish(msg)

    robot.create_timer(1 / 30, publish_cameras)
    robot.create_timer(1 / 100, publish_joints)
    chunk_arrivals, trajectory_times = [], []
    robot.create_subscription(ActionChunk, "/gem/action_chunk",
                              lambda m: m.num_points and chunk_arrivals.append((time.time(), stamp_to_s(m.header.stamp))),
                              10)
    robot.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                              lambda m: trajectory_times.append(time.time()), 100)
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    for node in (policy, executor_node, robot):
        executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    policy.trigger_activate()
    time.sleep(0.5)
    policy.worker.run_instruction("pick up the red cube")
    time.sleep(duration_s)
    stats = controller.stats
    policy.worker.shutdown()
    executor.shutdown()
    for node in (policy, executor_node, robot):
        node.destroy_node()
    rclpy.shutdown(context=context)

    overhead = [(arrival - obs - standin_s) * 1e3 for arrival, obs in chunk_arrivals[1:]]
    end_to_end = []
    for arrival, obs in chunk_arrivals[1:]:
        after = [t for t in trajectory_times if t >= arrival]
        if after:
            end_to_end.append((after[0] - obs - standin_s) * 1e3)
    return {"chunks": len(chunk_arrivals), "overhead": overhead, "end_to_end": end_to_end,
            "chunk_work_ms": [w * 1e3 for w in chunk_work], "tick_work_ms": [w * 1e3 for w in tick_work],
            "period_mean_ms": stats["tick_period_mean_s"] * 1e3, "period_std_ms": stats["tick_period_std_s"] * 1e3,
            "jitter_max_ms": stats["tick_jitter_max_s"] * 1e3, "holds": stats["holds"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standin-ms", type=float, nargs="+", default=[50.0, 300.0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per stand-in")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args(argv)
    from gem_ros.demo import make_random_sim_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_random_sim_checkpoint(Path(tmp))
        results = {d: run(d / 1e3, args.duration, checkpoint, args.width, args.height) for d in args.standin_ms}
    print(f"\nROS overhead: 2 cameras {args.width}x{args.height} rgb8 at 30 Hz, joint states 100 Hz, executor 50 Hz, "
          f"{args.duration:.0f} s per stand-in (wall clock, one process)")
    cols = [f"stand-in {d:.0f} ms" for d in args.standin_ms]
    print(f"{'':44}" + "".join(f"{c:>20}" for c in cols))
    rows = [
        ("chunks produced", lambda r: f"{r['chunks']}"),
        ("obs -> chunk at executor, minus d: p50 ms", lambda r: f"{pct(r['overhead'], 50):.2f}"),
        ("obs -> chunk at executor, minus d: p95 ms", lambda r: f"{pct(r['overhead'], 95):.2f}"),
        ("executor work per chunk p50 / p95 ms", lambda r: f"{pct(r['chunk_work_ms'], 50):.2f} / "
                                                         f"{pct(r['chunk_work_ms'], 95):.2f}"),
        ("executor work per 50 Hz tick p50 / p95 ms", lambda r: f"{pct(r['tick_work_ms'], 50):.2f} / "
                                                              f"{pct(r['tick_work_ms'], 95):.2f}"),
        ("obs -> first trajectory out, minus d: p50 ms", lambda r: f"{pct(r['end_to_end'], 50):.2f}"),
        ("obs -> first trajectory out, minus d: p95 ms", lambda r: f"{pct(r['end_to_end'], 95):.2f}"),
        ("tick period mean / std ms", lambda r: f"{r['period_mean_ms']:.2f} / {r['period_std_ms']:.2f}"),
        ("tick jitter max ms", lambda r: f"{r['jitter_max_ms']:.2f}"),
        ("starvation holds", lambda r: f"{r['holds']}"),
    ]
    for label, fmt in rows:
        print(f"{label:44}" + "".join(f"{fmt(results[d]):>20}" for d in args.standin_ms))


if __name__ == "__main__":
    main()
