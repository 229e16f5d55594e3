"""gem_record: synthetic rosbag2 bags (sqlite3 and MCAP) with known stamps -> episodes; the live recorder node."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("rosbags")
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from gem_train.data.episodes import read_episode  # noqa: E402
from gem_train.record import BagConversionConfig, convert_bag, main  # noqa: E402

STORE = get_typestore(Stores.ROS2_KILTED)
T0 = 1_700_000_000 * 10**9                     # ns
MS = 1_000_000
ARM = [f"j{i}" for i in range(1, 8)]
FINGERS = ["f1", "f2"]
JOINTS = ARM + FINGERS
SCENE, WRIST = "/cam/scene/image_raw", "/cam/wrist/image_raw/compressed"
JS_ARM = T0 + 3 * MS + np.arange(300) * 10 * MS          # 100 Hz, arm joints (partial messages)
JS_FINGERS = T0 + 4 * MS + np.arange(300) * 10 * MS      # 100 Hz, fingers in their own messages
# 30 Hz from T0 + 50 ms (the last topic to start: it sets the grid), every frame after the first 2 ms late
SCENE_STAMPS = T0 + 50 * MS + np.round(np.arange(88) * 1e9 / 30).astype(np.int64) + (np.arange(88) > 0) * 2 * MS
_WRIST_ALL = T0 + 20 * MS + np.round(np.arange(44) * 1e9 / 15).astype(np.int64)
WRIST_STAMPS = _WRIST_ALL[~((_WRIST_ALL - T0 > 1.0e9) & (_WRIST_ALL - T0 < 1.6e9))]   # a ~0.6 s gap
STORAGES = [StoragePlugin.SQLITE3] + ([StoragePlugin.MCAP] if getattr(StoragePlugin, "MCAP", None) in
                                      Writer.STORAGE_PLUGINS else [])


def position(joint: str, t_ns) -> np.ndarray:
    """Known joint trajectory: distinct per joint, linear in time (rad or m)."""
    k = JOINTS.index(joint) + 1
    return 0.1 * k + 0.01 * k * (np.asarray(t_ns) - T0) / 1e9


def _header(t_ns: int):
    T = STORE.types
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=int(t_ns // 10**9),
                                                                          nanosec=int(t_ns % 10**9)), frame_id="")


def _joint_state(t_ns: int, names: list[str], rng):
    names = list(rng.permutation(names))                 # shuffled order in every message
    return STORE.types["sensor_msgs/msg/JointState"](header=_header(t_ns), name=names,
                                                     position=np.array([position(n, t_ns) for n in names]),
                                                     velocity=np.zeros(0), effort=np.zeros(0))


def _frame(index: int) -> np.ndarray:
    """8x6 RGB frame that encodes its index: R = index, G = 255 - index, B = 7."""
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = index, 255 - index, 7
    return rgb


def write_bag(path, storage, encoding="rgb8", extra=None):
    """/joint_states (arm and fingers in separate, shuffled messages), a raw and a PNG camera, more via `extra`."""
    rng = np.random.default_rng(0)
    T = STORE.types
    messages = [(t, "/joint_states", _joint_state(t, ARM, rng)) for t in JS_ARM]
    messages += [(t, "/joint_states", _joint_state(t, FINGERS, rng)) for t in JS_FINGERS]
    for i, t in enumerate(SCENE_STAMPS):
        rgb = _frame(i) if encoding == "rgb8" else _frame(i)[..., ::-1]
        messages.append((t, SCENE, T["sensor_msgs/msg/Image"](header=_header(t), height=6, width=8, encoding=encoding,
                                                              is_bigendian=0, step=24, data=rgb.reshape(-1).copy())))
    for t in WRIST_STAMPS:
        ok, png = cv2.imencode(".png", _frame(int(np.flatnonzero(_WRIST_ALL == t)[0]))[..., ::-1])
        messages.append((t, WRIST, T["sensor_msgs/msg/CompressedImage"](header=_header(t), format="png",
                                                                        data=png.reshape(-1))))
    messages += extra or []
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conns = {}
        for t, topic, msg in sorted(messages, key=lambda m: m[0]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=STORE)
            writer.write(conns[topic], int(t) + 2 * MS, STORE.serialize_cdr(msg, msg.__msgtype__))  # receive: +2 ms
    return path


def make_cfg(**overrides) -> BagConversionConfig:
    values = dict(camera_topics={"scene": SCENE, "wrist": WRIST}, state_joint_names=JOINTS,
                  gripper_joint_names=FINGERS, instruction="pick up the red cube")
    return BagConversionConfig(**{**values, **overrides})


def expected_index(stamps: np.ndarray, t_ns: int, alignment: str) -> int:
    if alignment == "nearest":
        return int(np.argmin(np.abs(stamps - t_ns)))     # first minimum: ties go to the earlier sample
    return int(np.flatnonzero(stamps <= t_ns)[-1])


@pytest.fixture(scope="module", params=STORAGES, ids=lambda s: s.name.lower())
def bag(request, tmp_path_factory):
    encoding = "rgb8" if request.param == StoragePlugin.SQLITE3 else "bgr8"
    return write_bag(tmp_path_factory.mktemp("bags") / "demo_bag", request.param, encoding)


@pytest.mark.parametrize("alignment", ["nearest", "hold_last"])
def test_convert_aligns_every_topic_on_the_control_grid(bag, tmp_path, alignment):
    summary = convert_bag(bag, tmp_path, make_cfg(alignment=alignment), progress=False)

    start = SCENE_STAMPS[0]                      # the last topic to start
    end = min(JS_ARM[-1], JS_FINGERS[-1], SCENE_STAMPS[-1], WRIST_STAMPS[-1])
    grid = start + np.arange((end - start) // (100 * MS) + 1) * 100 * MS
    age = lambda stamps, t: abs(int(stamps[expected_index(stamps, t, alignment)]) - int(t))   # noqa: E731
    kept = [k for k in range(len(grid) - 1) if age(WRIST_STAMPS, grid[k]) <= 100 * MS
            and age(SCENE_STAMPS, grid[k]) <= 100 * MS and age(JS_ARM, grid[k]) <= 100 * MS]
    gap = [k for k in range(len(grid) - 1) if 1.1e9 < grid[k] - T0 < 1.5e9]
    assert gap and not set(gap) & set(kept)                          # steps inside the camera gap are dropped
    assert summary.grid_steps == len(grid) - 1
    assert summary.dropped_steps == len(grid) - 1 - len(kept) == summary.dropped_by[WRIST] >= len(gap)
    assert set(summary.dropped_by) == {WRIST} and summary.frames == len(kept)
    assert [p.name for p in summary.episodes] == ["demo_bag.hdf5"]

    with read_episode(summary.episodes[0], lazy=False) as episode:
        assert episode.num_steps == len(kept) and episode.instruction == "pick up the red cube"
        assert episode.meta["state_names"] == JOINTS and episode.meta["action_names"] == ARM + ["gripper"]
        for row, k in enumerate(kept):
            assert episode.images["scene"][row][0, 0, 0] == expected_index(SCENE_STAMPS, grid[k], alignment)
            wrist = _WRIST_ALL.tolist().index(WRIST_STAMPS[expected_index(WRIST_STAMPS, grid[k], alignment)])
            np.testing.assert_array_equal(episode.images["wrist"][row], _frame(wrist))
            arm_t = JS_ARM[expected_index(JS_ARM, grid[k], alignment)]
            finger_t = JS_FINGERS[expected_index(JS_FINGERS, grid[k], alignment)]
            expected_state = [position(j, arm_t if j in ARM else finger_t) for j in JOINTS]
            np.testing.assert_allclose(episode.states[row], expected_state, rtol=0, atol=1e-6)
            arm_next = JS_ARM[expected_index(JS_ARM, grid[k + 1], alignment)]
            finger_next = JS_FINGERS[expected_index(JS_FINGERS, grid[k + 1], alignment)]
            expected_action = [position(j, arm_next) for j in ARM] + [sum(position(f, finger_next) for f in FINGERS)]
            np.testing.assert_allclose(episode.actions[row], expected_action, rtol=0, atol=1e-6)
        consecutive = [r for r in range(len(kept) - 1) if kept[r + 1] == kept[r] + 1]
        np.testing.assert_allclose(episode.actions[consecutive, :7], episode.states[[r + 1 for r in consecutive], :7])

    # Alignment error statistics equal the known stamp offsets.
    js_err = [max(age(JS_ARM, grid[k]), age(JS_FINGERS, grid[k])) / MS for k in kept]
    if alignment == "nearest":
        assert js_err == [4.0] * len(kept)                           # arm 3 ms, fingers 4 ms from every grid time
    for topic, errors in (("/joint_states", js_err), (SCENE, [age(SCENE_STAMPS, grid[k]) / MS for k in kept]),
                          (WRIST, [age(WRIST_STAMPS, grid[k]) / MS for k in kept])):
        stats = summary.alignment_ms[topic]
        assert stats["mean"] == pytest.approx(np.mean(errors), abs=1e-6)
        assert stats["p95"] == pytest.approx(np.percentile(errors, 95), abs=1e-6)
        assert stats["max"] == pytest.approx(max(errors), abs=1e-6)
    assert "dropped" in summary.report()


def test_split_on_gap_writes_one_episode_per_piece_and_never_overwrites(bag, tmp_path):
    summary = convert_bag(bag, tmp_path, make_cfg(split_on_gap_s=0.25, image_size=16, gripper_as_width=False),
                          progress=False)
    assert [p.name for p in summary.episodes] == ["demo_bag_000.hdf5", "demo_bag_001.hdf5"]
    with read_episode(summary.episodes[1]) as episode:
        assert episode.images["scene"][0].shape == (16, 16, 3)
        assert episode.meta["action_names"] == JOINTS and episode.actions.shape[1] == 9
    with pytest.raises(ValueError, match="never overwritten"):
        convert_bag(bag, tmp_path, make_cfg(split_on_gap_s=0.25), progress=False)


def test_command_topic_action_is_the_command_in_force_at_the_next_step(tmp_path):
    T = STORE.types
    cmd_stamps = T0 + 30 * MS + np.arange(60) * 50 * MS               # 20 Hz, arm joints only
    commands = [(t, "/arm/joint_trajectory", T["trajectory_msgs/msg/JointTrajectory"](
        header=_header(t), joint_names=ARM[::-1], points=[T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.array([-position(j, t) for j in ARM[::-1]]), velocities=np.zeros(0),
            accelerations=np.zeros(0), effort=np.zeros(0),
            time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=100 * MS))]))
        for t in cmd_stamps]
    bag = write_bag(tmp_path / "cmd_bag", StoragePlugin.SQLITE3, extra=commands)
    cfg = make_cfg(action_source="command_topic", command_topic="/arm/joint_trajectory")
    summary = convert_bag(bag, tmp_path / "out", cfg, progress=False)
    with read_episode(summary.episodes[0]) as episode:
        grid0 = SCENE_STAMPS[0]
        assert episode.meta["gripper_action_source"] == "next_state"   # the command never names the fingers
        for row in range(3):                                           # steps before the camera gap
            held = cmd_stamps[cmd_stamps <= grid0 + (row + 1) * 100 * MS][-1]
            np.testing.assert_allclose(episode.actions[row, :7], [-position(j, held) for j in ARM], atol=1e-6)
    assert summary.alignment_ms["/arm/joint_trajectory"]["max"] == pytest.approx(20.0)


def test_missing_topic_and_joint_are_named(bag, tmp_path):
    with pytest.raises(ValueError, match=r"/cam/top.*not in the bag.*/joint_states"):
        convert_bag(bag, tmp_path, make_cfg(camera_topics={"scene": SCENE, "top": "/cam/top"}), progress=False)
    with pytest.raises(ValueError, match=r"no positions for joints \['elbow'\]"):
        convert_bag(bag, tmp_path, make_cfg(state_joint_names=JOINTS + ["elbow"]), progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("field, value", [
    ("camera_topics", {}), ("state_joint_names", ["j1", "j1"]), ("alignment", "linear"), ("control_rate_hz", 0),
    ("max_age_s", float("nan")), ("action_source", "command_topic"), ("image_size", 4), ("compression", "zip"),
    ("action_joint_names", ["f1"]), ("split_on_gap_s", -1.0)])
def test_bad_config_is_rejected_before_reading(field, value):
    with pytest.raises(ValueError, match=field):
        make_cfg(**{field: value})


def test_cli_convert_with_a_yaml_config(bag, tmp_path, capsys):
    config = tmp_path / "robot.yaml"
    config.write_text(f"gem_record:\n  camera_topics: {{scene: {SCENE}, wrist: {WRIST}}}\n"
                      f"  state_joint_names: {JOINTS}\n  gripper_joint_names: {FINGERS}\n")
    out = tmp_path / "episodes"
    assert main(["convert", str(bag), "--out", str(out), "--config", str(config), "--instruction", "stack"]) == 0
    assert "alignment error ms" in capsys.readouterr().out
    with read_episode(out / "demo_bag.hdf5") as episode:
        assert episode.instruction == "stack"
    assert main(["convert", str(tmp_path / "nope"), "--out", str(out), "--camera", f"scene={SCENE}",
                 "--joints", *JOINTS, "--instruction", "x"]) == 1


def rclpy_node(name: str, context):
    from rclpy.node import Node

    return Node(name, context=context)


@pytest.mark.ros
def test_recorder_node_records_a_bag_that_converts(ros, tmp_path):
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from gem_ros.nodes.recorder_node import RecorderNode

    recorder = ros.add(RecorderNode(context=ros.context, parameter_overrides=[
        Parameter("topics", value=["/joint_states:sensor_msgs/msg/JointState", "/camera/scene/image_raw"]),
        Parameter("out_dir", value=str(tmp_path / "bags")), Parameter("instruction", value="wave")]))
    pub_node = ros.add(rclpy_node("gem_record_test", ros.context))
    joints_pub = pub_node.create_publisher(JointState, "/joint_states", 100)
    image_pub = pub_node.create_publisher(Image, "/camera/scene/image_raw", 100)
    ros.wait_for(lambda: len(recorder.subscribed_topics) == 2 and joints_pub.get_subscription_count()
                 and image_pub.get_subscription_count(), 10, "subscriptions")

    def call(service: str):
        client = pub_node.create_client(Trigger, f"/gem_recorder/{service}")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(Trigger.Request())
        ros.wait_for(future.done, 10, f"~/{service}")
        return future.result()

    assert call("start").success
    for i in range(40):                                  # 50 Hz joint states, 20 Hz images over 0.8 s of stamps
        msg = JointState(name=["j3", "j1", "j2"], position=[0.3 + i, 0.1 + i, 0.2 + i])
        msg.header.stamp.sec, msg.header.stamp.nanosec = 100, i * 20 * MS
        joints_pub.publish(msg)
        if i % 2 == 0 and i < 32:
            image = Image(height=6, width=8, encoding="rgb8", step=24, data=_frame(i // 2).tobytes())
            image.header.stamp.sec, image.header.stamp.nanosec = 100, i * 20 * MS
            image_pub.publish(image)
    ros.wait_for(lambda: recorder.written == {"/joint_states": 40, "/camera/scene/image_raw": 16}, 10, "messages")
    result = call("stop")
    assert result.success
    bag = tmp_path / "bags" / result.message.rsplit("/", 1)[-1]
    assert bag.is_dir() and (bag / "instruction.txt").read_text().strip() == "wave"
    assert not any((tmp_path / "bags" / ".recording").iterdir())

    cfg = BagConversionConfig(camera_topics={"scene": "/camera/scene/image_raw"}, state_joint_names=["j1", "j2", "j3"])
    summary = convert_bag(bag, tmp_path / "episodes", cfg, progress=False)
    assert summary.frames == 6 and summary.dropped_steps == 0             # images span 0 .. 0.6 s: grid 0 .. 0.6
    with read_episode(summary.episodes[0]) as episode:
        assert episode.instruction == "wave"
        # image j is stamped 40 j ms; the grid is 100 k ms; ties go to the earlier image
        assert [int(episode.images["scene"][k][0, 0, 0]) for k in range(6)] == [0, 2, 5, 7, 10, 12]
        np.testing.assert_allclose(episode.states[1], [5.1, 5.2, 5.3], atol=1e-6)
        np.testing.assert_allclose(episode.actions[1], episode.states[2], atol=1e-6)

    # The instruction topic ends the running episode and starts one with that sentence; "" just ends it.
    instruction_pub = pub_node.create_publisher(String, "/gem_recorder/instruction", 10)
    ros.wait_for(lambda: instruction_pub.get_subscription_count(), 10, "instruction subscriber")
    instruction_pub.publish(String(data="stack the cubes"))
    ros.wait_for(lambda: recorder.recording, 10, "recording started by the instruction topic")
    instruction_pub.publish(String(data=""))
    ros.wait_for(lambda: not recorder.recording, 10, "recording stopped by an empty instruction")
    sentences = sorted((b / "instruction.txt").read_text().strip() for b in (tmp_path / "bags").iterdir()
                       if b.name != ".recording")
    assert sentences == ["stack the cubes", "wave"]


@pytest.mark.ros
def test_recorder_start_twice_is_refused_and_stop_is_idempotent(ros, tmp_path):
    from rclpy.parameter import Parameter

    from gem_ros.nodes.recorder_node import RecorderNode

    recorder = ros.add(RecorderNode(context=ros.context, parameter_overrides=[
        Parameter("topics", value=["/gem_record_test/js:sensor_msgs/msg/JointState"]),
        Parameter("out_dir", value=str(tmp_path)), Parameter("storage", value="sqlite3")]))
    assert recorder.stop_recording() is None
    path = recorder.start_recording("a")
    with pytest.raises(RuntimeError, match="already recording"):
        recorder.start_recording()
    final = recorder.stop_recording()
    assert final == path and (final / "metadata.yaml").exists() and list(final.glob("*.db3"))
    assert recorder.stop_recording() is None


def test_cli_record_passes_ros_arguments_to_the_recorder(monkeypatch):
    recorder_node = pytest.importorskip("gem_ros.nodes.recorder_node")
    seen = []
    monkeypatch.setattr(recorder_node, "main", seen.append)
    assert main(["record", "--ros-args", "-p", "out_dir:=bags"]) == 0
    assert seen == [["gem_recorder", "--ros-args", "-p", "out_dir:=bags"]]
