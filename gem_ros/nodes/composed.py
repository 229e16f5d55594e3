"""gem_policy_executor: gem_policy and gem_executor in one process, each chunk handed over in memory.

Across processes a chunk costs an rclpy hop (~0.7 ms p50 on a 2-core machine, more while the executor thread is
busy); here the policy's inference thread gives the executor the very ActionChunk it then publishes, and the
executor plans and sends the trajectory right away (bench/ros_overhead.py --layout composed). Both nodes keep every
topic, service and parameter they have on their own: /gem/action_chunk is still published for observers and
recorders, only the executor no longer subscribes to it (parameter subscribe_chunks false), so nothing is planned
twice. rclpy has no intra-process transport; this is the in-process hand-over that rclcpp's would give.

    ros2 run gem_ros gem_policy_executor --ros-args --params-file <gem_bringup>/config/panda/gem.yaml \
        -p gem_policy:checkpoint:=/path -p gem_executor:urdf_path:=/path/panda.urdf

Unlike the launch file's managed nodes, this process configures and activates both of its nodes itself (the
executor first); `ros2 lifecycle set /gem_executor deactivate` (or /gem_policy) still works on each.
`--executor events|single|auto` (before --ros-args) picks the rclpy executor (gem_ros.nodes.spinning).
"""
from __future__ import annotations

import faulthandler

from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from gem_ros.nodes.executor_node import ExecutorNode, start_executor
from gem_ros.nodes.policy_node import PolicyNode


def connect_in_process(policy: PolicyNode, executor: ExecutorNode) -> None:
    """Every chunk (and hold) of `policy` goes straight to `executor`, on the policy's inference thread."""
    if executor.get_parameter("subscribe_chunks").value:
        raise ValueError("build the executor with subscribe_chunks false: it would also plan the topic's copy of "
                         "every chunk it is handed")
    policy.chunk_listeners.append(executor.deliver_chunk)


def main(args=None) -> None:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from gem_ros.nodes.spinning import make_executor, process_options, resolve_kind

    # No --realtime-priority: chunks are planned on the inference thread here, which never runs real-time.
    options = process_options(args)
    kind = resolve_kind(options.executor, runs_inference=True)
    faulthandler.enable()   # a crash in a C extension (DDS, torch) leaves the Python stacks in the log
    rclpy.init(args=args)
    nodes = []
    try:
        policy = PolicyNode()
        nodes.append(policy)
        executor_node = ExecutorNode(parameter_overrides=[Parameter("subscribe_chunks", value=False)])
        nodes.append(executor_node)
        connect_in_process(policy, executor_node)
        try:   # the executor first: a bad URDF or parameter ends the process before the model loads
            start_executor(executor_node)
        except Exception as error:  # noqa: BLE001 - logged by the node; the process ends with the reason
            nodes.remove(executor_node)   # start_executor destroyed it
            raise SystemExit(f"gem_executor did not come up: {error}") from error
        if policy.trigger_configure() != TransitionCallbackReturn.SUCCESS \
                or policy.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise SystemExit("gem_policy did not come up: see its error above")
        executor = make_executor(kind)   # one thread: inference has its own (see policy_node.main)
        for node in nodes:
            executor.add_node(node)
        # Said once the executor exists: from here a Ctrl-C stops the spin instead of failing the start-up.
        policy.get_logger().info(f"active; gem_executor composed in this process (chunks handed over in memory), "
                                 f"{kind} executor")
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Ctrl-C during start-up: rclpy's handler shut the context down, and what failed on it is that stop.
    finally:   # no executor.shutdown() first: it destroys the guard condition the inference thread may still wake
        for node in nodes:   # the policy first: destroying it stops the inference thread that feeds the executor
            node.destroy_node()
        rclpy.try_shutdown()
