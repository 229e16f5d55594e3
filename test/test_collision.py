"""Collision checking (gem_ros.core.safety.collision) on the Panda with the panda YAML's table: chunks into the table
and into the arm's own links refused whole through the ExecutionController (the arm holds, the pair named), a thin
object between two points caught by the interpolation, configure-time refusals, and a fuzz checked independently."""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest

from gem_ros.core.executor_setup import PARAMETERS, build_controller, collision_config
from gem_ros.core.kinematics import load_urdf_limits
from gem_ros.core.safety import ChunkRejected
from gem_ros.core.safety.collision import CollisionChecker
from gem_ros.core.safety.collision_model import build_collision_model, joint_values_to_q
from gem_ros.core.safety.config import CollisionConfig, SceneObject, scene_objects_from_lists
from gem_ros.sim.arm_wiring import read_sections

REPO = Path(__file__).resolve().parents[1]
URDF = REPO / "urdf" / "panda" / "panda.urdf"
ARM = tuple(f"panda_joint{i}" for i in range(1, 8))
JOINTS = ARM + ("panda_finger_joint1", "panda_finger_joint2")
CHANNELS = list(ARM) + ["gripper"]
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04, 0.04])
INTO_TABLE = np.array([0.0, 1.2, 0.0, -1.0, 0.0, 1.571, 0.785])      # hand forward and down, through the top
INTO_ITSELF = np.array([0.556, -1.074, 1.793, -3.063, -1.643, 2.375, -2.184])   # link5 folded onto link2
PAIR = re.compile(r"'(panda_\w+)' and (scene object )?'(\w+)'")
TICK = 0.02


def panda_values(**overrides) -> dict:
    """The executor parameters gem_demo / gem.launch.py give the Panda (its YAML), on our URDF."""
    return {**PARAMETERS, **read_sections(REPO / "gem_bringup/config/panda/gem.yaml")["gem_executor"],
            "urdf_path": str(URDF), **overrides}


def plate(y: float = 0.0) -> SceneObject:
    """A 2 mm thin wall in the hand's way when joint 1 swings across y = 0."""
    return SceneObject(name="plate", shape="box", size_m=(0.4, 0.002, 0.3), pose_xyz_rpy=(0.45, y, 0.45, 0, 0, 0))


@pytest.fixture(scope="module")
def checker() -> CollisionChecker:
    return CollisionChecker(URDF, collision_config(panda_values()))


def chunk_to(target_arm, start=HOME, points: int = 16) -> np.ndarray:
    """(points, 8) absolute actions from `start` to `target_arm`, gripper open (0.08 m width)."""
    arm = start[:7] + np.outer(np.arange(1, points + 1) / points, np.asarray(target_arm) - start[:7])
    return np.hstack([arm, np.full((points, 1), 0.08)])


def running_controller(**overrides):
    """A controller from the panda YAML executing a small, safe chunk; returns (controller, time, robot)."""
    ctrl = build_controller(panda_values(**overrides))
    ctrl.on_joint_state(JOINTS, HOME, np.zeros(9), 0.0)
    assert ctrl.on_chunk(CHANNELS, 0.1, chunk_to(HOME[:7] + 0.05), "absolute_joint", 0.0, 0.0) is None
    t, robot = 0.0, HOME.copy()
    for _ in range(3):
        command = ctrl.tick(t)
        assert command.kind == "trajectory", command.reason
        robot = command.trajectory.positions[0].copy()
        t = round(t + TICK, 9)
        ctrl.on_joint_state(JOINTS, robot, np.zeros(9), t)
    return ctrl, t, robot


