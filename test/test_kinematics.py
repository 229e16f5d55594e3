"""URDF limits, FK (pybullet as an independent oracle) and damped-least-squares IK on the Franka Panda."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gem_ros.core.kinematics import (
    RobotModel,
    load_urdf_limits,
    matrix_to_rotation_vector,
    matrix_to_rpy,
    rotation_vector_to_matrix,
    rpy_to_matrix,
)

ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
HOME = dict(zip(ARM, (0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785)), panda_finger_joint1=0.02)


def pybullet_panda_path() -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"


def panda_urdf_path() -> Path:
    """Our cleaned copy when it exists, else the one shipped with pybullet_data."""
    ours = Path(__file__).resolve().parents[1] / "urdf" / "panda" / "panda.urdf"
    return ours if ours.is_file() else pybullet_panda_path()


@pytest.fixture(scope="module")
def panda() -> RobotModel:
    return RobotModel.from_urdf(panda_urdf_path())


@pytest.fixture(scope="module")
def bullet():
    """pybullet with the Panda at the world origin; link frames read with computeForwardKinematics=True.

    It loads pybullet_data's copy (whose meshes resolve), so our parser of urdf/panda/panda.urdf is checked
    against a different file and a different implementation.
    """
    pybullet = pytest.importorskip("pybullet")
    client = pybullet.connect(pybullet.DIRECT)
    robot = pybullet.loadURDF(str(pybullet_panda_path()), useFixedBase=True, physicsClientId=client)
    index = {pybullet.getJointInfo(robot, i, physicsClientId=client)[1].decode(): i
             for i in range(pybullet.getNumJoints(robot, physicsClientId=client))}
    link_index = {pybullet.getJointInfo(robot, i, physicsClientId=client)[12].decode(): i for i in index.values()}

    def link_pose(positions: dict[str, float], link: str) -> np.ndarray:
        for name, q in positions.items():
            pybullet.resetJointState(robot, index[name], q, physicsClientId=client)
        # [4], [5] = URDF link frame (not [0], [1], the centre of mass frame).
        state = pybullet.getLinkState(robot, link_index[link], computeForwardKinematics=True, physicsClientId=client)
        pose = np.eye(4)
        pose[:3, :3] = np.array(pybullet.getMatrixFromQuaternion(state[5])).reshape(3, 3)
        pose[:3, 3] = state[4]
        return pose

    yield link_pose
    pybullet.disconnect(client)


# ---- limits -----------------------------------------------------------------------------------------------------
def test_panda_limits_parsed_by_name():
    limits = load_urdf_limits(panda_urdf_path())
    assert set(limits) == set(ARM) | {"panda_finger_joint1", "panda_finger_joint2"}  # fixed joints have none
    assert limits["panda_joint4"].upper == 0.0
    assert limits["panda_joint4"].lower == pytest.approx(-3.1416)
    assert limits["panda_joint1"].max_velocity == pytest.approx(2.175)
    assert limits["panda_joint1"].max_effort == 87.0
    assert limits["panda_joint7"].max_effort == 12.0
    finger = limits["panda_finger_joint2"]
    assert finger.is_prismatic and (finger.lower, finger.upper, finger.max_velocity) == (0.0, 0.04, 0.2)
    assert math.isinf(limits["panda_joint1"].max_acceleration)  # not in standard URDF


def test_acceleration_limits_come_from_config():
    limits = load_urdf_limits(panda_urdf_path(), accelerations={"panda_joint1": 15.0})
    assert limits["panda_joint1"].max_acceleration == 15.0
    with pytest.raises(ValueError, match="not_a_joint"):
        load_urdf_limits(panda_urdf_path(), accelerations={"not_a_joint": 1.0})
    with pytest.raises(ValueError, match="panda_joint2"):
        load_urdf_limits(panda_urdf_path(), accelerations={"panda_joint2": float("nan")})


TWO_JOINTS = """<robot name="toy">
  <link name="base"/><link name="a"/><link name="b"/>
  <joint name="spin" type="continuous"><parent link="base"/><child link="a"/><axis xyz="0 0 1"/>
    <limit effort="5" velocity="3"/></joint>
  <joint name="slide" type="prismatic"><parent link="a"/><child link="b"/><origin xyz="1 0 0"/><axis xyz="1 0 0"/>
    <limit lower="-0.5" upper="0.5" effort="10" velocity="0.3"/></joint>
