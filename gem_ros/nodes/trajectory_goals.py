"""FollowJointTrajectory goals to a JointTrajectoryController: the goal (trajectory + tolerances) and what the
controller's answers mean. Plain Python over duck-typed messages and client, so it is tested where control_msgs is
not installed; FollowJointTrajectoryBackend (backends.py) gives it the real types.

Fields (ros-controls/control_msgs control_msgs/action/FollowJointTrajectory.action): goal `trajectory`,
`path_tolerance` and `goal_tolerance` (JointTolerance[]), `goal_time_tolerance` (builtin_interfaces/Duration); result
`error_code` (SUCCESSFUL 0, INVALID_GOAL -1, INVALID_JOINTS -2, OLD_HEADER_TIMESTAMP -3, PATH_TOLERANCE_VIOLATED -4,
GOAL_TOLERANCE_VIOLATED -5) and `error_string`. JointTolerance (control_msgs/msg/JointTolerance.msg): `name`,
`position` (rad, m for a prismatic joint); 0 = the controller's own, -1 = none. JTC takes a goal's value over its
constraints.<joint> parameters, and ignores all of a goal's tolerances if one names a joint it does not have
(ros-controls/ros2_controllers joint_trajectory_controller/include/joint_trajectory_controller/tolerances.hpp).

The executor sends a trajectory every control tick. As with the topic, each goal pre-empts the one before it: JTC
cancels the active goal with INVALID_GOAL "Current goal cancelled due to new incoming action." and runs the new one
(joint_trajectory_controller/src/joint_trajectory_controller.cpp, goal_accepted_callback / preempt_active_goal).
So the results of goals we replaced are expected and ignored. Reported (on_fault, once per hold episode: a hold
opens the next one) is what the controller did on its own to a goal sent since the last hold: rejected it, aborted
it (a tolerance violated: JTC then holds), or canceled our latest goal (another client, the controller stopping).
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Duration

ERROR_CODES = {0: "SUCCESSFUL", -1: "INVALID_GOAL", -2: "INVALID_JOINTS", -3: "OLD_HEADER_TIMESTAMP",
               -4: "PATH_TOLERANCE_VIOLATED", -5: "GOAL_TOLERANCE_VIOLATED"}
# gem_executor parameters of the follow_joint_trajectory backend (declare them next to executor_setup.PARAMETERS).
TOLERANCE_PARAMETERS = {
    "path_tolerance": [0.0],          # |measured - planned| while moving, per joint_names entry or one for all
                                      # (rad, m for a prismatic joint); 0 = the controller's own, -1 = none
    "goal_tolerance": [0.0],          # the same at the end of a trajectory (a hold's position)
    "goal_time_tolerance_s": 0.0,     # s after the end to get within goal_tolerance; 0 = the controller's own
}


@dataclass(frozen=True)
class Tolerances:
    """Joint name -> tolerance, only the joints that set one (0 = the controller's own is not sent)."""
    path: Mapping[str, float] = field(default_factory=dict)
    goal: Mapping[str, float] = field(default_factory=dict)
    goal_time_s: float = 0.0


def _per_joint(parameter: str, values: Sequence[float], joint_names: Sequence[str]) -> dict[str, float]:
    values, names = list(values), [n for n in joint_names if n]
    if len(values) == 1:
        values = values * len(names)
    elif len(values) != len(names):
        raise ValueError(f"{parameter} has {len(values)} values for the {len(names)} joint_names {names}: give one "
                         "(every joint) or one per joint")
    for name, value in zip(names, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (value < 0 and value != -1):
            raise ValueError(f"{parameter} for {name} is {value!r}: it must be > 0, 0 (the controller's own) or -1 "
                             "(none)")
    return {name: float(value) for name, value in zip(names, values) if value != 0}


def tolerances_from_parameters(values: Mapping, joint_names: Sequence[str]) -> Tolerances:
    """TOLERANCE_PARAMETERS from the executor's parameter values (defaults for those absent); ValueError names the
    parameter."""
    get = lambda name: values.get(name, TOLERANCE_PARAMETERS[name])  # noqa: E731
    goal_time = get("goal_time_tolerance_s")
    if isinstance(goal_time, bool) or not isinstance(goal_time, (int, float)) or not math.isfinite(goal_time) \
            or goal_time < 0:
        raise ValueError(f"goal_time_tolerance_s must be a finite number >= 0 (0 = the controller's own), got "
                         f"{goal_time!r}")
    return Tolerances(_per_joint("path_tolerance", get("path_tolerance"), joint_names),
                      _per_joint("goal_tolerance", get("goal_tolerance"), joint_names), float(goal_time))


def make_goal(goal_type, tolerance_type, trajectory, tolerances: Tolerances):
    """A FollowJointTrajectory goal for `trajectory` (trajectory_msgs/JointTrajectory) with the tolerances of its
    joints, named (never a joint the trajectory lacks: JTC would then drop all of them)."""
    goal = goal_type()
    goal.trajectory = trajectory
    names = list(trajectory.joint_names)
    goal.path_tolerance = [tolerance_type(name=n, position=tolerances.path[n]) for n in names if n in tolerances.path]
    goal.goal_tolerance = [tolerance_type(name=n, position=tolerances.goal[n]) for n in names if n in tolerances.goal]
    if tolerances.goal_time_s:
        sec, nanosec = divmod(round(tolerances.goal_time_s * 1e9), 1_000_000_000)
        goal.goal_time_tolerance = Duration(sec=int(sec), nanosec=int(nanosec))
    return goal


def result_fault(status: int, result, replaced: bool) -> str:
    """What a goal's end says about the controller ('' = nothing to report). `replaced`: we sent a newer goal."""
    if status == GoalStatus.STATUS_SUCCEEDED:
        return ""
    code, text = getattr(result, "error_code", 0), getattr(result, "error_string", "")
    what = f"{ERROR_CODES.get(code, 'error_code')} ({code})" + (f": {text}" if text else "")
    if status == GoalStatus.STATUS_CANCELED:
        return "" if replaced else f"canceled the trajectory (another client's goal, or the controller stopped): {what}"
    if status == GoalStatus.STATUS_ABORTED:
        return f"aborted the trajectory: {what}"
    return f"ended the trajectory with goal status {status}: {what}"


class GoalTracker:
    """Numbers the goals sent; a hold opens a new episode. A fault is reported once per episode, and only for a goal
    of the current episode (one from before the last hold is already held)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sent = self._episode = 0
        self._reported_episode = -1

    def sent(self, hold: bool) -> tuple[int, int]:
        with self._lock:
            self._sent += 1
            self._episode += hold
            return self._sent, self._episode

    def replaced(self, ticket: tuple[int, int]) -> bool:
        with self._lock:
            return ticket[0] != self._sent

    def claim_report(self, ticket: tuple[int, int]) -> bool:
        with self._lock:
            if ticket[1] != self._episode or self._reported_episode == self._episode:
                return False
            self._reported_episode = self._episode
            return True


class TrajectoryGoalSender:
    """Sends goals through `client` (an rclpy ActionClient: server_is_ready(), send_goal_async(goal) -> future of a
    goal handle with `accepted` and get_result_async() -> future of a response with `status` and `result`) and
    calls `on_fault(reason)` (on the thread that completes the futures: the node's executor) when the controller
    rejects, aborts or cancels our motion. Never from inside send(), so a caller may hold its own lock there."""

    def __init__(self, client, goal_type, tolerance_type, action_name: str, tolerances: Tolerances, logger):
        self._client, self._goal_type, self._tolerance_type = client, goal_type, tolerance_type
        self.action_name, self.tolerances, self._logger = action_name, tolerances, logger
        self._tracker = GoalTracker()
        self.on_fault: Callable[[str], None] | None = None
        self.faults = 0   # reported (for diagnostics and tests)

    def send(self, trajectory, hold: bool = False) -> bool:
        """Send `trajectory` as the new goal (`hold`: the executor's hold); False if the server is not up."""
        if not self._client.server_is_ready():
            self._logger.warning(f"action server {self.action_name} not available; "
                                 f"{'hold' if hold else 'trajectory'} dropped", throttle_duration_sec=1.0)
            return False
        goal = make_goal(self._goal_type, self._tolerance_type, trajectory, self.tolerances)
        ticket = self._tracker.sent(hold)
        self._client.send_goal_async(goal).add_done_callback(lambda future: self._on_response(ticket, future))
        return True

    def _on_response(self, ticket, future) -> None:
        try:
            handle = future.result()
        except Exception as error:  # noqa: BLE001 - a failed request is the controller's answer too: report it
            self._fault(ticket, f"{self.action_name}: the goal request failed: {error!r}")
            return
        if handle is None or not handle.accepted:
            self._fault(ticket, f"{self.action_name} rejected the trajectory goal (its log says why: joints, times, "
                                "or the controller is not active)")
            return
        handle.get_result_async().add_done_callback(lambda done: self._on_result(ticket, done))

    def _on_result(self, ticket, future) -> None:
        try:
            response = future.result()
            reason = result_fault(response.status, response.result, self._tracker.replaced(ticket))
        except Exception as error:  # noqa: BLE001 - the same: never lose an answer silently
            reason = f"gave no result: {error!r}"
        if reason:
            self._fault(ticket, f"{self.action_name} {reason}")

    def _fault(self, ticket, reason: str) -> None:
        if not self._tracker.claim_report(ticket):
            self._logger.debug(f"not reported again (already held): {reason}")
            return
        self.faults += 1
        self._logger.error(f"controller fault, holding: {reason}")
        if self.on_fault is not None:
            self.on_fault(reason)
