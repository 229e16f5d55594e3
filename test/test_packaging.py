"""Package manifests and install layout: what colcon, pip and ament_index rely on."""
from __future__ import annotations

import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = {"gem_ros": REPO / "package.xml", "gem_msgs": REPO / "gem_msgs" / "package.xml",
             "gem_bringup": REPO / "gem_bringup" / "package.xml"}
BUILD_TYPES = {"gem_ros": "ament_python", "gem_msgs": "ament_cmake", "gem_bringup": "ament_cmake"}


def read_manifest(path: Path) -> dict:
    """name, format, build_type, maintainer e-mails and dependencies by tag; validated by catkin_pkg when present."""
    root = ET.parse(path).getroot()
    manifest = {
        "name": root.findtext("name"), "format": root.get("format"),
        "build_type": root.findtext("export/build_type"),
        "emails": [m.get("email") for m in root.findall("maintainer")],
        "groups": [g.text for g in root.findall("member_of_group")],
        "deps": {tag: {d.text for d in root.findall(tag)} for tag in
                 ("depend", "exec_depend", "build_depend", "buildtool_depend")},
    }
    try:
        from catkin_pkg.package import parse_package
    except ImportError:
        return manifest
    package = parse_package(str(path))  # raises InvalidPackage on schema or e-mail problems
    package.validate()
    assert (package.name, str(package.package_format)) == (manifest["name"], manifest["format"])
    return manifest


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest(name):
    manifest = read_manifest(MANIFESTS[name])
    assert manifest["name"] == name and manifest["format"] == "3"
    assert manifest["build_type"] == BUILD_TYPES[name]
    assert manifest["emails"] and all(re.fullmatch(r"[\w.+-]+@[\w-]+(\.[\w-]+)*\.[a-z]{2,}", e)
                                      for e in manifest["emails"])


def test_gem_ros_runtime_dependencies():
    deps = read_manifest(MANIFESTS["gem_ros"])["deps"]
    runtime = deps["exec_depend"] | deps["depend"]
    assert {"rclpy", "sensor_msgs", "trajectory_msgs", "std_msgs", "std_srvs", "diagnostic_msgs",
            "action_msgs", "lifecycle_msgs", "gem_msgs"} <= runtime


def test_gem_msgs_builds_every_interface_file():
    manifest = read_manifest(MANIFESTS["gem_msgs"])
    assert "rosidl_interface_packages" in manifest["groups"]
    assert {"ament_cmake", "rosidl_default_generators"} <= manifest["deps"]["buildtool_depend"]
    cmake = (REPO / "gem_msgs" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r'"((?:msg|srv|action)/\w+\.(?:msg|srv|action))"', cmake))
    on_disk = {str(p.relative_to(REPO / "gem_msgs")) for p in (REPO / "gem_msgs").glob("*/*")
               if p.suffix in (".msg", ".srv", ".action")}
    assert listed == on_disk  # a new file that is not listed would silently not be generated
    assert {"msg/ActionChunk.msg", "msg/PolicyStatus.msg", "srv/SetInstruction.srv",
            "action/ExecuteInstruction.action"} <= on_disk


@pytest.fixture(scope="module")
def distribution():
    """setup.py evaluated without building anything."""
    pytest.importorskip("setuptools")
    from distutils.core import run_setup  # setuptools' copy on Python >= 3.12

    cwd = os.getcwd()
    os.chdir(REPO)  # data_files paths are relative to the project root, as during a build
    try:
        return run_setup(str(REPO / "setup.py"), stop_after="init")
    finally:
        os.chdir(cwd)


def test_setup_data_files(distribution):
    data_files = dict(distribution.data_files)
    assert data_files["share/ament_index/resource_index/packages"] == ["resource/gem_ros"]
    assert "package.xml" in data_files["share/gem_ros"]
    assert "config/fastdds_localhost.xml" in data_files["share/gem_ros/config"]
    for destination, files in data_files.items():
        assert destination.startswith("share/")
        for file in files:
            assert (REPO / file).is_file(), file
            assert not file.endswith(".gitkeep")


def test_setup_packages_requirements_and_scripts(distribution):
    from packaging.requirements import Requirement

    assert "gem_ros" in distribution.packages
    assert all(p.split(".")[0] in ("gem_ros", "gem_train") for p in distribution.packages)
    requirements = {r.name: r for r in map(Requirement, distribution.install_requires)}
    assert requirements["torch"].specifier.contains("2.13.0") and requirements["torch"].specifier
    assert str(requirements["transformers"].specifier) == "==5.23.0"
    assert not [name for name in requirements if name.startswith("ros-")]  # would shadow apt ROS
    assert {"train", "dev"} <= set(distribution.extras_require)
    for script in distribution.entry_points["console_scripts"]:
        assert re.fullmatch(r"gem_[a-z_]+ = [\w.]+:\w+", script), f"executables are gem_<verb>: {script}"


def test_fastdds_profile():
    root = ET.parse(REPO / "config" / "fastdds_localhost.xml").getroot()
    ns = {"dds": "http://www.eprosima.com"}
    segment = root.find(".//dds:transport_descriptor[dds:type='SHM']/dds:segment_size", ns)
    assert int(segment.text) >= 16 * 2**20
    udp_allow = root.findall(".//dds:transport_descriptor[dds:type='UDPv4']//dds:allowlist/dds:interface", ns)
    assert [i.get("name") for i in udp_allow] == ["127.0.0.1"]
    assert root.findtext(".//dds:participant//dds:useBuiltinTransports", namespaces=ns) == "false"


def test_installed_share_matches_data_files(distribution, monkeypatch):
    """After scripts/setup.sh (editable: symlinks) or colcon: every data file is where ament_index looks."""
    pytest.importorskip("gem_msgs.msg", reason="gem_msgs is not installed: run scripts/setup.sh")
    index = pytest.importorskip("ament_index_python.packages")
    if not os.environ.get("AMENT_PREFIX_PATH"):  # venvs do not set it; a sourced ROS install does
        monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)
    try:
        share = Path(index.get_package_share_directory("gem_ros"))
    except index.PackageNotFoundError:
        pytest.skip("gem_ros is not installed in this environment: run scripts/setup.sh")
    prefix = share.parents[1]
    for destination, files in distribution.data_files:
        for file in files:
            assert (prefix / destination / Path(file).name).is_file(), f"{destination}/{Path(file).name}"
    assert (Path(index.get_package_share_directory("gem_msgs")) / "package.xml").is_file()
