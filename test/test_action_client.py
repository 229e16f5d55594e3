"""SpinSafeActionClient: a node spinning in another thread may collect the new client's entities the moment rclpy
registers it with the node; that must not kill the spin thread (it did in a gem_eval sim run)."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")


@pytest.mark.ros
def test_a_client_registered_with_a_spinning_node_is_complete_when_the_executor_looks():
    from rclpy.action import ActionClient
    from rclpy.node import Node

    from gem_msgs.action import ExecuteInstruction
    from gem_ros.nodes.action_client import SpinSafeActionClient

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node("gem_action_client_test", context=context)   # not spun: the test plays the executor thread
    try:
        register, seen = node.add_waitable, []

        def register_while_an_executor_collects(waitable):   # what a spin thread does at the worst instant
            register(waitable)
            seen.append(waitable.get_num_entities())

        node.add_waitable = register_while_an_executor_collects
        with pytest.raises(AttributeError, match="_lock"):   # rclpy's own client, as installed: half-built
            ActionClient(node, ExecuteInstruction, "gem/execute_instruction")
        client = SpinSafeActionClient(node, ExecuteInstruction, "gem/execute_instruction")
        assert len(seen) == 1 and client.server_is_ready() is False
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
