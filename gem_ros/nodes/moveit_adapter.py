"""MoveIt where it runs (a robot PC with moveit_py): home/reset moves to SRDF named states planned by MoveIt, and the
opt-in executor backend `moveit`, which sends the safety filter's trajectories through MoveIt's trajectory execution
(its controller management; its planning scene, octomap included, checks each trajectory first).

moveit_py is imported only inside functions: without it this module loads, the conversion works, and choosing the
backend fails at configure with BackendUnavailable naming what to install. The calls follow moveit_py's bindings on
moveit/moveit2 (Jazzy, 2.12), paths under moveit_py/src/moveit/: moveit_ros/moveit_cpp/moveit_cpp.cpp (MoveItPy,
execute, get_trajectory_execution_manager), moveit_ros/moveit_cpp/planning_component.cpp (set_start_state_to_current_
state, set_goal_state(configuration_name=), plan, named_target_states), moveit_ros/trajectory_execution_manager/
trajectory_execution_manager.cpp (push, execute_and_wait, stop_execution, ensure_active_controllers_for_group),
moveit_core/planning_scene/planning_scene.cpp (is_state_valid), moveit_core/robot_state/robot_state.cpp
(joint_positions, update, __copy__), moveit_core/controller_manager/controller_manager.cpp (ExecutionStatus.status),
moveit_ros/planning_scene_monitor/planning_scene_monitor.cpp (read_only); usage as in
moveit/moveit2_tutorials:doc/examples/motion_planning_python_api/scripts/motion_planning_python_api_tutorial.py.

MoveIt's trajectory execution runs whole trajectories; it cannot replace one in flight (TrajectoryExecutionManager::
push refuses while one executes: moveit_ros/planning/trajectory_execution_manager/src/trajectory_execution_manager.cpp).
So each send stops the running one (the controller goal is cancelled) and starts the new one, after MoveIt checked
its first point against the current state: expect a pause per replacement, more than with the direct backends.
Not run here (no moveit_py on these machines): MoveIt itself. Tested here: the conversion, the refusal, and the
backend's hand-off, pre-emption and fault routing against a stand-in for the MoveIt session.
"""
from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from trajectory_msgs.msg import JointTrajectory

from gem_ros.core.executor_setup import moveit_settings
from gem_ros.core.safety import SafeTrajectory
from gem_ros.nodes.backends import BackendUnavailable
from gem_ros.nodes.conversions import build_joint_trajectory

INSTALL_HINT = ("install moveit_py on the robot PC (apt ros-$ROS_DISTRO-moveit-py, released from Jazzy on; the "
                "`moveit` metapackage does not include it) and run with MoveIt's configuration, or use backend "
                "'topic' / 'follow_joint_trajectory'")


def import_moveit_py(purpose: str = "backend 'moveit'"):
    """moveit_py's MoveItPy class; BackendUnavailable naming what to install when it is not importable."""
    try:
        from moveit.planning import MoveItPy
    except ImportError as error:
        raise BackendUnavailable(f"{purpose} needs MoveIt's Python API, moveit_py, which is not importable here "
                                 f"({error}); " + INSTALL_HINT) from error
    return MoveItPy


@functools.lru_cache(maxsize=None)
def connect_moveit(node_name: str, config_file: str = ""):
    """One MoveItPy per process and configuration (it starts its own rclcpp node and executor thread; its teardown
    calls rclcpp::shutdown, so a reconfigure reuses it). `config_file`: a YAML of MoveIt's parameters (what
    MoveItConfigsBuilder(...).to_dict() gives); empty: the --params-file of the launch, as MoveItPy reads them."""
    moveit_py = import_moveit_py()
    if not config_file:
        return moveit_py(node_name=node_name)
    config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise ValueError(f"moveit_config_file {config_file}: expected a mapping of MoveIt parameters")
    return moveit_py(node_name=node_name, config_dict=config)


