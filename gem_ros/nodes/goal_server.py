"""gem_policy's instruction interfaces: the ExecuteInstruction action, ~/set_instruction, ~/succeed, task success.

One goal EXECUTING at a time: an accepted goal aborts the one before it (outcome PREEMPTED) before it starts. A goal
ends SUCCEEDED when the task success topic publishes true or an operator calls ~/succeed (std_srvs/Trigger); TIMEOUT
(aborted) after the tighter of its own timeout and the arm's goal_timeout_s (0 = none; a real arm has no success
signal, so this is what ends a forgotten goal); CANCELED by its client; SAFETY_STOP / ERROR when the worker stops.
Every end but a cancel (which holds at once) stops the worker, so the executor holds the arm. The result's reason
says who or what ended the goal.
gem_executor's verdicts on this goal's chunks (gem/executor_status, gem_ros.nodes.executor_events) reach the goal:
feedback says HOLDING while the executor holds, and `max_executor_rejections` chunks in a row refused as unsafe end
the goal (SAFETY_STOP) with the last refusal's reason, e.g. the colliding pair: with the arm holding and the camera
view unchanged, the policy tends to propose the same motion again, and the goal would otherwise hold silently until
its timeout. Any accepted chunk resets the count; 0 = never end for it. A goal that ends TIMEOUT, SAFETY_STOP or
ERROR appends the executor's last refusal or hold to its reason.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.qos import QoSProfile
from rclpy.task import Future
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from gem_msgs.action import ExecuteInstruction
from gem_msgs.srv import SetInstruction
from gem_ros.nodes.executor_events import EXECUTOR_STATUS_TOPIC, from_status

Outcome = ExecuteInstruction.Result
ACTION_NAME = "gem/execute_instruction"   # relative: a node namespace moves it with the rest of the chain
# Goal requests queued before the executor takes them (rclpy's default, 10, silently drops the oldest of a burst:
# their clients never get an answer). Each accepted goal pre-empts the one before it, so a burst costs little.
GOAL_QUEUE_DEPTH = 100
FEEDBACK_PERIOD_S = 0.05   # how often a running goal reports and looks for its end (wall time)
REPLACED = "a newer instruction replaced this goal"


@dataclass
class ExecutorReport:
    """What gem_executor said about the running goal's chunks."""

    first_chunk: int = 1            # events for older chunks (the previous goal's) are not this goal's
    rejections_in_a_row: int = 0    # refused as unsafe since the last accepted chunk
    last_problem: str = ""          # the latest refusal or hold, "<executor>: <reason>"
    holding: bool = False           # the arm holds: a refusal or fault since the last accepted chunk

    def add(self, event) -> None:
        if event.chunk_index < self.first_chunk:
            return
        if event.event == "accepted":
            self.rejections_in_a_row, self.holding = 0, False
            return
        self.last_problem = f"{event.source or 'gem_executor'}: {event.reason}"
        if event.event == "rejected":
            self.rejections_in_a_row += 1
        self.holding = self.holding or event.event != "refused"   # a late chunk leaves the running plan running


