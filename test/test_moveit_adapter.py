"""gem_ros.nodes.moveit_adapter without MoveIt: the refusal when moveit_py is absent (as on these machines), the
SafeTrajectory -> JointTrajectory conversion MoveIt executes, and the backend's hand-off, pre-emption and fault
routing against a scripted stand-in for its MoveIt session. MoveIt's planning and execution never run here."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest
from rclpy.node import Node

from gem_ros.core.safety import SafeTrajectory
from gem_ros.nodes import backends
from gem_ros.nodes.backends import BackendUnavailable
from gem_ros.nodes.moveit_adapter import (MoveItBackend, connect_moveit, execution_points, import_moveit_py,
                                          make_moveit_backend, plan_named_move, to_joint_trajectory_msg)

MOVEIT_PY_HERE = importlib.util.find_spec("moveit") is not None
needs_no_moveit = pytest.mark.skipif(MOVEIT_PY_HERE, reason="moveit_py is installed: the refusal cannot happen")
JOINTS = ("j1", "j2")


def _trajectory(times=(0.02, 0.04, 0.06), step=0.01) -> SafeTrajectory:
    times = np.array(times)
    positions = np.array([[step * (i + 1), -step * (i + 1)] for i in range(len(times))])
    return SafeTrajectory(JOINTS, times, positions, np.zeros_like(positions))


# ------------------------------------------------------------------------------------------- refusal
@needs_no_moveit
def test_choosing_backend_moveit_without_moveit_py_fails_naming_what_to_install():
    values = {"backend": "moveit", "gripper_backend": "arm", "gripper_joint_names": [""]}
    with pytest.raises(BackendUnavailable) as error:
        make_moveit_backend(values, node=None, joint_names=list(JOINTS))   # refused before the node is touched
    message = str(error.value)
    assert message.startswith("backend 'moveit' needs MoveIt's Python API, moveit_py, which is not importable here")
    assert "apt ros-$ROS_DISTRO-moveit-py" in message and "backend 'topic' / 'follow_joint_trajectory'" in message
    with pytest.raises(BackendUnavailable, match=r"^a home move needs MoveIt's Python API, moveit_py"):
        import_moveit_py("a home move")
    with pytest.raises(BackendUnavailable, match="moveit_py"):
        connect_moveit("gem_moveit_py")


def test_a_missing_moveit_config_file_is_named_before_moveit_is_looked_for(tmp_path):
    missing = tmp_path / "moveit_cpp.yaml"
    with pytest.raises(ValueError, match=f"moveit_config_file '{missing}': no such file"):
        make_moveit_backend({"backend": "moveit", "moveit_config_file": str(missing)}, None, list(JOINTS))


def test_named_move_scaling_is_checked_before_moveit_is_asked():
    with pytest.raises(ValueError, match=r"velocity_scaling must be in \(0, 1\], got 1.5"):
        plan_named_move(moveit=None, group="arm", state="home", velocity_scaling=1.5)


@needs_no_moveit
@pytest.mark.skipif("moveit" not in backends.BACKENDS,
                    reason="gem_ros.nodes.backends does not route backend 'moveit' to moveit_adapter yet")
def test_the_executor_backends_refuse_moveit_here_with_the_same_message(ros):
    from gem_ros.nodes.trajectory_goals import TOLERANCE_PARAMETERS

    node = ros.add(Node("executor_stand_in", context=ros.context))
    values = {**TOLERANCE_PARAMETERS, "backend": "moveit", "controller_name": "arm_controller",
              "gripper_backend": "arm", "gripper_controller_name": "", "gripper_joint_names": [""],
              "gripper_max_effort": 0.0}
    with pytest.raises(BackendUnavailable, match="backend 'moveit' needs MoveIt's Python API, moveit_py"):
        backends.make_backends(values, node, list(JOINTS))


# ------------------------------------------------------------------------------------------- conversion
def test_the_trajectory_starts_at_moveits_current_state_then_follows_the_checked_points():
    trajectory = _trajectory()
    start = {"j2": -0.001, "finger": 0.04, "j1": 0.002}   # MoveIt's current state: every joint, any order
    msg = to_joint_trajectory_msg(trajectory, start)
    assert list(msg.joint_names) == ["j1", "j2"]
    assert [list(p.positions) for p in msg.points] == [[0.002, -0.001], [0.01, -0.01], [0.02, -0.02],
                                                       [0.03, -0.03]]
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in msg.points] == [
        (0, 0), (0, 20_000_000), (0, 40_000_000), (0, 60_000_000)]
    assert all(len(p.velocities) == 0 for p in msg.points)   # positions only: the controller interpolates linearly
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
    times, positions = execution_points(_trajectory(times=(1.5, 2.25)), {"j1": 0.0, "j2": 0.0})
    assert times.tolist() == [0.0, 1.5, 2.25] and positions.shape == (3, 2)
    seconds = to_joint_trajectory_msg(_trajectory(times=(1.5, 2.25)), {"j1": 0.0, "j2": 0.0}).points[2]
    assert (seconds.time_from_start.sec, seconds.time_from_start.nanosec) == (2, 250_000_000)


def test_a_current_state_without_our_joints_or_with_nan_is_refused():
    with pytest.raises(ValueError, match=r"MoveIt's current state has no position for joints \['j2'\]"):
        to_joint_trajectory_msg(_trajectory(), {"j1": 0.0})
    with pytest.raises(ValueError, match=r"MoveIt's current state is not finite for joints \['j1'\]"):
        to_joint_trajectory_msg(_trajectory(), {"j1": float("nan"), "j2": 0.0})


# ------------------------------------------------------------------------------------------- backend logic
class ScriptedSession:
    """Stands in for MoveItSession (the MoveIt calls) with scripted outcomes: this tests our threads, not MoveIt.
    An outcome "until_stopped" blocks like a running execution until stop() is called, then reports PREEMPTED."""

    group = "arm"

    def __init__(self, *outcomes: str, problem: str | None = None):
        self.outcomes, self.problem = list(outcomes), problem
        self.executed, self.stops = [], 0
        self.running, self._stopped = threading.Event(), threading.Event()

    def current_positions(self):
        return {"j1": 0.0, "j2": 0.0}

    def path_problem(self, joint_names, times_s, positions):
        return self.problem

    def execute(self, msg) -> str:
        self.executed.append(msg)
        outcome = self.outcomes.pop(0) if self.outcomes else "SUCCEEDED"
        if outcome != "until_stopped":
            return outcome
        self._stopped.clear()
        self.running.set()
        self._stopped.wait(10.0)
        self.running.clear()
        return "PREEMPTED"

    def stop(self) -> None:
        self.stops += 1
        self._stopped.set()


@pytest.fixture
def backend_for(ros):
    made = []

    def make(session):
        node = ros.add(Node(f"executor_stand_in_{len(made)}", context=ros.context))
        backend = MoveItBackend(session, node)
        faults = []
        backend.on_fault = lambda reason: faults.append((reason, threading.current_thread().name))
        made.append(backend)
        return backend, faults

    yield make
    for backend in made:
        backend.close()


def test_a_send_runs_through_moveits_execution_and_a_newer_send_pre_empts_it(ros, backend_for):
    session = ScriptedSession("until_stopped", "SUCCEEDED")
    backend, faults = backend_for(session)
    backend.send(_trajectory())
    ros.wait_for(session.running.is_set, 5, "the first trajectory executing")
    backend.send(_trajectory(step=0.02))
    ros.wait_for(lambda: len(session.executed) == 2, 5, "the newer trajectory executing")
    assert session.stops >= 1
    assert [list(p.positions) for p in session.executed[1].points][1:] == [[0.02, -0.02], [0.04, -0.04],
                                                                             [0.06, -0.06]]
    backend.close()
    assert faults == []   # our own pre-emption (PREEMPTED) is no fault


def test_an_aborted_execution_reaches_on_fault_on_the_nodes_executor_thread(ros, backend_for):
    session = ScriptedSession("ABORTED")
    backend, faults = backend_for(session)
    backend.send(_trajectory())
    ros.wait_for(lambda: faults, 5, "the fault")
    reason, thread = faults[0]
    assert reason == "MoveIt's trajectory execution ended ABORTED"
    assert not thread.startswith("moveit_backend")


def test_a_trajectory_moveits_scene_refuses_is_not_executed_and_faults(ros, backend_for):
    session = ScriptedSession(problem="MoveIt's planning scene refused the point at t = 0.040 s")
    backend, faults = backend_for(session)
    backend.send(_trajectory())
    ros.wait_for(lambda: faults, 5, "the fault")
    assert faults[0][0] == "MoveIt's planning scene refused the point at t = 0.040 s"
    assert session.executed == []


def test_a_hold_stops_the_running_execution_and_starts_nothing(ros, backend_for):
    session = ScriptedSession("until_stopped")
    backend, faults = backend_for(session)
    backend.send(_trajectory())
    ros.wait_for(session.running.is_set, 5, "the trajectory executing")
    backend.hold(_trajectory())
    ros.wait_for(lambda: not session.running.is_set(), 5, "the execution stopped")
    backend.close()
    assert len(session.executed) == 1 and session.stops >= 1 and faults == []


PANDA_URDF = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
PANDA = [f"panda_joint{i}" for i in range(1, 8)]


@pytest.mark.parametrize("overrides, message", [
    ({"moveit_group": "arm group"}, r"moveit_group must be a ROS name.*'arm group'"),
    ({"moveit_node_name": ""}, r"moveit_node_name must be a ROS name.*''"),
    ({"moveit_node_name": "9lives"}, r"moveit_node_name must be a ROS name"),
    ({"moveit_config_file": "/no/such/moveit_cpp.yaml"}, r"moveit_config_file '/no/such/moveit_cpp.yaml': no such"),
    ({"moveit_controllers": ["arm_controller", "arm_controller"]}, r"moveit_controllers must be unique"),
    ({"moveit_controllers": ["arm controller"]}, r"moveit_controllers must be unique controller names"),
])
def test_moveit_parameters_are_validated_at_configure_before_moveit_is_looked_for(overrides, message):
    from gem_ros.core.executor_setup import PARAMETERS, build_controller, moveit_settings

    values = {**PARAMETERS, "backend": "moveit", "joint_names": PANDA, "urdf_path": str(PANDA_URDF), **overrides}
    with pytest.raises(ValueError, match=message):
        moveit_settings(values)
    with pytest.raises(ValueError, match=message):   # the executor's configure: before any backend is built
        build_controller(values)
    with pytest.raises(ValueError, match=message):
        make_moveit_backend(values, None, PANDA)


def test_moveit_parameters_are_declared_and_refused_with_another_backend():
    from gem_ros.core.executor_setup import PARAMETERS, build_controller, moveit_settings

    assert {"moveit_group", "moveit_node_name", "moveit_config_file", "moveit_controllers"} <= set(PARAMETERS)
    values = {**PARAMETERS, "joint_names": PANDA, "urdf_path": str(PANDA_URDF)}
    assert moveit_settings(values) is None   # backend topic: nothing to validate, nothing set
    settings = moveit_settings({**values, "backend": "moveit", "moveit_group": "panda_arm",
                                "moveit_controllers": ["panda_arm_controller", ""]})
    assert (settings.group, settings.node_name, settings.controllers) == ("panda_arm", "gem_moveit_py",
                                                                          ("panda_arm_controller",))
    with pytest.raises(ValueError, match=r"\['moveit_group'\] set but backend is 'topic'.*backend 'moveit' only"):
        build_controller({**values, "moveit_group": "panda_arm"})