# ------------------------------------------------------------------------------------------- conversion
def execution_points(trajectory: SafeTrajectory, start_positions: Mapping[str, float]) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """times (N+1,) [s] and positions (N+1, J): the current state at t = 0, then the trajectory's points.

    MoveIt refuses a trajectory whose first point is further than allowed_start_tolerance (default 0.01 rad) from
    the current state; ours start one control period ahead (SafeTrajectory times are > 0). With the current state
    first, JTC interpolates from it to the first point, as it does by itself for our direct backends."""
    missing = [n for n in trajectory.joint_names if n not in start_positions]
    if missing:
        raise ValueError(f"MoveIt's current state has no position for joints {missing}")
    start = np.array([start_positions[n] for n in trajectory.joint_names], dtype=float)
    if not np.all(np.isfinite(start)):
        bad = [n for n, v in zip(trajectory.joint_names, start) if not np.isfinite(v)]
        raise ValueError(f"MoveIt's current state is not finite for joints {bad}")
    return np.concatenate(([0.0], trajectory.times_s)), np.vstack((start, trajectory.positions))


def to_joint_trajectory_msg(trajectory: SafeTrajectory, start_positions: Mapping[str, float]) -> JointTrajectory:
    """SafeTrajectory -> trajectory_msgs/JointTrajectory for MoveIt: positions only (the controller joins the checked
    points linearly, see gem_ros.nodes.backends), time_from_start from 0, header stamp zero (start on receipt)."""
    times, positions = execution_points(trajectory, start_positions)
    return build_joint_trajectory(list(trajectory.joint_names), times, positions, None)


# ------------------------------------------------------------------------------------------- named moves
@dataclass(frozen=True)
class NamedMoveResult:
    succeeded: bool
    reason: str   # MoveIt's error code or execution status when it did not succeed


def plan_named_move(moveit, group: str, state: str, velocity_scaling: float | None = None) -> NamedMoveResult:
    """Plan from the current state to the SRDF group_state `state` of `group` with MoveIt, and execute it (blocks
    until MoveIt's execution ends). `velocity_scaling` (0, 1]: of the joints' velocity and acceleration limits
    (default: plan_request_params of MoveIt's configuration). ValueError for an unknown group or state or a bad
    scaling; a failed plan or execution is a result with MoveIt's reason."""
    if velocity_scaling is not None and not 0.0 < velocity_scaling <= 1.0:
        raise ValueError(f"velocity_scaling must be in (0, 1], got {velocity_scaling!r}")
    if group not in moveit.get_robot_model().joint_model_group_names:
        raise ValueError(f"MoveIt has no planning group {group!r} "
                         f"(groups: {sorted(moveit.get_robot_model().joint_model_group_names)})")
    component = moveit.get_planning_component(group)
    if state not in component.named_target_states:
        raise ValueError(f"group {group!r} has no named state {state!r} in MoveIt's SRDF "
                         f"(it has {sorted(component.named_target_states)})")
    component.set_start_state_to_current_state()
    if not component.set_goal_state(configuration_name=state):
        raise ValueError(f"MoveIt refused {group}/{state} as a goal")
    if velocity_scaling is None:
        plan = component.plan()
    else:
        from moveit.planning import PlanRequestParameters

        parameters = PlanRequestParameters(moveit, "plan_request_params")
        parameters.max_velocity_scaling_factor = parameters.max_acceleration_scaling_factor = velocity_scaling
        plan = component.plan(single_plan_parameters=parameters)
    if not plan:
        return NamedMoveResult(False, f"MoveIt found no plan to {group}/{state} (MoveItErrorCodes "
                                      f"{plan.error_code.val})")
    status = moveit.execute(plan.trajectory, controllers=[])
    return NamedMoveResult(bool(status), "" if status else f"MoveIt's execution ended {status.status}")


