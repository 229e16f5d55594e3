"""Embedded tabletop simulator (pybullet, no GL, no ROS): an arm (a Franka Panda by default), a table and
coloured cubes.

The world frame is the robot base (`panda_link0` for the Panda; x forward, z up, metres); the table top is the
plane z = 0. Other arms (`SimConfig.arm`, see gem_ros/sim/arms.py) sit at the same place; without a gripper they
run dry runs only (the pick task needs fingers). Each `TabletopSim` owns its own pybullet client, so several can
run side by side in one process. A ROS node wraps this class; nothing here imports rclpy.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Sequence

import numpy as np
import pybullet as p
import pybullet_data

from gem_ros.core.policy.config import SIM_SCENE_FIELDS
from gem_ros.sim.arms import SIM_ARMS, resolved_urdf_text, sim_arm
from gem_ros.sim.language import PHRASINGS, instruction_for, named_color
from gem_ros.sim.camera import (CameraConfig, Intrinsics, intrinsics, optical_frame, projection_matrix,
                                quat_from_matrix, world_eye_target_up, zbuffer_to_depth_m)

# Colour name -> RGBA. Saturated primaries so a small policy (and a test) can segment them by thresholds.
CUBE_COLORS_RGBA = MappingProxyType({
    "red": (0.9, 0.05, 0.05, 1.0), "green": (0.05, 0.75, 0.05, 1.0), "blue": (0.05, 0.1, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.05, 1.0),
})
# The Panda's (the default arm's) names; other arms' are in gem_ros/sim/arms.py.
ARM_JOINTS = SIM_ARMS["panda"].arm_joints
FINGER_JOINTS = SIM_ARMS["panda"].finger_joints
EE_LINK = SIM_ARMS["panda"].ee_link
PANDA_URDF = SIM_ARMS["panda"].urdf   # inside pybullet_data, with meshes
HOME_ARM_RAD = SIM_ARMS["panda"].home_rad   # Franka "ready" pose (rad)
FINGER_OPEN_M = 0.04                        # fingers fully open (m per finger)
TABLE_TOP_IN_URDF_M = 0.625  # pybullet_data table/table.urdf top surface height; we sink it to z = 0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def default_cameras(wrist_link: str = "panda_hand") -> list[CameraConfig]:
    """Scene camera (224 px: a cube spans ~15 px) and wrist camera (128 px: objects are close, so large).

    The scene camera looks from the front-right so the hand does not hide the cubes while grasping; the cube
    region, lifted up to 0.3 m, stays >= 18 px inside the frame. The wrist camera sits 7 cm off the hand's
    +x face, tilted 22 deg toward the fingers; hand +x is image-up, so the fingertips show at the bottom
    corners and a grasped cube at the bottom centre.
    """
    return [
        CameraConfig("scene", width=224, height=224, fov_deg=52.0,
                     eye_m=(0.85, -0.40, 0.55), target_m=(0.48, 0.0, 0.08)),
        CameraConfig("wrist", width=128, height=128, fov_deg=70.0, mount_link=wrist_link,
                     eye_m=(0.07, 0.0, 0.03), target_m=(0.0, 0.0, 0.20), up=(1.0, 0.0, 0.0)),
    ]


SCENE_FIELDS = SIM_SCENE_FIELDS   # the SimConfig fields a checkpoint records: it is evaluated in the scene it learned


def scene_overrides(sim_scene: dict | None) -> dict:
    """SimConfig keyword arguments from a checkpoint's `sim_scene` (None or {} -> the sim's defaults)."""
    sim_scene = dict(sim_scene or {})
    unknown = sorted(set(sim_scene) - set(SCENE_FIELDS))
    _require(not unknown, f"sim_scene has unknown fields {unknown}; known: {list(SCENE_FIELDS)}")
    return sim_scene


@dataclass
class SimConfig:
    seed: int = 0                               # seeds the sequence of episodes when reset() gets no seed
    physics_hz: float = 240.0
    gui: bool = False
    arm: str = "panda"                          # a key of gem_ros.sim.arms.SIM_ARMS
    cameras: list[CameraConfig] | None = None   # None: default_cameras() on the arm's wrist link
    object_colors: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    cube_size_m: float = 0.05                   # edge; the open Panda gripper spans 0.08 m
    cube_mass_kg: float = 0.1
    cube_friction: float = 1.0
    # Cube centres are drawn uniformly in this 20 x 30 cm box (robot frame), at least `min_spacing_m` apart
    # so the open fingers never land on a neighbour.
    region_x_m: tuple[float, float] = (0.40, 0.60)
    region_y_m: tuple[float, float] = (-0.15, 0.15)
    min_spacing_m: float = 0.10
    yaw_range_rad: float = 0.3                  # cube yaw uniform in [-yaw_range_rad, +yaw_range_rad]
    task: str = "pick"
    lift_height_m: float = 0.10                 # success: target bottom this far above the table, in both fingers
    velocity_limit_scale: float = 1.0           # fraction of the URDF joint velocity limits the motors may use
    home_arm_rad: tuple[float, ...] | None = None   # None: the arm's home pose
    # Draw the Panda with its collision meshes: ~15 ms cheaper per render (TinyRenderer pays per triangle),
    # plainer look. Train and evaluate a policy with the same setting.
    coarse_robot_meshes: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
                 f"seed must be a non-negative int, got {self.seed!r}")
        _require(self.physics_hz >= 60.0, f"physics_hz must be >= 60 for stable grasping, got {self.physics_hz}")
        model = sim_arm(self.arm)
        if self.cameras is None:
            self.cameras = default_cameras(model.wrist_link)
        if self.home_arm_rad is None:
            self.home_arm_rad = model.home_rad
        self.cameras = [c if isinstance(c, CameraConfig) else CameraConfig(**c) for c in self.cameras]
        names = [c.name for c in self.cameras]
        _require(len(set(names)) == len(names), f"camera names must be unique, got {names}")
        _require(len(self.object_colors) >= 1 and len(set(self.object_colors)) == len(self.object_colors),
                 f"object_colors must be non-empty and unique, got {self.object_colors}")
        unknown = [c for c in self.object_colors if c not in CUBE_COLORS_RGBA]
        _require(not unknown, f"unknown object colours {unknown}; known: {sorted(CUBE_COLORS_RGBA)}")
        _require(0.01 <= self.cube_size_m <= 0.07,
                 f"cube_size_m must fit the gripper (0.01..0.07), got {self.cube_size_m}")
        _require(self.cube_mass_kg > 0 and self.cube_friction > 0, "cube_mass_kg and cube_friction must be > 0")
        for key in ("region_x_m", "region_y_m"):
            lo, hi = getattr(self, key)
            _require(lo < hi, f"{key} must be (low, high) with low < high")
        _require(self.min_spacing_m >= self.cube_size_m * math.sqrt(2), "min_spacing_m must keep cubes apart")
        _require(0.0 <= self.yaw_range_rad <= math.pi / 4, "yaw_range_rad must be in [0, pi/4]")
        _require(self.task == "pick", f"only task 'pick' is implemented, got {self.task!r}")
        _require(self.lift_height_m > 0, "lift_height_m must be > 0")
        _require(0.0 < self.velocity_limit_scale <= 1.0, "velocity_limit_scale must be in (0, 1]")
        _require(len(self.home_arm_rad) == len(model.arm_joints),
                 f"home_arm_rad needs {len(model.arm_joints)} values for arm {self.arm!r}")
        _require(not self.coarse_robot_meshes or self.arm == "panda", "coarse_robot_meshes is for the panda only")


class JointLimit(NamedTuple):
    lower: float      # rad or m
    upper: float
    velocity: float   # rad/s or m/s, already scaled by velocity_limit_scale
    effort: float     # N m or N


class TabletopSim:
    """Pick-the-coloured-cube scene. Joints by name; positions in rad (arm) and m per finger (gripper)."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.arm = sim_arm(cfg.arm)
        self._client = p.connect(p.GUI if cfg.gui else p.DIRECT)
        self._dt_s = 1.0 / cfg.physics_hz
        self._episode_seeds = np.random.default_rng(cfg.seed)   # per instance, never module-level
        self._steps = 0
        self._pending_s = 0.0
        self._cube_ids: dict[str, int] = {}
        self._target = cfg.object_colors[0]
        self._phrasing = 0
        self._typed: str | None = None       # an instruction given by set_instruction, until the next reset
        self._lifted: set[str] = set()       # cubes lifted at some step() of this episode ...
        self._held: set[str] = set()         # ... and those among them lifted in both fingers
        self.episode_seed = cfg.seed
        self._build_world()
        self.reset(cfg.seed)

    # ---------------------------------------------------------------- world construction
    def _pb(self, fn, *args, **kwargs):
        return fn(*args, physicsClientId=self._client, **kwargs)

    def _build_world(self) -> None:
        self._pb(p.setAdditionalSearchPath, pybullet_data.getDataPath())
        self._pb(p.setGravity, 0.0, 0.0, -9.81)
        self._pb(p.setTimeStep, self._dt_s)
        self._pb(p.loadURDF, "plane.urdf", [0.0, 0.0, -TABLE_TOP_IN_URDF_M])
        self._table = self._pb(p.loadURDF, "table/table.urdf", [0.5, 0.0, -TABLE_TOP_IN_URDF_M], useFixedBase=True)
        self._robot = self._load_robot()
        self._joint_index: dict[str, int] = {}
        self._link_index: dict[str, int] = {}
        self._limits: dict[str, JointLimit] = {}
        for j in range(self._pb(p.getNumJoints, self._robot)):
            info = self._pb(p.getJointInfo, self._robot, j)
            name, link = info[1].decode(), info[12].decode()
            self._link_index[link] = j
            if info[2] in (p.JOINT_REVOLUTE, p.JOINT_PRISMATIC):
                self._joint_index[name] = j
                self._limits[name] = JointLimit(info[8], info[9], info[11] * self.cfg.velocity_limit_scale, info[10])
        self.joint_names: list[str] = list(self.arm.joint_names)
        missing = [n for n in self.joint_names if n not in self._joint_index]
        _require(not missing, f"robot URDF lacks joints {missing}")
        if len(self.arm.finger_joints) == 2:
            # pybullet ignores <mimic>; a gear constraint couples the fingers like the real gripper's mechanism,
            # so a squeezed cube is centred between the pads instead of drifting sideways during the lift.
            first, second = (self._joint_index[n] for n in self.arm.finger_joints)
            gear = self._pb(p.createConstraint, self._robot, first, self._robot, second, p.JOINT_GEAR,
                            [1, 0, 0], [0, 0, 0], [0, 0, 0])
            self._pb(p.changeConstraint, gear, gearRatio=-1, erp=0.1, maxForce=50)
        for cam in self.cfg.cameras:
            _require(not cam.mount_link or cam.mount_link in self._link_index,
                     f"camera '{cam.name}' mount_link '{cam.mount_link}' is not a robot link")
        half = [self.cfg.cube_size_m / 2.0] * 3
        self._cube_collision = self._pb(p.createCollisionShape, p.GEOM_BOX, halfExtents=half)
        self._cube_visuals = {c: self._pb(p.createVisualShape, p.GEOM_BOX, halfExtents=half,
                                          rgbaColor=CUBE_COLORS_RGBA[c]) for c in self.cfg.object_colors}
        self._home = np.array([*self.cfg.home_arm_rad, *[FINGER_OPEN_M] * len(self.arm.finger_joints)])
        self._targets = self._home.copy()
        self._proj = {c.name: projection_matrix(c) for c in self.cfg.cameras}

    def _load_robot(self) -> int:
        if self.cfg.arm != "panda":   # meshes referenced by absolute path: found wherever the package lives
            return self._load_urdf_text(resolved_urdf_text(self.arm), f"{self.arm.name}.urdf")
        urdf = os.path.join(pybullet_data.getDataPath(), PANDA_URDF)
        if not self.cfg.coarse_robot_meshes:
            return self._pb(p.loadURDF, urdf, [0.0, 0.0, 0.0], useFixedBase=True)
        # A throw-away copy whose visuals point (absolute paths) at the collision meshes; pybullet keeps the
        # meshes after loading, so the directory can go at once.
        meshes = os.path.join(os.path.dirname(urdf), "meshes")
        with open(urdf, encoding="utf-8") as f:
            text = f.read().replace("package://meshes/visual/", f"{meshes}/collision/")
        text = text.replace("package://meshes/collision/", f"{meshes}/collision/")
        return self._load_urdf_text(text, "panda_coarse.urdf")

    def _load_urdf_text(self, text: str, name: str) -> int:
        """Load a URDF given as text (a throw-away file: pybullet keeps the meshes once loaded)."""
        with tempfile.TemporaryDirectory(prefix="gem_sim_") as tmp:
            path = os.path.join(tmp, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return self._pb(p.loadURDF, path, [0.0, 0.0, 0.0], useFixedBase=True)

    def _sample_layout(self, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """(x, y, yaw) per cube, uniformly in the region, rejection-sampled for spacing."""
        layout: list[tuple[float, float, float]] = []
        for _ in range(10_000):
            x, y = rng.uniform(*self.cfg.region_x_m), rng.uniform(*self.cfg.region_y_m)
            if all(math.hypot(x - a, y - b) >= self.cfg.min_spacing_m for a, b, _ in layout):
                layout.append((x, y, rng.uniform(-self.cfg.yaw_range_rad, self.cfg.yaw_range_rad)))
                if len(layout) == len(self.cfg.object_colors):
                    return layout
        raise RuntimeError("cannot place the cubes: region too small for min_spacing_m")

    # ---------------------------------------------------------------- episode control
    def reset(self, seed: int | None = None) -> str:
        """New episode: re-place cubes (from `seed`, or the next seed of cfg.seed's sequence), arm home.

        Returns the language instruction naming the target, in one of the phrasings drawn from the seed (e.g.
        "pick up the red cube", "grab the red block"). `time_s` keeps running (a ROS /clock driven by it must
        never jump back).
        """
        self.episode_seed = int(self._episode_seeds.integers(2**31)) if seed is None else int(seed)
        rng = np.random.default_rng(self.episode_seed)
        self._target = self.cfg.object_colors[int(rng.integers(len(self.cfg.object_colors)))]
        layout = self._sample_layout(rng)
        self._phrasing = int(rng.integers(len(PHRASINGS)))   # drawn after the layout: layouts match older seeds
        self._typed = None
        self._lifted, self._held = set(), set()
        # Re-creating the cubes (shapes are shared) drops cached contacts, so an episode replays identically.
        for body in self._cube_ids.values():
            self._pb(p.removeBody, body)
        self._cube_ids = {}
        for color, (x, y, yaw) in zip(self.cfg.object_colors, layout):
            body = self._pb(p.createMultiBody, self.cfg.cube_mass_kg, self._cube_collision, self._cube_visuals[color],
                            [x, y, self.cfg.cube_size_m / 2.0], p.getQuaternionFromEuler([0.0, 0.0, yaw]))
            self._pb(p.changeDynamics, body, -1, lateralFriction=self.cfg.cube_friction)
            self._cube_ids[color] = body
        self.place_joints(self.joint_names, self._home)
        return self.instruction

    def place_joints(self, names: Sequence[str], positions: np.ndarray) -> None:
        """Put joints at `positions` at once (no dynamics, zero velocity) and hold them there: scene setup for
        rendering, not motion (a controller never does this)."""
        self.set_joint_targets(names, positions)
        targets = dict(zip(self.joint_names, self._targets))
        for name in names:
            self._pb(p.resetJointState, self._robot, self._joint_index[name], targets[name], 0.0)

    @property
    def instruction(self) -> str:
        return self._typed if self._typed is not None else instruction_for(self._target, self._phrasing)

    def set_instruction(self, instruction: str) -> str:
        """Make the cube `instruction` names the target (the layout stays); returns its colour. ValueError when
        it names no cube on the table, or several."""
        self._target = named_color(instruction, self.cfg.object_colors)
        self._typed = instruction
        return self._target

    @property
    def target_object(self) -> str:
        return f"{self._target}_cube"

    @property
    def object_names(self) -> list[str]:
        return [f"{c}_cube" for c in self.cfg.object_colors]

    @property
    def time_s(self) -> float:
        """Simulated seconds since construction (physics steps / physics_hz); monotonic across resets."""
        return self._steps * self._dt_s

    @property
    def joint_targets(self) -> np.ndarray:
        """Current motor position targets after clipping (rad / m), in `joint_names` order."""
        return self._targets.copy()

    @property
    def joint_limits(self) -> dict[str, JointLimit]:
        return {n: self._limits[n] for n in self.joint_names}

    def set_joint_targets(self, names: Sequence[str], positions: np.ndarray) -> None:
        """Position targets by joint name (rad / m), clipped to the URDF limits; motors use URDF effort and velocity."""
        positions = np.asarray(positions, dtype=float).reshape(-1)
        _require(len(names) == len(positions), f"{len(names)} names but {len(positions)} positions")
        unknown = [n for n in names if n not in self._limits]
        _require(not unknown, f"unknown joint names {unknown}; known: {self.joint_names}")
        _require(bool(np.all(np.isfinite(positions))), "joint targets must be finite")
        for name, q in zip(names, positions):
            lim = self._limits[name]
            q = float(np.clip(q, lim.lower, lim.upper))
            self._targets[self.joint_names.index(name)] = q
            self._pb(p.setJointMotorControl2, self._robot, self._joint_index[name], p.POSITION_CONTROL,
                     targetPosition=q, force=lim.effort, maxVelocity=lim.velocity)

    def step(self, dt: float) -> None:
        """Advance physics by dt seconds. Fractions of a physics step carry over, so sim time never drifts."""
        _require(dt >= 0.0 and math.isfinite(dt), f"dt must be finite and >= 0, got {dt}")
        self._pending_s += dt
        n = int(math.floor(self._pending_s / self._dt_s + 1e-6))
        self._pending_s -= n * self._dt_s
        for _ in range(n):
            self._pb(p.stepSimulation)
        self._steps += n
        if n:
            lifted = self.lifted_objects()
            self._lifted.update(lifted)
            self._held.update(name for name in lifted if self._in_both_fingers(name))

    # ---------------------------------------------------------------- state
    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, positions rad|m, velocities rad/s|m/s), in `joint_names` order."""
        states = self._pb(p.getJointStates, self._robot, [self._joint_index[n] for n in self.joint_names])
        return list(self.joint_names), np.array([s[0] for s in states]), np.array([s[1] for s in states])

    def _link_pose(self, link: str) -> tuple[np.ndarray, np.ndarray]:
        state = self._pb(p.getLinkState, self._robot, self._link_index[link], computeForwardKinematics=True)
        return np.array(state[4]), np.array(state[5])

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Position (m) and quaternion (x, y, z, w) of the arm's end-effector link (the Panda's panda_grasptarget,
        between the fingertips) in the robot base frame."""
        return self._link_pose(self.arm.ee_link)

    def object_position(self, name: str) -> np.ndarray:
        return self.object_pose(name)[0]

    def object_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        color = name.removesuffix("_cube")
        _require(color in self._cube_ids, f"unknown object {name!r}; known: {self.object_names}")
        pos, quat = self._pb(p.getBasePositionAndOrientation, self._cube_ids[color])
        return np.array(pos), np.array(quat)

    def lifted_objects(self) -> list[str]:
        """Cubes whose bottom is at least lift_height_m above the table (however they got there)."""
        half = self.cfg.cube_size_m / 2.0
        return [n for n in self.object_names if self.object_position(n)[2] - half >= self.cfg.lift_height_m]

    def outcome(self) -> str:
        """The episode so far (since reset, over every step() call): "success" when the named cube was lifted in
        both fingers, else "wrong object" when another cube was lifted, else "failure"."""
        if self.target_object in self._held or self.task_success():
            return "success"
        return "wrong object" if self._lifted - {self.target_object} else "failure"

    @property
    def lifted_this_episode(self) -> list[str]:
        return sorted(self._lifted)

    def _in_both_fingers(self, name: str) -> bool:
        if not self.arm.has_gripper:
            return False
        body = self._cube_ids[name.removesuffix("_cube")]
        touching = {c[3] for c in self._pb(p.getContactPoints, self._robot, body)}
        return {self._link_index["panda_leftfinger"], self._link_index["panda_rightfinger"]} <= touching

    def task_success(self) -> bool:
        """Target cube's bottom at least lift_height_m above the table and touched by both fingers (an arm
        without a gripper never succeeds: it can only run dry)."""
        return self.target_object in self.lifted_objects() and self._in_both_fingers(self.target_object)

    def ik(self, position: Sequence[float], orientation_xyzw: Sequence[float]) -> np.ndarray:
        """Arm joint positions (rad, the arm's joint order) putting its end-effector link at the pose.

        Null-space IK pulls toward the home pose so solutions stay elbow-up; seeded from the current state.
        """
        arm = [self._limits[n] for n in self.arm.arm_joints]
        fingers = len(self.arm.finger_joints)
        lower = [lim.lower for lim in arm] + [0.0] * fingers
        upper = [lim.upper for lim in arm] + [FINGER_OPEN_M] * fingers
        ranges = [u - lo for u, lo in zip(upper, lower)]
        rest = list(self._home)
        q = self._pb(p.calculateInverseKinematics, self._robot, self._link_index[self.arm.ee_link], list(position),
                     list(orientation_xyzw), lowerLimits=lower, upperLimits=upper, jointRanges=ranges,
                     restPoses=rest, maxNumIterations=100, residualThreshold=1e-5)
        return np.clip(np.array(q[:len(arm)]), [lim.lower for lim in arm], [lim.upper for lim in arm])

    # ---------------------------------------------------------------- cameras
    def _camera(self, name: str) -> CameraConfig:
        for cam in self.cfg.cameras:
            if cam.name == name:
                return cam
        raise ValueError(f"unknown camera {name!r}; known: {[c.name for c in self.cfg.cameras]}")

    def _eye_target_up(self, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not cam.mount_link:
            return world_eye_target_up(cam)
        pos, quat = self._link_pose(cam.mount_link)
        return world_eye_target_up(cam, pos, np.array(p.getMatrixFromQuaternion(quat)).reshape(3, 3))

    def camera_pose(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """Optical-frame pose (x right, y down, z forward) in panda_link0: position m, quaternion xyzw."""
        eye, target, up = self._eye_target_up(self._camera(camera))
        return eye, quat_from_matrix(optical_frame(eye, target, up))

    def camera_intrinsics(self, camera: str) -> Intrinsics:
        return intrinsics(self._camera(camera))

    def render(self, camera: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 and z-depth (H, W) float32 in metres, from the CPU TinyRenderer (no GL needed)."""
        cam = self._camera(camera)
        eye, target, up = self._eye_target_up(cam)
        view = p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist())
        _, _, rgba, zbuf, _ = self._pb(p.getCameraImage, cam.width, cam.height, view, self._proj[cam.name],
                                       renderer=p.ER_TINY_RENDERER, flags=p.ER_NO_SEGMENTATION_MASK)
        rgb = np.ascontiguousarray(np.reshape(rgba, (cam.height, cam.width, 4))[..., :3], dtype=np.uint8)
        depth = zbuffer_to_depth_m(np.reshape(zbuf, (cam.height, cam.width)), cam.near_m, cam.far_m)
        return rgb, depth

    def close(self) -> None:
        if self._client >= 0:
            p.disconnect(physicsClientId=self._client)
            self._client = -1

    def __enter__(self) -> TabletopSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

