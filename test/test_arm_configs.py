"""Every shipped arm configuration (gem_bringup/config/<arm>/gem.yaml): it parses, its joints exist in the arm's
URDF, its real-arm safety is on, the executor configures with it and keeps random chunks inside the arm's limits.

URDFs: the registry's where one ships the arm (example-robot-data: UR5/UR10 stand in for UR5e/UR10e, same joint
names and position limits; xArm7, to which the xArm gripper's drive_joint is added as xarm_ros2 declares it). FR3
and Kinova Gen3 ship in no registry package: their URDF here is a joint chain with the vendor's limits (cited), so
for them names and limits are checked, kinematics are not.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gem_ros.core.execution import default_channel_names
from gem_ros.core.executor_setup import PARAMETERS, build_controller
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.policy.checkpoint import write_config
from gem_ros.core.policy.tiny import tiny_policy_config
from gem_ros.nodes.backends import BACKENDS
from gem_ros.sim.arm_wiring import read_sections

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "gem_bringup" / "config"
ARMS = sorted(p.name for p in CONFIGS.iterdir() if (p / "gem.yaml").is_file())
REAL_ARMS = [a for a in ARMS if a != "panda"]   # panda = the embedded simulator's own configuration


def _revolute(name, lower, upper, velocity, effort, kind="revolute"):
    limit = "" if kind == "continuous" else f'lower="{lower}" upper="{upper}" '
    return name, kind, f'<limit {limit}velocity="{velocity}" effort="{effort}"/>'


# frankaemika/franka_description robots/fr3/joint_limits.yaml; end_effectors/common/franka_hand.xacro (fingers)
FR3_JOINTS = [_revolute(f"fr3_joint{i + 1}", lo, hi, v, e) for i, (lo, hi, v, e) in enumerate([
    (-2.7437, 2.7437, 2.62, 87.0), (-1.7837, 1.7837, 2.62, 87.0), (-2.9007, 2.9007, 2.62, 87.0),
    (-3.0421, -0.1518, 2.62, 87.0), (-2.8065, 2.8065, 5.26, 12.0), (0.5445, 4.5169, 4.18, 12.0),
    (-3.0159, 3.0159, 5.26, 12.0)])] + [_revolute(f"fr3_finger_joint{i}", 0.0, 0.04, 0.2, 100.0, "prismatic")
                                        for i in (1, 2)]
# Kinovarobotics/ros2_kortex kortex_description/arms/gen3/7dof/urdf/gen3_macro.xacro; gripper range from README.md
GEN3_JOINTS = [
    _revolute("joint_1", 0, 0, 1.3963, 39, "continuous"), _revolute("joint_2", -1.4, 1.4, 1.3963, 39),
    _revolute("joint_3", 0, 0, 1.3963, 39, "continuous"), _revolute("joint_4", -2.66, 2.66, 1.3963, 39),
    _revolute("joint_5", 0, 0, 1.2218, 9, "continuous"), _revolute("joint_6", -2.23, 2.23, 1.2218, 9),
    _revolute("joint_7", 0, 0, 1.2218, 9, "continuous"),
    _revolute("robotiq_85_left_knuckle_joint", 0.0, 0.8, 0.5, 50)]
# xArm-Developer/xarm_ros2 xarm_description/urdf/gripper/xarm_gripper.urdf.xacro
XARM_GRIPPER = '''<link name="xarm_gripper_base_link"/><link name="left_outer_knuckle"/>
  <joint name="gripper_fix" type="fixed"><parent link="link_eef"/><child link="xarm_gripper_base_link"/></joint>
  <joint name="drive_joint" type="revolute"><parent link="xarm_gripper_base_link"/><child link="left_outer_knuckle"/>
    <axis xyz="1 0 0"/><limit lower="0" upper="0.85" effort="50" velocity="2"/></joint>'''


def chain_urdf(name: str, joints) -> str:
    links = "".join(f'<link name="l{i}"/>' for i in range(len(joints) + 1))
    body = "".join(f'<joint name="{n}" type="{kind}"><parent link="l{i}"/><child link="l{i + 1}"/>'
                   f'<axis xyz="0 0 1"/>{limit}</joint>' for i, (n, kind, limit) in enumerate(joints))
    return f'<robot name="{name}">{links}{body}</robot>'


def erd_urdf(relative: str) -> str:
    from gem_ros.sim.arms import ERD, package_root

    try:
        return (package_root(ERD) / relative).read_text(encoding="utf-8")
    except ValueError as error:
        pytest.skip(str(error))


def arm_urdf(arm: str) -> str:
    """The URDF text the arm's limits are tested against (see the module docstring for where each comes from)."""
    if arm in ("panda", "panda_franka_ros2"):
        return (REPO / "urdf" / "panda" / "panda.urdf").read_text(encoding="utf-8")
    if arm in ("ur5e", "ur10e"):
        return erd_urdf(f"ur_description/urdf/{arm[:-1]}_robot.urdf")
    if arm == "xarm7":
        return erd_urdf("xarm_description/urdf/xarm7.urdf").replace("</robot>", XARM_GRIPPER + "</robot>")
    if arm == "fr3":
        return chain_urdf("fr3", FR3_JOINTS)
    if arm == "kinova_gen3":
        return chain_urdf("gen3", GEN3_JOINTS)
    raise AssertionError(f"arm {arm!r} has a configuration but no test URDF: add it to arm_urdf()")


