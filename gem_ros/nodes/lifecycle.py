"""A LifecycleNode that leaves the ROS graph when it is destroyed.

rclpy's LifecycleNode.destroy_node (Kilted) leaves its rcl state machine alive, and the state machine keeps the rcl
node, its transition_event publisher and the DDS participant alive until Python collects the node object; a failed
test's traceback (or any lingering reference) keeps it for good, and the next node of the same name in that
domain shares the graph with a ghost (gem_doctor: "2 nodes are named /gem_policy").
"""
from __future__ import annotations

from rclpy.lifecycle import LifecycleNode


class GraphLeavingLifecycleNode(LifecycleNode):
    def destroy_node(self) -> None:
        super().destroy_node()
        state_machine = getattr(self, "_state_machine", None)
        if state_machine is not None:
            state_machine.destroy_when_not_in_use()
