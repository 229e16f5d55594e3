"""package.xml dependencies against what the code imports, so `rosdep install --from-paths src` brings them all.

Every ROS package gem_ros/ and gem_train/ import is an exec_depend of gem_ros (ros/gem_ros/package.xml), every
third-party module either has its rosdep key there or is pip-only (PIP_ONLY, with the reason), and every one of
them is a pip requirement in pyproject.toml. gem_bringup's launch files and gem_msgs' interfaces likewise.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]

# ROS packages whose Python module name has none of the suffixes in is_ros_module().
ROS_PYTHON_PACKAGES = {"rclpy", "ament_index_python", "cv_bridge", "launch", "launch_ros", "launch_testing",
                       "tf2_ros", "message_filters", "rosbag2_py", "moveit", "ros2cli", "rosidl_runtime_py"}
# Module -> rosdep key (ros/rosdistro rosdep/python.yaml); apt provides them on a robot PC.
ROSDEP_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "cv2": "python3-opencv", "PIL": "python3-pil",
               "matplotlib": "python3-matplotlib", "tqdm": "python3-tqdm"}
# Modules that only pip provides (pyproject.toml), never rosdep: the reason for each.
PIP_ONLY = {
    "torch": "pinned ML stack: apt's python3-torch is another version and rosdep has no key for this one",
    "transformers": "pinned to ==5.23.0; rosdep's python3-transformers-pip would be unpinned",
    "diffusers": "ML stack, no rosdep key",
    "accelerate": "ML stack, no rosdep key",
    "safetensors": "ML stack, no rosdep key",
    "tokenizers": "ML stack, installed with transformers",
    "rosbags": "pinned >=0.11,<0.12 (the recorder uses its writer internals), no rosdep key",
    "pybullet": "embedded simulator; rosdep has only the pip key python3-pybullet-pip",
    "pybullet_data": "ships inside the pybullet wheel",
    "h5py": "[train] extra: training needs the pip ML stack anyway",
    "pandas": "[train] extra: training needs the pip ML stack anyway",
    "pinocchio": "collision checking; the PyPI wheel `pin` bundles coal (apt's ros-<distro>-pinocchio is not a rosdep "
                 "key for Python users of the venv)",
    "coal": "installed with `pin` (collision geometry)",
}
# ROS imports that only an opt-in feature needs, so no exec_depend: the reason for each.
OPTIONAL_ROS = {
    "moveit": "moveit_py (apt ros-$ROS_DISTRO-moveit-py), imported only by backend 'moveit'; the moveit metapackage "
              "lacks it and Humble has no key for it: a hard dependency would pull all of MoveIt for an option",
}
# Distribution names that differ from the module name.
PIP_DISTRIBUTIONS = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml",
                     "pybullet_data": "pybullet", "pinocchio": "pin", "coal": "pin"}
# ROS packages needed at run time without a direct import: exec_depend -> the import that needs it.
IMPLIED = {"action_msgs": "rclpy.action", "lifecycle_msgs": "rclpy.lifecycle"}


def is_ros_module(name: str) -> bool:
    return name in ROS_PYTHON_PACKAGES or name.endswith(("_msgs", "_srvs", "_interfaces"))


def imports(folders, pattern="*.py") -> dict[str, set[str]]:
    """Absolute imports (dotted names) of every file under `folders` -> the files importing them."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob(pattern)):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def third_party(found: dict[str, set[str]], own=("gem_ros", "gem_train")) -> dict[str, set[str]]:
    """Top-level modules that are neither the standard library nor our own packages."""
    top: dict[str, set[str]] = {}
    for name, files in found.items():
        module = name.split(".")[0]
        if module not in sys.stdlib_module_names and module not in own and module != "__future__":
            top.setdefault(module, set()).update(files)
    return top


def runtime_deps(manifest: Path) -> set[str]:
    root = ET.parse(manifest).getroot()
    return {d.text for tag in ("depend", "exec_depend") for d in root.findall(tag)}


def pip_requirements() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values()
                                                 for r in extra)]
    return {Requirement(r).name.lower().replace("_", "-") for r in requirements}


GEM_ROS_MODULES = third_party(imports(["gem_ros", "gem_train"]))
GEM_ROS_DEPS = runtime_deps(REPO / "ros/gem_ros/package.xml")


def test_scan_sees_the_code():
    assert {"rclpy", "numpy", "torch", "gem_msgs"} <= set(GEM_ROS_MODULES)  # the walk really read the packages


