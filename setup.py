"""gem_ros: pip (`pip install -e '.[train,dev]'`) and colcon (ament_python) build the same package."""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "gem_ros"
ROOT = Path(__file__).resolve().parent


def share_tree(folder):
    """(share/gem_ros/<dir>, [files]) for every non-empty dir under `folder`; [] when it is empty or absent."""
    entries = []
    for directory in sorted(p for p in [ROOT / folder, *(ROOT / folder).rglob("*")] if p.is_dir()):
        files = sorted(
            str(f.relative_to(ROOT)) for f in directory.iterdir() if f.is_file() and f.name != ".gitkeep"
        )
        if files:
            entries.append((f"share/{PACKAGE}/{directory.relative_to(ROOT)}", files))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    description="GEM-VLA vision-language-action policy for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",  # 3.11 for the PyPI ROS wheels; apt ROS (Jazzy/Kilted) brings 3.12
    packages=find_packages(include=["gem_ros", "gem_ros.*", "gem_train", "gem_train.*"], exclude=["test*"]),
    data_files=[
        # The ament index marker makes ament_index_python find share/gem_ros.
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("urdf"),
        *share_tree("config"),
    ],
    # ROS packages (rclpy, *_msgs, gem_msgs) are NOT listed: they come from apt ROS or from the
    # ros-* wheels that scripts/setup.sh installs; listing them would shadow a system ROS install.
    install_requires=[
        "numpy",
        "torch>=2.6,<3",  # CUDA builds come from the PyTorch index, see README
        "transformers==5.23.0",
        "diffusers",
        "accelerate",
        "safetensors",
        "pillow",
        "opencv-python-headless",
        "pybullet",
        "pyyaml",
        "tqdm",
        "rich",
        "tokenizers",
        "matplotlib",  # demo and evaluation plots (PNG)
        "rosbags>=0.11,<0.12",   # gem_recorder (its periodic flush uses 0.11 writer internals); writes rosbag2 without rosbag2_py; gem_record reads them
    ],
    extras_require={
        "train": ["h5py", "tensorboard", "pandas", "pyarrow"],
        "dev": ["pytest", "hypothesis", "pytest-timeout", "catkin-pkg"],  # catkin-pkg validates package.xml
    },
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "gem_demo = gem_ros.demo:main",               # README command 1: the closed loop in one process
            "gem_policy = gem_ros.nodes.policy_node:main",
            "gem_executor = gem_ros.nodes.executor_node:main",
            "gem_policy_executor = gem_ros.nodes.composed:main",   # both in one process, chunks in memory
            "gem_sim = gem_ros.nodes.sim_node:main",
            "gem_collect_sim = gem_train.collect_sim:main",
            "gem_pretrain_sim = gem_train.pretrain_sim:main",
            "gem_train = gem_train.train:main",
            "gem_export = gem_train.export:main",
            "gem_eval = gem_train.evaluate:main",
            "gem_depth_targets = gem_train.depth_targets:main",
            "gem_record = gem_train.record:main",
            "gem_recorder = gem_ros.nodes.recorder_node:main",
        ],
    },
)
