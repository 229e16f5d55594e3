"""Package manifests and install layout: what colcon, pip and ament_index rely on.

pip builds the root (pyproject.toml); colcon builds ros/gem_ros (ament_python, the same Python packages through
symlinks), gem_msgs and gem_bringup. test_workspace.py runs colcon and rosdep on a clone.
"""
from __future__ import annotations

import os
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GEM_ROS = REPO / "ros" / "gem_ros"  # the ament_python package of gem_ros
MANIFESTS = {"gem_ros": GEM_ROS / "package.xml", "gem_msgs": REPO / "gem_msgs" / "package.xml",
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


def test_root_is_not_a_package():
    """colcon and rosdep stop descending at a package: a package at the root hides gem_msgs and gem_bringup."""
    assert not [f for f in ("package.xml", "setup.py", "setup.cfg") if (REPO / f).exists()]
    assert (REPO / "pyproject.toml").is_file()  # pip's entry point instead (colcon ignores it)


def test_gem_ros_package_links_to_the_sources():
    """ros/gem_ros builds the root's Python packages and data through relative symlinks (git keeps them)."""
    for name in ("gem_ros", "gem_train", "urdf", "config"):
        link = GEM_ROS / name
        assert link.is_symlink() and not Path(os.readlink(link)).is_absolute(), name
        assert link.resolve() == (REPO / name).resolve(), name


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
    """ros/gem_ros/setup.py (the colcon build) evaluated without building anything."""
    pytest.importorskip("setuptools")
    from distutils.core import run_setup  # setuptools' copy on Python >= 3.12

    cwd = os.getcwd()
    os.chdir(GEM_ROS)  # data_files paths are relative to setup.py, as during a build
    try:
        return run_setup(str(GEM_ROS / "setup.py"), stop_after="init")
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
            assert (GEM_ROS / file).is_file(), file
            assert not file.endswith(".gitkeep")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pip_requirements_and_scripts():
    from packaging.requirements import Requirement

    project = pyproject()["project"]
    requirements = {r.name: r for r in map(Requirement, project["dependencies"])}
    assert requirements["torch"].specifier.contains("2.13.0") and requirements["torch"].specifier
    assert str(requirements["transformers"].specifier) == "==5.23.0"
    extras = project["optional-dependencies"]
    assert not [r for r in [*requirements, *(x for e in extras.values() for x in e)] if r.startswith("ros-")]
    assert {"train", "dev"} <= set(extras)
    for name, target in project["scripts"].items():
        assert re.fullmatch(r"gem_[a-z_]+", name) and re.fullmatch(r"[\w.]+:\w+", target), \
            f"executables are gem_<verb>: {name} = {target}"
    assert pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "gem_ros", "gem_ros.*", "gem_train", "gem_train.*"]


def test_colcon_build_matches_pip(distribution):
    """Same packages, version, package data and console scripts for `ros2 run gem_ros X` as for pip."""
    project = pyproject()["project"]
    assert {"gem_ros", "gem_ros.core", "gem_ros.nodes", "gem_train"} <= set(distribution.packages)
    assert all(p.split(".")[0] in ("gem_ros", "gem_train") for p in distribution.packages)
    assert distribution.get_version() == project["version"]
    assert distribution.package_data == pyproject()["tool"]["setuptools"]["package-data"]
    assert sorted(distribution.entry_points["console_scripts"]) == sorted(
        f"{name} = {target}" for name, target in project["scripts"].items())
    assert not distribution.install_requires  # colcon installs no pip packages; rosdep and pip do


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
