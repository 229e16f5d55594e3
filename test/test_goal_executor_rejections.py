"""The ExecuteInstruction goal learns why gem_executor refused its chunks (issue 18): a policy whose chunks drive the
Panda's hand through the table, served by a real gem_policy to a real gem_executor (collision checking on, the panda
YAML's table) with a robot that follows the trajectories. The goal ends SAFETY_STOP after max_executor_rejections
refusals in a row, its reason naming the two bodies; with the abort off, a timeout's reason names them."""
from __future__ import annotations

import re

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from gem_ros.commander import GemCommander  # noqa: E402
from gem_ros.nodes.conversions import rgb_to_image_msg  # noqa: E402
from gem_ros.nodes.executor_node import ExecutorNode, start_executor  # noqa: E402
from gem_ros.nodes.policy_node import PolicyNode  # noqa: E402
from test_executor_node import HOME, JOINTS, URDF, FakeRobot  # noqa: E402

pytestmark = pytest.mark.ros

INTO_TABLE = [0.0, 1.2, 0.0, -1.0, 0.0, 1.571, 0.785, 0.02, 0.02]   # hand forward and down, through the table top
TABLE = {"collision_check": True, "scene_object_names": ["table"], "scene_object_shapes": ["box"],
         "scene_object_sizes_m": [1.5, 1.0, 0.05], "scene_object_poses": [0.5, 0.0, -0.025, 0.0, 0.0, 0.0],
         "collision_package_paths": ["meshes=python://pybullet_data/franka_panda/meshes"]}
PAIR = re.compile(r"'panda_(leftfinger|rightfinger|hand|link\d)' and scene object 'table'")


class RobotWithCameras(FakeRobot):
    """test_executor_node's following Panda, plus the two cameras the tiny checkpoint looks at."""

    def __init__(self, context):
        super().__init__(context)
        image = np.zeros((64, 64, 3), np.uint8)
        self.camera_pubs = [self.create_publisher(type(rgb_to_image_msg(image)), f"/camera/{c}/image_raw", 10)
                            for c in ("scene", "wrist")]
        self.create_timer(0.05, lambda: [pub.publish(rgb_to_image_msg(image, self.get_clock().now().to_msg()))
                                         for pub in self.camera_pubs])


def test_chunks_through_the_table_end_the_goal_naming_the_pair(ros, tiny_checkpoint_dir):
    executor = ros.add(ExecutorNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "joint_names": JOINTS, "urdf_path": str(URDF), "checkpoint": str(tiny_checkpoint_dir),
        "action_channel_names": [f"action_{i}" for i in range(9)], "joint_state_timeout_s": 0.5,
        "max_latency_s": 5.0, **TABLE}.items()]))
    robot = ros.add(RobotWithCameras(ros.context))
    policy = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "checkpoint": str(tiny_checkpoint_dir), "device": "cpu", "state_joint_names": JOINTS,
        "max_observation_age_s": 0.5, "success_topic": "", "max_executor_rejections": 2}.items()]))
    start_executor(executor)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS, policy.configure_error
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    into_table = np.linspace(HOME, INTO_TABLE, 9)[1:].astype(np.float32)   # (8, 9): the tiny checkpoint's shape
    policy.policy.predict_action_chunk = lambda observation, seed=None: into_table.copy()
    probe = ros.add(Node("goal_probe", context=ros.context))
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    try:
        result = commander.run_instruction("wipe the table", timeout=60.0).wait(60)
        assert result is not None and result.outcome_name == "SAFETY_STOP", result
        assert "2 chunks in a row" in result.reason and PAIR.search(result.reason), result.reason
        assert executor.controller.stats["chunks_accepted"] == 0
        assert np.allclose(robot.positions, HOME)   # nothing of it reached the arm
        assert not policy.worker.snapshot().running

        # Abort off: the arm keeps holding until the goal times out, and the timeout says what the executor saw.
        assert policy.set_parameters([Parameter("max_executor_rejections", value=0)])[0].successful
        task = commander.run_instruction("wipe the table", timeout=3.0)
        ros.wait_for(lambda: task.feedback() is not None and task.feedback().state == "HOLDING", 30,
                     "feedback: the executor holds")
        result = task.wait(30)
        assert result.outcome_name == "TIMEOUT" and PAIR.search(result.reason), result.reason
    finally:
        commander.close()
        policy.worker.shutdown()