def collision_overrides(arm: str) -> dict:
    """Where the test URDF's collision meshes are on this machine (a robot PC finds them in the description
    package's share folder); the stand-in chains of FR3 and Gen3 have no geometry to check."""
    if arm in ("fr3", "kinova_gen3"):
        return {"collision_check": False}
    if arm in ("panda", "panda_franka_ros2"):
        return {"collision_package_paths": ["meshes=python://pybullet_data/franka_panda/meshes"]}
    from gem_ros.sim.arms import ERD, package_root
    return {"collision_package_paths": [f"{ERD}={package_root(ERD).parent}"]}


def names(values) -> list[str]:
    return [n for n in values or [] if n]


def test_the_real_arms_are_shipped():
    assert {"fr3", "panda_franka_ros2", "ur5e", "ur10e", "xarm7", "kinova_gen3"} <= set(REAL_ARMS)


@pytest.mark.parametrize("arm", ARMS)
def test_config_parses_and_sets_only_parameters_gem_executor_declares(arm):
    sections = read_sections(CONFIGS / arm / "gem.yaml")
    assert set(sections) == {"gem_sim", "gem_policy", "gem_executor"}
    for node, values in sections.items():
        assert "use_sim_time" not in values, f"{arm}: {node} sets use_sim_time (it follows sim:=)"
    executor = sections["gem_executor"]
    unknown = sorted(set(executor) - set(PARAMETERS))
    assert not unknown, f"{arm}: gem_executor has no parameters {unknown}: a typo is silently ignored by ROS"
    for key in ("action_space", "chunk_dt_s", "urdf_path"):   # the checkpoint / robot_description decide
        assert not executor.get(key), f"{arm}: gem_executor sets {key}"
    assert executor.get("backend", "topic") in BACKENDS
    assert sections["gem_sim"]["controller_name"] == executor["controller_name"]


@pytest.mark.parametrize("arm", REAL_ARMS)
def test_real_arm_safety_is_conservative_and_goals_end(arm):
    sections = read_sections(CONFIGS / arm / "gem.yaml")
    executor, policy = sections["gem_executor"], sections["gem_policy"]
    assert executor["position_margin_rad"] > 0
    assert executor["max_acceleration"] > 0
    assert 0 < executor["velocity_scale"] < 1
    assert 0 < executor["max_step_delta_rad"] <= PARAMETERS["max_step_delta_rad"]
    assert policy["goal_timeout_s"] > 0           # nothing on a real arm publishes task success
    assert policy["success_topic"] == ""
    assert executor["backend"] in BACKENDS


@pytest.mark.parametrize("arm", ARMS)
def test_joints_exist_in_the_arms_urdf_and_the_policy_observes_what_the_executor_commands(arm):
    sections = read_sections(CONFIGS / arm / "gem.yaml")
    executor, policy = sections["gem_executor"], sections["gem_policy"]
    limits = load_urdf_limits(arm_urdf(arm))
    joints, gripper = names(executor["joint_names"]), names(executor.get("gripper_joint_names"))
    missing = [n for n in joints if n not in limits]
    assert not missing, f"{arm}: joints {missing} are not moving joints of its URDF"
    assert set(gripper) <= set(joints) and set(names(executor.get("action_joint_names"))) <= set(joints)
    assert names(policy["state_joint_names"]) == joints
    assert len(policy["camera_names"]) == len(policy["camera_topics"]) == len(policy["camera_transports"])


