"""gem_policy in-process over rclpy: lifecycle, chunks, action goals (feedback, cancel, pre-emption), stale input."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from gem_msgs.msg import ActionChunk, PolicyStatus  # noqa: E402
from gem_ros.commander import GemCommander  # noqa: E402
from gem_ros.nodes.conversions import rgb_to_image_msg  # noqa: E402
from gem_ros.nodes.policy_node import PolicyNode  # noqa: E402
from gem_ros.nodes.spinning import events_executor_available  # noqa: E402

JOINTS = [f"j{i}" for i in range(9)]


class FakeRobot:
    """Publishes two cameras (80x80, resized by the node to the checkpoint's 64x64) and joint states, on relative
    names: in the namespace of `node`, as a robot driver launched there would."""

    def __init__(self, node: Node):
        self.node = node
        self.cameras_on = True
        self.pubs = {c: node.create_publisher(type(rgb_to_image_msg(np.zeros((1, 1, 3), np.uint8))),
                                              f"camera/{c}/image_raw", 10) for c in ("scene", "wrist")}
        self.joint_pub = node.create_publisher(JointState, "joint_states", 10)
        self.image = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
        node.create_timer(0.03, self.tick)

    def tick(self):
        stamp = self.node.get_clock().now().to_msg()
        if self.cameras_on:
            for cam, pub in self.pubs.items():
                pub.publish(rgb_to_image_msg(self.image, stamp, f"{cam}_optical_frame"))
        self.joint_pub.publish(JointState(header=rgb_to_image_msg(self.image[:1, :1], stamp).header,
                                          name=list(reversed(JOINTS)), position=[0.1] * 9))


@pytest.fixture
def setup(ros, tiny_checkpoint_dir):
    policy = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=JOINTS), Parameter("max_observation_age_s", value=0.3),
        Parameter("success_topic", value="")]))
    probe = ros.add(Node("probe", context=ros.context))
    robot = FakeRobot(probe)
    seen = {"chunks": [], "status": [], "diag": []}
    probe.create_subscription(ActionChunk, "/gem/action_chunk", seen["chunks"].append, 100)
    probe.create_subscription(PolicyStatus, "/gem/policy_status", seen["status"].append, 10)
    probe.create_subscription(DiagnosticArray, "/diagnostics", seen["diag"].append, 10)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    yield policy, probe, robot, seen
    policy.worker.shutdown()


@pytest.mark.parametrize("ros", ["auto", pytest.param("events", marks=pytest.mark.skipif(
    not events_executor_available(), reason="rclpy has no EventsExecutor"))], indirect=True)  # policy_executor:=events
def test_goal_produces_chunks_feedback_and_cancel_holds(ros, setup):
    policy, probe, robot, seen = setup
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    task = commander.run_instruction("pick up the red cube", timeout=60.0)
    ros.wait_for(lambda: sum(c.num_points > 0 for c in seen["chunks"]) >= 3, 60, "three chunks")
    chunk = next(c for c in seen["chunks"] if c.num_points > 0)
    assert (chunk.num_points, chunk.num_joints) == (8, 9) and len(chunk.positions) == 72
    assert np.all(np.isfinite(chunk.positions)) and chunk.action_space == "absolute_joint"
    ros.wait_for(lambda: task.feedback() is not None, 10, "feedback")
    assert task.feedback().state in ("RUNNING", "HOLDING") and 0.0 <= task.feedback().progress <= 1.0
    ros.wait_for(lambda: any(s.state == PolicyStatus.RUNNING for s in seen["status"]), 10, "RUNNING status")

    before = len(seen["chunks"])
    task.cancel()
    result = task.wait(20)
    assert result is not None and result.outcome_name == "CANCELED"
    ros.wait_for(lambda: any(c.num_points == 0 for c in seen["chunks"][before:]), 10, "an empty (hold) chunk")
    hasty = commander.run_instruction("pick up the red cube", timeout=60.0)
    hasty.cancel()   # before the server answered: sent once it accepts, not lost
    assert hasty.wait(20).outcome_name == "CANCELED"
    commander.close()


def test_new_goal_preempts_old_and_stale_camera_holds_with_diagnostic(ros, setup):
    policy, probe, robot, seen = setup
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    first = commander.run_instruction("pick up the red cube", timeout=60.0)
    ros.wait_for(lambda: any(c.num_points > 0 for c in seen["chunks"]), 60, "a chunk")
    second = commander.run_instruction("pick up the blue cube", timeout=60.0)
    assert first.wait(20).outcome_name == "PREEMPTED"
    assert policy.worker.snapshot().instruction == "pick up the blue cube"

    robot.cameras_on = False   # cameras die: the node must hold and say why
    ros.wait_for(lambda: policy.worker.snapshot().holding, 10, "hold on stale camera")
    assert "camera" in policy.worker.snapshot().reason
    ros.wait_for(lambda: any(c.num_points == 0 for c in seen["chunks"]), 5, "hold chunk")
    ros.wait_for(lambda: any(st.level == DiagnosticStatus.ERROR for d in seen["diag"] for st in d.status),
                 5, "diagnostic error")
    ros.wait_for(lambda: any(s.state == PolicyStatus.HOLDING for s in seen["status"]), 5, "HOLDING status")

    robot.cameras_on = True    # fresh input again: it resumes on its own
    ros.wait_for(lambda: not policy.worker.snapshot().holding, 10, "resume")
    second.cancel()
    assert second.wait(20).outcome_name == "CANCELED"
    commander.close()


def test_a_compressed_camera_gives_the_policy_the_same_pixels_as_a_raw_one(ros, tiny_checkpoint_dir):
    """scene over CompressedImage (PNG, decoded only when the policy picks a frame), wrist raw, same picture."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    policy = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=JOINTS), Parameter("max_observation_age_s", value=0.3),
        Parameter("success_topic", value=""), Parameter("camera_transports", value=["compressed", "raw"]),
        Parameter("camera_topics", value=["/camera/scene/image_raw/compressed", "/camera/wrist/image_raw"])]))
    probe = ros.add(Node("compressed_probe", context=ros.context))
    robot = FakeRobot(probe)
    del robot.pubs["scene"]
    png = cv2.imencode(".png", robot.image[..., ::-1])[1].tobytes()
    compressed = probe.create_publisher(CompressedImage, "/camera/scene/image_raw/compressed", 10)
    sent = [0]
    corrupt_every_other = [False]

    def publish_scene():
        sent[0] += 1
        data = b"\xff\xd8 not a png" if corrupt_every_other[0] and sent[0] % 2 else png
        compressed.publish(CompressedImage(header=rgb_to_image_msg(
            robot.image[:1, :1], probe.get_clock().now().to_msg()).header, format="png", data=data))

    probe.create_timer(0.03, publish_scene)
    diagnostics = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    policy.worker.run_instruction("pick up the red cube")
    ros.wait_for(lambda: policy.worker.snapshot().chunks >= 2, 60, "two chunks from the compressed camera")
    images = policy._last_observation.images
    np.testing.assert_array_equal(images["scene"], images["wrist"])
    # Every other frame corrupt: those are dropped (and counted on /diagnostics), the policy goes on from the others.
    # An unreadable header is refused on arrival (rejected_frames), a body that fails to decode later (undecodable).
    corrupt_every_other[0], chunks = True, policy.worker.snapshot().chunks
    ros.wait_for(lambda: any(kv.key in ("rejected_frames", "undecodable_frames") for d in diagnostics
                             for st in d.status for kv in st.values), 20, "dropped frames on /diagnostics")
    ros.wait_for(lambda: policy.worker.snapshot().chunks >= chunks + 2, 60, "chunks despite corrupt frames")
    policy.worker.shutdown()


