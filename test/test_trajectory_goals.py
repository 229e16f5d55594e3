"""FollowJointTrajectory goals (issue 17 item 8) without control_msgs: the goal carries joint-named tolerances from
the executor's parameters, replaced goals' ends are ignored, the controller's rejections / aborts / cancels of our
motion reach on_fault with its reason, once per hold. The client and the message types are duck-typed stand-ins
(never a module named control_msgs); the futures are rclpy's own."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy")
from action_msgs.msg import GoalStatus  # noqa: E402
from builtin_interfaces.msg import Duration  # noqa: E402
from rclpy.task import Future  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from gem_ros.core.safety import SafeTrajectory  # noqa: E402
from gem_ros.nodes.backends import BackendUnavailable, FollowJointTrajectoryBackend, make_backend  # noqa: E402
from gem_ros.nodes.trajectory_goals import Tolerances, TrajectoryGoalSender, make_goal, result_fault, \
    tolerances_from_parameters  # noqa: E402

JOINTS = ["shoulder", "elbow", "finger"]
ACTION = "/arm_controller/follow_joint_trajectory"
PREEMPTED_BY_JTC = SimpleNamespace(error_code=-1, error_string="Current goal cancelled due to new incoming action.")


@dataclass
class Tolerance:   # control_msgs/msg/JointTolerance's fields that we set
    name: str = ""
    position: float = 0.0


@dataclass
class Goal:        # control_msgs/action/FollowJointTrajectory Goal's fields that we set
    trajectory: JointTrajectory = None
    path_tolerance: list = field(default_factory=list)
    goal_tolerance: list = field(default_factory=list)
    goal_time_tolerance: Duration = field(default_factory=Duration)


class Client:
    """An ActionClient's surface: every goal's response and result futures, completed by the test (the controller)."""

    def __init__(self):
        self.ready, self.goals = True, []

    def server_is_ready(self) -> bool:
        return self.ready

    def send_goal_async(self, goal) -> Future:
        response, result = Future(), Future()
        self.goals.append(SimpleNamespace(goal=goal, response=response, result=result))
        return response

    def accept(self, i: int, accepted: bool = True) -> None:
        self.goals[i].response.set_result(SimpleNamespace(accepted=accepted,
                                                          get_result_async=lambda: self.goals[i].result))

    def end(self, i: int, status: int, error_code: int = 0, error_string: str = "") -> None:
        self.goals[i].result.set_result(SimpleNamespace(
            status=status, result=SimpleNamespace(error_code=error_code, error_string=error_string)))


class Logger:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda message, **_: self.lines.append((level, message))


def trajectory(names=JOINTS) -> JointTrajectory:
    return JointTrajectory(joint_names=list(names))


def sender(tolerances=Tolerances()):
    client, faults = Client(), []
    goals = TrajectoryGoalSender(client, Goal, Tolerance, ACTION, tolerances, Logger())
    goals.on_fault = faults.append
    return client, goals, faults


def test_tolerances_come_from_the_parameters_per_joint_and_name_their_joints():
    tolerances = tolerances_from_parameters({"path_tolerance": [0.2, 0.3, 0.0], "goal_tolerance": [0.05],
                                             "goal_time_tolerance_s": 0.5}, JOINTS)
    assert tolerances.path == {"shoulder": 0.2, "elbow": 0.3} and tolerances.goal_time_s == 0.5
    assert tolerances.goal == dict.fromkeys(JOINTS, 0.05)
    goal = make_goal(Goal, Tolerance, trajectory(["elbow", "shoulder"]), tolerances)   # an arm's subset, reordered
    assert [(t.name, t.position) for t in goal.path_tolerance] == [("elbow", 0.3), ("shoulder", 0.2)]
    assert [t.name for t in goal.goal_tolerance] == ["elbow", "shoulder"]   # never a joint the goal lacks
    assert (goal.goal_time_tolerance.sec, goal.goal_time_tolerance.nanosec) == (0, 500_000_000)
    defaults = make_goal(Goal, Tolerance, trajectory(), tolerances_from_parameters({}, JOINTS))
    assert defaults.path_tolerance == [] and defaults.goal_tolerance == []   # 0: the controller's own constraints
    assert tolerances_from_parameters({"path_tolerance": [-1.0]}, JOINTS).path == dict.fromkeys(JOINTS, -1.0)


@pytest.mark.parametrize("values, message", [
    ({"path_tolerance": [0.1, 0.2]}, "path_tolerance has 2 values for the 3 joint_names"),
    ({"goal_tolerance": [math.nan]}, "goal_tolerance for shoulder is nan"),
    ({"path_tolerance": [0.1, -0.5, 0.1]}, "path_tolerance for elbow is -0.5"),
    ({"goal_time_tolerance_s": -1.0}, "goal_time_tolerance_s must be"),
    ({"goal_time_tolerance_s": math.inf}, "goal_time_tolerance_s must be"),
])
def test_bad_tolerance_parameters_are_refused_naming_the_parameter(values, message):
    with pytest.raises(ValueError, match=message):
        tolerances_from_parameters(values, JOINTS)


def test_results_of_replaced_goals_are_ignored_and_a_tolerance_abort_is_reported_once_per_hold():
    client, goals, faults = sender()
    for _ in range(3):
        assert goals.send(trajectory())
    for i in range(3):
        client.accept(i)
    client.end(0, GoalStatus.STATUS_CANCELED, **vars(PREEMPTED_BY_JTC))   # JTC pre-empted it for goal 1: expected
    client.end(1, GoalStatus.STATUS_SUCCEEDED)
    assert faults == []
    client.end(2, GoalStatus.STATUS_ABORTED, -4, "shoulder path error 0.31 > 0.2")
    assert faults == [f"{ACTION} aborted the trajectory: PATH_TOLERANCE_VIOLATED (-4): shoulder path error 0.31 > 0.2"]
    goals.send(trajectory())                       # a tick before the hold: same episode, not reported twice
    client.accept(3)
    client.end(3, GoalStatus.STATUS_ABORTED, -4, "again")
    assert len(faults) == 1
    goals.send(trajectory(), hold=True)            # the executor holds: a new episode
    client.accept(4)
    goals.send(trajectory())
    client.accept(5)
    client.end(5, GoalStatus.STATUS_ABORTED, -5, "elbow goal error")
    assert len(faults) == 2 and "GOAL_TOLERANCE_VIOLATED (-5): elbow goal error" in faults[-1]


def test_an_abort_of_a_goal_sent_before_the_last_hold_is_not_reported_again():
    client, goals, faults = sender()
    goals.send(trajectory())
    client.accept(0)
    goals.send(trajectory(), hold=True)
    client.end(0, GoalStatus.STATUS_ABORTED, -4, "late")   # the arm is held already
    assert faults == []


def test_a_rejected_goal_and_our_latest_goal_canceled_by_someone_else_are_reported():
    client, goals, faults = sender()
    goals.send(trajectory())
    client.accept(0, accepted=False)               # JTC: joints or times invalid, or the controller inactive
    assert len(faults) == 1 and faults[0].startswith(f"{ACTION} rejected the trajectory goal")
    goals.send(trajectory(), hold=True)            # the hold itself rejected: the arm is not held by us, say so
    client.accept(1, accepted=False)
    assert len(faults) == 2
    goals.send(trajectory(), hold=True)
    client.accept(2)
    client.end(2, GoalStatus.STATUS_CANCELED, **vars(PREEMPTED_BY_JTC))   # latest goal: another client's pre-empted
    assert len(faults) == 3 and "canceled the trajectory" in faults[-1] and "new incoming action" in faults[-1]


def test_no_server_drops_the_goal_with_a_warning_and_reports_nothing_from_inside_send():
    client, goals, faults = sender()
    client.ready = False
    assert not goals.send(trajectory(), hold=True)
    assert client.goals == [] and faults == []
    assert any(level == "warning" and "not available; hold dropped" in line for level, line in goals._logger.lines)


def test_result_fault_reads_the_goal_status_and_the_controller_error():
    assert result_fault(GoalStatus.STATUS_SUCCEEDED, SimpleNamespace(error_code=0), replaced=False) == ""
    assert result_fault(GoalStatus.STATUS_CANCELED, PREEMPTED_BY_JTC, replaced=True) == ""
    assert result_fault(GoalStatus.STATUS_ABORTED, SimpleNamespace(error_code=-2), replaced=True) == \
        "aborted the trajectory: INVALID_JOINTS (-2)"


def test_the_backend_sends_trajectories_and_holds_as_goals_with_velocities_only_on_a_hold():
    client, goals, faults = sender(Tolerances(path={"shoulder": 0.2}))
    backend = FollowJointTrajectoryBackend.__new__(FollowJointTrajectoryBackend)   # without control_msgs' types
    backend.goals = goals
    positions = np.array([[0.0, 0.1, 0.01], [0.02, 0.1, 0.01]])
    safe = SafeTrajectory(tuple(JOINTS), np.array([0.02, 0.04]), positions, np.zeros_like(positions))
    backend.send(safe)
    backend.hold(safe)
    sent, held = (g.goal for g in client.goals)
    assert list(sent.trajectory.joint_names) == JOINTS and len(sent.trajectory.points[0].velocities) == 0
    assert list(held.trajectory.points[-1].velocities) == [0.0, 0.0, 0.0]
    assert [t.name for t in sent.path_tolerance] == ["shoulder"]
    backend.on_fault = None
    assert goals.on_fault is None


def test_without_control_msgs_the_backend_is_refused_with_what_to_install(ros):
    try:
        import control_msgs.action  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("control_msgs is installed here: the refusal cannot happen")
    from rclpy.node import Node

    node = ros.add(Node("fjt_refusal", context=ros.context))
    with pytest.raises(BackendUnavailable, match=r"control_msgs.*install control_msgs.*or use backend 'topic'"):
        make_backend("follow_joint_trajectory", node, "arm_controller")