# ------------------------------------------------------------------------------------------- executor backend
class MoveItSession:
    """The MoveIt calls of the backend, on one MoveItPy. `joint_names`: the arm joints the backend sends; `group`
    empty: the one planning group whose active joints are exactly those."""

    def __init__(self, moveit, joint_names: Sequence[str], group: str = "", controllers: Sequence[str] = ()):
        self._model = moveit.get_robot_model()
        self._scene_monitor = moveit.get_planning_scene_monitor()
        self._execution = moveit.get_trajectory_execution_manager()
        self._controllers = list(controllers)   # empty: MoveIt picks the controllers for the joints
        groups = {g: set(self._model.get_joint_model_group(g).active_joint_model_names)
                  for g in self._model.joint_model_group_names}
        if not group:
            matches = [g for g, joints in groups.items() if joints == set(joint_names)]
            if len(matches) != 1:
                raise ValueError(f"set moveit_group: {len(matches)} MoveIt groups have exactly the joints "
                                 f"{sorted(joint_names)} (groups: { {g: sorted(j) for g, j in groups.items()} })")
            group = matches[0]
        elif group not in groups:
            raise ValueError(f"moveit_group {group!r} is not a MoveIt planning group (groups: {sorted(groups)})")
        self.group = group
        if not self._execution.ensure_active_controllers_for_group(group):
            raise ValueError(f"MoveIt has no active controller for the joints of group {group!r} "
                             "(see MoveIt's controller configuration and its log)")

    def current_positions(self) -> dict[str, float]:
        with self._scene_monitor.read_only() as scene:
            return dict(scene.current_state.joint_positions)

    def path_problem(self, joint_names: Sequence[str], times_s: np.ndarray, positions: np.ndarray) -> str | None:
        """None when every commanded point (1.., not the current state at 0) is valid in MoveIt's planning scene:
        no collision with the world, octomap or itself, within bounds. Each point is a copy of the current state
        with our joints set and its transforms updated (RobotTrajectory waypoints from set_robot_trajectory_msg
        are not updated, and is_path_valid would check them at stale link poses). Points only, not between them."""
        with self._scene_monitor.read_only() as scene:
            state = copy.copy(scene.current_state)
            for index in range(1, len(times_s)):
                state.joint_positions = dict(zip(joint_names, positions[index].tolist()))
                state.update()
                if not scene.is_state_valid(state, self.group):
                    scene.is_state_valid(state, self.group, True)   # again, verbose: MoveIt logs the contact
                    return (f"MoveIt's planning scene refused the point at t = {times_s[index]:.3f} s for group "
                            f"{self.group!r}: in collision or out of bounds (the contact is in MoveIt's log)")
        return None

    def execute(self, msg: JointTrajectory) -> str:
        """Run `msg` through MoveIt's trajectory execution and wait: ExecutionStatus as a string (SUCCEEDED, ...)."""
        if not self._execution.push(msg, self._controllers):
            return "REFUSED (no controller for its joints, or another execution running; see MoveIt's log)"
        return self._execution.execute_and_wait(True).status

    def stop(self) -> None:
        """Cancel whatever MoveIt executes (returns once its execution thread ended)."""
        self._execution.stop_execution(True)