# ---- through the executor ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, pair", [
    (INTO_TABLE, r"'panda_(leftfinger|rightfinger|hand|link\d)' and scene object 'table'"),
    (INTO_ITSELF, r"'panda_link\d' and 'panda_link\d'"),
])
def test_a_colliding_chunk_is_refused_whole_and_the_arm_holds_naming_the_pair(target, pair):
    ctrl, t, robot = running_controller()
    reason = ctrl.on_chunk(CHANNELS, 0.1, chunk_to(target, robot), "absolute_joint", t, t)
    assert reason is not None and re.search(pair, reason), reason
    command = ctrl.tick(t)
    assert command.kind == "hold" and re.search(pair, command.reason), command.reason
    np.testing.assert_allclose(command.trajectory.positions[0], robot)   # held where it is
    level, message = ctrl.health()
    assert level == "WARN" and re.search(pair, message)                # what /diagnostics says
    assert re.search(pair, ctrl.stats["last_safety_rejection"])
    # refused whole: nothing of the chunk (nor of the plan before it) is sent afterwards
    for k in range(1, 40):
        assert ctrl.tick(round(t + k * TICK, 9)).kind in ("hold", "idle")


def test_the_path_into_a_plan_is_checked_each_tick_and_holds_before_a_thin_wall():
    """Every chunk point is clear of the wall, but the way from the arm to the first one crosses it: each tick's
    trajectory is checked from the setpoint, and the arm stops before the wall."""
    scene = {"scene_object_names": ["table", "plate"], "scene_object_shapes": ["box", "box"],
             "scene_object_sizes_m": [1.5, 1.0, 0.05, 0.4, 0.002, 0.3],
             "scene_object_poses": [0.5, 0.0, -0.025, 0, 0, 0, 0.45, 0.0, 0.45, 0, 0, 0],
             "named_state_names": [""], "named_state_positions": [0.0]}   # the plate stands in the YAML's home
    ctrl = build_controller(panda_values(**scene))
    start = HOME.copy()
    start[0] = -0.8
    ctrl.on_joint_state(JOINTS, start, np.zeros(9), 0.0)
    beyond = np.tile(np.r_[0.8, HOME[1:7], 0.08], (16, 1))   # joint 1 at +0.8: the far side of the wall
    assert ctrl.on_chunk(CHANNELS, 0.1, beyond, "absolute_joint", 0.0, 0.0) is None
    t, robot, holds = 0.0, start, []
    for _ in range(100):
        command = ctrl.tick(t)
        if command.kind == "trajectory":
            robot = command.trajectory.positions[0].copy()
        elif command.kind == "hold":
            holds.append(command.reason)
        t = round(t + TICK, 9)
        ctrl.on_joint_state(JOINTS, robot, np.zeros(9), t)
    assert holds and "scene object 'plate'" in holds[0], holds
    assert robot[0] < -0.1   # never swung through


# ---- the checker -------------------------------------------------------------------------------------------------
def test_a_thin_object_between_two_points_is_caught_by_the_interpolation():
    ck = CollisionChecker(URDF, collision_config(panda_values(
        scene_object_names=["plate"], scene_object_shapes=["box"], scene_object_sizes_m=[0.4, 0.002, 0.3],
        scene_object_poses=[0.45, 0.0, 0.45, 0, 0, 0])))
    left, right = HOME.copy(), HOME.copy()
    left[0], right[0] = -0.8, 0.8      # one step of 1.6 rad: the hand jumps over the 2 mm plate
    assert ck.check(JOINTS, left[None]) is None and ck.check(JOINTS, right[None]) is None
    hit = ck.check(JOINTS, np.stack([left, right]))
    assert hit is not None and hit.body_b == "plate" and hit.scene and hit.index == 1 and 0 < hit.fraction < 1
    assert "between point 0 and point 1" in hit.describe()
    assert ck.check(JOINTS, right[None], start=left).index == 0   # from a start: the segment into point 0


PLATE_SCENE = dict(scene_object_names=["table", "plate"], scene_object_shapes=["box", "box"],
                   scene_object_sizes_m=[1.5, 1.0, 0.05, 0.4, 0.002, 0.3],
                   scene_object_poses=[0.5, 0.0, -0.025, 0, 0, 0, 0.45, 0.0, 0.45, 0, 0, 0])


