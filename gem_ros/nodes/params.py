"""Read a standard ROS 2 parameter YAML (`node: ros__parameters: ...`) into rclpy Parameters.

Lets one-process tools (gem_demo, tests) use exactly the per-robot YAML that `ros2 launch` passes to nodes.
"""
from __future__ import annotations

import faulthandler
from pathlib import Path

import yaml
from rclpy.parameter import Parameter


def node_parameters(yaml_path: Path, node_name: str, **overrides) -> list[Parameter]:
    data = yaml.safe_load(Path(yaml_path).read_text()) or {}
    section = data.get(node_name, data.get(f"/{node_name}", {}))
    values = dict(section.get("ros__parameters", {}))
    values.update(overrides)
    return [Parameter(name, value=value) for name, value in values.items()]


def spin_node(make_node, args=None, runs_inference: bool = False, allow_realtime: bool = False,
              start=None) -> None:
    """`main()` of every gem node: init, build, spin (executor from `--executor`; see gem_ros.nodes.spinning for
    what `auto` picks) until Ctrl-C or shutdown, always clean up. `--realtime-priority N` (`allow_realtime`:
    gem_executor only) is applied before rclpy starts, so the middleware's threads get it too;
    `--cpu-dma-latency-us N` (the same) is held until the process ends (gem_ros.core.realtime).
    `start(node)` (a lifecycle node that brings itself up: configure + activate, raising why it cannot) runs before
    spinning unless the command line says `--managed`; a failure ends the process with the reason."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from gem_ros.core.realtime import hold_cpu_wakeup_latency, make_calling_thread_realtime
    from gem_ros.nodes.spinning import make_executor, process_options, resolve_kind

    # bad arguments fail before anything
    options = process_options(args, allow_realtime and not runs_inference, allow_managed=start is not None)
    kind = resolve_kind(options.executor, runs_inference)
    faulthandler.enable()   # a crash in a C extension (DDS, torch) leaves the Python stacks in the log
    realtime, scheduling = make_calling_thread_realtime(options.realtime_priority)
    latency_request, idle_states = hold_cpu_wakeup_latency(options.cpu_dma_latency_us)
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        if start is not None and not options.managed:
            try:
                start(node)
            except Exception as error:  # noqa: BLE001 - the node logged it; the process ends with the reason
                node = None   # start destroyed it
                raise SystemExit(f"{error}") from error
        executor = make_executor(kind)
        log = node.get_logger()
        refused = (options.realtime_priority and not realtime) or \
            (options.cpu_dma_latency_us >= 0 and latency_request is None)
        (log.warning if refused else log.info)(f"spinning on the {kind} executor; {scheduling}; {idle_states}")
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C during start-up: rclpy's handler shut the context down, and what failed on it is that stop.
    finally:   # no executor.shutdown() before destroy_node: a policy's inference thread may still wake the executor
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        if latency_request is not None:
            latency_request.close()   # ends the PM QoS request (process exit would too)


def bringup_config(arm: str) -> Path:
    """gem_bringup/config/<arm>/gem.yaml from the install (colcon) or the source tree; an unknown arm raises
    ValueError naming the known ones."""
    from gem_ros.bringup import arm_config

    return arm_config(arm)
