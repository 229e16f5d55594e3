"""Off the simulator (sim:=false) gem_policy and gem_executor run on wall time (issue 17.1): with the parameters the
launch file gives them, against a robot process that knows nothing of /clock, they tick, plan, and hold on cancel.
With use_sim_time set whatever `sim` was (the arm YAML did that), no ROS-time timer ever fired here."""
from __future__ import annotations

import multiprocessing
import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

import robot_stand_in  # noqa: E402
from gem_msgs.msg import PolicyStatus  # noqa: E402
from gem_ros import bringup  # noqa: E402
from gem_ros.commander import GemCommander  # noqa: E402
from gem_ros.demo import make_random_sim_checkpoint  # noqa: E402
from gem_ros.nodes.executor_node import ExecutorNode, start_executor  # noqa: E402
from gem_ros.nodes.policy_node import PolicyNode  # noqa: E402

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def sim_checkpoint(tmp_path_factory):
    return make_random_sim_checkpoint(tmp_path_factory.mktemp("wall_ckpt"))


def launched_parameters(checkpoint, namespace: str = "", **extra) -> dict[str, list[Parameter]]:
    """Each node's parameters as `ros2 launch gem_bringup gem.launch.py sim:=false` gives them."""
    specs = bringup.plan({"arm": "panda", "checkpoint": str(checkpoint), "sim": "false", "namespace": namespace})
    values = {fqn.rsplit("/", 1)[1]: v for spec in specs for fqn, v in spec.parameters.items()}
    # a loaded 2-core test machine delays timers: the 50 ms heartbeat timeout would hold spuriously
    values["gem_executor"] = {**values["gem_executor"], "policy_timeout_s": 0.3, "joint_state_timeout_s": 0.5}
    values["gem_policy"] = {**values["gem_policy"], "device": "cpu", **extra}
    return {name: [Parameter(k, value=v) for k, v in node_values.items()] for name, node_values in values.items()}


def start_chain(ros, checkpoint, namespace: str = ""):
    """gem_executor and gem_policy as the launch file brings them up (configured, then activated)."""
    parameters = launched_parameters(checkpoint, namespace)
    executor = ros.add(start_executor(ExecutorNode(context=ros.context, namespace=namespace,
                                                   parameter_overrides=parameters["gem_executor"])))
    policy = ros.add(PolicyNode(context=ros.context, namespace=namespace,
                                parameter_overrides=parameters["gem_policy"]))
    assert policy.trigger_configure().name == "SUCCESS", policy.configure_error
    assert policy.trigger_activate().name == "SUCCESS"
    return policy, executor


def test_off_the_simulator_the_chain_ticks_plans_and_holds_on_wall_time(ros, sim_checkpoint):
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        stop, counts = manager.Event(), manager.dict()
        robot = spawn.Process(target=robot_stand_in.run, args=("/", stop, counts), daemon=True)
        robot.start()
        try:
            run_chain_against_the_robot_process(ros, sim_checkpoint, counts)
        finally:
            stop.set()
            robot.join(20)
            if robot.is_alive():
                robot.kill()


def run_chain_against_the_robot_process(ros, sim_checkpoint, counts) -> None:
    probe = ros.add(Node("wall_probe", context=ros.context))
    sent, statuses = [], []   # (wall time received, points) of every trajectory to the controller
    probe.create_subscription(JointTrajectory, "/arm_controller/joint_trajectory",
                              lambda m: sent.append((time.monotonic(), len(m.points))), 100)
    probe.create_subscription(PolicyStatus, "/gem/policy_status", statuses.append, 100)
    policy, executor = start_chain(ros, sim_checkpoint)
    assert probe.count_publishers("/clock") == 0   # nothing publishes sim time here
    ros.wait_for(lambda: executor.controller.stats["joint_state_age_s"] < 0.5, 30, "the robot's joint states")
    ticks, start = executor.controller.stats["ticks"], time.monotonic()
    ros.wait_for(lambda: time.monotonic() - start > 1.0, 5)
    rate = (executor.controller.stats["ticks"] - ticks) / (time.monotonic() - start)
    assert rate > 25, f"{rate:.0f} control ticks per wall second (50 Hz configured; 0 on sim time without /clock)"
    ros.wait_for(lambda: len(statuses) >= 10, 10, "the policy's heartbeat")
    assert not executor.get_parameter("use_sim_time").value and not policy.get_parameter("use_sim_time").value

    commander = GemCommander(node=probe)
    task = commander.run_instruction("pick up the red cube", timeout=120.0)
    ros.wait_for(lambda: executor.controller.stats["chunks_accepted"] >= 2, 60, "two chunks planned")
    ros.wait_for(lambda: sum(points > 1 for _, points in sent) >= 5, 30, "trajectories to the controller")
    ros.wait_for(lambda: counts.get("trajectories", 0) >= 5, 10, "the robot process following them")
    cancelled_at = time.monotonic()
    task.cancel()
    result = task.wait(30)
    assert result is not None and result.outcome_name == "CANCELED"
    ros.wait_for(lambda: any(at >= cancelled_at and points == 1 for at, points in sent), 10, "the hold")
    hold_at = next(at for at, points in sent if at >= cancelled_at and points == 1)
    assert hold_at - cancelled_at < 1.0, hold_at - cancelled_at
    ros.wait_for(lambda: time.monotonic() > hold_at + 1.0, 5)
    assert all(points == 1 for at, points in sent if at > hold_at)   # nothing moves the arm after the hold
    ros.wait_for(lambda: counts.get("holds", 0) >= 1, 10, "the robot process holding")
    commander.close()
    policy.worker.shutdown()
