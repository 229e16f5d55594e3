"""ROS messages <-> numpy / core types. Thin: all decoding logic lives in `gem_ros.core.observation.images`.

Performance facts this file relies on (spec/ros_environment.md): `np.frombuffer(msg.data)` is a zero-copy
view, and message byte fields must be set with `arr.tobytes()` (assigning a numpy array costs ~90 ms).
cv_bridge (ROS 2) is used for raw images when importable; without it the numpy decoder gives the same
result, and both paths reject the same inputs with the same ValueError.
"""
from __future__ import annotations

import array
import functools
import math
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, JointState
from std_msgs.msg import Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gem_ros.core.observation.images import (COLOR_ENCODINGS, DEPTH_ENCODINGS, EncodedFrame, check_raw_layout,
                                             decode_compressed, decode_depth, decode_raw)

_NS_PER_S = 1_000_000_000


# ---------------------------------------------------------------- time
def stamp_to_s(stamp) -> float:
    """builtin_interfaces Time/Duration or rclpy.time.Time/Duration -> seconds (float)."""
    if hasattr(stamp, "nanoseconds"):   # rclpy.time.Time / rclpy.duration.Duration
        return stamp.nanoseconds / _NS_PER_S
    return stamp.sec + stamp.nanosec / _NS_PER_S


def _split_ns(t_s: float, what: str) -> tuple[int, int]:
    if isinstance(t_s, bool) or not isinstance(t_s, (int, float, np.floating, np.integer)) \
            or not math.isfinite(t_s) or t_s < 0:
        raise ValueError(f"{what} must be a finite, non-negative number of seconds, got {t_s!r}")
    return divmod(round(float(t_s) * _NS_PER_S), _NS_PER_S)   # nanosec always in [0, 1e9)


def s_to_stamp(t_s: float) -> Time:
    """Seconds -> builtin_interfaces/Time (rounded to the nearest ns)."""
    sec, nanosec = _split_ns(t_s, "stamp")
    return Time(sec=sec, nanosec=nanosec)


def s_to_duration(t_s: float) -> Duration:
    sec, nanosec = _split_ns(t_s, "duration")
    return Duration(sec=sec, nanosec=nanosec)


def _as_time(stamp) -> Time:
    """Accept a Time message, an rclpy Time, or seconds; None means zero."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    if hasattr(stamp, "to_msg"):
        return stamp.to_msg()
    return s_to_stamp(stamp)


# ---------------------------------------------------------------- images
@functools.lru_cache(maxsize=1)
def _cv_bridge():
    """One CvBridge per process (stateless converter), or None where ROS 2 cv_bridge is not installed."""
    try:
        from cv_bridge import CvBridge
    except ImportError:
        return None
    return CvBridge()


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 RGB."""
    channels, _ = check_raw_layout(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
    bridge = _cv_bridge()
    # cv_bridge assumes row padding is a whole number of pixels; odd padding goes the numpy way
    if bridge is not None and msg.step % channels == 0:
        return np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def image_msg_to_depth_m(msg: Image) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm) or 32FC1 (m) -> (H, W) float32 metres, NaN = no reading (REP 118).

    Always numpy: cv_bridge's passthrough would be the same `frombuffer` view plus our scaling.
    """
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png) -> (H, W, 3) uint8 RGB."""
    return decode_compressed(msg.format, msg.data)


def compressed_msg_to_frame(msg: CompressedImage) -> EncodedFrame:
    """sensor_msgs/CompressedImage -> an EncodedFrame (format checked now, decoded when a policy uses it)."""
    return EncodedFrame(msg.format, msg.data)


def rgb_to_image_msg(rgb: np.ndarray, stamp=None, frame_id: str = "", encoding: str = "rgb8") -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image in rgb8 or bgr8, unpadded rows."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"unsupported output encoding {encoding!r}; supported: ['bgr8', 'rgb8']")
    pixels = rgb[..., ::-1] if encoding == "bgr8" else rgb
    height, width = rgb.shape[:2]
    return Image(header=Header(stamp=_as_time(stamp), frame_id=frame_id), height=height, width=width,
                 encoding=encoding, is_bigendian=0, step=width * 3,
                 data=np.ascontiguousarray(pixels).tobytes())


def depth_to_image_msg(depth_m: np.ndarray, stamp=None, frame_id: str = "") -> Image:
    """(H, W) depth in metres -> sensor_msgs/Image 32FC1 in this machine's byte order (NaN = no reading)."""
    depth = np.ascontiguousarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W) metres, got shape {depth.shape}")
    height, width = depth.shape
    return Image(header=Header(stamp=_as_time(stamp), frame_id=frame_id), height=height, width=width,
                 encoding="32FC1", is_bigendian=int(sys.byteorder == "big"), step=width * 4,
                 data=depth.tobytes())


