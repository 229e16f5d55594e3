"""The core must import and run without ROS: no module under gem_ros/core (or gem_train) imports rclpy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = ("rclpy", "rosidl_runtime_py", "launch", "launch_ros")


def ros_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [n for n in names if n.split(".")[0] in ROS_MODULES]
    return found


def test_no_ros_import_in_core_sources():
    offenders = {str(p.relative_to(ROOT)): ros_imports(p)
                 for folder in ("gem_ros/core", "gem_train") for p in (ROOT / folder).rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"ROS imports in the ROS-free core: {offenders}"
    assert any((ROOT / "gem_ros/core").rglob("*.py"))   # the scan really saw files


def test_core_imports_without_loading_rclpy():
    code = ("import sys, pkgutil, importlib, gem_ros.core as core\n"
            "for m in pkgutil.walk_packages(core.__path__, 'gem_ros.core.'): importlib.import_module(m.name)\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] == 'rclpy']\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_training_data_path_does_not_need_the_simulator():
    """gem_train on a GPU box without pybullet: loading data (scene fields included) must not import it."""
    code = ("import sys, gem_train.train as t\n"
            "assert t.sim_scene_of([{'object_colors': ['red']}] * 2) == {'object_colors': ['red']}\n"
            "assert 'pybullet' not in sys.modules, 'gem_train.train imported pybullet'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