def test_the_middle_passes_clear_a_hover_with_fewer_samples_and_still_catch_a_thin_plate():
    """Passes at paddings between the coarse and the fine one: a hand hovering ~1 cm over the table is cleared
    without the finest spacing everywhere, and a 2 mm plate the hand sweeps through is caught all the same."""
    table = collision_config(panda_values())
    passes, two = CollisionChecker(URDF, table), CollisionChecker(URDF, table, level_ratio=1e9)
    assert [round(p, 4) for p, _ in passes.pass_paddings()] == [0.03, 0.0077, 0.002]
    assert len(two.pass_paddings()) == 2
    low = np.array([0.0, 0.8, 0.0, -1.7, 0.0, 2.4, 0.785, 0.04, 0.04])   # fingers just above the table
    hover = low + np.outer(np.linspace(0.02, 0.2, 10), np.eye(9)[0])       # one tick's path, joint 1 turning
    assert passes.check(JOINTS, hover, low) is None and two.check(JOINTS, hover, low) is None
    assert passes.last_samples < 0.6 * two.last_samples, (passes.last_samples, two.last_samples)
    cfg = collision_config(panda_values(**PLATE_SCENE))
    passes = CollisionChecker(URDF, cfg)
    sweep = HOME + np.outer([-0.6, -0.4, 0.4, 0.6], np.eye(9)[0])         # the hand clears the plate at each point
    oracle = IndependentCheck(padding_m=cfg.padding_m, **PLATE_SCENE)
    assert oracle.contacts_along(sweep[:-1], sweep[1:]) > 0 and oracle.points_in_collision(sweep) == 0
    hit = passes.check(JOINTS, sweep)
    assert hit is not None and hit.body_b == "plate" and 0 < hit.fraction < 1, hit


def test_a_path_the_checker_clears_touches_nothing_checked_densely():
    """Short random paths near the table and the plate: whatever the passes clear, a dense check (every pair,
    1 mrad steps) finds no contact along and no point within half the padding."""
    scene = {**PLATE_SCENE, "scene_object_poses": [0.5, 0.0, -0.025, 0, 0, 0, 0.45, 0.3, 0.3, 0, 0, 0]}   # plate at y 0.3
    cfg = collision_config(panda_values(**scene))
    checker, oracle = CollisionChecker(URDF, cfg), IndependentCheck(padding_m=cfg.padding_m, **scene)
    rng = np.random.default_rng(3)
    clear = hits = 0
    for _ in range(150):
        start = np.r_[rng.uniform(-0.3, 0.6), rng.uniform(0.0, 0.85), rng.uniform(-0.3, 0.3),
                      rng.uniform(-2.4, -1.6), rng.uniform(-0.3, 0.3), rng.uniform(1.8, 2.6), 0.785, 0.04, 0.04]
        path = start + np.cumsum(np.r_[rng.uniform(-0.05, 0.05, (10, 7)).T, np.zeros((2, 10))].T, axis=0)
        if checker.check(JOINTS, path, start) is not None:
            hits += 1
            continue
        clear += 1
        ends = np.vstack([start, path])
        assert oracle.contacts_along(ends[:-1], ends[1:]) == 0 and oracle.points_in_collision(path) == 0, path
    assert clear > 30 and hits > 30, (clear, hits)   # both ways


def test_holds_are_never_collision_checked(checker):
    """A hold keeps the arm where it already is: refusing it could not undo a collision, only stop holding."""
    from gem_ros.core.safety import SafetyConfig, SafetyFilter

    safety = SafetyFilter(load_urdf_limits(URDF), SafetyConfig(max_step_delta_rad=0.05), collision=checker)
    inside = np.r_[INTO_TABLE, 0.04, 0.04]
    assert checker.check(JOINTS, inside[None]) is not None
    assert safety.hold(dict(zip(JOINTS, inside))).positions.shape == (1, 9)
    with pytest.raises(ChunkRejected, match="scene object 'table'"):
        safety.check_points(JOINTS, inside[None])


