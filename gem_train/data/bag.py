"""rosbag2 reading blocks for `gem_record`: open a bag, stamp and align samples, collect joints by name, decode images.

Pure Python (`rosbags`), no ROS installation needed.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
JOINT_STATE, TRAJECTORY = "sensor_msgs/msg/JointState", "trajectory_msgs/msg/JointTrajectory"


def typestore():
    from rosbags.typesys import Stores, get_typestore

    store = getattr(Stores, "ROS2_KILTED", None) or getattr(Stores, "ROS2_JAZZY", None) or Stores.LATEST
    return get_typestore(store)


def bag_dir(bag_path: Path | str) -> Path:
    path = Path(bag_path)
    return path.parent if path.is_file() and (path.parent / "metadata.yaml").exists() else path


def stamp_ns(msg: Any, log_ns: int, use_header: bool) -> int:
    stamp = msg.header.stamp
    ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    return ns if use_header and ns else int(log_ns)


def align(stamps: np.ndarray, grid: np.ndarray, mode: str, max_age_ns: float):
    """Per grid time: index into sorted `stamps`, |error| in ns, and whether it is within max_age."""
    after = np.searchsorted(stamps, grid, side="right")            # first sample later than the grid time
    before = np.clip(after - 1, 0, len(stamps) - 1)
    err_before = np.abs(grid - stamps[before])
    if mode == "hold_last":
        return before, err_before, (after > 0) & (err_before <= max_age_ns)
    after = np.clip(after, 0, len(stamps) - 1)
    err_after = np.abs(stamps[after] - grid)
    index = np.where(err_after < err_before, after, before)       # ties go to the earlier sample
    err = np.minimum(err_before, err_after)
    return index, err, err <= max_age_ns


class JointSeries:
    """Per-joint (time, position) samples of one topic, filled by name from partial or shuffled messages."""

    def __init__(self, wanted: list[str]):
        self.wanted, self.samples, self.seen = set(wanted), defaultdict(list), set()

    def add(self, t_ns: int, names, positions) -> None:
        self.seen.update(names)
        for name, value in zip(names, positions):
            if name in self.wanted:
                self.samples[name].append((t_ns, float(value)))

    def series(self, topic: str, names: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """joint -> (stamps int64 ns, positions float64), sorted by time."""
        missing = [n for n in names if not self.samples.get(n)]
        if missing:
            raise ValueError(f"{topic}: no positions for joints {missing}; joints seen: {sorted(self.seen)}")
        out = {}
        for name in names:
            stamps = np.array([t for t, _ in self.samples[name]], np.int64)   # int64: ns do not fit a float64
            order = np.argsort(stamps, kind="stable")
            out[name] = (stamps[order], np.array([v for _, v in self.samples[name]])[order])
        return out


@contextmanager
def open_bag(bag: Path):
    from rosbags.rosbag2 import Reader, ReaderError

    try:
        reader = Reader(bag)
        reader.open()
    except (ReaderError, FileNotFoundError) as exc:
        unfinished = bag.is_dir() and not (bag / "metadata.yaml").exists() and any(
            p.suffix in (".mcap", ".db3") for p in bag.iterdir())
        hint = "; an unfinished recording: `gem_record recover` makes it a complete bag" if unfinished else ""
        raise ValueError(f"{bag}: not a readable rosbag2 folder ({exc}){hint}") from exc
    try:
        yield reader
    finally:
        reader.close()


def decode_image(msg: Any, msgtype: str, size: int | None) -> np.ndarray:
    from gem_ros.core.observation.images import decode_compressed, decode_raw, resize_to

    if msgtype == IMAGE:
        rgb = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
    else:
        rgb = decode_compressed(msg.format, msg.data)
    return np.ascontiguousarray(resize_to(rgb, size, size) if size else rgb)


def error_stats(err_ns: np.ndarray) -> dict[str, float]:
    ms = np.asarray(err_ns, float) / 1e6
    return {"mean": float(ms.mean()), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())}