</robot>"""


def test_continuous_joint_has_infinite_position_limits_and_xml_string_source():
    limits = load_urdf_limits(TWO_JOINTS)
    assert limits["spin"].lower == -math.inf and limits["spin"].upper == math.inf
    assert limits["spin"].max_velocity == 3.0
    model = RobotModel.from_urdf(TWO_JOINTS)
    pose = model.forward_kinematics({"spin": math.pi / 2, "slide": 0.25}, "b")
    np.testing.assert_allclose(pose[:3, 3], [0.0, 1.25, 0.0], atol=1e-12)  # slide along the rotated x axis


def test_revolute_joint_without_limit_is_refused():
    xml = TWO_JOINTS.replace('type="continuous"', 'type="revolute"')
    with pytest.raises(ValueError, match="spin"):
        load_urdf_limits(xml)


# ---- forward kinematics ------------------------------------------------------------------------------------------
def test_fk_at_zero_matches_hand_value_and_pybullet(panda, bullet):
    zero = {name: 0.0 for name in panda.joint_names}
    pose = panda.forward_kinematics(zero, "panda_grasptarget")
    # z: 0.333 + 0.316 + 0.384 (link7) - 0.107 (flange) - 0.105 (grasp target); x: 0.0825 + 0.088 - 0.0825.
    np.testing.assert_allclose(pose[:3, 3], [0.088, 0.0, 0.821], atol=1e-9)
    np.testing.assert_allclose(pose, bullet(zero, "panda_grasptarget"), atol=1e-6)


@pytest.mark.parametrize("link", ["panda_hand", "panda_grasptarget", "panda_link4", "panda_rightfinger"])
def test_fk_random_configurations_match_pybullet(panda, bullet, link):
    rng = np.random.default_rng(0)
    for _ in range(10):
        q = dict(zip(ARM, rng.uniform(-1.5, 1.5, 7)), panda_finger_joint1=rng.uniform(0.0, 0.04))
        q["panda_joint4"] = -abs(q["panda_joint4"])
        oracle = dict(q, panda_finger_joint2=q["panda_finger_joint1"])  # pybullet ignores <mimic>; set by hand
        np.testing.assert_allclose(panda.forward_kinematics(q, link), bullet(oracle, link), atol=1e-6)


def test_fk_errors_name_the_problem(panda):
    with pytest.raises(ValueError, match="panda_joint3"):
        panda.forward_kinematics({"panda_joint1": 0.0, "panda_joint2": 0.0}, "panda_hand")
    with pytest.raises(ValueError, match="no_such_link"):
        panda.forward_kinematics(HOME, "no_such_link")
    assert panda.chain_joint_names("panda_hand") == ARM
    assert panda.chain_joint_names("panda_rightfinger") == ARM + ("panda_finger_joint1",)  # mimic -> source


# ---- inverse kinematics ------------------------------------------------------------------------------------------
def test_ik_round_trip_from_home(panda):
    rng = np.random.default_rng(1)
    for _ in range(10):
        goal_q = {n: HOME[n] + rng.uniform(-0.4, 0.4) for n in ARM}
        goal = panda.forward_kinematics(goal_q, "panda_grasptarget")
        result = panda.solve_ik("panda_grasptarget", goal, HOME, ARM)
        assert result.success, result.message
        reached = panda.forward_kinematics(result.positions, "panda_grasptarget")
        assert np.linalg.norm(reached[:3, 3] - goal[:3, 3]) < 1e-4
        assert np.linalg.norm(matrix_to_rotation_vector(reached[:3, :3] @ goal[:3, :3].T)) < 1e-3
        assert result.positions["panda_finger_joint1"] == HOME["panda_finger_joint1"]  # not an IK joint


def test_ik_reports_failure_for_unreachable_target(panda):
    goal = panda.forward_kinematics(HOME, "panda_grasptarget")
    goal[:3, 3] = [2.0, 0.0, 0.5]  # 2 m away: the Panda reaches ~0.85 m
    result = panda.solve_ik("panda_grasptarget", goal, HOME, ARM, max_iterations=30)
    assert not result.success
    assert result.iterations == 30 and "did not converge" in result.message
    assert result.position_error_m > 0.5
    limits = load_urdf_limits(panda_urdf_path())
    for name in ARM:  # iterates stay inside the URDF limits
        assert limits[name].lower <= result.positions[name] <= limits[name].upper


# ---- rotations ---------------------------------------------------------------------------------------------------
def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(2)
    for rpy in rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (20, 3)):
        np.testing.assert_allclose(matrix_to_rpy(rpy_to_matrix(rpy)), rpy, atol=1e-12)
    for vector in ([0, 0, 0], [1e-8, 0, 0], [0.3, -0.2, 0.1], [0, 0, math.pi - 1e-6], [math.pi / math.sqrt(2)] * 2 + [0]):
        vector = np.array(vector, dtype=float)
        np.testing.assert_allclose(matrix_to_rotation_vector(rotation_vector_to_matrix(vector)), vector, atol=1e-6)