def test_without_an_srdf_adjacent_and_default_pose_pairs_are_exempt_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="gem_ros.core.safety.collision"):
        ck = CollisionChecker(URDF, collision_config(panda_values()))
    assert "no SRDF" in caplog.text and "panda_link3 / panda_link4: adjacent" in caplog.text
    assert "panda_leftfinger / panda_rightfinger: within" in caplog.text   # closed fingers touch at q = 0
    closed = HOME.copy()
    closed[7:] = 0.0
    assert ck.check(JOINTS, closed[None]) is None


def test_an_srdf_decides_the_exempt_pairs(tmp_path):
    srdf = tmp_path / "panda.srdf"
    srdf.write_text('<robot name="panda"><disable_collisions link1="panda_link0" link2="panda_link1" '
                    'reason="Adjacent"/></robot>')
    ck = CollisionChecker(URDF, collision_config(panda_values(srdf_path=str(srdf))))
    assert "SRDF" in ck.notes[0]
    hit = ck.check(JOINTS, np.r_[HOME[:7], 0.04, 0.04][None])   # link3 / link4 touch: only link0 / link1 exempt
    assert hit is not None and not hit.scene


# ---- configure-time refusals -------------------------------------------------------------------------------------
def test_missing_meshes_refuse_to_configure_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"link 'panda_link0' mesh 'package://meshes/collision/link0.obj'"):
        build_controller(panda_values(collision_package_paths=[""]))   # our URDF ships no meshes
    broken = tmp_path / "panda.urdf"
    broken.write_text(URDF.read_text().replace("collision/hand.obj", "collision/gone.obj"))
    with pytest.raises(ValueError, match=r"link 'panda_hand' mesh 'package://meshes/collision/gone.obj'"):
        build_controller(panda_values(urdf_path=str(broken)))


def test_an_srdf_naming_links_the_urdf_lacks_refuses_to_configure(tmp_path):
    srdf = tmp_path / "other.srdf"
    srdf.write_text('<robot name="x"><disable_collisions link1="panda_link1" link2="shoulder_link"/></robot>')
    with pytest.raises(ValueError, match="unknown link 'shoulder_link'"):
        build_controller(panda_values(srdf_path=str(srdf)))
    with pytest.raises(ValueError, match="SRDF"):
        build_controller(panda_values(srdf_path=str(tmp_path / "missing.srdf")))


@pytest.mark.parametrize("frame, message", [
    ("table_link", "frame 'table_link' is not a link of the URDF"),
    ("panda_hand", "frame 'panda_hand' moves with joint 'panda_joint7'"),
])
def test_a_scene_object_in_an_unknown_or_moving_frame_refuses_to_configure(frame, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_controller(panda_values(scene_object_frames=[frame]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape="box", size_m=(1.0, -1.0, 0.1)), "size_m must be > 0"),
    (dict(shape="box", size_m=(1.0, math.nan, 0.1)), "finite"),
    (dict(shape="box", size_m=(1.0, 1.0)), "must have 3 values"),
    (dict(shape="cylinder", size_m=(0.1, 0.2, 0.3)), "must have 2 values"),
    (dict(shape="cone", size_m=(0.1,)), "shape must be one of"),
    (dict(shape="sphere", size_m=(0.1,), pose_xyz_rpy=(0, 0, 0)), "pose_xyz_rpy must have 6 values"),
    (dict(shape="sphere", size_m=(0.1,), name=""), "name must be a non-empty string"),
])
def test_bad_scene_objects_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SceneObject(**{"name": "thing", **kwargs})


