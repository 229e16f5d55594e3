"""nodes.conversions: ROS message classes <-> numpy, no node or DDS needed."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="needs the ROS 2 message wheels")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402

from gem_ros.nodes import conversions as conv  # noqa: E402


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_round_trip(rgb, encoding):
    msg = conv.rgb_to_image_msg(rgb, conv.s_to_stamp(12.5), "cam_optical_frame", encoding=encoding)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (12, 10, 30, encoding)
    assert msg.header.frame_id == "cam_optical_frame" and conv.stamp_to_s(msg.header.stamp) == 12.5
    if encoding == "bgr8":   # the bytes really are in BGR order
        assert bytes(msg.data[:3]) == rgb[0, 0, ::-1].tobytes()
    np.testing.assert_array_equal(conv.image_msg_to_rgb(msg), rgb)


def test_padded_image_message(rgb):
    rows = np.concatenate([rgb.reshape(12, 30), np.zeros((12, 2), np.uint8)], axis=1)
    msg = Image(height=12, width=10, encoding="rgb8", step=32, data=rows.tobytes())
    np.testing.assert_array_equal(conv.image_msg_to_rgb(msg), rgb)


def test_compressed_and_raw_give_the_same_array(rgb):
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    compressed = CompressedImage(format="png", data=png.tobytes())
    raw = conv.rgb_to_image_msg(rgb, encoding="bgr8")
    np.testing.assert_array_equal(conv.compressed_msg_to_rgb(compressed), conv.image_msg_to_rgb(raw))


def test_wrong_encoding_and_length_are_clear_errors(rgb):
    msg = conv.rgb_to_image_msg(rgb)
    msg.encoding = "bayer_rggb8"
    with pytest.raises(ValueError, match=r"unsupported image encoding 'bayer_rggb8'; supported: \["):
        conv.image_msg_to_rgb(msg)
    msg.encoding, msg.height = "rgb8", 13
    with pytest.raises(ValueError, match="expected step\\*height"):
        conv.image_msg_to_rgb(msg)
    with pytest.raises(ValueError, match="unsupported output encoding 'mono8'"):
        conv.rgb_to_image_msg(rgb, encoding="mono8")


def test_depth_round_trip():
    depth = np.array([[0.5, np.nan, 2.0], [1.25, 3.0, 0.001]], np.float32)
    msg = conv.depth_to_image_msg(depth, 3.0, "depth_frame")
    assert msg.encoding == "32FC1" and msg.step == 12
    np.testing.assert_array_equal(conv.image_msg_to_depth_m(msg), depth)
    mm = Image(height=1, width=2, encoding="16UC1", step=4, data=np.array([0, 1500], "<u2").tobytes())
    np.testing.assert_allclose(conv.image_msg_to_depth_m(mm), [[np.nan, 1.5]])


def test_joint_state_to_dict():
    msg = JointState(name=["a", "b"], position=[0.5, -1.0])
    assert conv.joint_state_to_dict(msg) == {"a": 0.5, "b": -1.0}
    with pytest.raises(ValueError, match="2 names but 1 positions"):
        conv.joint_state_to_dict(JointState(name=["a", "b"], position=[0.5]))


def test_joint_trajectory_fields():
    positions = np.array([[0.0, 0.1], [0.2, 0.3]])
    traj = conv.make_joint_trajectory(["j1", "j2"], [0.5, 1.25], positions, velocities=np.ones((2, 2)))
    assert traj.joint_names == ["j1", "j2"]
    assert (traj.header.stamp.sec, traj.header.stamp.nanosec) == (0, 0)   # zero: JTC starts on receipt
    last = traj.points[1]
    assert (last.time_from_start.sec, last.time_from_start.nanosec) == (1, 250_000_000)
    np.testing.assert_array_equal(last.positions, [0.2, 0.3])
    np.testing.assert_array_equal(last.velocities, [1.0, 1.0])
    assert len(traj.points[0].accelerations) == 0
    stamped = conv.make_joint_trajectory(["j1", "j2"], [0.1], positions[:1], stamp=Time(sec=7, nanosec=5))
    assert (stamped.header.stamp.sec, stamped.header.stamp.nanosec) == (7, 5)
    assert len(stamped.points[0].velocities) == 0
    # What a subscriber receives (the fields are array('d'), the fast path of rclpy's serialisation).
    from rclpy.serialization import deserialize_message, serialize_message
    received = deserialize_message(serialize_message(traj), type(traj))
    np.testing.assert_array_equal([list(p.positions) for p in received.points], positions)
    assert [(p.time_from_start.sec, p.time_from_start.nanosec) for p in received.points] == [(0, 500_000_000),
                                                                                            (1, 250_000_000)]


@pytest.mark.parametrize("times, positions, match", [
    ([0.5, 0.5], np.zeros((2, 2)), "strictly increasing"),
    ([0.5], np.zeros((1, 3)), r"shape \(N, J\)"),
    ([0.5], np.array([[np.nan, 0.0]]), "NaN"),
])
def test_joint_trajectory_rejects_bad_chunks(times, positions, match):
    with pytest.raises(ValueError, match=match):
        conv.make_joint_trajectory(["j1", "j2"], times, positions)


def test_camera_info():
    info = conv.make_camera_info(640, 480, 500.0, 501.0, 319.5, 239.5, "cam_optical_frame", 1.5)
    assert (info.width, info.height, info.distortion_model) == (640, 480, "plumb_bob")
    np.testing.assert_array_equal(info.k, [500.0, 0, 319.5, 0, 501.0, 239.5, 0, 0, 1])
    np.testing.assert_array_equal(info.p, [500.0, 0, 319.5, 0, 0, 501.0, 239.5, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(info.r, np.eye(3).ravel())
    np.testing.assert_array_equal(info.d, np.zeros(5))
    assert info.header.frame_id == "cam_optical_frame" and conv.stamp_to_s(info.header.stamp) == 1.5
    assert conv.make_camera_info(np.int64(4), np.int64(3), 2.0, 2.0, 1.5, 1.0).width == 4   # numpy ints from config
    with pytest.raises(ValueError, match="focal"):
        conv.make_camera_info(640, 480, 0.0, 1.0, 1.0, 1.0)


def test_stamp_conversions_round_trip():
    for t in (0.0, 1.25, 12.999999999, 1_700_000_000.123456):
        stamp = conv.s_to_stamp(t)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert conv.stamp_to_s(stamp) == pytest.approx(t, abs=1e-6)
    stamp = conv.s_to_stamp(1.25)
    assert (stamp.sec, stamp.nanosec) == (1, 250_000_000)
    assert (conv.s_to_stamp(0.9999999999).sec, conv.s_to_stamp(0.9999999999).nanosec) == (1, 0)
    from rclpy.time import Time as RclpyTime
    assert conv.stamp_to_s(RclpyTime(nanoseconds=2_500_000_000)) == 2.5
    with pytest.raises(ValueError, match="non-negative"):
        conv.s_to_stamp(-1.0)


def test_diagnostic_status():
    status = conv.diagnostic_status("gem/observation", 1, "camera stale", {"age_s": 0.35, "ok": False, "n": 3})
    assert status.level == DiagnosticStatus.WARN and status.name == "gem/observation"
    assert {kv.key: kv.value for kv in status.values} == {"age_s": "0.35", "ok": "false", "n": "3"}
    assert conv.diagnostic_status("x", DiagnosticStatus.ERROR, "m").level == DiagnosticStatus.ERROR
    with pytest.raises(ValueError, match="level"):
        conv.diagnostic_status("x", 7, "m")


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_cv_bridge_and_numpy_paths_agree(encoding):
    """Runs where ROS 2 cv_bridge is installed (a robot PC); skipped honestly here."""
    pytest.importorskip("cv_bridge")
    from gem_ros.core.observation import decode_raw
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[encoding]
    data = np.random.default_rng(3).integers(0, 256, (5, 4 * channels + channels), dtype=np.uint8)
    msg = Image(height=5, width=4, encoding=encoding, step=data.shape[1], data=data.tobytes())
    np.testing.assert_array_equal(conv.image_msg_to_rgb(msg), decode_raw(encoding, 5, 4, msg.step, msg.data))


def test_a_safe_trajectory_becomes_the_same_message_without_a_second_validation():
    from gem_ros.core.safety import SafeTrajectory
    from gem_ros.nodes.backends import to_joint_trajectory

    times, positions = np.array([0.02, 0.04]), np.array([[0.1, 0.2], [0.15, 0.25]])
    velocities = np.array([[2.5, 2.5], [0.0, 0.0]])
    safe = SafeTrajectory(("j1", "j2"), times, positions, velocities)
    # positions only: JTC joins them linearly (with velocities it would fit cubics that can overshoot a limit)
    message = to_joint_trajectory(safe)
    assert message == conv.make_joint_trajectory(["j1", "j2"], times, positions)
    assert all(len(point.velocities) == 0 for point in message.points)


def test_a_reused_trajectory_message_equals_a_fresh_one_each_time():
    """The topic backend refills one message per tick: nothing of the previous trajectory may survive in it."""
    reuse = (conv.JointTrajectory(), [])
    long_times, long_positions = np.array([0.02, 0.04, 0.06]), np.arange(6.0).reshape(3, 2)
    first = conv.build_joint_trajectory(["j1", "j2"], long_times, long_positions, np.ones((3, 2)), reuse=reuse)
    assert first == conv.make_joint_trajectory(["j1", "j2"], long_times, long_positions, np.ones((3, 2)))
    second = conv.build_joint_trajectory(["a", "b"], np.array([0.1]), np.array([[7.0, 8.0]]), None,
                                         stamp=conv.s_to_stamp(3.5), reuse=reuse)
    assert second is first   # refilled, not rebuilt
    assert second == conv.make_joint_trajectory(["a", "b"], [0.1], [[7.0, 8.0]], stamp=conv.s_to_stamp(3.5))
