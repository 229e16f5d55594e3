"""One launch file for every arm: `ros2 launch gem_bringup gem.launch.py arm:=panda checkpoint:=/path [sim:=false]
[namespace:=left] [composed:=true] [urdf:=PATH]` (`ros2 launch gem_bringup gem.launch.py --show-args` lists all).

It only composes. What starts, with which parameters, names and checks, is gem_ros.bringup (plain Python, tested
without launch_ros): an unknown arm or a bad argument stops the launch before any node starts; use_sim_time
follows sim; namespace:= moves the whole chain. gem_policy and gem_executor are managed nodes: each is configured,
then activated once its configure succeeded (only then: a `ros2 lifecycle set ... deactivate` stays deactivated).
composed:=true starts gem_policy_executor instead, which brings both of its nodes up itself.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, LogInfo, OpaqueFunction, RegisterEventHandler
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from gem_ros import bringup


class _Api:
    """The launch classes gem_ros.bringup.launch_actions composes with."""
    Node, LifecycleNode, OnStateTransition, ChangeState = Node, LifecycleNode, OnStateTransition, ChangeState
    EmitEvent, RegisterEventHandler, LogInfo, Transition = EmitEvent, RegisterEventHandler, LogInfo, Transition


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, description=description)
                 if default is None else DeclareLaunchArgument(name, default_value=default, description=description)
                 for name, (default, description) in bringup.ARGUMENTS.items()]
    compose = OpaqueFunction(function=lambda context: bringup.launch_actions(context.launch_configurations, _Api))
    return LaunchDescription([*arguments, compose])
