"""A recorder killed mid-episode loses at most the last second: periodic flushes, then recovery into a complete bag."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.rosbag2.storage_mcap import McapReader  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from gem_train.data.episodes import read_episode  # noqa: E402
from gem_train.record import BagConversionConfig, convert_bag, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STORE = get_typestore(Stores.ROS2_KILTED)
JS = "sensor_msgs/msg/JointState"
MS = 1_000_000


def joint_state(i: int) -> bytes:
    T = STORE.types
    msg = T[JS](header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=100, nanosec=i * 10 * MS),
                                                frame_id=""),
                name=["j1"], position=np.array([float(i)]), velocity=np.zeros(0), effort=np.zeros(0))
    return bytes(STORE.serialize_cdr(msg, JS))


def read_all(bag: Path) -> list[tuple[str, int, bytes]]:
    with Reader(bag) as reader:
        return [(c.topic, t, bytes(d)) for c, t, d in reader.messages()]


def staged_copy(bag: Path, out_dir: Path, data: bytes, instruction: str = "wave") -> Path:
    """out_dir/.recording/<bag name> holding `data` as its storage file, as a killed recorder leaves it."""
    staging = out_dir / ".recording" / bag.name
    staging.mkdir(parents=True)
    storage = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
    (staging / storage.name).write_bytes(data)
    (staging / "instruction.txt").write_text(instruction + "\n")
    return staging


def write_flushed_bag(path: Path, chunks: int, per_chunk: int, storage=StoragePlugin.MCAP) -> list[bytes]:
    """A finished bag of `chunks` flushes of `per_chunk` JointStates (1 ms apart); returns the messages in order."""
    from gem_ros.nodes.bag_recovery import flush_bag

    written = []
    with Writer(path, version=9, storage_plugin=storage) as writer:
        conn = writer.add_connection("/joint_states", JS, typestore=STORE)
        for i in range(chunks * per_chunk):
            written.append(joint_state(i))
            writer.write(conn, 10**9 + i * MS, written[-1])
            if (i + 1) % per_chunk == 0:
                flush_bag(writer)
    return written


def test_recovery_of_a_cut_mcap_keeps_every_complete_chunk(tmp_path):
    from gem_ros.nodes.bag_recovery import recover_recordings

    bag = tmp_path / "episode_1"
    written = write_flushed_bag(bag, chunks=5, per_chunk=7)
    data = (bag / "episode_1.mcap").read_bytes()
    reader = McapReader(bag / "episode_1.mcap")
    reader.open()
    chunks = [(c.chunk_start_offset, c.chunk_start_offset + c.chunk_length) for c in reader.chunks]
    reader.close()
    assert len(chunks) == 5
    cuts = {0, 5, 8, 20, len(data) - 1, len(data) - 40, chunks[-1][1] + 10}
    for start, end in chunks:
        cuts |= {start + 3, start + 60, (start + end) // 2, end - 1, end, end + 5}
    for cut in sorted(cuts):
        out = tmp_path / f"cut_{cut}"
        staging = staged_copy(bag, out, data[:cut])
        [summary] = recover_recordings(out)
        assert not summary.error, summary.report()
        complete = sum(7 for _, end in chunks if end <= cut)
        started = sum(7 for start, _ in chunks if start < cut)
        recovered = read_all(out / bag.name)
        assert complete <= len(recovered) <= started, (cut, summary.report())
        assert [d for _, _, d in recovered] == written[:len(recovered)]        # the same messages, in order
        assert summary.total == len(recovered) and summary.messages == ({"/joint_states": len(recovered)}
                                                                        if recovered else {})
        assert (out / bag.name / "instruction.txt").read_text() == "wave\n"
        assert not staging.exists() and not any((out / ".recording").iterdir())
    # The finished bag itself (footer and all) recovers whole.
    assert summary.total == 35 and summary.seconds == pytest.approx(0.034)
    # A tail of zeros (what a power cut can leave) ends the reading; nothing is invented from it.
    out = tmp_path / "zeros"
    staged_copy(bag, out, data[:chunks[2][1] + 3] + bytes(4096))
    [summary] = recover_recordings(out)
    assert summary.total == 21 and "damaged record" in summary.stopped and summary.lost_bytes > 3000


def test_recovery_refuses_clearly_and_keeps_the_original(tmp_path):
    from gem_ros.nodes.bag_recovery import recover_recording, recover_recordings

    bag = tmp_path / "episode_1"
    write_flushed_bag(bag, chunks=1, per_chunk=3)
    junk = staged_copy(bag, tmp_path / "junk", b"PK\x03\x04 this is a zip file, not a bag")
    [summary] = recover_recordings(tmp_path / "junk")
    assert "episode_1.mcap: not an MCAP file" in summary.error and summary.bag is None
    assert (junk / "episode_1.mcap").exists() and not (tmp_path / "junk" / "episode_1").exists()
    assert [p.name for p in (tmp_path / "junk" / ".recording").iterdir()] == ["episode_1"]   # no temp left
    with pytest.raises(ValueError, match="no .mcap or .db3 file"):
        recover_recording(tmp_path)
    assert main(["recover", str(tmp_path / "junk")]) == 1 and main(["recover", str(tmp_path / "nope")]) == 1
    (tmp_path / "clean" / ".recording").mkdir(parents=True)
    assert main(["recover", str(tmp_path / "clean")]) == 0      # nothing to recover is no failure

    # A recorder still writing it holds its lock: recovery leaves it alone.
    live = staged_copy(bag, tmp_path / "live", (bag / "episode_1.mcap").read_bytes()[:100])
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        [summary] = recover_recordings(tmp_path / "live")
    finally:
        os.close(fd)
    assert "in use" in summary.error and live.exists()


def test_a_killed_recovery_is_finished_by_the_next_one(tmp_path):
    from gem_ros.nodes.bag_recovery import recover_recordings

    bag = tmp_path / "episode_1"
    write_flushed_bag(bag, chunks=2, per_chunk=4)
    data = (bag / "episode_1.mcap").read_bytes()
    out = tmp_path / "out"
    staging = staged_copy(bag, out, data[:-100])
    stale = out / ".recording" / "episode_1.recovering" / "episode_1"     # killed while writing its temp copy
    stale.mkdir(parents=True)
    (stale / "episode_1.mcap").write_bytes(data[:50])
    removing = out / ".recording" / "episode_0.done"                       # killed while removing an original
    removing.mkdir()
    (removing / "episode_0.mcap").write_bytes(data)
    [summary] = recover_recordings(out)
    assert summary.total == 8 and not stale.parent.exists() and not staging.exists() and not removing.exists()

    # Killed after the rename, before the original was removed: the next run only removes it (no second copy).
    shutil.copytree(out / "episode_1", tmp_path / "keep")
    staged_copy(bag, out, data[:-100])
    [summary] = recover_recordings(out)
    assert "recovered before" in summary.report() and not any((out / ".recording").iterdir())
    assert read_all(out / "episode_1") == read_all(tmp_path / "keep")
    # An unrelated bag of the same name is never overwritten.
    staged_copy(bag, out, data)
    (out / "episode_1" / "recovered.txt").write_text("/somewhere/else\n")
    [summary] = recover_recordings(out)
    assert "exists; not overwriting" in summary.error and (out / ".recording" / "episode_1").exists()


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3], ids=["mcap", "sqlite3"])
def test_a_flush_survives_a_writer_that_never_closes(tmp_path, storage):
    """What the OS holds after flush_bag is what a kill -9 leaves: every flushed message comes back."""
    from gem_ros.nodes.bag_recovery import flush_bag, recover_recording

    bag = tmp_path / "episode_1"
    writer = Writer(bag, version=9, storage_plugin=storage)
    writer.open()
    conn = writer.add_connection("/joint_states", JS, typestore=STORE)
    for i in range(30):
        writer.write(conn, 10**9 + i * MS, joint_state(i))
        if i == 19:
            flush_bag(writer)
    killed = tmp_path / "killed"
    shutil.copytree(bag, killed)                # the files as they are now, writer still open
    writer.close()
    summary = recover_recording(killed)
    assert summary.bag == tmp_path / "killed_recovered" and killed.exists()    # outside .recording: kept
    recovered = read_all(summary.bag)
    assert 20 <= len(recovered) <= 30 and [d for _, _, d in recovered] == [joint_state(i) for i in
                                                                            range(len(recovered))]


def publish_episode(joints_pub, image_pub, duration_s: float) -> list[float]:
    """50 Hz JointStates (position = index) and 10 Hz 8x6 images, stamped with wall time, for `duration_s`;
    returns the monotonic time each joint state was sent (bench/fault_soak.py uses it too)."""
    from sensor_msgs.msg import Image, JointState

    sent, t0 = [], time.monotonic()
    while time.monotonic() - t0 < duration_s:
        i = len(sent)
        msg = JointState(name=["j1"], position=[float(i)])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
        joints_pub.publish(msg)
        if i % 5 == 0:
            image = Image(height=6, width=8, encoding="rgb8", step=24, data=bytes([i % 256]) * 144)
            image.header = msg.header
            image_pub.publish(image)
        sent.append(time.monotonic())
        time.sleep(0.02)
    return sent


def _start_recording(ros, node, service: str) -> None:
    """Trigger the recorder's start; a retry that finds it already recording counts as started.

    A DDS service response can be lost when it is sent before the server has matched the client's response
    reader (wait_for_service only sees the request side): a loaded CI run lost one. Re-sending is safe here.
    """
    from std_srvs.srv import Trigger

    client = node.create_client(Trigger, service)
    assert client.wait_for_service(timeout_sec=20), service
    for attempt in range(3):
        future = client.call_async(Trigger.Request())
        try:
            ros.wait_for(future.done, 10, service)
        except AssertionError:
            continue
        result = future.result()
        assert result.success or (attempt and result.message.startswith("already recording")), result.message
        return
    raise AssertionError(f"no answer from {service} in 3 tries")


@pytest.mark.ros
def test_a_killed_recorder_loses_at_most_the_last_second(ros, tmp_path):
    """gem_recorder in its own process, SIGKILLed 3.4 s into an episode; `gem_record recover`, then convert."""
    from rclpy.node import Node
    from sensor_msgs.msg import Image, JointState

    out = tmp_path / "bags"
    topics = "['/gem_kill_test/joint_states:sensor_msgs/msg/JointState', '/gem_kill_test/image_raw']"
    proc = subprocess.Popen([sys.executable, "-m", "gem_ros.nodes.recorder_node", "--ros-args", "-r",
                             "__node:=gem_kill_recorder", "-p", f"out_dir:={out}", "-p", f"topics:={topics}",
                             "-p", "instruction:=wave"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        node = ros.add(Node("gem_kill_test", context=ros.context))
        joints_pub = node.create_publisher(JointState, "/gem_kill_test/joint_states", 100)
        image_pub = node.create_publisher(Image, "/gem_kill_test/image_raw", 100)
        ros.wait_for(lambda: joints_pub.get_subscription_count() and image_pub.get_subscription_count(), 20,
                     "the recorder's subscriptions")
        _start_recording(ros, node, "/gem_kill_recorder/start")
        # 3.4 s: the recorder's 0.5 s timers (discovery, flush) start together, so the kill comes ~0.4 s after a
        # flush, near the worst case.
        sent = publish_episode(joints_pub, image_pub, 3.4)
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stderr = proc.stderr.read().decode()[-2000:]
    [staging] = (out / ".recording").iterdir()
    assert not (staging / "metadata.yaml").exists()          # it really was cut short
    with pytest.raises(ValueError, match="unfinished recording: `gem_record recover`"):
        convert_bag(staging, tmp_path / "episodes", BagConversionConfig(camera_topics={"scene": "/x"},
                                                                       state_joint_names=["j1"]), progress=False)

    assert main(["recover", str(out)]) == 0, stderr
    bag = out / staging.name
    assert not any((out / ".recording").iterdir()) and (bag / "instruction.txt").read_text().strip() == "wave"
    joints = [m for m in read_all(bag) if m[0] == "/gem_kill_test/joint_states"]
    before_last_second = sum(t <= killed_at - 1.0 for t in sent)
    print(f"sent {len(sent)} joint states, {before_last_second} of them >= 1 s before the kill; "
          f"recovered {len(joints)}")
    assert len(joints) >= before_last_second, stderr
    positions = [STORE.deserialize_cdr(d, JS).position[0] for _, _, d in joints]
    assert positions == list(range(len(joints)))              # nothing out of order, nothing invented

    cfg = BagConversionConfig(camera_topics={"scene": "/gem_kill_test/image_raw"}, state_joint_names=["j1"],
                              joint_state_topic="/gem_kill_test/joint_states", max_age_s=0.15)
    summary = convert_bag(bag, tmp_path / "episodes", cfg, progress=False)
    assert summary.frames >= 10 * (before_last_second / 50) - 3, summary.report()
    with read_episode(summary.episodes[0]) as episode:
        assert episode.instruction == "wave" and episode.num_steps == summary.frames


@pytest.mark.ros
def test_the_recorder_recovers_what_a_killed_one_left_when_it_starts(ros, tmp_path):
    from rclpy.parameter import Parameter

    from gem_ros.nodes.bag_recovery import recover_recordings
    from gem_ros.nodes.recorder_node import RecorderConfig, RecorderNode

    bag = tmp_path / "episode_1"
    written = write_flushed_bag(bag, chunks=3, per_chunk=5)
    data = (bag / "episode_1.mcap").read_bytes()
    out = tmp_path / "bags"
    staging = staged_copy(bag, out, data[:len(data) // 2], instruction="stack")
    recorder = ros.add(RecorderNode(context=ros.context, parameter_overrides=[
        Parameter("topics", value=["/gem_recover_test/js:sensor_msgs/msg/JointState"]),
        Parameter("out_dir", value=str(out))]))
    recovered = read_all(out / "episode_1")
    assert len(recovered) >= 5 and [d for _, _, d in recovered] == written[:len(recovered)]
    assert not staging.exists() and (out / "episode_1" / "instruction.txt").read_text() == "stack\n"

    # Its own recording in progress is locked: a recovery run meanwhile (another process) leaves it alone.
    final = recorder.start_recording("wave")
    [summary] = recover_recordings(out)
    assert "in use" in summary.error and recorder.recording
    assert recorder.stop_recording() == final and (final / "metadata.yaml").exists()
    assert (final / "instruction.txt").read_text() == "wave\n"
    with pytest.raises(ValueError, match="flush_period_s"):
        RecorderConfig(topics=["/a"], out_dir=out, flush_period_s=float("nan"))
