"""A clone in a standard ROS 2 workspace (ws/src/<clone>): colcon and rosdep find and build all three packages.

Both crawl src/ and stop descending at the first package they meet, so the repository root must not be one
(test_packaging.test_root_is_not_a_package). colcon and rosdep come with the dev extra; the full build also
needs the ament_cmake/rosidl toolchain (apt ROS, or the build wheels gem_msgs/pyproject.toml lists).
"""
from __future__ import annotations

import os
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {  # name -> (path in the workspace, colcon type)
    "gem_ros": ("src/gem_ros/ros/gem_ros", "ros.ament_python"),
    "gem_msgs": ("src/gem_ros/gem_msgs", "ros.ament_cmake"),
    "gem_bringup": ("src/gem_ros/gem_bringup", "ros.ament_cmake"),
}
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """ws/ with src/gem_ros holding what `git clone` of this checkout would (tracked and new, not ignored)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout, so there is no clone to copy: {error}")
    ws = tmp_path_factory.mktemp("ws")
    clone = ws / "src" / "gem_ros"
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, clone / name
        if not os.path.lexists(source):  # deleted in the work tree, not yet committed
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))  # ros/gem_ros/gem_ros -> ../../gem_ros stays relative
        else:
            shutil.copy2(source, target)
    return ws


NOT_INSTALLED = "is not installed (the dev extra brings colcon-common-extensions and rosdep)"


def tool(name: str) -> str:
    """The executable next to this interpreter (the venv) or on PATH; skip the test when it is absent."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} {NOT_INSTALLED}")
    return found


def run(command: list[str], cwd: Path, timeout: float, **env: str) -> str:
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **env}
    result = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} -> {result.returncode}\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result.stdout


def colcon(workspace: Path, *args: str, timeout: float = 60, **env: str) -> str:
    """`python -m colcon`, as README says for a venv: the console scripts then start this interpreter."""
    if importlib.util.find_spec("colcon_core") is None:
        pytest.skip(f"colcon {NOT_INSTALLED}")
    # COLCON_HOME: no user defaults (~/.colcon) change what is tested.
    return run([sys.executable, "-m", "colcon", "--log-base", "log", *args], workspace, timeout,
               COLCON_HOME=str(workspace / ".colcon_home"), **env)


def in_workspace_env(workspace: Path, install: str, code: str) -> str:
    """Run Python `code` after sourcing the workspace's install/local_setup.sh, as a ROS user's shell would."""
    script = f'. "{install}/local_setup.sh" && exec "{sys.executable}" -c "$0"'
    return run(["sh", "-c", script, code], workspace, 120)


def test_rosdep_crawl_finds_every_package(workspace):
    """`rosdep install --from-paths src` crawls with catkin_pkg, which also stops at the first package.xml."""
    from catkin_pkg.packages import find_packages

    found = {package.name: f"src/{path}" for path, package in find_packages(str(workspace / "src")).items()}
    assert found == {name: path for name, (path, _) in PACKAGES.items()}


def test_colcon_list_finds_every_package(workspace):
    rows = [line.split("\t") for line in colcon(workspace, "list").splitlines()]
    assert {name: (path, kind.strip("()")) for name, path, kind in rows} == PACKAGES
    assert colcon(workspace, "list", "--topological-order", "--names-only").split() == [
        "gem_msgs", "gem_ros", "gem_bringup"]


