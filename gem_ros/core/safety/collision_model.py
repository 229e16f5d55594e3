"""Building the collision model the checker queries: the URDF's <collision> geometry (meshes resolved, as convex
hulls), the scene objects, and the pairs to check. Every problem refuses with a ValueError naming it.

Meshes become their convex hulls: the hull contains the mesh (a conservative margin, most collision meshes are
near-convex already) and convex pairs cost ~0.3 us each against ~50 us for mesh BVHs. Pairs never checked: two
bodies on one rigid part (their relative pose is fixed), a robot body fixed to the root link against a scene
object (both static), and the SRDF's <disable_collisions>. Without an SRDF: adjacent links (parent and child,
skipping links without geometry, as MoveIt's setup assistant) and pairs within the padding at the default pose
(every joint at 0, or its limit nearest 0: MoveIt's "Default" reason).
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import coal
import numpy as np
import pinocchio as pin

from gem_ros.core.kinematics.srdf import load_srdf
from gem_ros.core.kinematics.transforms import make_transform
from gem_ros.core.kinematics.urdf import UrdfDescription, parse_urdf
from gem_ros.core.safety.config import CollisionConfig, SceneObject


@dataclass
class CollisionModel:
    model: pin.Model
    geometry: pin.GeometryModel
    body_names: list[str]           # per geometry object: its link, or the scene object's name
    scene: frozenset[int]           # geometry indices of scene objects
    disabled: list[str]             # "a / b: why", for the log
    description: UrdfDescription


def read_urdf(source: str | os.PathLike) -> tuple[str, Path | None]:
    """(XML text, the file's folder or None): `source` is a path or the XML itself (robot_description)."""
    if isinstance(source, os.PathLike) or not str(source).lstrip().startswith("<"):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8"), path.resolve().parent
        except OSError as error:
            raise ValueError(f"cannot read URDF {path}: {error}") from None
    return str(source), None


def resolve_mesh(uri: str, urdf_dir: Path | None, package_paths) -> Path:
    """A mesh reference -> an existing file. package://NAME/REST: package_paths[NAME] (a folder, or
    python://MODULE/SUBFOLDER: inside an installed Python package), else a folder named NAME above the URDF (a ROS
    share/NAME tree), else NAME/ inside the URDF's folder (pybullet_data's layout), else an AMENT_PREFIX_PATH
    share/NAME. file:// and absolute paths as given; relative ones from the URDF's folder."""
    tried: list[Path] = []
    if uri.startswith("package://"):
        package, _, rest = uri[len("package://"):].partition("/")
        roots = [package_folder(package_paths[package])] if package in package_paths else []
        if urdf_dir is not None:
            roots += [p for p in (urdf_dir, *urdf_dir.parents) if p.name == package][:1] + [urdf_dir / package]
        roots += [Path(prefix) / "share" / package
                  for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if prefix]
        tried = [root / rest for root in roots]
    elif uri.startswith("file://"):
        tried = [Path(uri[len("file://"):])]
    else:
        tried = [Path(uri) if Path(uri).is_absolute() or urdf_dir is None else urdf_dir / uri]
    for path in tried:
        if path.is_file():
            return path.resolve()
    raise FileNotFoundError(f"looked in {[str(p) for p in tried] or 'no folder'}")


def package_folder(value: str) -> Path:
    """A package_paths value as a folder: a path, or python://MODULE/SUBFOLDER (no import: the module is found)."""
    if not value.startswith("python://"):
        return Path(value)
    module, _, sub = value[len("python://"):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package path {value!r}: no installed Python package {module!r}")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _resolved_collision_xml(xml: str, urdf_dir: Path | None, package_paths) -> str:
    """The URDF with every <collision> mesh made an absolute path; ValueError names each mesh not found."""
    root = ET.fromstring(xml)
    missing, packages = [], []
    for link in root.findall("link"):
        for mesh in link.findall("collision/geometry/mesh"):
            uri = mesh.get("filename", "")
            try:
                mesh.set("filename", str(resolve_mesh(uri, urdf_dir, package_paths)))
            except FileNotFoundError as error:
                missing.append(f"link '{link.get('name')}' mesh {uri!r} ({error})")
                package = uri[len("package://"):].partition("/")[0] if uri.startswith("package://") else ""
                if package and package not in packages:
                    packages.append(package)
    if missing:
        # A robot_description from another machine names its meshes by package: where is that package here?
        fix = (f"set gem_executor collision_package_paths to {[f'{name}=FOLDER' for name in packages]} (FOLDER: "
               f"the package's share folder, holding what follows package://NAME/), or run where the package is "
               f"installed (its share/NAME on AMENT_PREFIX_PATH)" if packages else "fix the mesh paths in the URDF")
        raise ValueError(f"collision meshes not found ({fix}; or collision_check false to run without collision "
                         f"checking): " + "; ".join(missing))
    return ET.tostring(root, encoding="unicode")


def _scene_geometry(obj: SceneObject) -> coal.CollisionGeometry:
    if obj.shape == "box":
        return coal.Box(*obj.size_m)
    if obj.shape == "cylinder":
        return coal.Cylinder(*obj.size_m)
    if obj.shape == "sphere":
        return coal.Sphere(*obj.size_m)
    return coal.Halfspace(np.array([0.0, 0.0, 1.0]), 0.0)   # solid below the pose's xy plane


def default_positions(model: pin.Model) -> np.ndarray:
    """One value per joint (model order, universe excluded): 0, or the limit nearest to it."""
    values = []
    for j in range(1, model.njoints):
        i = model.joints[j].idx_q
        lower, upper = model.lowerPositionLimit[i], model.upperPositionLimit[i]
        values.append(float(np.clip(0.0, lower, upper)) if model.joints[j].nq == 1 else 0.0)
    return np.array(values)


def joint_values_to_q(model: pin.Model, values: np.ndarray) -> np.ndarray:
    """(M, J) joint values (rad / m) -> (nq, M) pinocchio configurations (continuous joints take cos, sin)."""
    q = np.empty((model.nq, values.shape[0]))
    for k, j in enumerate(range(1, model.njoints)):
        i = model.joints[j].idx_q
        if model.joints[j].nq == 1:
            q[i] = values[:, k]
        else:
            q[i], q[i + 1] = np.cos(values[:, k]), np.sin(values[:, k])
    return q


def build_collision_model(urdf: str | os.PathLike, cfg: CollisionConfig) -> CollisionModel:
    xml, urdf_dir = read_urdf(urdf)
    description = parse_urdf(xml)
    xml = _resolved_collision_xml(xml, urdf_dir, cfg.package_paths)
    try:
        model = pin.buildModelFromXML(xml)
        geometry = pin.buildGeomFromUrdfString(model, xml, pin.GeometryType.COLLISION)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"pinocchio cannot load the URDF's collision model: {error}") from None
    odd = [model.names[j] for j in range(1, model.njoints) if model.joints[j].nv != 1]
    if odd:
        raise ValueError(f"collision checking supports 1-DoF joints only; the URDF has {odd}")
    for obj in geometry.geometryObjects:   # meshes -> convex hulls (see the module docstring)
        if isinstance(obj.geometry, coal.BVHModelBase):
            obj.geometry.buildConvexRepresentation(False)
            obj.geometry = obj.geometry.convex
    body_names = [model.frames[g.parentFrame].name for g in geometry.geometryObjects]
    robot = len(body_names)
    if not any(g.parentJoint for g in geometry.geometryObjects):   # a check that could never refuse anything
        raise ValueError("the URDF has no <collision> geometry on a moving link: nothing to check (use the robot's "
                         "full description, or collision_check false)")
    links = set(description.links)
    for obj in cfg.scene_objects:
        frame = obj.frame or description.root_link
        if frame not in links or not model.existFrame(frame):
            raise ValueError(f"scene object '{obj.name}': frame '{frame}' is not a link of the URDF")
        placed_on = model.frames[model.getFrameId(frame)]
        if placed_on.parentJoint != 0:
            raise ValueError(f"scene object '{obj.name}': frame '{frame}' moves with joint "
                             f"'{model.names[placed_on.parentJoint]}'; scene objects are static (use a link fixed "
                             f"to '{description.root_link}')")
        if obj.name in links:
            raise ValueError(f"scene object '{obj.name}' has the name of a robot link: pairs would be ambiguous")
        pose = make_transform(obj.pose_xyz_rpy[:3], obj.pose_xyz_rpy[3:])
        placement = placed_on.placement * pin.SE3(pose[:3, :3], pose[:3, 3])
        geometry.addGeometryObject(pin.GeometryObject(obj.name, 0, model.getFrameId(frame), placement,
                                                      _scene_geometry(obj)))
        body_names.append(obj.name)
    scene = frozenset(range(robot, len(body_names)))
    disabled = _add_pairs(model, geometry, body_names, robot, description, cfg)
    return CollisionModel(model, geometry, body_names, scene, disabled, description)


def _add_pairs(model, geometry, body_names, robot: int, description, cfg: CollisionConfig) -> list[str]:
    """Add the checked pairs to `geometry`; returns the self pairs left out and why (scene pairs are all kept but
    those with static robot bodies)."""
    objects = geometry.geometryObjects
    joint_of = [g.parentJoint for g in objects]
    disabled: list[str] = []
    candidates = []
    for a, b in itertools.combinations(range(robot), 2):
        if joint_of[a] != joint_of[b] and body_names[a] != body_names[b]:
            candidates.append((a, b))
    if cfg.srdf_path:
        try:
            srdf = load_srdf(cfg.srdf_path)
        except OSError as error:
            raise ValueError(f"cannot read SRDF {cfg.srdf_path}: {error}") from None
        srdf.check_names([j.name for j in description.joints], description.links)
        for a, b in list(candidates):
            if srdf.is_collision_disabled(body_names[a], body_names[b]):
                candidates.remove((a, b))
                disabled.append(f"{body_names[a]} / {body_names[b]}: SRDF")
    else:
        adjacent = _adjacent_links(description, set(body_names[:robot]))
        for a, b in list(candidates):
            if frozenset((body_names[a], body_names[b])) in adjacent:
                candidates.remove((a, b))
                disabled.append(f"{body_names[a]} / {body_names[b]}: adjacent")
        candidates, touching = _apart_at_default(model, geometry, candidates, cfg.padding_m)
        disabled += [f"{body_names[a]} / {body_names[b]}: within {cfg.padding_m} m at the default pose"
                     for a, b in touching]
    for a, b in candidates:
        geometry.addCollisionPair(pin.CollisionPair(a, b))
    for a, s in itertools.product(range(robot), range(robot, len(objects))):
        if joint_of[a] != 0:
            geometry.addCollisionPair(pin.CollisionPair(a, s))
    return disabled


def _adjacent_links(description: UrdfDescription, with_geometry: set[str]) -> set[frozenset[str]]:
    """Each link with geometry and its nearest ancestor with geometry."""
    parent = {j.child: j.parent for j in description.joints}
    adjacent = set()
    for link in with_geometry:
        up = parent.get(link)
        while up is not None and up not in with_geometry:
            up = parent.get(up)
        if up is not None:
            adjacent.add(frozenset((link, up)))
    return adjacent


def _apart_at_default(model, geometry, candidates, padding_m: float):
    """Split `candidates` into those farther than the padding at the default pose and those within it."""
    data, geometry_data = model.createData(), pin.GeometryData(geometry)
    q = joint_values_to_q(model, default_positions(model)[None, :])[:, 0]
    pin.updateGeometryPlacements(model, data, geometry, geometry_data, q)
    apart, touching = [], []
    for a, b in candidates:
        request, result = coal.DistanceRequest(), coal.DistanceResult()
        distance = coal.distance(geometry.geometryObjects[a].geometry, geometry_data.oMg[a],
                                 geometry.geometryObjects[b].geometry, geometry_data.oMg[b], request, result)
        (touching if distance < padding_m else apart).append((a, b))
    return apart, touching


def is_prismatic(model: pin.Model, joint: int) -> bool:
    return model.joints[joint].shortname().startswith(("JointModelPX", "JointModelPY", "JointModelPZ",
                                                        "JointModelPrismatic"))


def lever_arms(model: pin.Model, geometry: pin.GeometryModel, robot_bodies: int) -> np.ndarray:
    """Per joint (model order): how far a robot surface point can move per unit of the joint's motion, in any
    configuration. Revolute: the farthest downstream geometry point from the joint origin (chain lengths plus the
    geometry's bounding radius); prismatic: 1."""
    levers = np.zeros(model.njoints - 1)
    reach = []   # per robot geometry: (joint, radius about that joint's origin)
    for g in list(geometry.geometryObjects)[:robot_bodies]:
        g.geometry.computeLocalAABB()
        centre = g.placement.translation + g.placement.rotation @ np.asarray(g.geometry.aabb_center)
        reach.append((g.parentJoint, float(np.linalg.norm(centre)) + float(g.geometry.aabb_radius)))
    for j in range(1, model.njoints):
        if is_prismatic(model, j):
            levers[j - 1] = 1.0
            continue
        longest = 0.0
        for joint, radius in reach:
            length, k = radius, joint
            while k not in (j, 0):
                length += float(np.linalg.norm(model.jointPlacements[k].translation))
                k = model.parents[k]
            if k == j:
                longest = max(longest, length)
        levers[j - 1] = longest
    if not np.all(np.isfinite(levers)):
        raise ValueError(f"collision geometry has non-finite extent: lever arms {levers}")
    return levers


def describe_pair(a: str, b: str, scene: bool) -> str:
    return f"'{a}' and scene object '{b}'" if scene else f"'{a}' and '{b}'"