def test_every_ros_import_is_an_exec_depend():
    missing = {m: sorted(files)[0] for m, files in GEM_ROS_MODULES.items() if is_ros_module(m)
               and m not in GEM_ROS_DEPS and m not in OPTIONAL_ROS}
    assert not missing, f"add <exec_depend> to ros/gem_ros/package.xml for (module: first importer) {missing}"


def test_every_python_module_has_a_rosdep_key_or_is_pip_only():
    unknown = {m: sorted(files)[0] for m, files in GEM_ROS_MODULES.items()
               if not is_ros_module(m) and m not in ROSDEP_KEYS and m not in PIP_ONLY}
    assert not unknown, (f"new third-party imports {unknown}: add the rosdep key to ros/gem_ros/package.xml and "
                         f"ROSDEP_KEYS, or list the module in PIP_ONLY with the reason")
    missing = {m: ROSDEP_KEYS[m] for m in GEM_ROS_MODULES if m in ROSDEP_KEYS and ROSDEP_KEYS[m] not in GEM_ROS_DEPS}
    assert not missing, f"add these <exec_depend> (module: rosdep key) to ros/gem_ros/package.xml: {missing}"
    assert not set(PIP_ONLY) & set(ROSDEP_KEYS)


def test_every_python_module_is_a_pip_requirement():
    requirements = pip_requirements()
    missing = {m: PIP_DISTRIBUTIONS.get(m, m) for m in GEM_ROS_MODULES if not is_ros_module(m)
               and PIP_DISTRIBUTIONS.get(m, m).lower().replace("_", "-") not in requirements}
    assert not missing, f"add to pyproject.toml dependencies or an extra (module: distribution): {missing}"


def test_no_stale_dependency():
    """Each exec_depend is imported (or implied by an import), so the list stays a list of real needs."""
    imported = set(GEM_ROS_MODULES) | {"gem_msgs"}
    stale = {d for d in GEM_ROS_DEPS if not d.startswith("python3-") and d not in imported and d not in IMPLIED}
    stale |= {d for d in GEM_ROS_DEPS if d.startswith("python3-") and d not in
              {ROSDEP_KEYS[m] for m in GEM_ROS_MODULES if m in ROSDEP_KEYS}}
    assert not stale, f"ros/gem_ros/package.xml depends on {stale}, which nothing imports"
    all_imports = imports(["gem_ros", "gem_train"])
    for dep, needed_by in IMPLIED.items():
        assert needed_by in all_imports and dep in GEM_ROS_DEPS, (dep, needed_by)


def launch_node_packages(folder: Path) -> set[str]:
    """package="..." of every Node / LifecycleNode / ComposableNode in the launch files."""
    packages = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                packages |= {k.value.value for k in node.keywords if k.arg == "package"
                             and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)}
    return packages


def test_gem_bringup_launch_dependencies():
    deps = runtime_deps(REPO / "gem_bringup/package.xml")
    modules = third_party(imports(["gem_bringup"]), own=())
    needed = {m for m in modules if is_ros_module(m) or m == "gem_ros"} | launch_node_packages(REPO / "gem_bringup")
    needed |= {ROSDEP_KEYS[m] for m in modules if m in ROSDEP_KEYS}
    assert {"launch", "launch_ros", "gem_ros"} <= needed  # the scan read the launch file
    unknown = {m for m in modules if not is_ros_module(m) and m != "gem_ros" and m not in ROSDEP_KEYS}
    assert not unknown, f"gem_bringup imports {unknown}: declare their rosdep keys"
    assert not needed - deps, f"add <exec_depend> to gem_bringup/package.xml: {sorted(needed - deps)}"


def test_gem_msgs_depends_on_every_interface_package_it_uses():
    root = ET.parse(REPO / "gem_msgs/package.xml").getroot()
    both = {d.text for d in root.findall("depend")}
    build = both | {d.text for d in root.findall("build_depend")}
    run = both | {d.text for d in root.findall("exec_depend")}
    used = set()
    for path in (REPO / "gem_msgs").glob("*/*"):
        if path.suffix in (".msg", ".srv", ".action"):
            used |= set(re.findall(r"^\s*([a-z]\w*)/\w+", path.read_text(), flags=re.MULTILINE))
            if path.suffix == ".action":
                used.add("action_msgs")  # GoalInfo / GoalStatus of the generated action types
    assert {"builtin_interfaces", "std_msgs"} <= used  # the scan read the files
    assert not used - build and not used - run, f"gem_msgs/package.xml: add <depend> {sorted(used - (build & run))}"

