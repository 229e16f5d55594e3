"""The executor's flat parameters (ROS parameters / YAML keys) and the ExecutionController they wire up.

ROS-free, so that the executor node, `gem_eval rollout --executor` and tests build the same controller from the
same keys. The defaults come from the core config dataclasses: there is no second copy to drift.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gem_ros.core.chunking import ActionMapper, ActionSpaceConfig, ChunkScheduler, ChunkSchedulerConfig
from gem_ros.core.execution import ExecutionConfig, ExecutionController
from gem_ros.core.kinematics import RobotModel, load_urdf_limits
from gem_ros.core.kinematics.soft_limits import load_soft_urdf_limits
from gem_ros.core.kinematics.srdf import load_srdf
from gem_ros.core.named_moves import named_states_from_lists, srdf_named_states
from gem_ros.core.safety import SafetyConfig, SafetyFilter, WorkspaceBox
from gem_ros.core.safety.config import CollisionConfig, scene_objects_from_lists


def _default(cls, name: str):
    """A dataclass field's default: the parameter defaults below come from the configs, never a second copy."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


# Parameter name -> default (its type is the ROS parameter type). [""] is an empty string list: rclpy cannot
# infer a type from [] (it would become a byte array).
PARAMETERS: dict[str, Any] = {
    "joint_names": [""],                        # controller joint order (required)
    "controller_name": "arm_controller",
    "backend": "topic",                         # "topic" | "follow_joint_trajectory"
    "gripper_backend": "arm",                   # "arm" (gripper joints in the arm's trajectory, as gem_sim) |
                                                # "trajectory" (their own JTC) | "gripper_command" (GripperCommand)
    "gripper_controller_name": "gripper_controller",
    "gripper_action_name": "",                  # gripper action server; "" = <gripper_controller_name>/gripper_cmd
    "gripper_max_effort": 20.0,                 # N, GripperCommand goals
    "control_rate_hz": _default(ExecutionConfig, "control_rate_hz"),
    "lookahead_s": _default(ExecutionConfig, "lookahead_s"),
    "joint_state_timeout_s": _default(ExecutionConfig, "joint_state_timeout_s"),
    "chunk_timeout_s": _default(ExecutionConfig, "chunk_timeout_s"),
    "policy_timeout_s": _default(ExecutionConfig, "policy_timeout_s"),   # gem/policy_status silence; 0 = off
    "tracking_tolerance_rad": _default(ExecutionConfig, "tracking_tolerance_rad"),
    "tracking_tolerance_m": _default(ExecutionConfig, "tracking_tolerance_m"),
    "replan_on_chunk": _default(ExecutionConfig, "replan_on_chunk"),
    "checkpoint": "",                           # the folder gem_policy serves: its io decides action_space,
                                                # chunk_dt_s and delta_reference (a different value set here fails)
    "chunk_dt_s": 0.0,                          # ActionChunk.dt; 0 = 1 / the checkpoint's control rate (else 0.1)
    "chunk_mode": _default(ChunkSchedulerConfig, "mode"),
    "blend_duration_s": _default(ChunkSchedulerConfig, "blend_duration_s"),
    "max_latency_s": _default(ChunkSchedulerConfig, "max_latency_s"),
    "action_space": "",                         # ActionChunk.action_space; "" = the checkpoint's (else absolute_joint)
    "action_joint_names": [""],                 # empty: joint_names minus gripper_joint_names
    "gripper_joint_names": [""],
    "gripper_scale": _default(ActionSpaceConfig, "gripper_scale"),
    "gripper_offset": _default(ActionSpaceConfig, "gripper_offset"),
    "delta_reference": "",                      # "" = observation for a checkpoint's delta_joint (as gem_train
                                                # stores it), else the ActionSpaceConfig default
    "ee_link": "",                              # required for action_space "ee_delta"
    "ee_frame": _default(ActionSpaceConfig, "ee_frame"),
    "action_channel_names": [""],               # ActionChunk.joint_names expected; empty: derived (see core)
    "max_step_delta_rad": 0.05,                 # per trajectory point (1 / control_rate_hz apart)
    "max_step_delta_m": _default(SafetyConfig, "max_step_delta_m"),
    "velocity_scale": _default(SafetyConfig, "velocity_scale"),
    "on_violation": _default(SafetyConfig, "on_violation"),
    "position_margin_rad": _default(SafetyConfig, "position_margin_rad"),
    "position_margin_m": _default(SafetyConfig, "position_margin_m"),
    "prefer_soft_limits": False,                # URDF <safety_controller> soft limits bound positions (real arms)
    "max_acceleration": 0.0,                    # rad/s^2 (m/s^2) for every joint; 0 = off (URDF has none)
    "workspace_link": "",                       # a link whose origin must stay in the box below; "" = no box
    "workspace_min_xyz_m": [0.0, 0.0, 0.0],     # box corners in the URDF root frame (used when workspace_link set)
    "workspace_max_xyz_m": [0.0, 0.0, 0.0],
    # Collision checking (gem_ros.core.safety.collision): every chunk and trajectory, self and scene, padded.
    "collision_check": False,
    "srdf_path": "",                            # disabled pairs (MoveIt's SRDF); "": adjacent + default-pose pairs
    "collision_padding_m": _default(CollisionConfig, "padding_m"),
    "collision_max_link_travel_m": 0.0,         # between tested configurations, <= 2 * padding; 0 = 2 * padding
    "collision_coarse_padding_m": _default(CollisionConfig, "coarse_padding_m"),   # first, cheaper pass
    "collision_max_joint_step_rad": _default(CollisionConfig, "max_joint_step_rad"),
    "collision_package_paths": [""],            # "NAME=FOLDER" for package://NAME meshes (FOLDER may be
                                                # python://MODULE/SUB: inside an installed Python package)
    "scene_object_names": [""],                 # static obstacles, in the URDF root frame unless framed:
    "scene_object_shapes": [""],                # box | cylinder | sphere | plane, one per object
    "scene_object_sizes_m": [0.0],              # 3 per object: box x y z, cylinder r len 0, sphere r 0 0, plane 0 0 0
    "scene_object_poses": [0.0],                # 6 per object: x y z (m) roll pitch yaw (rad) of the shape's centre
    "scene_object_frames": [""],                # one link (fixed to the root) per object, or empty: the root link
    # Named joint states for ~/move_to_named: the SRDF's group_states (srdf_path) plus these, len(joint_names)
    # values per name in joint_names order; validated at configure (inside the limits minus the margin).
    "named_state_names": [""],
    "named_state_positions": [0.0],
    # backend "moveit" (gem_ros.nodes.moveit_adapter, needs moveit_py): trajectories through MoveIt's execution
    "moveit_group": "",                         # planning group; "": the one whose joints are the arm's
    "moveit_node_name": "gem_moveit_py",        # the MoveItPy node the executor starts
    "moveit_config_file": "",                   # MoveItPy parameters (YAML); "": the launch's parameters
    "moveit_controllers": [""],                 # controllers MoveIt executes on; empty: MoveIt's choice
    "urdf_path": "",                            # one of urdf_path / robot_description (XML) is required; the
    "robot_description": "",                    # node falls back to the robot_description topic (latched)
    "robot_description_timeout_s": 10.0,        # how long the node waits for that topic
}