def test_configure_fails_clearly_on_schema_mismatch(ros, tiny_checkpoint_dir, tmp_path):
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("camera_names", value=["front", "wrist"]), Parameter("state_joint_names", value=JOINTS)]))
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "checkpoint cameras" in node._status_reason
    on_cpu = [Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
              Parameter("state_joint_names", value=JOINTS)]
    graphs = ros.add(PolicyNode(context=ros.context,
                                parameter_overrides=on_cpu + [Parameter("inference_mode", value="cuda_graph")]))
    assert graphs.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "needs a CUDA device" in graphs._status_reason
    typo = ros.add(PolicyNode(context=ros.context, parameter_overrides=on_cpu + [Parameter("inference_mode",
                                                                                           value="fast")]))
    assert typo.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "not one of" in typo._status_reason
    # A checkpoint that names its state joints: another robot's (or a reordered) list is refused, not misread.
    from gem_ros.demo import ARM_JOINTS, FINGERS, make_random_sim_checkpoint

    named = make_random_sim_checkpoint(tmp_path)
    trained_on = ARM_JOINTS + FINGERS
    swapped = [trained_on[1], trained_on[0], *trained_on[2:]]   # the same joints, two of them reordered
    wrong = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(named)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=swapped)]))
    assert wrong.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "io.state_names" in wrong._status_reason and "panda_joint2" in wrong._status_reason
    missing = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter("checkpoint", value="")]))
    assert missing.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "checkpoint" in missing._status_reason