@pytest.mark.parametrize("overrides, message", [
    (dict(scene_object_sizes_m=[1.5, 1.0]), "scene_object_sizes_m has 2 values for 1 scene objects"),
    (dict(scene_object_poses=[0.5, 0.0, 0.0]), "scene_object_poses has 3 values"),
    (dict(scene_object_shapes=["sphere"]), r"object 'table' \(sphere\) takes 1 size values"),
    (dict(collision_padding_m=0.0), "padding_m must be finite and > 0"),
    (dict(collision_max_link_travel_m=0.01), "must be <= 2 \\* padding_m"),
    (dict(collision_coarse_padding_m=0.001), "coarse_padding_m 0.001 must be >= padding_m"),
    (dict(collision_package_paths=["meshes"]), "must be NAME=FOLDER"),
    (dict(collision_check="yes"), "collision_check must be true or false"),
])
def test_bad_collision_parameters_refuse_to_configure(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_controller(panda_values(**overrides))


def test_duplicate_scene_names_and_joints_the_model_lacks_are_refused(checker):
    table = dict(shape="box", size_m=(1, 1, 1))
    with pytest.raises(ValueError, match="unique"):
        CollisionConfig(scene_objects=(SceneObject(name="a", **table), SceneObject(name="a", **table)))
    with pytest.raises(ValueError, match="not .*joints of the collision model"):
        checker.check_joints(["panda_joint1", "elbow_joint"])
    assert scene_objects_from_lists([], [], [], []) == ()


# ---- fuzz ----------------------------------------------------------------------------------------------------------
class IndependentCheck:
    """Collision by another route than the checker: every pair tested (no broadphase), in configurations spaced
    evenly in joint space at `step_rad`, finer than the checker's interpolation."""

    def __init__(self, padding_m: float, step_rad: float = 0.001, **overrides):
        built = build_collision_model(URDF, collision_config(panda_values(**overrides)))
        self.model, self.step_rad = built.model, step_rad
        self.contact, self.padded = (pin.GeometryPool(built.model, built.geometry, 1) for _ in range(2))
        for pool, margin in ((self.contact, 0.0), (self.padded, padding_m * 0.5)):
            for data in pool.getGeometryDatas():
                for request in data.collisionRequests:
                    request.security_margin = margin

    def points_in_collision(self, points: np.ndarray) -> int:
        """Points (M, 9) closer than half the padding to anything (the checker keeps them >= the padding)."""
        q = joint_values_to_q(self.model, points)
        return int(np.sum(pin.computeCollisionsInParallel(1, self.padded, q, True, False)))

    def contacts_along(self, starts: np.ndarray, ends: np.ndarray) -> int:
        """Configurations in contact along the straight segments starts[i] -> ends[i]."""
        counts = np.maximum(np.ceil(np.abs(ends - starts).max(axis=1) / self.step_rad), 1).astype(int)
        segment = np.repeat(np.arange(len(counts)), counts)
        fraction = (np.arange(len(segment)) - np.repeat(np.cumsum(counts) - counts, counts) + 1) / counts[segment]
        samples = starts[segment] + fraction[:, None] * (ends - starts)[segment]
        q = joint_values_to_q(self.model, samples)
        return int(np.sum(pin.computeCollisionsInParallel(1, self.contact, q, True, False)))


class ChunkSource:
    """Chunks that keep heading for one target for 3-30 chunks at 0.3-2.5 rad/s, as a policy would: anywhere in
    the limits, hovering at or below the table top, folding the arm onto itself, or a jump; gripper open or shut."""

    def __init__(self, rng):
        limits = load_urdf_limits(URDF)
        self.lower, self.upper = (np.array([getattr(limits[n], side) for n in ARM]) for side in ("lower", "upper"))
        self.rng, self.left, self.target, self.speed, self.standing = rng, 0, None, 1.0, False

    def chunk(self, robot: np.ndarray) -> np.ndarray:
        rng = self.rng
        if self.left == 0:
            kind = rng.integers(4)
            self.standing = kind == 3 or rng.random() < 0.3
            if kind == 0:
                target = rng.uniform(self.lower, self.upper)
            elif kind == 1:
                target = np.array([rng.uniform(-0.8, 0.8), rng.uniform(0.0, 1.3), rng.uniform(-0.4, 0.4),
                                   rng.uniform(-2.6, -0.9), rng.uniform(-0.3, 0.3), rng.uniform(1.4, 3.2), 0.785])
            elif kind == 2:
                target = INTO_ITSELF + rng.uniform(-0.4, 0.4, 7)
            else:
                target = robot[:7] + rng.uniform(-1.5, 1.5, 7)
            self.target = np.clip(target, self.lower, self.upper)
            self.left, self.speed = int(rng.integers(3, 30)), rng.uniform(0.3, 2.5)
        self.left -= 1
        reach = self.speed * 0.1 * np.arange(1, 17)[:, None]   # 16 points, 0.1 s apart
        # a chunk standing at its target: only each tick's way there from the arm is checked
        arm = np.tile(self.target, (16, 1)) if self.standing else \
            robot[:7] + np.clip(self.target - robot[:7], -reach, reach)
        return np.hstack([arm, np.full((16, 1), 0.08 if rng.random() < 0.7 else 0.0)])


def run_fuzz(chunks: int, seed: int, **overrides) -> dict:
    """`chunks` fuzz chunks through controllers from the panda YAML, ticked at 50 Hz with a robot that reaches
    each trajectory's first point by the next tick; what was sent, checked by IndependentCheck."""
    source = ChunkSource(np.random.default_rng(seed))
    oracle = IndependentCheck(padding_m=collision_config(panda_values()).padding_m)
    sent, moves_from, moves_to, refusals = [], [], [], []
    tried = accepted = 0
    while tried < chunks:
        ctrl = build_controller(panda_values(on_violation="clamp" if tried % 200 < 100 else "reject", **overrides))
        robot, t = HOME.copy(), 0.0
        for step in range(250):
            ctrl.on_joint_state(JOINTS, robot, np.zeros(9), t)
            if step % 5 == 0:
                reason = ctrl.on_chunk(CHANNELS, 0.1, source.chunk(robot), "absolute_joint", t, t)
                tried += 1
                accepted += reason is None
                if reason and "collision" in reason:
                    refusals.append(reason)
            command = ctrl.tick(t)
            if command.kind == "trajectory":
                sent.append(command.trajectory.positions)
                moves_from.append(robot)
                robot = command.trajectory.positions[0].copy()
                moves_to.append(robot)
            elif command.kind == "hold" and "collision" in command.reason:
                refusals.append(command.reason)
            t = round(t + TICK, 9)
    points = np.concatenate(sent)
    return dict(accepted=accepted, refusals=refusals, points=len(points),
                points_in_collision=oracle.points_in_collision(points),
                contacts=oracle.contacts_along(np.array(moves_from), np.array(moves_to)))


def test_fuzz_no_sent_point_collides_checked_independently():
    """(With collision_check false the same fuzz sends ~5,900 of 19,200 points into collision: the check finds them.)"""
    result = run_fuzz(500, seed=7)
    refusals = result["refusals"]
    counts = {k: v for k, v in result.items() if k != "refusals"} | {"refusals": len(refusals)}
    assert result["accepted"] > 100 and len(refusals) > 50 and result["points"] > 5_000, counts   # both ways
    at_tick = sum(r.startswith("safety filter rejected the plan") for r in refusals)
    assert 0 < at_tick < len(refusals), counts   # chunks refused on arrival, and each tick's path checked too
    assert all(PAIR.search(r) for r in refusals), [r for r in refusals if not PAIR.search(r)][:3]
    assert result["points_in_collision"] == 0 and result["contacts"] == 0, counts
