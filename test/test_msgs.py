"""gem_msgs interfaces: field contract, constants, CDR round trip and live rclpy transport."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

# Same isolation as test/conftest.py (setdefault: whoever runs first wins), before rclpy loads.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 100)))

msg = pytest.importorskip("gem_msgs.msg", reason="gem_msgs is not installed: run scripts/setup.sh")
import rclpy  # noqa: E402  (after the env set-up above)
from gem_msgs.action import ExecuteInstruction  # noqa: E402
from gem_msgs.srv import MoveToNamed, SetInstruction  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


def make_chunk(num_points: int = 32, seed: int = 0) -> msg.ActionChunk:
    positions = np.random.default_rng(seed).uniform(-2.8, 2.8, (num_points, len(JOINTS)))
    chunk = msg.ActionChunk(joint_names=JOINTS, dt=0.1, num_points=num_points, num_joints=len(JOINTS),
                            action_space="absolute_joint", inference_latency_ms=42.5, chunk_index=2**40 + 7)
    chunk.header.stamp.sec, chunk.header.stamp.nanosec = 1_700_000_000, 123_456_789
    chunk.header.frame_id = "panda_link0"
    chunk.positions = positions.ravel().tolist()  # row-major num_points x num_joints
    return chunk


def test_field_types_are_the_documented_contract():
    assert msg.ActionChunk.get_fields_and_field_types() == {
        "header": "std_msgs/Header", "joint_names": "sequence<string>", "dt": "double",
        "num_points": "uint32", "num_joints": "uint32", "positions": "sequence<double>",
        "action_space": "string", "inference_latency_ms": "float", "chunk_index": "uint64"}
    status = msg.PolicyStatus.get_fields_and_field_types()
    assert status["state"] == "uint8" and status["chunks_produced"] == "uint64"
    assert {k for k, v in status.items() if k.startswith("latency_")} == {
        "latency_preprocess_ms", "latency_vlm_ms", "latency_action_expert_ms",
        "latency_postprocess_ms", "latency_total_ms"}
    assert ExecuteInstruction.Goal.get_fields_and_field_types() == {
        "instruction": "string", "timeout": "builtin_interfaces/Duration"}
    assert ExecuteInstruction.Result.get_fields_and_field_types() == {
        "outcome": "uint8", "reason": "string", "chunks_executed": "uint32", "duration_s": "float"}
    assert ExecuteInstruction.Feedback.get_fields_and_field_types() == {
        "chunks_executed": "uint32", "progress": "float", "last_latency_ms": "float", "state": "string"}
    assert SetInstruction.Request.get_fields_and_field_types() == {"instruction": "string"}
    assert SetInstruction.Response.get_fields_and_field_types() == {"success": "boolean", "message": "string"}
    assert MoveToNamed.Request.get_fields_and_field_types() == {"name": "string"}
    assert MoveToNamed.Response.get_fields_and_field_types() == {"success": "boolean", "message": "string"}


def test_constants():
    states = {"UNCONFIGURED": 0, "IDLE": 1, "RUNNING": 2, "HOLDING": 3, "ERROR": 4}
    assert {name: getattr(msg.PolicyStatus, name) for name in states} == states
    outcomes = {"SUCCEEDED": 0, "TIMEOUT": 1, "CANCELED": 2, "PREEMPTED": 3, "SAFETY_STOP": 4, "ERROR": 5}
    assert {name: getattr(ExecuteInstruction.Result, name) for name in outcomes} == outcomes


def test_action_chunk_cdr_round_trip():
    chunk = make_chunk()
    decoded = deserialize_message(serialize_message(chunk), msg.ActionChunk)
    assert decoded == chunk
    matrix = np.asarray(decoded.positions).reshape(decoded.num_points, decoded.num_joints)
    np.testing.assert_array_equal(matrix[3], np.asarray(chunk.positions[3 * 7:4 * 7]))
    assert decoded.chunk_index == 2**40 + 7  # uint64 beyond 32 bits survives


def test_status_goal_and_service_round_trip():
    status = msg.PolicyStatus(state=msg.PolicyStatus.HOLDING, state_reason="camera wrist stale",
                              latency_total_ms=81.0, chunks_produced=12, device="cpu")
    assert deserialize_message(serialize_message(status), msg.PolicyStatus) == status
    goal = ExecuteInstruction.Goal(instruction="put the red cube in the bowl")
    goal.timeout.sec = 30
    assert deserialize_message(serialize_message(goal), ExecuteInstruction.Goal) == goal
    request = SetInstruction.Request(instruction="open the drawer")
    assert deserialize_message(serialize_message(request), SetInstruction.Request) == request


def spin_until(executor, condition, timeout_s: float = 15.0) -> bool:
    """Spin until condition() holds; discovery time varies (0.05 s .. ~2.6 s), so never a fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        executor.spin_once(timeout_sec=0.05)
    return True


@pytest.fixture
def ros_node():
    context = rclpy.Context()  # own context: no global rclpy state shared with other tests
    rclpy.init(context=context)
    node = rclpy.create_node("test_gem_msgs", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_publish_subscribe_in_process(ros_node):
    node, executor = ros_node
    received: list[msg.ActionChunk] = []
    publisher = node.create_publisher(msg.ActionChunk, "gem/test_chunk", 10)
    subscription = node.create_subscription(msg.ActionChunk, "gem/test_chunk", received.append, 10)
    assert spin_until(executor, lambda: publisher.get_subscription_count() >= 1
                      and subscription.get_publisher_count() >= 1), "publisher and subscriber never matched"
    sent = make_chunk(seed=1)
    publisher.publish(sent)
    assert spin_until(executor, lambda: len(received) >= 1), "ActionChunk not received"
    assert received[0] == sent


PUBLISHER_SCRIPT = textwrap.dedent("""
    import time, rclpy
    from gem_msgs.msg import ActionChunk
    rclpy.init()
    node = rclpy.create_node("profile_publisher")
    publisher = node.create_publisher(ActionChunk, "gem/test_big_chunk", 10)
    chunk = ActionChunk(num_points=150_000, num_joints=1, positions=[0.25] * 150_000)  # 1.2 MB > 512 kB SHM
    deadline = time.monotonic() + 30  # bounded: the test kills it as soon as it has a message
    while time.monotonic() < deadline:
        chunk.chunk_index += 1
        publisher.publish(chunk)
        rclpy.spin_once(node, timeout_sec=0.1)
""")


@pytest.mark.slow
def test_fastdds_profile_loads_and_carries_large_messages_across_processes(ros_node):
    """A second process using config/fastdds_localhost.xml reaches this default-configured one."""
    node, executor = ros_node
    received: list[msg.ActionChunk] = []
    node.create_subscription(msg.ActionChunk, "gem/test_big_chunk", received.append, 10)
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_localhost.xml"))
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER_SCRIPT], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        got_one = spin_until(executor, lambda: len(received) >= 1 or publisher.poll() is not None, 25.0)
    finally:
        publisher.kill()
        output = publisher.communicate()[0]
    assert "XMLPARSER" not in output, f"Fast DDS rejected the profile:\n{output}"
    assert got_one and received, f"no message from the profiled process:\n{output}"
    assert len(received[0].positions) == 150_000 and received[0].positions[-1] == 0.25