def test_lifecycle_deactivate_cleanup_and_configure_again(ros, setup, monkeypatch):
    policy, probe, robot, seen = setup
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    running = commander.run_instruction("pick up the red cube", timeout=0.0)   # no timeout: ends only if told
    ros.wait_for(lambda: any(c.num_points > 0 for c in seen["chunks"]), 60, "a chunk")
    assert policy.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    ended = running.wait(20)   # deactivating ends the running goal (the arm holds) instead of leaving it open
    assert ended is not None and ended.outcome_name != "SUCCEEDED" and "deactivated" in ended.reason
    refused = commander.run_instruction("pick up the red cube", timeout=0.0)   # inactive: nothing would run it
    ros.wait_for(refused.is_done, 10, "the goal's answer")
    assert refused.result().outcome_name == "ERROR" and "rejected" in refused.result().reason
    commander.close()
    assert policy.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert policy.policy is None and policy.worker is None
    ros.wait_for(lambda: probe.count_publishers("/gem/action_chunk") == 0, 10, "chunk publisher removed")
    loaded_at_normal_priority = []

    @contextlib.contextmanager
    def recording_normal_priority():   # in an integrator's process the executor thread may be real-time
        loaded_at_normal_priority.append(False)
        yield
        loaded_at_normal_priority[-1] = policy.policy is not None

    monkeypatch.setattr("gem_ros.nodes.policy_node.normal_priority", recording_normal_priority)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert loaded_at_normal_priority == [True]
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    ros.wait_for(lambda: probe.count_publishers("/gem/action_chunk") == 1, 10, "chunk publisher back")


@pytest.fixture(scope="module")
def depth_checkpoint_dir(tmp_path_factory, tiny_backbone_dir):
    """A tiny checkpoint with a depth expert whose selected layers stop below the VLM's last one."""
    import torch

    from gem_ros.core.policy.gem_vla import GemVLAPolicy
    from gem_ros.core.policy.normalizer import MinMaxNormalizer
    from gem_ros.core.policy.tiny import tiny_policy_config
    from gem_ros.core.policy.tiny_depth import tiny_depth_expert_config

    torch.manual_seed(0)
    config = tiny_policy_config(depth_expert=tiny_depth_expert_config(vlm_hidden_size=64, image_size=32, init="random").to_dict())
    policy = GemVLAPolicy.build(config, tiny_backbone_dir, MinMaxNormalizer(-np.ones(9), np.ones(9)), device="cpu")
    return policy.save_pretrained(tmp_path_factory.mktemp("depth_ckpt") / "tiny_depth_policy")