def _names(values) -> list[str]:
    return [n for n in values if n]


def collision_config(values: Mapping[str, Any]) -> CollisionConfig | None:
    """The collision checker's config from the flat parameters, None when collision_check is off. ValueError
    names the parameter."""
    if not isinstance(values["collision_check"], bool):
        raise ValueError(f"collision_check must be true or false, got {values['collision_check']!r}")
    if not values["collision_check"]:
        return None
    names = _names(values["scene_object_names"])
    unset = lambda key: [] if list(values[key]) in ([], [0.0]) and not names else values[key]  # noqa: E731
    packages = {}
    for entry in _names(values["collision_package_paths"]):
        package, sep, folder = entry.partition("=")
        if not sep or not package or not folder:
            raise ValueError(f"collision_package_paths entry {entry!r} must be NAME=FOLDER")
        packages[package] = folder
    scene = scene_objects_from_lists(names, _names(values["scene_object_shapes"]), unset("scene_object_sizes_m"),
                                     unset("scene_object_poses"), _names(values["scene_object_frames"]))
    return CollisionConfig(padding_m=values["collision_padding_m"],
                           max_link_travel_m=values["collision_max_link_travel_m"] or None,
                           coarse_padding_m=values["collision_coarse_padding_m"],
                           max_joint_step_rad=values["collision_max_joint_step_rad"],
                           srdf_path=values["srdf_path"], package_paths=packages, scene_objects=scene)


_ROS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")   # a ROS node / group / controller name (no namespace)


