"""colcon (ament_python) build of the ROS package gem_ros: the Python packages gem_ros and gem_train.

pip installs the same packages from the repository root (../../pyproject.toml); the version and the console
scripts are read from there, so one list serves `ros2 run gem_ros <exe>` (lib/gem_ros, see setup.cfg) and
<venv>/bin. gem_ros/, gem_train/, urdf/ and config/ here are symlinks to the repository root: colcon copies,
or with --symlink-install links, only paths below this file.
"""
from pathlib import Path

from setuptools import find_packages, setup

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Humble)
    import tomli as tomllib

PACKAGE = "gem_ros"
HERE = Path(__file__).resolve().parent  # resolved: colcon --symlink-install runs a link to this file
PROJECT = tomllib.loads((HERE.parents[1] / "pyproject.toml").read_text())["project"]


def share_tree(folder):
    """(share/gem_ros/<dir>, [files]) for every non-empty dir under `folder`; [] when it is empty or absent."""
    entries = []
    for directory in sorted(p for p in [HERE / folder, *(HERE / folder).rglob("*")] if p.is_dir()):
        files = sorted(
            str(f.relative_to(HERE)) for f in directory.iterdir() if f.is_file() and f.name != ".gitkeep"
        )
        if files:
            entries.append((f"share/{PACKAGE}/{directory.relative_to(HERE)}", files))
    return entries


setup(
    name=PACKAGE,
    version=PROJECT["version"],
    description=PROJECT["description"],
    license=PROJECT["license"],
    python_requires=PROJECT["requires-python"],
    packages=find_packages(where=str(HERE), include=["gem_ros", "gem_ros.*", "gem_train", "gem_train.*"]),
    package_data={"gem_train": ["configs/*"]},
    data_files=[
        # The ament index marker makes ament_index_python find share/gem_ros.
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("urdf"),
        *share_tree("config"),
    ],
    # Python dependencies: pip (pyproject.toml) or rosdep (package.xml), never installed by this build.
    install_requires=[],
    zip_safe=False,
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in PROJECT["scripts"].items()]},
)