def served_checkpoint(tmp_path: Path, executor: dict) -> Path:
    """A checkpoint folder whose io matches the arm: its actions are the arm joints (+ one gripper channel)."""
    arm, gripper = names(executor["action_joint_names"]), names(executor.get("gripper_joint_names"))
    action_names = arm + (["gripper"] if gripper else [])
    config = tiny_policy_config(state_dim=len(arm) + len(gripper), action_dim=len(action_names),
                                state_names=arm + gripper, action_names=action_names,
                                gripper_channels=[len(arm)] if gripper else [], control_rate_hz=10.0)
    write_config(tmp_path, config)
    return tmp_path


@pytest.mark.parametrize("arm", ARMS)
def test_executor_configures_and_keeps_random_chunks_inside_the_arms_limits(arm, tmp_path):
    executor = read_sections(CONFIGS / arm / "gem.yaml")["gem_executor"]
    urdf = arm_urdf(arm)
    values = {**PARAMETERS, **executor, "robot_description": urdf, "checkpoint": str(served_checkpoint(tmp_path,
                                                                                                        executor))}
    ctrl = build_controller({**values, **collision_overrides(arm)})
    limits, margin = load_urdf_limits(urdf), executor.get("position_margin_rad", 0.0)
    joints = list(ctrl.cfg.joint_names)
    lower = np.array([limits[n].lower for n in joints])
    upper = np.array([limits[n].upper for n in joints])
    speed = np.array([limits[n].max_velocity for n in joints]) * executor.get("velocity_scale", 1.0)
    bounded = np.isfinite(lower) & np.isfinite(upper)           # continuous joints have no limits: start at 0
    start = np.where(bounded, (np.where(bounded, lower, 0) + np.where(bounded, upper, 0)) / 2, 0.0)
    robot = start.copy()
    channels = default_channel_names(ctrl.mapper.cfg)
    arm_names, gripper = names(executor["action_joint_names"]), names(executor.get("gripper_joint_names"))
    scale, rng = executor.get("gripper_scale", PARAMETERS["gripper_scale"]), np.random.default_rng(0)
    accepted = refused = moved_steps = 0
    t = 0.0
    for chunk in range(12):
        ctrl.on_joint_state(joints, robot, np.zeros(len(joints)), t)
        arm_idx = [joints.index(n) for n in arm_names]
        spread = 2.0 if chunk % 3 else 0.2                     # every third chunk stays near the arm: accepted
        actions = robot[arm_idx] + rng.uniform(-spread, spread, (8, len(arm_idx)))
        if gripper:
            g = joints.index(gripper[0])
            actions = np.hstack([actions, rng.uniform(lower[g] - 0.02, upper[g] + 0.02, (8, 1)) / scale])
        if chunk % 3:        # one target past a position limit: the executor must refuse the chunk whole
            bounded = [i for i, j in enumerate(arm_idx) if np.isfinite(upper[j])]
            k = bounded[chunk % len(bounded)]
            actions[-1, k] = upper[arm_idx[k]] + 0.3
        else:                # in range by construction: the executor must plan it
            inside = np.clip(robot[arm_idx] + np.cumsum(rng.uniform(-0.02, 0.02, (8, len(arm_idx))), axis=0),
                             np.nan_to_num(lower[arm_idx] + margin + 0.01, neginf=-1e3),
                             np.nan_to_num(upper[arm_idx] - margin - 0.01, posinf=1e3))
            actions[:, :len(arm_idx)] = inside
            if gripper:
                actions[:, -1] = (lower[g] + upper[g]) / 2 / scale
        reason = ctrl.on_chunk(channels, 0.1, actions, "absolute_joint", t, t)
        accepted, refused = accepted + (reason is None), refused + (reason is not None)
        for _ in range(25):   # 0.5 s at 50 Hz; the robot reaches each command's first point
            t = round(t + 0.02, 9)
            ctrl.on_joint_state(joints, robot, np.zeros(len(joints)), t)
            command = ctrl.tick(t)
            if command.kind == "idle":
                continue
            traj = command.trajectory
            assert list(traj.joint_names) == joints
            assert np.all(np.isfinite(traj.positions)) and np.all(np.isfinite(traj.velocities))
            assert np.all(traj.positions >= lower - 1e-9) and np.all(traj.positions <= upper + 1e-9), arm
            assert np.all(np.abs(traj.velocities) <= speed + 1e-6), arm
            moved_steps += int(np.any(np.abs(traj.positions[0] - robot) > 1e-6))
            robot = np.array(traj.positions[0])
    assert accepted >= 4 and refused >= 1 and moved_steps > 10, (arm, accepted, refused, moved_steps)
    margins = np.array([executor.get("position_margin_m", PARAMETERS["position_margin_m"]) if limits[n].is_prismatic
                        else margin for n in joints])
    finite = np.isfinite(lower)
    assert np.all(robot[finite] >= (lower + margins)[finite] - 1e-9), f"{arm}: the arm left the margin"
    assert np.all(robot[finite] <= (upper - margins)[finite] + 1e-9), f"{arm}: the arm left the margin"