@dataclass(frozen=True)
class MoveItSettings:
    """The moveit backend's settings; validated here, at configure, before moveit_py is looked for."""

    group: str = ""
    node_name: str = "gem_moveit_py"
    config_file: str = ""
    controllers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field, value in (("moveit_group", self.group), ("moveit_node_name", self.node_name)):
            if not isinstance(value, str) or (value or field == "moveit_node_name") and not _ROS_NAME.fullmatch(value):
                raise ValueError(f"{field} must be a ROS name (a letter, then letters, digits, _), got {value!r}"
                                 + ("" if field == "moveit_node_name" else " ('' = the group with the arm's joints)"))
        if self.config_file and not Path(self.config_file).is_file():
            raise ValueError(f"moveit_config_file {self.config_file!r}: no such file")
        bad = [c for c in self.controllers if not isinstance(c, str) or not re.fullmatch(r"[A-Za-z][\w/]*", c)]
        if bad or len(set(self.controllers)) != len(self.controllers):
            raise ValueError(f"moveit_controllers must be unique controller names, got {list(self.controllers)}")


def moveit_settings(values: Mapping[str, Any]) -> MoveItSettings | None:
    """The moveit backend's settings (None for another backend); ValueError names the parameter. A moveit_*
    setting with another backend is refused: it would be silently ignored."""
    settings = MoveItSettings(group=values.get("moveit_group", ""),
                              node_name=values.get("moveit_node_name", "gem_moveit_py"),
                              config_file=values.get("moveit_config_file", ""),
                              controllers=tuple(_names(values.get("moveit_controllers", [""]))))
    if values.get("backend") == "moveit":
        return settings
    changed = [name for name, value, default in (
        ("moveit_group", settings.group, ""), ("moveit_node_name", settings.node_name, "gem_moveit_py"),
        ("moveit_config_file", settings.config_file, ""), ("moveit_controllers", settings.controllers, ()))
        if value != default]
    if changed:
        raise ValueError(f"{changed} set but backend is {values.get('backend')!r}: they apply to backend 'moveit' "
                         f"only (remove them or set backend: moveit)")
    return None


_WITHOUT_CHECKPOINT = {"action_space": "absolute_joint", "chunk_dt_s": 0.1,
                       "delta_reference": _default(ActionSpaceConfig, "delta_reference")}


def resolve_action_io(values: Mapping[str, Any]) -> dict[str, Any]:
    """action_space, chunk_dt_s and delta_reference: what the served checkpoint's config.json says (its `io`), so
    that an arm's YAML cannot disagree with the policy; a value set explicitly that differs raises ValueError saying
    what to change. Reads only the JSON (the executor never loads weights, nor torch)."""
    checkpoint = values.get("checkpoint", "")
    if not checkpoint:
        return {key: values[key] or default for key, default in _WITHOUT_CHECKPOINT.items()}
    path = Path(checkpoint) / "config.json"
    try:
        io = json.loads(path.read_text(encoding="utf-8"))["io"]
        served = {"action_space": io["action_space"], "chunk_dt_s": 1.0 / float(io["control_rate_hz"])}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as error:
        raise ValueError(f"checkpoint {path}: cannot read io.action_space / io.control_rate_hz "
                         f"({type(error).__name__}: {error})") from None
    if values["action_space"] and values["action_space"] != served["action_space"]:
        raise ValueError(f"gem_executor action_space is {values['action_space']!r} but the checkpoint {checkpoint} "
                         f"serves {served['action_space']!r} chunks: remove action_space from the executor's YAML "
                         f"(the checkpoint decides) or serve a checkpoint trained for {values['action_space']!r}")
    if values["chunk_dt_s"] and not math.isclose(values["chunk_dt_s"], served["chunk_dt_s"], rel_tol=1e-6):
        raise ValueError(f"gem_executor chunk_dt_s is {values['chunk_dt_s']} s but the checkpoint {checkpoint} "
                         f"acts at {1.0 / served['chunk_dt_s']:g} Hz ({served['chunk_dt_s']:g} s): remove chunk_dt_s "
                         f"from the executor's YAML (the checkpoint decides)")
    delta_default = "observation" if served["action_space"] == "delta_joint" else _WITHOUT_CHECKPOINT["delta_reference"]
    return {**served, "delta_reference": values["delta_reference"] or delta_default}


