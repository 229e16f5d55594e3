"""One launch file for every arm: `ros2 launch gem_bringup gem.launch.py arm:=panda checkpoint:=/path [sim:=true]`.

Robot facts live in config/<arm>/gem.yaml; this file only composes nodes. With sim:=true the embedded pybullet
arm stands in for ros2_control (and publishes /clock). gem_policy is a managed node: it is configured and
activated here with lifecycle events, so the chain comes up in one command. executor:=auto|events|single picks
the rclpy executor of gem_sim and gem_executor, policy_executor:= that of gem_policy (gem_ros.nodes.spinning;
auto = events for the first two where rclpy has it, single for the policy, whose inference it would slow).
urdf:=PATH gives gem_executor the robot's own URDF (default: the bundled one for arm:=); urdf:='' makes it read
the URDF robot_state_publisher latches on /robot_description.
realtime_priority:=N (1-99) runs gem_executor's threads under SCHED_FIFO (gem_ros.core.realtime; 0 = off), and
cpu_dma_latency_us:=N has gem_executor hold every CPU's wake-up latency <= N us while it runs (-1 = off).
composed:=true starts gem_policy_executor instead: gem_policy and gem_executor in one process, each chunk handed
over in memory (no DDS hop; gem_ros.nodes.composed), the policy configured and activated by the process itself.
It gets no node name here (launch_ros would rename both of its nodes), so its parameters are node-scoped ros args,
after the YAML (the last value of a parameter wins). executor:= and the two latency options do not apply to it.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def generate_launch_description():
    arm, sim, checkpoint = LaunchConfiguration("arm"), LaunchConfiguration("sim"), LaunchConfiguration("checkpoint")
    composed = LaunchConfiguration("composed")
    executor = ["--executor", LaunchConfiguration("executor")]
    policy_executor = ["--executor", LaunchConfiguration("policy_executor")]
    control = ["--executor", LaunchConfiguration("executor"),
               "--realtime-priority", LaunchConfiguration("realtime_priority"),
               "--cpu-dma-latency-us", LaunchConfiguration("cpu_dma_latency_us")]
    params = PathJoinSubstitution([FindPackageShare("gem_bringup"), "config", arm, "gem.yaml"])
    urdf = LaunchConfiguration("urdf")
    policy = LifecycleNode(package="gem_ros", executable="gem_policy", name="gem_policy", namespace="",
                           parameters=[params, {"checkpoint": checkpoint}], arguments=policy_executor,
                           condition=UnlessCondition(composed), output="screen")
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=lambda node: node is policy,
                                            transition_id=Transition.TRANSITION_CONFIGURE),
                          condition=UnlessCondition(composed))
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=policy, goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=lambda node: node is policy,
                                              transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=UnlessCondition(composed))
    policy_and_executor = Node(package="gem_ros", executable="gem_policy_executor", arguments=policy_executor,
                               ros_arguments=["--params-file", params,
                                              "-p", ["gem_policy:checkpoint:=", checkpoint],
                                              "-p", ["gem_executor:urdf_path:=", urdf],
                                              "-p", ["gem_executor:checkpoint:=", checkpoint]],
                               condition=IfCondition(composed), output="screen")
    return LaunchDescription([
        DeclareLaunchArgument("arm", default_value="panda", description="folder under gem_bringup/config"),
        DeclareLaunchArgument("sim", default_value="true", description="start the embedded pybullet arm"),
        DeclareLaunchArgument("checkpoint", description="GEM-VLA checkpoint folder"),
        DeclareLaunchArgument("urdf", default_value=PathJoinSubstitution([FindPackageShare("gem_ros"), "urdf", arm,
                                                                          [arm, ".urdf"]]),
                              description="URDF with the joint limits gem_executor enforces; '' (separate nodes "
                                          "only): the URDF latched on /robot_description"),
        DeclareLaunchArgument("executor", default_value="auto", description="gem_sim/gem_executor: auto|events|single"),
        DeclareLaunchArgument("policy_executor", default_value="auto", description="gem_policy: auto|events|single"),
        DeclareLaunchArgument("realtime_priority", default_value="0",
                              description="gem_executor: SCHED_FIFO priority 1-99 of its threads (0 = off)"),
        DeclareLaunchArgument("cpu_dma_latency_us", default_value="-1",
                              description="gem_executor: hold CPU wake-up latency <= N us while it runs (-1 = off)"),
        DeclareLaunchArgument("composed", default_value="false",
                              description="true: gem_policy + gem_executor in one process (gem_policy_executor)"),
        Node(package="gem_ros", executable="gem_sim", name="gem_sim", parameters=[params], arguments=executor,
             condition=IfCondition(sim), output="screen"),
        Node(package="gem_ros", executable="gem_executor", name="gem_executor",
             parameters=[params, {"urdf_path": urdf, "checkpoint": checkpoint}], arguments=control,
             condition=UnlessCondition(composed), output="screen"),
        policy, activate_when_configured, configure, policy_and_executor,
    ])