@pytest.mark.parametrize("arm", ["panda", "panda_franka_ros2", "ur5e", "ur10e", "xarm7"])
def test_sim_wiring_keeps_the_arms_names_and_safety_and_says_what_it_replaces(arm):
    """gem_demo --arm: only what gem_sim cannot offer changes (action backend, a gripper the model lacks, cameras,
    URDF); joint names, controller and every safety setting are the arm's own."""
    from gem_ros.sim.arm_wiring import sim_wiring

    sections = read_sections(CONFIGS / arm / "gem.yaml")
    try:
        wiring = sim_wiring(sections, arm)
    except ValueError as error:   # example-robot-data missing
        pytest.skip(str(error))
    executor = sections["gem_executor"]
    assert wiring.sim["controller_name"] == executor["controller_name"]
    assert wiring.executor["action_joint_names"] == names(executor["action_joint_names"])
    assert not set(wiring.executor) & {"velocity_scale", "position_margin_rad", "max_acceleration",
                                       "max_step_delta_rad", "controller_name", "on_violation"}
    assert wiring.policy["state_joint_names"] == wiring.executor["joint_names"]
    assert wiring.task == (arm in ("panda", "panda_franka_ros2"))
    if executor.get("backend", "topic") != "topic":
        assert any("-> topic" in note for note in wiring.notes)
    if arm == "panda":
        assert wiring.notes == []            # the sim's own configuration needs no change


@pytest.mark.parametrize("arm", ["fr3", "kinova_gen3"])
def test_arms_without_a_registry_model_are_refused_by_the_sim(arm):
    from gem_ros.sim.arm_wiring import sim_wiring

    with pytest.raises(ValueError, match=f"no simulation model for arm '{arm}'"):
        sim_wiring(read_sections(CONFIGS / arm / "gem.yaml"), arm)


def test_soft_limits_narrow_the_range_and_never_widen_it():
    """<safety_controller> soft limits (franka_description: the datasheet's; UR: 0.15 rad inside) are preferred;
    one outside <limit> or inverted is ignored."""
    from gem_ros.core.kinematics.soft_limits import load_soft_urdf_limits

    panda = REPO / "urdf" / "panda" / "panda.urdf"
    hard, soft = load_urdf_limits(panda), load_soft_urdf_limits(panda)
    assert (hard["panda_joint1"].lower, soft["panda_joint1"].lower) == (-2.9671, -2.8973)
    assert soft["panda_joint1"].max_velocity == hard["panda_joint1"].max_velocity
    assert soft["panda_finger_joint1"] == hard["panda_finger_joint1"]            # no <safety_controller> there
    wide = chain_urdf("t", [("a", "revolute", '<limit lower="-1" upper="1" velocity="1" effort="1"/>'
                             '<safety_controller soft_lower_limit="-2" soft_upper_limit="0.5"/>'),
                            ("b", "revolute", '<limit lower="-1" upper="1" velocity="1" effort="1"/>'
                             '<safety_controller soft_lower_limit="0.5" soft_upper_limit="-0.5"/>')])
    limits = load_soft_urdf_limits(wide)
    assert (limits["a"].lower, limits["a"].upper) == (-1.0, 1.0) and (limits["b"].lower, limits["b"].upper) == (-1, 1)
    with pytest.raises(ValueError, match="'a'.*NaN"):
        load_soft_urdf_limits(wide.replace('soft_upper_limit="0.5"', 'soft_upper_limit="nan"'))


SELF_PAIR = r"collision .*: '(\w+)' and '(\w+)'"