class MoveItBackend:
    """The executor's trajectories through a MoveItSession, on two threads so that send/hold never block the
    executor: the runner hands the latest trajectory to MoveIt and waits for its execution; the stopper cancels
    a running one when a newer send or a hold arrives. The latest command wins. An execution that MoveIt ends other
    than SUCCEEDED (and not pre-empted by us), or a trajectory its planning scene refuses, reaches `on_fault` on the
    node's executor thread (a guard condition), as the follow_joint_trajectory backend's controller faults do."""

    def __init__(self, session: MoveItSession, node):
        self.session, self.on_fault = session, None
        self._node = node
        self._fault_reasons: list[str] = []
        self._fault_signal = node.create_guard_condition(self._deliver_faults)
        self._lock = threading.Condition()
        self._pending: tuple[str, SafeTrajectory | None] | None = None
        self._running_id = self._finished_id = 0   # executions started / ended by the runner
        self._stop_until = 0                      # the stopper cancels until this execution has ended
        self._closed = False
        self._stop_request = threading.Event()
        self._threads = [threading.Thread(target=self._run, name="moveit_backend_run", daemon=True),
                         threading.Thread(target=self._stop_loop, name="moveit_backend_stop", daemon=True)]
        for thread in self._threads:
            thread.start()

    def send(self, trajectory: SafeTrajectory, stamp=None) -> None:
        """`stamp` is ignored: MoveIt starts a trajectory when its execution begins."""
        self._command("trajectory", trajectory)

    def hold(self, trajectory: SafeTrajectory) -> None:
        """Cancel MoveIt's execution: the controller holds where the arm is (MoveIt's own stop)."""
        self._command("hold", None)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._stop_request.set()
        for thread in self._threads:
            thread.join(5.0)
        self.session.stop()
        self._node.destroy_guard_condition(self._fault_signal)

    # ---- threads --------------------------------------------------------------------------------------------------
    def _command(self, kind: str, trajectory: SafeTrajectory | None) -> None:
        with self._lock:
            self._pending = (kind, trajectory)
            if self._running_id > self._finished_id:   # pre-empt the running execution
                self._stop_until = self._running_id
                self._stop_request.set()
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                (kind, trajectory), self._pending = self._pending, None
            if kind == "trajectory":
                self._execute(trajectory)

    def _execute(self, trajectory: SafeTrajectory) -> None:
        try:
            times, positions = execution_points(trajectory, self.session.current_positions())
            problem = self.session.path_problem(trajectory.joint_names, times, positions)
            msg = build_joint_trajectory(list(trajectory.joint_names), times, positions, None)
        except Exception as error:  # noqa: BLE001 - MoveIt's bindings raise RuntimeError and others: hold, say why
            self._fault(f"MoveIt backend: {type(error).__name__}: {error}")
            return
        if problem:
            self._fault(problem)
            return
        with self._lock:
            if self._pending is not None or self._closed:   # superseded while it was checked
                return
            self._running_id += 1
            execution = self._running_id
        try:
            status = self.session.execute(msg)
        except Exception as error:  # noqa: BLE001
            status = f"{type(error).__name__}: {error}"
        with self._lock:
            self._finished_id = execution
            pre_empted = self._stop_until >= execution
        if status != "SUCCEEDED" and not pre_empted:
            self._fault(f"MoveIt's trajectory execution ended {status}")

    def _stop_loop(self) -> None:
        """Cancel until the execution to stop has ended: a stop that lands just before MoveIt starts it does
        nothing, so it is repeated (every 5 ms) rather than lost."""
        while True:
            self._stop_request.wait()
            self._stop_request.clear()
            while True:
                self.session.stop()
                with self._lock:
                    if self._closed or self._finished_id >= self._stop_until:
                        break
                    self._lock.wait(0.005)
            if self._closed:
                return

    def _fault(self, reason: str) -> None:
        with self._lock:
            self._fault_reasons.append(reason)
        self._fault_signal.trigger()

    def _deliver_faults(self) -> None:
        with self._lock:
            reasons, self._fault_reasons = self._fault_reasons, []
        if self.on_fault is not None:
            for reason in reasons:
                self.on_fault(reason)


def make_moveit_backend(values: Mapping[str, Any], node, joint_names: Sequence[str]) -> MoveItBackend:
    """backend 'moveit' from the executor's parameters: `moveit_group` (default: the group with exactly the arm's
    joints), `moveit_node_name` (default gem_moveit_py), `moveit_config_file` (default: the launch's parameters),
    `moveit_controllers` (default: MoveIt's choice). The arm's joints are `joint_names` less the gripper's when
    another backend drives the gripper. ValueError / BackendUnavailable name the problem."""
    settings = moveit_settings({**values, "backend": "moveit"})   # validated (executor_setup) before moveit_py
    gripper = set(values.get("gripper_joint_names") or []) if values.get("gripper_backend", "arm") != "arm" else set()
    arm_joints = [n for n in joint_names if n not in gripper]
    import_moveit_py()   # the clear refusal first, before anything else is built
    moveit = connect_moveit(settings.node_name, settings.config_file)
    session = MoveItSession(moveit, arm_joints, settings.group, list(settings.controllers))
    return MoveItBackend(session, node)