def make_camera_info(width: int, height: int, fx: float, fy: float, cx: float, cy: float,
                     frame_id: str = "", stamp=None) -> CameraInfo:
    """Pinhole intrinsics in pixels -> CameraInfo: plumb_bob with zero distortion, R = I, P = [K | 0]."""
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        raise ValueError(f"camera info width/height must be positive ints, got {width!r} x {height!r}")
    width, height = int(width), int(height)   # message setters refuse numpy integers
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"camera info focal lengths must be positive and finite, got fx={fx!r} fy={fy!r}")
    fx, fy, cx, cy = float(fx), float(fy), float(cx), float(cy)
    return CameraInfo(header=Header(stamp=_as_time(stamp), frame_id=frame_id), width=width, height=height,
                      distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


# ---------------------------------------------------------------- joints
def joint_state_to_dict(msg: JointState) -> dict[str, float]:
    """JointState -> {joint name: position (rad or m)}."""
    if len(msg.name) != len(msg.position):
        raise ValueError(f"joint state has {len(msg.name)} names but {len(msg.position)} positions")
    positions = dict(zip(msg.name, (float(p) for p in msg.position)))
    if len(positions) != len(msg.name):
        raise ValueError(f"joint state repeats names: {sorted({n for n in msg.name if list(msg.name).count(n) > 1})}")
    return positions


def make_joint_trajectory(joint_names: Sequence[str], times_from_start_s, positions, velocities=None,
                          stamp=None) -> JointTrajectory:
    """A chunk of joint targets -> trajectory_msgs/JointTrajectory for ros2_control's JTC.

    times_from_start_s (N,) s, strictly increasing; positions (N, J) and optional velocities (N, J) in
    `joint_names` order (rad, m; rad/s, m/s). header.stamp is when point times are measured from: zero
    (the default) means "start on receipt" in JTC; a past stamp makes JTC skip the points whose time has
    already passed (the way to absorb inference latency); a future stamp delays the start.
    """
    names = list(joint_names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"joint_names must be unique non-empty strings, got {names!r}")
    times = np.asarray(times_from_start_s, dtype=np.float64)
    points = np.asarray(positions, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times_from_start_s must be a non-empty (N,) vector, got shape {times.shape}")
    if not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError(f"times_from_start_s must be finite, >= 0 and strictly increasing, got {times.tolist()}")
    if points.shape != (times.size, len(names)):
        raise ValueError(f"positions must have shape (N, J) = {(times.size, len(names))}, got {points.shape}")
    speeds = None if velocities is None else np.asarray(velocities, dtype=np.float64)
    if speeds is not None and speeds.shape != points.shape:
        raise ValueError(f"velocities must have shape {points.shape} like positions, got {speeds.shape}")
    for label, values in (("positions", points), ("velocities", speeds)):
        if values is not None and not np.all(np.isfinite(values)):
            raise ValueError(f"{label} contain NaN/Inf: refusing to command the arm")
    return build_joint_trajectory(names, times, points, speeds, stamp)


def build_joint_trajectory(names: list[str], times: np.ndarray, points: np.ndarray, speeds: np.ndarray | None,
                           stamp=None, reuse: tuple[JointTrajectory, list] | None = None) -> JointTrajectory:
    """make_joint_trajectory without its checks, for arrays already validated (a SafetyFilter's SafeTrajectory).

    reuse=(message, point pool): refill that message and those points instead of building new ones (3x cheaper
    than 10 new JointTrajectoryPoints: ~35 us a control tick) - only for a caller that publishes at once
    (rclpy serialises in publish) and never from two threads at a time.
    """
    # Sequences as array('d') and fields set directly: the executor builds one of these per control tick, and
    # this halves both the Python build and rclpy's serialisation (buffer copy instead of a per-float loop).
    trajectory, pool = reuse if reuse is not None else (JointTrajectory(), [])
    trajectory.header.stamp = _as_time(stamp)
    trajectory.joint_names = names
    nanoseconds = np.rint(times * _NS_PER_S).astype(np.int64).tolist()   # finite and >= 0: validated
    while len(pool) < len(nanoseconds):
        pool.append(JointTrajectoryPoint())
    no_speeds = array.array("d")
    for i, ns in enumerate(nanoseconds):
        point = pool[i]
        point.positions = array.array("d", points[i].tobytes())
        point.velocities = no_speeds if speeds is None else array.array("d", speeds[i].tobytes())
        duration = point.time_from_start
        duration.sec, duration.nanosec = divmod(ns, _NS_PER_S)
    trajectory.points = pool[:len(nanoseconds)]
    return trajectory


# ---------------------------------------------------------------- diagnostics
_LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}


def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def diagnostic_status(name: str, level: int | bytes, message: str, values: Mapping[str, object] | None = None,
                      hardware_id: str = "") -> DiagnosticStatus:
    """level: 0 OK, 1 WARN, 2 ERROR, 3 STALE (int, or the message's byte constants). Values become strings."""
    code = level[0] if isinstance(level, (bytes, bytearray)) and len(level) == 1 else level
    if isinstance(code, bool) or code not in _LEVELS:
        raise ValueError(f"diagnostic level must be one of {_LEVELS}, got {level!r}")
    return DiagnosticStatus(level=bytes([code]), name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=_format_value(v)) for k, v in (values or {}).items()])


__all__ = [
    "COLOR_ENCODINGS", "DEPTH_ENCODINGS", "compressed_msg_to_frame", "compressed_msg_to_rgb", "depth_to_image_msg",
    "diagnostic_status", "image_msg_to_depth_m", "image_msg_to_rgb", "joint_state_to_dict", "make_camera_info", "make_joint_trajectory",
    "rgb_to_image_msg", "s_to_duration", "s_to_stamp", "stamp_to_s",
]
