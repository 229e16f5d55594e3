"""Which rclpy executor spins a gem process: `events`, `single`, or `auto` (the default, chosen per process).

`events` is rclpy's experimental EventsExecutor (Kilted and newer): the middleware's on-new-data callbacks feed a
C++ event queue, so there is no wait set to rebuild in Python on every wake-up. `single` is rclpy's
SingleThreadedExecutor, the one every ROS 2 distribution has.

bench/ros_overhead.py on a 2-core box, 2 x 640x480 at 30 Hz, the policy replaced by a 50 ms sleep:
events takes the policy -> executor hop from 1.13 to 0.45 ms p50 and roughly halves every process's CPU. But in a
process that also runs CPU inference, its C++ callbacks win the GIL over the inference thread: the tiny policy's
chunk 38 -> 51 ms in one process, and in gem_demo (pybullet rendering on the executor thread) 77 -> 250 ms.
So `auto` is `events` for processes without an inference thread (gem_executor, gem_sim, gem_recorder) and `single`
for those with one (gem_policy, gem_policy_executor, gem_demo); single is the fallback where rclpy lacks events.

Its `spin()` in rclpy 9.1.2 never lets another Python thread run nor delivers a message (seen here with a plain
subscription and a publisher thread), while `spin_once(timeout)` does both, so `EventsSpinner` spins it one event
at a time. It refuses nodes with guard conditions (rclpy raises "Guard conditions not supported").
"""
from __future__ import annotations

import threading
from typing import NamedTuple

EXECUTOR_KINDS = ("auto", "events", "single")


class EventsSpinner:
    """rclpy's EventsExecutor behind the Executor calls the gem tools use: add_node, spin, shutdown."""

    def __init__(self, context=None, poll_s: float = 0.1):
        import rclpy
        from rclpy.experimental import EventsExecutor

        self._context = context or rclpy.get_default_context()
        self._executor = EventsExecutor(context=self._context)
        self._poll_s = poll_s      # how soon spin() notices shutdown() when no event arrives
        self._stopped = threading.Event()

    def add_node(self, node) -> bool:
        return self._executor.add_node(node)

    def remove_node(self, node) -> None:
        self._executor.remove_node(node)

    def spin(self) -> None:
        """Until shutdown() or the context shuts down (then spin_once raises ExternalShutdownException)."""
        from rclpy.executors import ExternalShutdownException

        try:
            while not self._stopped.is_set() and self._context.ok():
                self._executor.spin_once(timeout_sec=self._poll_s)
        except ExternalShutdownException:
            pass

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self._executor.spin_once(timeout_sec=timeout_sec)

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        self._stopped.set()
        return self._executor.shutdown(timeout_sec)


def events_executor_available() -> bool:
    try:
        from rclpy.experimental import EventsExecutor  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kind(kind: str, runs_inference: bool = False) -> str:
    """`auto` -> `single` for a process with an inference thread, else `events` where rclpy has it; an unknown
    kind is refused."""
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor '{kind}'; choose one of {EXECUTOR_KINDS}")
    if kind == "auto":
        return "events" if not runs_inference and events_executor_available() else "single"
    if kind == "events" and not events_executor_available():
        raise ValueError("executor 'events' needs rclpy.experimental.EventsExecutor (ROS 2 Kilted or newer)")
    return kind


def make_executor(kind: str = "auto", context=None, runs_inference: bool = False):
    """A fresh executor of `kind` (one of EXECUTOR_KINDS) on `context` (None: the default context)."""
    kind = resolve_kind(kind, runs_inference)
    if kind == "single":
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor(context=context)
    return EventsSpinner(context=context)


class ProcessOptions(NamedTuple):
    executor: str                   # one of EXECUTOR_KINDS
    realtime_priority: int = 0      # 0 = default scheduling; 1-99 SCHED_FIFO (gem_ros.core.realtime)
    cpu_dma_latency_us: int = -1    # -1 = idle states left alone; N >= 0: CPU wake-up latency held <= N us
    managed: bool = False           # leave a lifecycle node unconfigured for a lifecycle manager (the launch file)


def process_options(args=None, allow_realtime: bool = False, allow_managed: bool = False) -> ProcessOptions:
    """`--executor KIND`, `--realtime-priority N`, `--cpu-dma-latency-us N` and `--managed` of a gem node's command
    line (`args` as rclpy.init takes them; None: sys.argv). ROS arguments (after --ros-args) are left to rclpy;
    anything else is refused, as are the two latency options unless `allow_realtime` (gem_executor; see
    gem_ros.core.realtime) and --managed unless `allow_managed` (a node that configures itself by default)."""
    import argparse
    import sys

    from rclpy.utilities import remove_ros_args

    from gem_ros.core.realtime import MAX_PRIORITY, check_priority, check_wakeup_latency

    def checked(check):
        def parse(text: str) -> int:
            try:
                return check(int(text))
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        return parse

    argv = remove_ros_args(sys.argv if args is None else args)
    parser = argparse.ArgumentParser(prog=argv[0] if argv else None, allow_abbrev=False,
                                     description="a gem node; its parameters come after --ros-args")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS, default="auto",
                        help="rclpy executor: events (experimental, Kilted+), single, auto (single in a process that "
                             "runs inference, else events where available)")
    parser.add_argument("--realtime-priority", type=checked(check_priority), default=0, metavar="N",
                        help=f"SCHED_FIFO priority 1-{MAX_PRIORITY} for the control threads (0: default scheduling; "
                             "where the OS refuses it, the node logs why and runs without)")
    parser.add_argument("--cpu-dma-latency-us", type=checked(check_wakeup_latency), default=-1, metavar="N",
                        help="hold every CPU's wake-up latency <= N us while the node runs (/dev/cpu_dma_latency; "
                             "-1: leave idle states alone; where the OS refuses it, the node logs why and runs "
                             "without)")
    parser.add_argument("--managed", action="store_true",
                        help="stay unconfigured: a lifecycle manager (the launch file, `ros2 lifecycle set`) "
                             "configures and activates the node")
    parsed = parser.parse_args(argv[1:])
    if parsed.managed and not allow_managed:
        parser.error("--managed: only gem_executor configures itself by default; this node always waits for "
                     "its lifecycle transitions")
    try:
        resolve_kind(parsed.executor)
    except ValueError as error:
        parser.error(str(error))
    for option, value, off in (("--realtime-priority", parsed.realtime_priority, 0),
                               ("--cpu-dma-latency-us", parsed.cpu_dma_latency_us, -1)):
        if value != off and not allow_realtime:
            parser.error(f"{option}: only gem_executor, in its own process, takes the latency options (inference "
                         f"and busy nodes must not run real-time; see gem_ros.core.realtime)")
    return ProcessOptions(parsed.executor, parsed.realtime_priority, parsed.cpu_dma_latency_us, parsed.managed)
