"""gem_doctor: its checks on hand-made facts (each wrong setup gives the right FAIL and says why), then the whole tool
against gem_sim + gem_executor + gem_policy in this process (all PASS), and against wrong live setups."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from gem_ros.doctor.checks import FAIL, PASS, WARN, run_checks
from gem_ros.doctor.facts import (IMAGE_TYPES, JOINT_STATE_TYPE, TRAJECTORY_TYPE, CameraFacts, ClockFacts, Endpoint,
                                  EndpointFacts, Facts, JointStateFacts, NodeFacts, UrdfFacts, load_setup)

REPO = Path(__file__).resolve().parents[1]
PANDA_YAML = REPO / "gem_bringup/config/panda/gem.yaml"
CHECKPOINT = REPO / "checkpoints/sim_pick_tiny"   # io: cameras scene + wrist, 9 panda states, delta_joint, 10 Hz
PANDA_URDF = REPO / "urdf/panda/panda.urdf"
T0 = 1_000.0   # wall-clock time of the first message, s


def panda_setup(**executor):
    setup = load_setup(PANDA_YAML, str(CHECKPOINT))
    setup.executor.update(executor)
    return setup


def stream(rate_hz: float, count: int, lag_s: float = 0.01) -> dict:
    arrivals = [T0 + i / rate_hz for i in range(count)]
    return {"arrivals_s": arrivals, "stamps_s": [a - lag_s for a in arrivals]}


def healthy(setup) -> Facts:
    """What a ready wall-clock setup shows: every joint at 50 Hz, rgb8 cameras at 10 Hz, an active JTC, URDF."""
    facts = Facts(window_s=1.5, urdf=UrdfFacts("test", str(PANDA_URDF)), clock=ClockFacts())
    for topic, joints in setup.joint_state_topics.items():
        facts.joint_states[topic] = JointStateFacts(topic, [JOINT_STATE_TYPE], **stream(50, 75),
                                                    names_seen=list(joints))
    for name, topic, transport in setup.cameras:
        facts.cameras[name] = CameraFacts(topic, [IMAGE_TYPES[transport]], **stream(10, 15), name=name,
                                          transport=transport, frame={"encoding": "rgb8", "height": 240,
                                                                      "width": 240, "step": 720, "nbytes": 240 * 720})
    facts.endpoints = [EndpointFacts(e, ["/controller_manager"], [TRAJECTORY_TYPE]) for e in setup.endpoints]
    for short in ("gem_policy", "gem_executor"):
        facts.nodes[short] = NodeFacts(setup.node(short), 1, True, "active",
                                       parameters={"use_sim_time": False, "checkpoint": str(CHECKPOINT)})
    return facts


def verdict(setup, facts, check: str):
    rows = {r.check: r for r in run_checks(setup, facts)}
    return rows[check]


def test_a_ready_setup_passes_every_check():
    setup = panda_setup()
    results = run_checks(setup, healthy(setup))
    assert [r.check for r in results] == ["joint_states /joint_states", "camera scene", "camera wrist",
                                          "arm controller", "URDF", "clock", "checkpoint", "node gem_policy",
                                          "node gem_executor"]
    assert all(r.status == PASS for r in results), [r for r in results if r.status != PASS]


def test_joint_states_missing_a_joint_or_with_duplicates_fail_naming_them():
    setup, facts = panda_setup(), None
    facts = healthy(setup)
    facts.joint_states["/joint_states"].names_seen.remove("panda_joint7")
    row = verdict(setup, facts, "joint_states /joint_states")
    assert row.status == FAIL and "missing joints ['panda_joint7']" in row.message and "joint names" in row.fix

    facts = healthy(setup)
    facts.joint_states["/joint_states"].duplicated = ["panda_joint2"]
    row = verdict(setup, facts, "joint_states /joint_states")
    assert row.status == FAIL and "['panda_joint2'] appear twice" in row.message

    facts = healthy(setup)
    facts.joint_states["/joint_states"] = JointStateFacts("/joint_states")   # nobody publishes
    row = verdict(setup, facts, "joint_states /joint_states")
    assert row.status == FAIL and "nobody publishes /joint_states" in row.message and "driver" in row.fix

    facts = healthy(setup)   # 5 Hz: the executor holds after joint_state_timeout_s (0.1 s) without a sample
    facts.joint_states["/joint_states"].__dict__.update(stream(5, 8))
    row = verdict(setup, facts, "joint_states /joint_states")
    assert row.status == FAIL and "5.0 Hz (stamps), below the 10.0 Hz gem_executor needs" in row.message


def test_cameras_silent_wrong_encoding_too_slow_or_stale_fail_with_the_reason():
    setup = panda_setup()
    cases = {
        "silent": (lambda cam: cam.__dict__.update(arrivals_s=[], stamps_s=[]), "is silent"),
        "nobody": (lambda cam: cam.__dict__.update(publisher_types=[]), "nobody publishes /camera/wrist/image_raw"),
        "type": (lambda cam: cam.__dict__.update(publisher_types=[IMAGE_TYPES["compressed"]]), "carries"),
        "depth": (lambda cam: cam.frame.update(encoding="16UC1", step=480, nbytes=240 * 480), "is depth"),
        "encoding": (lambda cam: cam.frame.update(encoding="yuv422"), "yuv422"),
        "layout": (lambda cam: cam.frame.update(nbytes=100), "frames refused"),
        # max_observation_age_s 0.5: a frame every 0.67 s leaves the policy without a fresh one
        "slow": (lambda cam: cam.__dict__.update(stream(1.5, 3)), "1.5 Hz (stamps), below the 2.0 Hz"),
        "unstamped": (lambda cam: cam.__dict__.update(stamps_s=[0.0] * 15), "header.stamp is 0"),
        "stale": (lambda cam: cam.__dict__.update(stream(10, 15, lag_s=2.0)), "2.00 s old"),
        "future": (lambda cam: cam.__dict__.update(stream(10, 15, lag_s=-1.0)), "in the future"),
    }
    for case, (break_it, reason) in cases.items():
        facts = healthy(setup)
        break_it(facts.cameras["wrist"])
        row = verdict(setup, facts, "camera wrist")
        assert row.status == FAIL and reason in row.message and row.fix, (case, row)
        assert verdict(setup, facts, "camera scene").status == PASS

    facts = healthy(setup)   # above 1 / max age but below twice that: runs, with little slack
    facts.cameras["wrist"].__dict__.update(stream(3, 5))
    assert verdict(setup, facts, "camera wrist").status == WARN
    facts.cameras["wrist"].frame.update(width=480, step=1440, nbytes=240 * 1440)   # stretched to 128 x 128
    row = verdict(setup, facts, "camera wrist")
    assert row.status == WARN and "stretched" in row.message


def test_compressed_frames_are_judged_by_their_header():
    setup = panda_setup()
    setup.policy["camera_transports"] = ["raw", "compressed"]
    facts = healthy(setup)
    ok, png = cv2.imencode(".png", np.zeros((120, 160, 3), np.uint8))
    wrist = facts.cameras["wrist"]
    wrist.__dict__.update(publisher_types=[IMAGE_TYPES["compressed"]], transport="compressed",
                          frame={"format": "rgb8; png compressed bgr8", "data": png.tobytes()})
    row = verdict(setup, facts, "camera wrist")
    assert row.status == WARN and "160x120" in row.message and "stretched" in row.message   # 4:3 -> 1:1
    wrist.frame["data"] = b"\x89PNG not really"
    row = verdict(setup, facts, "camera wrist")
    assert row.status == FAIL and "frames refused" in row.message


def test_controller_without_subscriber_or_action_server_fails():
    setup = panda_setup()
    facts = healthy(setup)
    facts.endpoints = []
    row = verdict(setup, facts, "arm controller")
    assert row.status == FAIL and "nobody subscribes /arm_controller/joint_trajectory" in row.message
    assert "arm_controller" in row.fix

    setup = panda_setup(backend="follow_joint_trajectory", controller_name="scaled_joint_trajectory_controller")
    facts = healthy(setup)
    action = Endpoint("arm", "action", "/scaled_joint_trajectory_controller/follow_joint_trajectory",
                      "FollowJointTrajectory")
    assert setup.endpoints == [action]
    facts.endpoints = [EndpointFacts(action)]
    row = verdict(setup, facts, "arm controller")
    assert row.status == FAIL and "no action server /scaled_joint_trajectory_controller/follow" in row.message
    facts.endpoints = [EndpointFacts(action, ["/controller_manager"],
                                     ["control_msgs/action/FollowJointTrajectory_SendGoal"])]
    assert verdict(setup, facts, "arm controller").status == PASS
    facts.endpoints = [EndpointFacts(action, ["/impostor"], ["gem_msgs/action/ExecuteInstruction_SendGoal"])]
    assert verdict(setup, facts, "arm controller").status == FAIL

    setup = panda_setup(gripper_backend="gripper_command")   # the gripper's own action server is checked too
    facts = healthy(setup)
    facts.endpoints = facts.endpoints[:1]
    row = verdict(setup, facts, "gripper controller")
    assert row.status == FAIL and "/gripper_controller/gripper_cmd" in row.message
    # a vendor's own action name (franka_gripper) and the parallel gripper action are what gets looked for
    for backend in ("gripper_command", "parallel_gripper_command"):
        setup = panda_setup(gripper_backend=backend, gripper_action_name="franka_gripper/gripper_action")
        facts = healthy(setup)
        facts.endpoints = facts.endpoints[:1]
        row = verdict(setup, facts, "gripper controller")
        assert row.status == FAIL and "/franka_gripper/gripper_action" in row.message


def test_urdf_missing_or_a_joint_without_limits_fails(tmp_path):
    setup = panda_setup()
    facts = healthy(setup)
    facts.urdf = UrdfFacts()
    row = verdict(setup, facts, "URDF")
    assert row.status == FAIL and "robot_description" in row.message and "--urdf" in row.fix

    text = PANDA_URDF.read_text()
    no_limit = text.replace('<limit effort="87" lower="-2.9671" upper="2.9671" velocity="2.1750"/>', "", 1)
    assert no_limit != text
    facts.urdf = UrdfFacts("robot_description topic", no_limit)
    row = verdict(setup, facts, "URDF")
    assert row.status == FAIL and "panda_joint1" in row.message and "lacks <limit>" in row.message

    facts.urdf = UrdfFacts("robot_description topic", text.replace('name="panda_joint7"', 'name="joint_7"'))
    row = verdict(setup, facts, "URDF")
    assert row.status == FAIL and "['panda_joint7'] are not in the URDF" in row.message


def test_clock_sim_time_without_clock_and_mixed_clocks_fail():
    setup = panda_setup()
    facts = healthy(setup)
    for node in facts.nodes.values():
        node.parameters["use_sim_time"] = True
    row = verdict(setup, facts, "clock")
    assert row.status == FAIL and "no /clock" in row.message and "sim:=false" in row.fix

    facts.clock = ClockFacts(1, [T0 + 0.01 * i for i in range(150)], [5.0 + 0.01 * i for i in range(150)])
    for cam in facts.cameras.values():   # stamped on sim time, as gem_sim does
        cam.stamps_s = [5.0 + a - T0 for a in cam.arrivals_s]
    for js in facts.joint_states.values():
        js.stamps_s = [5.0 + a - T0 for a in js.arrivals_s]
    assert all(r.status == PASS for r in run_checks(setup, facts))

    facts.nodes["gem_policy"].parameters["use_sim_time"] = False
    row = verdict(setup, facts, "clock")
    assert row.status == FAIL and "use_sim_time differs" in row.message
    facts.nodes["gem_executor"].parameters["use_sim_time"] = False
    row = verdict(setup, facts, "clock")
    assert row.status == FAIL and "/clock is published but gem runs on wall time" in row.message


def _checkpoint_copy(tmp_path, **io_changes) -> str:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    config = json.loads((CHECKPOINT / "config.json").read_text())
    config["io"].update(io_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_checkpoint_schema_mismatch_fails_naming_the_field(tmp_path):
    setup = panda_setup()
    setup.checkpoint = _checkpoint_copy(tmp_path, cameras=[{"name": "front", "height": 128, "width": 128},
                                                           {"name": "wrist", "height": 128, "width": 128}])
    facts = healthy(setup)
    for node in facts.nodes.values():
        node.parameters["checkpoint"] = setup.checkpoint
    row = verdict(setup, facts, "checkpoint")
    assert row.status == FAIL and "cameras: checkpoint ['front', 'wrist']" in row.message

    setup = panda_setup(action_space="absolute_joint")   # the YAML insists on absolute_joint, the policy is delta
    row = verdict(setup, healthy(setup), "checkpoint")
    assert row.status == FAIL and "action_space is 'absolute_joint'" in row.message and "delta_joint" in row.message

    setup = panda_setup(gripper_joint_names=[""], joint_names=[f"panda_joint{i}" for i in range(1, 8)])
    row = verdict(setup, healthy(setup), "checkpoint")   # no gripper configured, the policy drives one
    assert row.status == FAIL and "action channels" in row.message

    setup = panda_setup(control_rate_hz=5.0)
    assert verdict(setup, healthy(setup), "checkpoint").status == WARN   # 10 Hz actions, 5 Hz ticks

    setup = panda_setup()
    setup.checkpoint = str(tmp_path / "nowhere")
    row = verdict(setup, healthy(setup), "checkpoint")
    assert row.status == FAIL and "config.json" in row.message


def test_nodes_absent_or_not_active_fail_with_the_transition_to_run():
    setup = panda_setup()
    facts = healthy(setup)
    facts.nodes["gem_policy"].state = "inactive"
    row = verdict(setup, facts, "node gem_policy")
    assert row.status == FAIL and "is inactive, expected active" in row.message
    assert row.fix == "ros2 lifecycle set /gem_policy activate."
    facts.nodes["gem_policy"].state = "unconfigured"
    assert "configure" in verdict(setup, facts, "node gem_policy").fix
    facts.nodes["gem_executor"] = NodeFacts("/gem_executor")
    row = verdict(setup, facts, "node gem_executor")
    assert row.status == FAIL and "not running" in row.message
    assert row.fix == f"ros2 launch gem_bringup gem.launch.py arm:=panda checkpoint:={CHECKPOINT} sim:=false."
    facts.nodes["gem_executor"] = NodeFacts("/gem_executor", 1, lifecycle=False)   # a plain node: running is active
    assert verdict(setup, facts, "node gem_executor").status == PASS


def test_the_command_prints_each_fault_with_its_fix_and_exits_1(monkeypatch, capsys):
    pytest.importorskip("rclpy")
    from gem_ros.doctor import cli, graph

    def collect(setup, sample_s):
        facts = healthy(setup)
        facts.cameras["wrist"].arrivals_s = []
        return facts

    monkeypatch.setattr(graph, "collect", collect)
    args = ["--arm", "panda", "--checkpoint", str(CHECKPOINT), "--urdf", str(PANDA_URDF)]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "FAIL  camera wrist" in out and "fix: check the camera driver" in out and "8 PASS, 0 WARN, 1 FAIL" in out
    monkeypatch.setattr(graph, "collect", lambda setup, sample_s: healthy(setup))
    assert cli.main(args) == 0
    assert cli.main(["--arm", "ur3000"]) == 2
    assert "unknown arm 'ur3000'" in capsys.readouterr().err


def test_namespace_moves_every_relative_name():
    setup = load_setup(PANDA_YAML, str(CHECKPOINT), namespace="left/")
    assert list(setup.joint_state_topics) == ["/left/joint_states"]
    assert [topic for _, topic, _ in setup.cameras] == ["/left/camera/scene/image_raw", "/left/camera/wrist/image_raw"]
    assert setup.endpoints[0].name == "/left/arm_controller/joint_trajectory"
    assert setup.node("gem_policy") == "/left/gem_policy"


# ------------------------------------------------------------------------------------------------- the live graph
@pytest.fixture(scope="module")
def chain():
    """gem_sim, gem_executor and gem_policy (both active) with the parameters `gem.launch.py arm:=panda sim:=true`
    gives them, spinning in the background of one context."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from gem_ros import bringup
    from gem_ros.nodes.executor_node import ExecutorNode, start_executor
    from gem_ros.nodes.policy_node import PolicyNode
    from gem_ros.nodes.sim_node import SimNode
    from gem_ros.nodes.spinning import make_executor

    context = rclpy.context.Context()
    rclpy.init(context=context)
    executor = make_executor("auto", context, runs_inference=True)
    specs = bringup.plan({"arm": "panda", "checkpoint": str(CHECKPOINT), "sim": "true"})
    values = {fqn.rsplit("/", 1)[1]: v for spec in specs for fqn, v in spec.parameters.items()}
    values["gem_policy"].update(device="cpu", warmup_instructions=["warm up"])   # one warm-up: configure in ~5 s
    params = {name: [Parameter(k, value=v) for k, v in node_values.items()] for name, node_values in values.items()}
    nodes = [SimNode(context=context, parameter_overrides=params["gem_sim"])]
    nodes.append(start_executor(ExecutorNode(context=context, parameter_overrides=params["gem_executor"])))
    policy = PolicyNode(context=context, parameter_overrides=params["gem_policy"])
    nodes.append(policy)
    # configured before anything spins: the simulator would compete with torch for the CPU
    assert policy.trigger_configure().name == "SUCCESS", policy.configure_error
    assert policy.trigger_activate().name == "SUCCESS"
    for node in nodes:
        executor.add_node(node)
    spinning = threading.Thread(target=lambda: _spin(executor, context), daemon=True)
    spinning.start()
    yield context, policy
    if policy.worker is not None:
        policy.worker.shutdown()
    for node in nodes:
        executor.remove_node(node)
        node.destroy_node()
    rclpy.shutdown(context=context)
    executor.shutdown()
    spinning.join(5)


