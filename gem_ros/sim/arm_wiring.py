"""Point an arm's gem_bringup configuration at the embedded simulator: what changes, and why (no ROS).

A real arm's YAML names the vendor's controller, joints, gripper and cameras. gem_sim loads a model with the
same joint names (gem_ros/sim/arms.py) and listens on `<controller_name>/joint_trajectory`, so the chain runs
with the arm's own names, limits and safety settings; only what the simulator cannot offer is replaced: the
FollowJointTrajectory action (gem_sim speaks JTC's topic interface), a vendor gripper the model lacks, the
cameras (gem_sim renders `scene` and `wrist` on camera/<name>/image_raw) and the URDF (the model's). Every
change is listed in `notes`, so a dry run says what it did not test.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gem_ros.sim.arms import SimArm, package_root, sim_arm, urdf_path
from gem_ros.sim.scene import default_cameras

SUCCESS_TOPIC = "gem/task_success"   # relative, as gem_sim publishes it
# The models' own SRDFs, for collision checking on the model's URDF. example-robot-data's xarm7.srdf is left out:
# its group_state "home" is not the sim's episode-start home, which gem_demo resets to under that name.
MODEL_SRDFS = {"ur5e": "ur_description/srdf/ur5.srdf"}


@dataclass
class SimWiring:
    arm: SimArm
    task: bool                                   # the pick task can run (the model has the Panda's gripper)
    sim: dict[str, Any] = field(default_factory=dict)        # gem_sim parameter overrides
    policy: dict[str, Any] = field(default_factory=dict)     # gem_policy
    executor: dict[str, Any] = field(default_factory=dict)   # gem_executor
    notes: list[str] = field(default_factory=list)           # what the sim replaces, for the user


def read_sections(yaml_path: Path) -> dict[str, dict[str, Any]]:
    """node name -> its ros__parameters, from a standard ROS 2 parameter file; ValueError names the file."""
    try:
        data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        return {node.lstrip("/"): dict((section or {}).get("ros__parameters", {})) for node, section in data.items()}
    except (OSError, yaml.YAMLError, AttributeError) as error:
        raise ValueError(f"{yaml_path}: not a ROS 2 parameter file ({type(error).__name__}: {error})") from None


def _names(values) -> list[str]:
    return [n for n in (values or []) if n]


def sim_wiring(sections: Mapping[str, Mapping[str, Any]], source: str = "the arm's YAML") -> SimWiring:
    """Overrides that run `sections` (read_sections of an arm's gem.yaml) on its simulation model.

    ValueError when the arm has no model, or when the YAML's arm joints are not the model's."""
    model = sim_arm(sections.get("gem_sim", {}).get("arm", "panda"))
    executor = sections.get("gem_executor", {})
    gripper = _names(executor.get("gripper_joint_names"))
    joints = _names(executor.get("joint_names"))
    action = _names(executor.get("action_joint_names")) or [n for n in joints if n not in gripper]
    if list(model.arm_joints) != action:
        raise ValueError(f"{source}: gem_executor arm joints {action} are not those of the simulation model "
                         f"{model.name!r} {list(model.arm_joints)}")
    wiring = SimWiring(model, task=False)
    notes = wiring.notes
    if model.note:
        notes.append(f"model: {model.note}")
    controller = executor.get("controller_name", "arm_controller")
    wiring.sim["controller_name"] = controller
    backend = executor.get("backend", "topic")
    if backend != "topic":
        notes.append(f"backend {backend} -> topic: gem_sim takes trajectories on {controller}/joint_trajectory "
                     f"only (the controller's action is not simulated)")
    kept = gripper if gripper and set(gripper) == set(model.finger_joints) else []
    if gripper and not kept:
        notes.append(f"gripper {gripper} ({executor.get('gripper_backend', 'arm')}) left out: the model has "
                     f"{list(model.finger_joints) or 'no gripper'}")
    elif kept and executor.get("gripper_backend", "arm") != "arm":
        notes.append(f"gripper_backend {executor.get('gripper_backend')} -> arm: gem_sim moves the fingers "
                     f"with the arm's trajectory")
    wiring.task = bool(kept) and model.has_gripper
    wiring.executor.update(
        backend="topic", gripper_backend="arm", joint_names=action + kept, action_joint_names=action,
        gripper_joint_names=kept or [""], urdf_path=str(urdf_path(model)))
    if executor.get("collision_check", False) and model.package != "pybullet_data":
        srdf = str(package_root(model.package) / MODEL_SRDFS[model.name]) if model.name in MODEL_SRDFS else ""
        wiring.executor.update(srdf_path=srdf, collision_package_paths=[""])   # the model's meshes are files here
        notes.append("collision checking on the model's URDF with " + (f"its SRDF {srdf}" if srdf else
                     "no SRDF (adjacent and default-pose pairs exempt)"))
    cameras = [c.name for c in default_cameras(model.wrist_link)]
    topics = [f"camera/{name}/image_raw" for name in cameras]
    policy = sections.get("gem_policy", {})
    if list(policy.get("camera_topics", [])) != topics:
        notes.append(f"cameras {list(policy.get('camera_topics', []))} -> gem_sim's {topics}")
    wiring.policy.update(camera_names=cameras, camera_topics=topics, camera_transports=["raw"] * len(cameras),
                         joint_state_topic="joint_states", state_joint_names=action + kept,
                         success_topic=SUCCESS_TOPIC if wiring.task else "")
    if not wiring.task:
        notes.append("dry run: no task success is measured (goals end at their timeout)")
    return wiring