def build_controller(values: Mapping[str, Any]) -> ExecutionController:
    """Parameter values (PARAMETERS keys) -> a wired ExecutionController; ValueError names the bad setting."""
    values = {**values, **resolve_action_io(values)}
    moveit_settings(values)   # a bad moveit_* setting fails configure here, before any backend is built
    urdf = values["robot_description"] or values["urdf_path"]
    if not urdf:
        raise ValueError("one of the parameters urdf_path or robot_description is required (joint limits come from it; "
                         "gem_executor also reads the robot_description topic when both are empty)")
    joint_names, gripper = _names(values["joint_names"]), _names(values["gripper_joint_names"])
    arm = _names(values["action_joint_names"]) or [n for n in joint_names if n not in gripper]
    kind = values["action_space"]
    action = ActionSpaceConfig(
        kind=kind, joint_names=arm, gripper_joint_names=gripper,
        action_dim=(6 if kind == "ee_delta" else len(arm)) + (1 if gripper else 0),
        gripper_scale=values["gripper_scale"], gripper_offset=values["gripper_offset"],
        delta_reference=values["delta_reference"], ee_link=values["ee_link"] or None, ee_frame=values["ee_frame"])
    scheduler = ChunkSchedulerConfig(
        control_rate_hz=values["control_rate_hz"], chunk_dt_s=values["chunk_dt_s"], mode=values["chunk_mode"],
        blend_duration_s=values["blend_duration_s"], max_latency_s=values["max_latency_s"])
    acceleration = values["max_acceleration"]
    box = None
    if values["workspace_link"]:   # checked with forward kinematics at every chunk and trajectory point
        box = WorkspaceBox(link=values["workspace_link"], min_xyz_m=tuple(values["workspace_min_xyz_m"]),
                           max_xyz_m=tuple(values["workspace_max_xyz_m"]))
    safety = SafetyConfig(
        max_step_delta_rad=values["max_step_delta_rad"], max_step_delta_m=values["max_step_delta_m"],
        velocity_scale=values["velocity_scale"], on_violation=values["on_violation"],
        position_margin_rad=values["position_margin_rad"], position_margin_m=values["position_margin_m"],
        max_acceleration=None if acceleration == 0.0 else acceleration, workspace_box=box)
    execution = ExecutionConfig(
        joint_names=joint_names, control_rate_hz=values["control_rate_hz"], lookahead_s=values["lookahead_s"],
        joint_state_timeout_s=values["joint_state_timeout_s"], chunk_timeout_s=values["chunk_timeout_s"],
        policy_timeout_s=values["policy_timeout_s"],
        tracking_tolerance_rad=values["tracking_tolerance_rad"], tracking_tolerance_m=values["tracking_tolerance_m"],
        replan_on_chunk=values["replan_on_chunk"])
    model = RobotModel.from_urdf(urdf) if kind == "ee_delta" or box is not None else None
    hard_limits = load_urdf_limits(urdf)
    # Soft limits (<safety_controller>) bound chunks and trajectories; holds stay inside the hard ones (an arm
    # resting between the two is held where it is).
    limits = load_soft_urdf_limits(urdf) if values["prefer_soft_limits"] else hard_limits
    gripper_range = None
    if gripper:   # the tightest travel shared by all gripper joints, inside the safety margin
        margin = values["position_margin_m"]
        gripper_range = (max(limits[n].lower for n in gripper) + margin, min(limits[n].upper for n in gripper) - margin)
    collision = collision_config(values)
    checker = None
    if collision is not None:
        from gem_ros.core.safety.collision import CollisionChecker   # pinocchio only when collision_check is on
        checker = CollisionChecker(urdf, collision)
    states, notes = named_states(values, joint_names)
    controller = ExecutionController(execution, ActionMapper(action, model, gripper_range), ChunkScheduler(scheduler),
                                     SafetyFilter(limits, safety, model, hard_limits, checker),
                                     _names(values["action_channel_names"]) or None, states)
    controller.named_state_notes = notes
    return controller


def named_states(values: Mapping[str, Any], joint_names: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The SRDF's group states (when srdf_path is set) and the YAML's; a name in both is refused (which is home?).
    Returns (states, notes on SRDF states skipped). ValueError names the parameter."""
    states, notes = {}, []
    if values["srdf_path"]:
        states, notes = srdf_named_states(load_srdf(values["srdf_path"]), joint_names)
    yaml_states = named_states_from_lists(values["named_state_names"], values["named_state_positions"], joint_names)
    both = sorted(set(states) & set(yaml_states))
    if both:
        raise ValueError(f"named_state_names {both} are also group_states of the SRDF {values['srdf_path']}: "
                         "rename or remove one")
    return {**states, **yaml_states}, notes
