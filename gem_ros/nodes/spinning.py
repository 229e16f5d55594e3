"""Which rclpy executor spins the gem nodes: `events`, `single` or `auto` (the default: events where rclpy has it).

`events` is rclpy's experimental EventsExecutor (Kilted and newer): the middleware's on-new-data callbacks feed a
C++ event queue, so there is no wait set to rebuild in Python on every wake-up. bench/ros_overhead.py, 2-core box,
2 x 640x480 at 30 Hz: the policy -> executor hop 0.82 -> 0.43 ms p50 and the CPU of the three processes
27/24/16 -> 21/14/9 % of a core (one process: 40 -> 23 %). `single` is rclpy's SingleThreadedExecutor, the one
every ROS 2 distribution has (`auto` falls back to it).

Its `spin()` in rclpy 9.1.2 never lets another Python thread run nor delivers a message (seen here with a plain
subscription and a publisher thread), while `spin_once(timeout)` does both, so `EventsSpinner` spins it one event
at a time. It refuses nodes with guard conditions (rclpy raises "Guard conditions not supported").
"""
from __future__ import annotations

import threading

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
        while not self._stopped.is_set() and self._context.ok():
            self._executor.spin_once(timeout_sec=self._poll_s)

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


def resolve_kind(kind: str) -> str:
    """`auto` -> `events` where rclpy has it, else `single`; an unknown kind is refused."""
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"unknown executor '{kind}'; choose one of {EXECUTOR_KINDS}")
    if kind == "auto":
        return "events" if events_executor_available() else "single"
    return kind


def make_executor(kind: str = "auto", context=None):
    """A fresh executor of `kind` (one of EXECUTOR_KINDS) on `context` (None: the default context)."""
    kind = resolve_kind(kind)
    if kind == "single":
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor(context=context)
    try:
        return EventsSpinner(context=context)
    except ImportError as error:
        raise ValueError(f"executor 'events' needs rclpy.experimental.EventsExecutor (ROS 2 Kilted or newer): "
                         f"{error}") from error


def executor_from_args(args=None) -> str:
    """The `--executor KIND` of a gem node's command line (`args` as rclpy.init takes them; None: sys.argv).
    ROS arguments (after --ros-args) are left to rclpy; anything else is refused."""
    import argparse
    import sys

    from rclpy.utilities import remove_ros_args

    argv = remove_ros_args(sys.argv if args is None else args)
    parser = argparse.ArgumentParser(prog=argv[0] if argv else None,
                                     description="a gem node; its parameters come after --ros-args")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS, default="auto",
                        help="rclpy executor: events (experimental, Kilted+), single, auto (events where available)")
    return parser.parse_args(argv[1:]).executor