class GoalServer:
    """Created at configure, destroyed at cleanup (`handles`). `worker` is the node's InferenceWorker; `is_active`
    says whether the node is in the active state; `now` is the node's clock in s; `latency_ms` the last chunk's."""

    def __init__(self, node, worker, is_active: Callable[[], bool], now: Callable[[], float],
                 latency_ms: Callable[[], float], goal_timeout_s: float, success_topic: str,
                 max_executor_rejections: int = 0):
        self._node, self._worker, self._is_active, self._now, self._latency_ms = \
            node, worker, is_active, now, latency_ms
        self.goal_timeout_s = goal_timeout_s   # live: the running goal is held to a new value at once
        self.max_executor_rejections = max_executor_rejections   # live, as goal_timeout_s; 0 = never end for it
        self._executor = ExecutorReport()   # of the running goal; replaced (under _lock) when a goal starts
        self._lock = threading.Lock()
        self._active_goal = None
        self._ended_by: tuple[object, str] | None = None   # (goal handle, reason): a success asked for that goal
        self._steady_clock = Clock(clock_type=ClockType.STEADY_TIME)
        self.succeed_service = node.resolve_service_name("~/succeed")
        self.action_server = ActionServer(
            node, ExecuteInstruction, ACTION_NAME, execute_callback=self._execute, goal_callback=self._on_goal,
            handle_accepted_callback=self._on_goal_accepted, cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(), goal_service_qos_profile=QoSProfile(depth=GOAL_QUEUE_DEPTH))
        self.handles = [self.action_server,
                        node.create_service(SetInstruction, "~/set_instruction", self._on_set_instruction),
                        node.create_service(Trigger, "~/succeed", self._on_succeed)]
        self.handles.append(node.create_subscription(DiagnosticStatus, EXECUTOR_STATUS_TOPIC,
                                                     self._on_executor_event, 50))
        if success_topic:
            self.success_topic = node.resolve_topic_name(success_topic)
            self.handles.append(node.create_subscription(Bool, success_topic, self._on_success, 10))

    def _on_success(self, msg: Bool) -> None:
        if msg.data:   # false is no news: a success once reported is not taken back
            self.end_as_succeeded(f"task success reported on {self.success_topic}")

    def _on_executor_event(self, msg: DiagnosticStatus) -> None:
        event = from_status(msg)
        if event is not None:
            with self._lock:
                self._executor.add(event)

    def end_as_succeeded(self, reason: str) -> str:
        """End the running goal as SUCCEEDED with `reason`; returns its instruction, '' when no goal runs (then
        nothing is kept for a later goal)."""
        with self._lock:
            goal = self._active_goal
            if goal is None or not goal.is_active:
                return ""
            self._ended_by = (goal, reason)
            return goal.request.instruction

    # ------------------------------------------------------------------------------ services
    def _on_succeed(self, request, response):
        instruction = self.end_as_succeeded(f"ended as succeeded by an operator ({self.succeed_service})")
        response.success = bool(instruction)
        response.message = f"goal '{instruction}' ends as succeeded" if instruction else "no goal is running"
        self._node.get_logger().info(f"~/succeed: {response.message}")
        return response

    def _on_set_instruction(self, request, response):
        snap = self._worker.snapshot()
        if not snap.running or not request.instruction.strip():
            response.success, response.message = False, "no running goal (use the ExecuteInstruction action)" \
                if request.instruction.strip() else "instruction is empty"
            return response
        self._worker.run_instruction(request.instruction)
        response.success, response.message = True, f"instruction set to '{request.instruction}'"
        return response

    # ------------------------------------------------------------------------------ action
    def _on_goal(self, goal_request) -> GoalResponse:
        if not self._is_active():   # inactive: no thread would ever run the goal
            self._node.get_logger().warning("goal rejected: gem_policy is not active (activate it first)")
            return GoalResponse.REJECT
        if not goal_request.instruction.strip():
            self._node.get_logger().warning("goal rejected: the instruction is empty")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_goal_accepted(self, goal_handle) -> None:
        """The previous goal ends (ABORTED, outcome PREEMPTED) before this one starts. Its coroutine may still be
        asleep (or not started yet); it finds itself replaced when it wakes."""
        with self._lock:
            previous, self._active_goal = self._active_goal, goal_handle
            if previous is not None and previous.is_active:
                previous.abort()
            goal_handle.execute()

    async def _pause(self, seconds: float) -> None:
        """Yield to the executor for `seconds` of wall time (a coroutine: the node's other callbacks keep running
        on a single-threaded executor; wall time, so a paused /clock cannot freeze a cancel)."""
        done = Future()
        timer = self._node.create_timer(seconds, lambda: done.done() or done.set_result(None),
                                        clock=self._steady_clock)
        try:
            await done
        finally:
            self._node.destroy_timer(timer)

    def _timeout(self, request) -> tuple[float, str]:
        """The tighter of the goal's own timeout and goal_timeout_s (0 = none for each), and where it comes from."""
        own = request.timeout.sec + request.timeout.nanosec * 1e-9
        arm = self.goal_timeout_s
        if arm > 0 and (own <= 0 or arm < own):
            return arm, "gem_policy goal_timeout_s"
        return (own, "the goal's own timeout") if own > 0 else (0.0, "")

    async def _execute(self, goal_handle):
        """A coroutine on the node's executor: it only waits and reports, the worker thread does the inference."""
        worker, request = self._worker, goal_handle.request
        start_wall, start = time.monotonic(), self._now()
        with self._lock:   # a newer goal accepted before this coroutine ran: never start this one's instruction
            replaced = self._active_goal is not goal_handle
            if not replaced:
                worker.run_instruction(request.instruction)
                chunks_at_start = worker.snapshot().chunks
                self._executor = report = ExecutorReport(first_chunk=chunks_at_start + 1)
        if replaced:
            return self._finish(goal_handle, Outcome.PREEMPTED, REPLACED, start_wall, 0)
        outcome, reason = None, ""
        while outcome is None:
            snap = worker.snapshot()
            elapsed = self._now() - start
            timeout, source = self._timeout(request)
            ended_by = self._ended_by
            if self._active_goal is not goal_handle:
                outcome, reason = Outcome.PREEMPTED, REPLACED
            elif goal_handle.is_cancel_requested:
                worker.stop("goal canceled")
                outcome, reason = Outcome.CANCELED, "canceled by the client"
            elif ended_by is not None and ended_by[0] is goal_handle:
                outcome, reason = Outcome.SUCCEEDED, ended_by[1]
            elif 0 < self.max_executor_rejections <= report.rejections_in_a_row:
                outcome, reason = Outcome.SAFETY_STOP, (
                    f"{report.rejections_in_a_row} chunks in a row refused as unsafe (max_executor_rejections "
                    f"{self.max_executor_rejections}), last by {report.last_problem}")
            elif timeout > 0 and elapsed >= timeout:
                outcome, reason = Outcome.TIMEOUT, f"goal timeout after {timeout:.1f} s ({source})"
            elif not snap.running:
                outcome, reason = (Outcome.ERROR if snap.last_error else Outcome.SAFETY_STOP), snap.reason
            else:
                goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                    chunks_executed=snap.chunks - chunks_at_start,
                    state="HOLDING" if snap.holding or report.holding else "RUNNING",
                    progress=float(min(elapsed / timeout, 1.0)) if timeout > 0 else -1.0,
                    last_latency_ms=float(self._latency_ms())))
                await self._pause(FEEDBACK_PERIOD_S)
        if outcome in (Outcome.TIMEOUT, Outcome.SAFETY_STOP, Outcome.ERROR) and report.last_problem \
                and report.last_problem not in reason:
            reason = f"{reason}; last from {report.last_problem}"
        if outcome != Outcome.PREEMPTED:
            with self._lock:
                if self._active_goal is goal_handle:
                    self._active_goal, self._ended_by = None, None
                    if outcome != Outcome.CANCELED:
                        worker.stop(f"goal ended: {reason}")
        self._node.get_logger().info(f"goal '{request.instruction}' ended: {reason}")
        return self._finish(goal_handle, outcome, reason, start_wall, worker.snapshot().chunks - chunks_at_start)

    def _finish(self, goal_handle, outcome: int, reason: str, start_wall: float, chunks: int):
        """The terminal state (unless a newer goal already aborted this one) and the result the client receives."""
        with self._lock:   # serialised with _on_goal_accepted's abort: one terminal transition per goal
            if goal_handle.is_active:
                if outcome == Outcome.SUCCEEDED:
                    goal_handle.succeed()
                elif outcome == Outcome.CANCELED:
                    goal_handle.canceled()
                else:
                    goal_handle.abort()
        return Outcome(outcome=outcome, reason=reason, duration_s=float(time.monotonic() - start_wall),
                       chunks_executed=chunks)