def test_predicted_depth_topic_follows_the_chunks(ros, depth_checkpoint_dir, tiny_checkpoint_dir):
    from sensor_msgs.msg import Image

    policy = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(depth_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=JOINTS), Parameter("success_topic", value=""),
        Parameter("predicted_depth_every_n_chunks", value=2), Parameter("predicted_depth_steps", value=2)]))
    probe = ros.add(Node("depth_probe", context=ros.context))
    FakeRobot(probe)
    depth = {"scene": [], "wrist": []}
    chunks = []
    for cam in depth:
        probe.create_subscription(Image, f"/gem/predicted_depth/{cam}", depth[cam].append, 10)
    probe.create_subscription(ActionChunk, "/gem/action_chunk", chunks.append, 100)
    assert policy.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert not policy.policy.truncated    # the depth expert reads the VLM's last layer: nothing was dropped
    assert policy.trigger_activate() == TransitionCallbackReturn.SUCCESS
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    task = commander.run_instruction("pick up the red cube", timeout=60.0)
    try:
        ros.wait_for(lambda: len(depth["scene"]) >= 2 and len(depth["wrist"]) >= 2, 60, "two depth images per camera")
        image = depth["scene"][0]
        assert (image.height, image.width, image.encoding) == (32, 32, "rgb8")
        chunk_stamps = {(c.header.stamp.sec, c.header.stamp.nanosec) for c in chunks if c.num_points}
        assert (image.header.stamp.sec, image.header.stamp.nanosec) in chunk_stamps   # the chunk's observation
        produced = max(c.chunk_index for c in chunks if c.num_points) + 1
        assert len(depth["scene"]) <= produced // 2 + 1                               # every 2nd chunk only
    finally:
        task.cancel()
        task.wait(20)
        commander.close()
        policy.worker.shutdown()
    # A checkpoint without a depth expert cannot publish depth: configure says so instead of failing later.
    plain = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=JOINTS), Parameter("predicted_depth_every_n_chunks", value=1)]))
    assert plain.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "no depth expert" in plain._status_reason


def test_diagnostics_name_the_inference_mode_and_warn_when_graph_capture_failed(ros, setup):
    policy, probe, robot, seen = setup
    ros.wait_for(lambda: any(st.name == "gem_policy: policy" for d in seen["diag"] for st in d.status), 5, "diagnostics")
    values = {kv.key: kv.value for kv in seen["diag"][-1].status[0].values}
    assert values["inference_mode"] == "static"   # auto on a CPU
    policy.policy.capture_errors["VLM"] = "RuntimeError: operation not permitted when stream is capturing"
    seen["diag"].clear()
    ros.wait_for(lambda: any("cuda_graph_capture_failed" in {kv.key for kv in st.values}
                             for d in seen["diag"] for st in d.status), 5, "capture failure in diagnostics")
    status = next(st for d in seen["diag"] for st in d.status
                  if "cuda_graph_capture_failed" in {kv.key for kv in st.values})
    assert status.level >= DiagnosticStatus.WARN and "not permitted" in {kv.key: kv.value for kv in status.values}[
        "cuda_graph_capture_failed"]


def test_diagnostics_report_input_rates_queue_depths_and_frames_of_a_wrong_encoding(ros, setup):
    policy, probe, robot, seen = setup   # the fake robot: 2 cameras and joint states every 30 ms (~33 Hz)

    def latest_values():
        return {kv.key: kv.value for d in seen["diag"][-1:] for st in d.status for kv in st.values}

    def rates_flow() -> bool:   # a loaded CI machine slows the fake robot's timer: ask for a rate, not 33 Hz
        values = latest_values()
        return all(0 < float(values.get(f"rate_{k}_hz", 0)) < 100 for k in ("camera/scene", "joint_states"))

    ros.wait_for(rates_flow, 10, "input rates on /diagnostics")
    assert int(latest_values()["queued_camera/wrist"]) >= 1
    yuv = rgb_to_image_msg(robot.image, probe.get_clock().now().to_msg(), "scene_optical_frame")
    yuv.encoding = "yuv422"
    wrong_camera = probe.create_publisher(type(yuv), "/camera/scene/image_raw", 10)
    ros.wait_for(lambda: wrong_camera.get_subscription_count() > 0, 10, "the policy subscribed")
    wrong_camera.publish(yuv)
    ros.wait_for(lambda: "rejected_frames" in latest_values(), 10, "the refused frame on /diagnostics")
    assert "yuv422" in latest_values()["last_frame_error"] and "scene" in latest_values()["last_frame_error"]
    assert any(st.level >= DiagnosticStatus.WARN for d in seen["diag"] for st in d.status
               if "rejected_frames" in {kv.key for kv in st.values})