@pytest.mark.parametrize("arm", ["panda_franka_ros2", "ur5e", "ur10e", "xarm7"])
def test_real_arm_collision_checks_robot_description_meshes_or_refuses_naming_them(arm, tmp_path):
    """Collision checking is on in every real-arm YAML. From a robot_description whose package:// meshes do not
    resolve on this machine, configure refuses naming a mesh and the parameter that fixes it; with the package's
    folder given, the arm's own meshes are checked (a folded configuration is refused naming two links)."""
    executor = read_sections(CONFIGS / arm / "gem.yaml")["gem_executor"]
    assert executor["collision_check"] is True and not executor["srdf_path"]
    values = {**PARAMETERS, **executor, "robot_description": arm_urdf(arm),
              "checkpoint": str(served_checkpoint(tmp_path, executor))}
    with pytest.raises(ValueError, match=r"collision meshes not found \(set gem_executor collision_package_paths to "
                                         r"\['[\w-]+=FOLDER'\].*link '\w+' mesh 'package://"):
        build_controller(values)
    ctrl = build_controller({**values, **collision_overrides(arm)})
    checker = ctrl.safety.collision
    assert "no SRDF: adjacent links and pairs within the padding" in checker.notes[0]
    joints = list(ctrl.cfg.joint_names)
    arm_joints = names(executor["action_joint_names"])
    limits = ctrl.safety.limits   # the soft ones where the YAML prefers them; 0.1 inside, beyond the margins
    lower = np.array([max(limits[n].lower + (0.01 if limits[n].is_prismatic else 0.1), -np.pi) for n in joints])
    upper = np.array([min(limits[n].upper - (0.01 if limits[n].is_prismatic else 0.1), np.pi) for n in joints])
    rng = np.random.default_rng(1)
    folded = next((q for q in rng.uniform(lower, upper, (400, len(joints)))
                   if (hit := checker.check(joints, q[None])) is not None and not hit.scene), None)
    assert folded is not None, f"{arm}: no self-collision among 400 random configurations"
    start = (lower + upper) / 2
    assert checker.check(joints, start[None]) is None
    ctrl.on_joint_state(joints, start, np.zeros(len(joints)), 0.0)
    channels = default_channel_names(ctrl.mapper.cfg)
    chunk = np.linspace(start, folded, 9)[1:][:, [joints.index(n) for n in arm_joints]]
    gripper = names(executor.get("gripper_joint_names"))
    if gripper:   # the gripper channel: hold it mid-range
        scale = executor.get("gripper_scale", PARAMETERS["gripper_scale"])
        chunk = np.hstack([chunk, np.full((8, 1), start[joints.index(gripper[0])] / scale)])
    reason = ctrl.on_chunk(channels, 0.1, chunk, "absolute_joint", 0.0, 0.0)
    assert reason and re.search(SELF_PAIR, reason), reason


@pytest.mark.parametrize("arm, srdf", [("ur5e", "ur_description/srdf/ur5.srdf"),
                                       ("xarm7", "xarm_description/srdf/xarm7.srdf")])
def test_an_srdf_from_example_robot_data_decides_the_pairs_and_the_sim_wires_it(arm, srdf, tmp_path):
    from gem_ros.sim.arm_wiring import sim_wiring
    from gem_ros.sim.arms import ERD, package_root

    sections = read_sections(CONFIGS / arm / "gem.yaml")
    executor = sections["gem_executor"]
    path = str(package_root(ERD) / srdf)
    values = {**PARAMETERS, **executor, "robot_description": arm_urdf(arm), "srdf_path": path,
              "checkpoint": str(served_checkpoint(tmp_path, executor)), **collision_overrides(arm)}
    checker = build_controller(values).safety.collision
    assert f"disabled by SRDF {path}" in checker.notes[0] and ": SRDF" in checker.notes[0]
    wiring = sim_wiring(sections, arm)   # gem_demo / sim:=true: the model's URDF, and its SRDF where it fits
    wired = path if arm == "ur5e" else ""
    assert wiring.executor["srdf_path"] == wired and any("collision checking on the model" in n for n in wiring.notes)
    sim_values = {**PARAMETERS, **executor, **wiring.executor, "checkpoint": values["checkpoint"]}
    notes = build_controller(sim_values).safety.collision.notes   # the model's meshes are found as files
    assert notes[0] == checker.notes[0] if wired else "no SRDF" in notes[0]