def _spin(executor, context):
    while context.ok():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - shutting down while spinning
            if context.ok():
                raise


def test_gem_doctor_passes_against_gem_sim(chain, capsys):
    from gem_ros.doctor.cli import main

    status = main(["--arm", "panda", "--checkpoint", str(CHECKPOINT), "--sim", "--sample-s", "2.0"])
    out = capsys.readouterr().out
    assert status == 0, out
    for check in ("joint_states /joint_states", "camera scene", "camera wrist", "arm controller", "URDF", "clock",
                  "checkpoint", "node gem_policy", "node gem_executor"):
        assert check in out
    assert f"9 {PASS}, 0 {WARN}, 0 {FAIL}" in out, out


def test_policy_defaults_match_the_node(chain):
    from gem_ros.doctor.facts import POLICY_DEFAULTS
    from gem_ros.nodes.policy_node import PolicyNode

    node = PolicyNode(context=chain[0])
    try:
        assert {k: node.get_parameter(k).value for k in POLICY_DEFAULTS} == POLICY_DEFAULTS
    finally:
        node.destroy_node()


def test_gem_doctor_names_live_faults(chain, tmp_path):
    """A camera topic nobody publishes, an action server of the wrong type where the controller's should be, and
    gem_policy deactivated: those rows FAIL with the reason, the rest of the graph still PASSes."""
    from rclpy.action import ActionServer
    from rclpy.node import Node

    from gem_msgs.action import ExecuteInstruction
    from gem_ros.doctor.graph import collect

    context, policy = chain
    config = yaml.safe_load(PANDA_YAML.read_text())
    config["gem_policy"]["ros__parameters"]["camera_topics"] = ["camera/scene/image_raw", "camera/wrist_2/image_raw"]
    config["gem_executor"]["ros__parameters"]["backend"] = "follow_joint_trajectory"
    path = tmp_path / "gem.yaml"
    path.write_text(yaml.safe_dump(config))
    impostor = Node("impostor", context=context)
    server = ActionServer(impostor, ExecuteInstruction, "arm_controller/follow_joint_trajectory",
                          lambda handle: ExecuteInstruction.Result())
    assert policy.trigger_deactivate().name == "SUCCESS"
    try:
        setup = load_setup(path, str(CHECKPOINT))
        rows = {r.check: r for r in run_checks(setup, collect(setup, sample_s=1.5))}
    finally:
        policy.trigger_activate()
        server.destroy()
        impostor.destroy_node()
    failed = {check: r.message for check, r in rows.items() if r.status != PASS}
    assert set(failed) == {"camera wrist", "arm controller", "node gem_policy"}, rows
    assert "nobody publishes /camera/wrist_2/image_raw" in failed["camera wrist"]
    assert "gem_msgs/action/ExecuteInstruction_SendGoal" in failed["arm controller"]
    assert "not control_msgs/action/FollowJointTrajectory" in failed["arm controller"]
    assert "/gem_policy is inactive" in failed["node gem_policy"]
    assert "from /gem_executor urdf_path " in rows["URDF"].message   # the running executor's
    assert rows["clock"].message.startswith("sim time, /clock ticking")