@pytest.mark.parametrize("symlink", [False, True], ids=["copy", "symlink_install"])
def test_colcon_builds_gem_ros(workspace, symlink):
    """The ament_python package alone (gem_msgs/gem_bringup need the ament_cmake toolchain, tested below)."""
    mode = "symlink" if symlink else "copy"
    install = f"install_{mode}"
    colcon(workspace, "build", "--build-base", f"build_{mode}", "--install-base", install,
           "--packages-ignore", "gem_msgs", "gem_bringup", *(["--symlink-install"] if symlink else []),
           timeout=300)
    prefix = workspace / install / "gem_ros"
    for script in SCRIPTS:  # where `ros2 run gem_ros <exe>` looks, started by this (the venv's) interpreter
        path = prefix / "lib" / "gem_ros" / script
        assert os.access(path, os.X_OK) and path.read_text().startswith(f"#!{sys.executable}\n"), script
    share = prefix / "share"
    assert (share / "ament_index/resource_index/packages/gem_ros").is_file()
    for file in ("package.xml", "urdf/panda/panda.urdf", "config/fastdds_localhost.xml"):
        assert (share / "gem_ros" / file).is_file(), file
    imported = in_workspace_env(workspace, install, "import gem_ros, gem_train; from pathlib import Path; "
                                "print(Path(gem_ros.__file__).parent); print(Path(gem_train.__file__).parent)")
    package_dirs = [Path(line) for line in imported.splitlines()]
    # From this workspace, not from a pip install of the checkout the test runs in.
    assert all(workspace in p.parents for p in package_dirs), package_dirs
    assert (package_dirs[1] / "configs" / "sim_pick_tiny.yaml").is_file()


def ament_toolchain_missing() -> str | None:
    """Why the ament_cmake packages cannot be built here, or None."""
    prefixes = [*filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)), sys.prefix]
    for package in ("ament_cmake", "rosidl_default_generators"):
        if not any((Path(p) / "share" / package / "cmake").is_dir() for p in prefixes):
            return (f"{package} is not installed (apt ROS, or pip install the build wheels of "
                    f"gem_msgs/pyproject.toml [build-system] requires)")
    for program in ("cmake", "c++"):
        if shutil.which(program) is None:
            return f"{program} is not installed"
    return None


@pytest.mark.slow
def test_colcon_builds_the_workspace(workspace):
    """README's `colcon build --symlink-install` of all three, then what a sourced shell finds (1-2 min)."""
    if reason := ament_toolchain_missing():
        pytest.skip(reason)
    env = {} if os.environ.get("AMENT_PREFIX_PATH") else {"AMENT_PREFIX_PATH": sys.prefix}  # pip-only ROS
    colcon(workspace, "build", "--symlink-install", timeout=900, **env)
    found = in_workspace_env(workspace, "install", "\n".join([
        "from ament_index_python.packages import get_package_share_directory as share",
        "import gem_msgs, gem_ros",
        "from gem_msgs.msg import ActionChunk",
        "print(gem_msgs.__file__); print(gem_ros.__file__)",
        "for name in ('gem_ros', 'gem_msgs', 'gem_bringup'): print(share(name))",
    ])).splitlines()
    assert all(workspace in Path(line).parents for line in found), found
    bringup = Path(found[-1])
    assert (bringup / "launch" / "gem.launch.py").is_file() and (bringup / "config" / "panda" / "gem.yaml").is_file()


def test_rosdep_keys_cover_all_three_packages(workspace, tmp_path):
    """`rosdep keys --from-paths src --ignore-src`: every dependency of the three, none of them as a key.

    Offline: an empty sources cache stands in for `rosdep init && rosdep update`, which `keys` does not need.
    """
    rosdep = tool("rosdep")
    (tmp_path / "rosdep" / "sources.cache").mkdir(parents=True)
    (tmp_path / "rosdep" / "sources.cache" / "index").touch()
    keys = run([rosdep, "keys", "--from-paths", "src", "--ignore-src"], workspace, 120, ROS_HOME=str(tmp_path),
               ROS_DISTRO=os.environ.get("ROS_DISTRO", "kilted"), ROS_PYTHON_VERSION="3").split()
    declared = set()
    for path, _ in PACKAGES.values():
        root = ET.parse(workspace / path / "package.xml").getroot()
        declared |= {d.text for d in root if d.tag.endswith("depend")}
    assert set(keys) == declared - set(PACKAGES)
    assert {"rclpy", "python3-numpy", "rosidl_default_generators", "launch_ros"} <= set(keys)
