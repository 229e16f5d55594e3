"""Gripper action goals for the vendors' gripper servers (control_msgs is not installable here: goal types are
stand-ins with the fields of control_msgs/action/{GripperCommand,ParallelGripperCommand}.action)."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("rclpy")
from gem_ros.nodes.backends import GRIPPER_ACTIONS, GRIPPER_BACKENDS, BackendUnavailable, GripperCommandBackend, \
    gripper_goal  # noqa: E402


class GripperCommandStandIn:   # control_msgs/GripperCommand command: float64 position, float64 max_effort
    class Goal:
        def __init__(self):
            self.command = SimpleNamespace(position=0.0, max_effort=0.0)


class ParallelGripperCommandStandIn:   # command: sensor_msgs/JointState
    class Goal:
        def __init__(self):
            self.command = SimpleNamespace(name=[], position=[], velocity=[], effort=[])


def test_a_gripper_command_goal_carries_position_and_max_effort():
    goal = gripper_goal(GripperCommandStandIn, "gripper_command", "panda_finger_joint1", 0.03, 20.0)
    assert (goal.command.position, goal.command.max_effort) == (0.03, 20.0)


def test_a_parallel_gripper_goal_names_its_joint():
    goal = gripper_goal(ParallelGripperCommandStandIn, "parallel_gripper_command", "robotiq_85_left_knuckle_joint",
                        0.4, 20.0)
    assert goal.command.name == ["robotiq_85_left_knuckle_joint"]
    assert goal.command.position == [0.4] and goal.command.effort == [20.0] and goal.command.velocity == []


@pytest.mark.parametrize("kind", sorted(GRIPPER_ACTIONS))
def test_each_action_gripper_backend_refuses_clearly_without_control_msgs(kind, monkeypatch):
    assert kind in GRIPPER_BACKENDS
    monkeypatch.setitem(sys.modules, "control_msgs", None)   # as on this machine, even where it is installed
    with pytest.raises(BackendUnavailable, match=f"{kind}.*control_msgs.action.{GRIPPER_ACTIONS[kind]}"):
        GripperCommandBackend(node=None, controller_name="franka_gripper", joint_name="fr3_finger_joint1",
                              max_effort=20.0, kind=kind, action_name="franka_gripper/gripper_action")
