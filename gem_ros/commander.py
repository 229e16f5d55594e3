"""A five-line Python API over the ExecuteInstruction action, for integrators.

    from gem_ros.commander import GemCommander
    with GemCommander() as robot:               # GemCommander(namespace="arm1"): the chain launched under /arm1
        task = robot.run_instruction("pick up the red cube", timeout=30.0)
        while not task.is_done():
            print(task.feedback())
        print(task.result().outcome_name, task.result().reason)
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import rclpy
from builtin_interfaces.msg import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from gem_msgs.action import ExecuteInstruction
from gem_ros.nodes.action_client import SpinSafeActionClient
from gem_ros.nodes.goal_server import ACTION_NAME

OUTCOME_NAMES = {getattr(ExecuteInstruction.Result, n): n for n in
                 ("SUCCEEDED", "TIMEOUT", "CANCELED", "PREEMPTED", "SAFETY_STOP", "ERROR")}


@dataclass
class InstructionResult:
    outcome: int
    reason: str
    chunks_executed: int
    duration_s: float

    @property
    def outcome_name(self) -> str:
        return OUTCOME_NAMES.get(self.outcome, str(self.outcome))

    @property
    def succeeded(self) -> bool:
        return self.outcome == ExecuteInstruction.Result.SUCCEEDED


class InstructionHandle:
    """One instruction in flight. Thread-safe; every method returns immediately except `wait`."""

    def __init__(self):
        self._feedback = None
        self._goal_handle = None
        self._cancel_requested = False   # cancel() before the server accepted: sent on acceptance
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: InstructionResult | None = None

    def _attach(self, goal_future) -> None:
        goal_future.add_done_callback(self._on_goal_response)

    def _on_feedback(self, message) -> None:
        self._feedback = message.feedback

    def _on_goal_response(self, future) -> None:
        goal_handle = future.result()
        if not goal_handle.accepted:
            self._finish(InstructionResult(ExecuteInstruction.Result.ERROR, "goal rejected by the policy node", 0, 0.0))
            return
        with self._lock:
            self._goal_handle = goal_handle
            cancel = self._cancel_requested
        goal_handle.get_result_async().add_done_callback(lambda f: self._finish(self._convert(f.result().result)))
        if cancel:
            goal_handle.cancel_goal_async()

    @staticmethod
    def _convert(result) -> InstructionResult:
        return InstructionResult(result.outcome, result.reason, result.chunks_executed, result.duration_s)

    def _finish(self, result: InstructionResult) -> None:
        self._result = result
        self._done.set()

    def is_done(self) -> bool:
        return self._done.is_set()

    def feedback(self):
        """Latest ExecuteInstruction.Feedback (chunks_executed, progress, last_latency_ms, state) or None."""
        return self._feedback

    def result(self) -> InstructionResult | None:
        return self._result

    def wait(self, timeout_s: float | None = None) -> InstructionResult | None:
        self._done.wait(timeout_s)
        return self._result

    def cancel(self) -> None:
        """Ask the policy node to stop; the arm holds and the result becomes CANCELED. Called before the node
        accepted the goal, the cancel is sent as soon as it does."""
        with self._lock:
            self._cancel_requested = True
            goal_handle = self._goal_handle
        if goal_handle is not None:
            goal_handle.cancel_goal_async()


def action_name_in(namespace: str, action_name: str = ACTION_NAME) -> str:
    """`action_name` under `namespace` ("arm1", "/robots/left"); a relative name without a namespace resolves in the
    namespace of the commander's node, an absolute name is used as it is."""
    if not namespace or action_name.startswith("/"):
        return action_name
    return f"/{namespace.strip('/')}/{action_name}"


class GemCommander:
    """Owns a small client node spun in a background thread (or uses the node you pass in, spun by you).
    `namespace`: where the gem chain runs (gem.launch.py namespace:=); its action: <namespace>/gem/execute_instruction.
    """

    def __init__(self, node: Node | None = None, action_name: str = ACTION_NAME, server_timeout_s: float = 10.0,
                 namespace: str = ""):
        self._owns_node = node is None
        if self._owns_node:
            if not rclpy.ok():
                rclpy.init()
            node = Node("gem_commander")
            self._executor = SingleThreadedExecutor()
            self._executor.add_node(node)
            self._spin_thread = threading.Thread(target=self._executor.spin, daemon=True)
            self._spin_thread.start()
        self.node = node
        self._client = SpinSafeActionClient(node, ExecuteInstruction, action_name_in(namespace, action_name))
        self.action_name = node.resolve_topic_name(action_name_in(namespace, action_name))   # for messages
        self._server_timeout_s = server_timeout_s

    def run_instruction(self, instruction: str, timeout: float | None = None) -> InstructionHandle:
        if not instruction.strip():
            raise ValueError("instruction is empty")
        if not self._client.wait_for_server(timeout_sec=self._server_timeout_s):
            raise TimeoutError(f"no ExecuteInstruction server on {self.action_name} after {self._server_timeout_s} s "
                               "(is gem_policy configured and active, in this namespace?)")
        goal = ExecuteInstruction.Goal(instruction=instruction)
        if timeout:
            seconds = int(timeout)
            goal.timeout = Duration(sec=seconds, nanosec=int((timeout - seconds) * 1e9))
        handle = InstructionHandle()
        handle._attach(self._client.send_goal_async(goal, feedback_callback=handle._on_feedback))
        return handle

    def close(self) -> None:
        self._client.destroy()
        if self._owns_node:
            self._executor.shutdown()
            self.node.destroy_node()

    def __enter__(self) -> GemCommander:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