def test_cpu_threads_set_torch_threads_and_a_negative_count_is_refused(ros, tiny_checkpoint_dir):
    import torch

    base = [Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
            Parameter("state_joint_names", value=JOINTS)]
    bad = ros.add(PolicyNode(context=ros.context, parameter_overrides=base + [Parameter("cpu_threads", value=-1)]))
    assert bad.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "cpu_threads must be >= 0" in bad._status_reason
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = ros.add(PolicyNode(context=ros.context, parameter_overrides=base + [Parameter("cpu_threads", value=1)]))
        assert one.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)   # process-wide: the rest of the suite keeps its threads


def test_compile_modules_is_refused_off_cuda_and_compiles_the_warmup_programs_at_configure(
        ros, tiny_checkpoint_dir, monkeypatch):
    """torch.compile itself is measured on a GPU (bench/policy_latency.py --compile); here: the refusal on a CPU, and
    that with it allowed the warm-up at configure builds its programs through compile (faked: no compiler run)."""
    base = [Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
            Parameter("state_joint_names", value=JOINTS), Parameter("compile_modules", value=True)]
    cpu = ros.add(PolicyNode(context=ros.context, parameter_overrides=base))
    assert cpu.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "compile_modules needs a CUDA device" in cpu._status_reason
    through_compile = []

    def fake_compiled(fn):
        through_compile.append(fn.__name__)
        return fn

    monkeypatch.setattr("gem_ros.nodes.policy_node.compile_supported", lambda device: True)
    monkeypatch.setattr("gem_ros.core.policy.static_inference.compiled", fake_compiled)
    monkeypatch.setattr("gem_ros.core.policy.rdt.compiled", fake_compiled)
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=base + [
        Parameter("inference_mode", value="static")]))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node._inference_mode == "static+compile" and node.policy.compile_modules
    assert {"_text_layer", "run"} <= set(through_compile), through_compile   # VLM layers and RDT blocks
    hf = ros.add(PolicyNode(context=ros.context, parameter_overrides=base + [Parameter("inference_mode", value="hf")]))
    assert hf.trigger_configure() == TransitionCallbackReturn.FAILURE   # hf has nothing compile could apply to


def test_warmup_instructions_prepare_their_prompt_plans_at_configure(ros, tiny_checkpoint_dir):
    """On a GPU this is what captures the CUDA graphs before the first goal; on a CPU the plans show it."""
    long = "pick up the red cube " * 12   # another prompt-length bucket
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint_dir)), Parameter("device", value="cpu"),
        Parameter("state_joint_names", value=JOINTS),
        Parameter("warmup_instructions", value=["pick up the red cube", long])]))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert [key[0][0] for key in node.policy._plans.keys()] == ["pick up the red cube", long]
    assert len(node.policy._programs) == 2


def test_a_storm_of_goals_never_has_two_executing_at_once(ros, setup, monkeypatch):
    """Each accepted goal ends the one before it (ABORTED, outcome PREEMPTED) before it starts EXECUTING itself: at
    every goal state change the server holds at most one EXECUTING goal, and so does every status message."""
    from action_msgs.msg import GoalStatus, GoalStatusArray
    from rclpy.action.server import ServerGoalHandle

    policy, probe, robot, seen = setup
    server = policy.goals.action_server
    executing_after_change = []
    update_state = ServerGoalHandle._update_state

    def counting_update_state(handle, event):   # publish_status runs inside: this is what the topic carries
        update_state(handle, event)
        executing_after_change.append(sum(h.status == GoalStatus.STATUS_EXECUTING
                                          for h in list(server._goal_handles.values())))

    monkeypatch.setattr(ServerGoalHandle, "_update_state", counting_update_state)
    on_topic = []
    probe.create_subscription(GoalStatusArray, "/gem/execute_instruction/_action/status",
                              lambda msg: on_topic.append(sum(s.status == GoalStatus.STATUS_EXECUTING
                                                              for s in msg.status_list)), 100)
    commander = GemCommander(node=probe, server_timeout_s=30.0)
    assert commander._client.wait_for_server(timeout_sec=10)
    storm = []

    def send_storm():   # on the spinning thread: rclpy's send_goal_async races with a response taken meanwhile
        timer.cancel()
        storm.extend(commander.run_instruction(f"pick up the red cube {i}", timeout=60.0) for i in range(12))

    timer = probe.create_timer(0.01, send_storm)
    ros.wait_for(lambda: len(storm) == 12, 10, "12 goals sent")
    results = [task.wait(30) for task in storm[:-1]]
    assert all(r is not None and r.outcome_name == "PREEMPTED" for r in results), [r and r.reason for r in results]
    ros.wait_for(lambda: policy.worker.snapshot().instruction == "pick up the red cube 11", 10, "the last goal runs")
    storm[-1].cancel()
    assert storm[-1].wait(20).outcome_name == "CANCELED"
    commander.close()
    assert len(executing_after_change) >= 2 * len(storm) and max(executing_after_change) == 1, executing_after_change
    assert on_topic and max(on_topic) <= 1, on_topic


def _checkpoint_mutations():
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_checkpoint_mutations", Path(__file__).resolve().parents[1] / "bench" / "checkpoint_mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return {m.name: m for m in module.MUTATIONS}, module.mutated_copy


def test_configure_with_a_broken_checkpoint_fails_the_transition_and_logs_why(ros, tiny_checkpoint_dir, tmp_path,
                                                                              capfd, monkeypatch):
    """The four breakages that configured without a word (issue 16): each fails the transition (FAILURE, not a
    silent ERROR) with an ERROR log naming the file; an exception of any other type is logged with its type, and
    the node configures once the fault is gone."""
    mutations, mutated_copy = _checkpoint_mutations()
    on_cpu = [Parameter("device", value="cpu"), Parameter("state_joint_names", value=JOINTS)]
    for name in ("camera_height_1e9", "selected_layers_99", "normalizer_garbage", "backbone_pytorch_model_bin"):
        broken = mutated_copy(tiny_checkpoint_dir, tmp_path / name, mutations[name])
        node = ros.add(PolicyNode(context=ros.context, parameter_overrides=on_cpu + [
            Parameter("checkpoint", value=str(broken))]))
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, name
        logged = capfd.readouterr().err
        error = next((line for line in logged.splitlines() if "[ERROR]" in line and "configure failed" in line), "")
        assert "ValueError" in error and mutations[name].file in error and mutations[name].field in error, logged
        assert mutations[name].file in node.configure_error and node.policy is None and node.worker is None

    def out_of_memory(self):
        raise MemoryError("warm-up allocation failed")

    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=on_cpu + [
        Parameter("checkpoint", value=str(tiny_checkpoint_dir))]))
    monkeypatch.setattr(PolicyNode, "_warm_up", out_of_memory)
    assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    logged = capfd.readouterr().err
    assert any("[ERROR]" in line and "MemoryError: warm-up allocation failed" in line for line in logged.splitlines())
    assert node.configure_error == "MemoryError: warm-up allocation failed"
    monkeypatch.undo()
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS and node.configure_error == ""
