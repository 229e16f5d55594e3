"""gem_policy: managed (lifecycle) node that runs GEM-VLA and publishes action chunks.

configure  load the checkpoint, check its I/O schema against this robot's parameters, warm up once
activate   start the inference worker (a thread; never inside a callback) and the action server
deactivate stop producing chunks, tell the executor to hold
Topics: cameras (Image or CompressedImage per camera), joint_states, gem/task_success, gem/executor_status (what
gem_executor did with each chunk) in; gem/action_chunk, gem/policy_status, /diagnostics out. Action
gem/execute_instruction (gem_msgs/ExecuteInstruction), services ~/set_instruction, ~/succeed
(gem_ros.nodes.goal_server). Optional: gem/predicted_depth/<camera> (sensor_msgs/Image rgb8, the depth expert's
colour-mapped depth of the observation a chunk came from) every `predicted_depth_every_n_chunks` chunks, for
checkpoints with a depth expert.
Names are relative, so a node namespace (`__ns:=/arm1`) moves the whole chain; /diagnostics stays ROS-wide.
Parameters: request_threshold_s, goal_timeout_s and max_executor_rejections take effect when set; the others are
read at configure and may be set only while unconfigured (a set otherwise is refused with the reason;
gem_ros.nodes.param_rules).
"""
from __future__ import annotations

import array
import dataclasses
import time
import traceback

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.qos import qos_profile_sensor_data
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image, JointState

from gem_msgs.msg import ActionChunk, PolicyStatus
from gem_ros.core.inference import ChunkResult, InferenceConfig, InferenceWorker
from gem_ros.core.observation import ObservationBuffer, ObservationConfig
from gem_ros.core.policy.observation import Observation
from gem_ros.core.realtime import normal_priority
from gem_ros.nodes.conversions import (compressed_msg_to_frame, diagnostic_status, image_msg_to_rgb,
                                       rgb_to_image_msg, s_to_stamp, stamp_to_s)
from gem_ros.nodes.goal_server import GoalServer
from gem_ros.nodes.input_health import InputHealth
from gem_ros.nodes.lifecycle import GraphLeavingLifecycleNode
from gem_ros.nodes.param_rules import ParameterRules, Rule, number_check
from gem_ros.nodes.params import spin_node

# One 50 Hz timer: PolicyStatus, which doubles as the heartbeat gem_executor watches (its policy_timeout_s, 0.05 s
# by default: a killed policy is held <= 100 ms later, bench/fault_soak.py), and the input check while a chunk is
# computed (the worker cannot poll then: a camera or /joint_states older than max_observation_age_s holds the arm
# within this period, not after the inference; InferenceWorker.watch). /diagnostics goes out every
# DIAGNOSTICS_EVERY-th tick (5 Hz).
STATUS_PERIOD_S, DIAGNOSTICS_EVERY = 0.02, 10


def compile_supported(device) -> bool:
    """torch.compile of the policy is measured (and its numerics checked) on CUDA only."""
    return device.type == "cuda"


class PolicyNode(GraphLeavingLifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("gem_policy", **kwargs)
        self.policy = self.worker = self.buffer = self.goals = None
        self._configuring = False
        self._active = False   # lifecycle state "active": only then are goals accepted (the worker runs)
        rules = ParameterRules(self)
        at_configure = Rule(when=self._read_at_configure)
        p = lambda name, default, description="": rules.declare(name, default, at_configure, description)  # noqa: E731
        p("checkpoint", "", "GEM-VLA checkpoint folder (safetensors + JSON)")
        p("device", "auto")
        # torch intra-op threads when the policy runs on the CPU (process-wide, kept after cleanup); 0 = leave
        # torch's setting (by default all cores).
        # Leave a core to the rest of the process: with pybullet rendering on the executor thread (gem_demo, 2 cores)
        # 1 thread halved the chunk latency that 2 gave (OpenMP workers then fight the sim for the cores).
        p("cpu_threads", 0)
        p("inference_mode", "auto", "auto | hf | static | cuda_graph (GemVLAPolicy)")
        # Experimental, CUDA with static/cuda_graph only: torch.compile the VLM layers and RDT blocks (H100: 18 ->
        # 13.5 ms/chunk). Each prompt shape compiles once (~15 s), at configure for the warmup_instructions' shapes;
        # an instruction of a new padded length compiles during its first chunk (the arm holds meanwhile).
        p("compile_modules", False)
        # Run once each at configure: builds their prompt plans and, on a GPU, captures the CUDA graphs of their
        # prompt-length buckets, so goals with these (or equally long) instructions start without that pause.
        p("warmup_instructions", ["warm up"])
        p("camera_names", ["scene", "wrist"])
        p("camera_topics", ["camera/scene/image_raw", "camera/wrist/image_raw"], "relative: in the node namespace")
        p("camera_transports", ["raw", "raw"], "raw | compressed, per camera")
        p("joint_state_topic", "joint_states")
        p("state_joint_names", [""], "default: the checkpoint's io.state_names")
        p("max_observation_age_s", 0.3)
        p("max_skew_s", 0.1)
        p("success_topic", "gem/task_success", "std_msgs/Bool; true ends the goal as succeeded; '' = none")
        p("seed", 0)
        # Depth generation runs on the inference thread after a chunk is published, so it delays the next
        # request: keep it rare (0 = off) and its sampler short.
        p("predicted_depth_every_n_chunks", 0)
        p("predicted_depth_steps", 10)
        rules.declare("request_threshold_s", 0.3,
                      Rule(self._not_configuring, self._check_threshold, self._apply_threshold),
                      "next inference when this much of the chunk (+ latency) is left [s]; takes effect at once")
        # A real arm has no task success signal: without a limit a forgotten goal runs until someone cancels it.
        rules.declare("goal_timeout_s", 120.0, Rule(self._not_configuring, number_check(0.0), self._apply_goal_timeout),
                      "longest a goal runs [s] (a goal may ask for less); 0 = no limit; takes effect at once")
        # gem_executor refusing this many chunks in a row as unsafe (a collision, a limit) ends the goal SAFETY_STOP,
        # naming why, instead of holding until the timeout (gem_ros.nodes.goal_server).
        rules.declare("max_executor_rejections", 5,
                      Rule(self._not_configuring, number_check(0.0), self._apply_max_rejections),
                      "chunks in a row gem_executor refuses as unsafe before the goal ends; 0 = never; at once")
        # Called with every ActionChunk (holds included) on the inference thread, before it is published:
        # see gem_ros.nodes.composed.
        self.chunk_listeners: list = []
        self._status_state, self._checkpoint = PolicyStatus.UNCONFIGURED, ""
        self.configure_error = ""   # "<type>: <message>" of the last failed configure (gem_demo prints it)
        self._depth_every, self._depth_ms = 0, None
        self.inputs = InputHealth()   # input rates and refusals for /diagnostics
        self._statuses = 0   # PolicyStatus messages sent; every DIAGNOSTICS_EVERY-th also publishes /diagnostics

    # ------------------------------------------------------------------------------ parameters set at run time
    def _read_at_configure(self) -> str:
        if self.worker is None and not self._configuring:
            return ""
        state = "configuring" if self._configuring else "active" if self._active else "inactive"
        return (f"read at configure and gem_policy is {state}: deactivate and clean it up, set it, then configure "
                "again")

    def _not_configuring(self) -> str:   # configure reads the value meanwhile: a set could be lost
        return "gem_policy is configuring: set it once that is done" if self._configuring else ""

    @staticmethod
    def _check_threshold(value) -> str:
        try:
            InferenceConfig(request_threshold_s=value)
        except ValueError as error:
            return str(error)
        return ""

    def _apply_threshold(self, value: float) -> None:
        worker = self.worker   # None while unconfigured: configure reads the parameter
        if worker is not None:   # one reference swap: the worker thread reads a whole config either way
            worker.cfg = dataclasses.replace(worker.cfg, request_threshold_s=value)

    def _apply_goal_timeout(self, value: float) -> None:
        goals = self.goals
        if goals is not None:
            goals.goal_timeout_s = value

    def _apply_max_rejections(self, value: int) -> None:
        goals = self.goals
        if goals is not None:
            goals.max_executor_rejections = value

    # ------------------------------------------------------------------------------ lifecycle
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.configure_error = ""
        self._configuring = True   # parameters read now: a set meanwhile is refused
        try:
            with normal_priority():   # loading + warm-up (and torch's worker threads) never at real-time priority
                self._configure()
        except Exception as error:  # noqa: BLE001 - rclpy would swallow it (transition ERROR, no log): say why
            self.configure_error = f"{type(error).__name__}: {error}"
            expected = isinstance(error, (ValueError, OSError))   # bad parameters or files; anything else is a bug
            self.get_logger().error(f"configure failed: {self.configure_error}"
                                    + ("" if expected else f"\n{traceback.format_exc()}"))
            self._release()
            self._status_state, self._status_reason = PolicyStatus.ERROR, self.configure_error
            return TransitionCallbackReturn.FAILURE
        finally:
            self._configuring = False
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        import torch

        from gem_ros.core.policy.gem_vla import GemVLAPolicy

        get = lambda name: self.get_parameter(name).value  # noqa: E731
        names, topics, transports = get("camera_names"), get("camera_topics"), get("camera_transports")
        if not (len(names) == len(topics) == len(transports)):
            raise ValueError(f"camera_names ({len(names)}), camera_topics ({len(topics)}) and camera_transports "
                             f"({len(transports)}) must have the same length")
        bad = [t for t in transports if t not in ("raw", "compressed")]
        if bad:
            raise ValueError(f"camera_transports must be 'raw' or 'compressed', got {bad}")
        self._checkpoint = get("checkpoint")
        if not self._checkpoint:
            raise ValueError("parameter 'checkpoint' is empty: give the path of a GEM-VLA checkpoint folder")
        cpu_threads = int(get("cpu_threads"))
        if cpu_threads < 0:
            raise ValueError(f"cpu_threads must be >= 0 (0 = torch's default), got {cpu_threads}")
        depth_every, depth_steps = int(get("predicted_depth_every_n_chunks")), int(get("predicted_depth_steps"))
        if number_check(0.0)(get("max_executor_rejections")):
            raise ValueError(f"max_executor_rejections must be an integer >= 0 (0 = never), got "
                             f"{get('max_executor_rejections')!r}")
        goal_timeout = get("goal_timeout_s")
        bad_timeout = number_check(0.0)(goal_timeout)
        if bad_timeout:
            raise ValueError(f"goal_timeout_s {bad_timeout} (0 = no limit)")
        if depth_every < 0 or depth_steps < 1:
            raise ValueError(f"predicted_depth_every_n_chunks must be >= 0 and predicted_depth_steps >= 1, got "
                             f"{depth_every} and {depth_steps}")
        self.policy = GemVLAPolicy.from_pretrained(self._checkpoint, device=get("device"),
                                                   keep_full_vlm=depth_every > 0)
        if cpu_threads and self.policy.device.type == "cpu":
            torch.set_num_threads(cpu_threads)
        self.policy.inference_mode = get("inference_mode")
        mode = self._inference_mode = self.policy.resolved_inference_mode()   # a bad value fails configure
        if get("compile_modules"):
            if mode not in ("static", "cuda_graph") or not compile_supported(self.policy.device):
                raise ValueError(f"compile_modules needs a CUDA device and inference_mode static or cuda_graph, got "
                                 f"{self.policy.device} and {mode}")
            self.policy.compile_modules = True
            mode = self._inference_mode = f"{mode}+compile"
        if depth_every and self.policy.depth_expert is None:
            raise ValueError(f"predicted_depth_every_n_chunks={depth_every} but checkpoint {self._checkpoint} has "
                             "no depth expert; set it to 0")
        self._depth_every, self._depth_steps, self._last_observation = depth_every, depth_steps, None
        io = self.policy.config.io
        if io.camera_names != list(names):
            raise ValueError(f"checkpoint cameras {io.camera_names} != camera_names parameter {list(names)}")
        joint_names = [n for n in get("state_joint_names") if n] or list(io.state_names)
        if io.state_names and joint_names != list(io.state_names):   # same joints in the same order as in training
            raise ValueError(f"state_joint_names {joint_names} != the checkpoint's io.state_names "
                             f"{list(io.state_names)} (the state vector is read by name, in this order)")
        if len(joint_names) != io.state_dim:
            raise ValueError(f"need {io.state_dim} state joint names (parameter state_joint_names or the checkpoint's "
                             f"io.state_names), got {joint_names}")
        self.buffer = ObservationBuffer(ObservationConfig(camera_names=list(names), joint_names=joint_names,
                                                          max_age_s=get("max_observation_age_s"),
                                                          max_skew_s=get("max_skew_s")))
        self._camera_sizes = {c.name: (c.height, c.width) for c in io.cameras}
        self.inputs.reset()   # diagnostics of this configuration only
        self.policy.reset(get("seed"))
        self._warm_up()
        horizon = io.chunk_len / io.control_rate_hz
        self.worker = InferenceWorker(
            InferenceConfig(request_threshold_s=get("request_threshold_s"), chunk_horizon_s=horizon),
            self.buffer, self._predict, self._now, self._publish_chunk, self._publish_hold,
            camera_sizes=self._camera_sizes, after_chunk=self._maybe_publish_depth)
        handles = self._handles = []   # everything configure creates; cleanup destroys it again
        for name, topic, transport in zip(names, topics, transports):
            msg_type = CompressedImage if transport == "compressed" else Image
            handles.append(self.create_subscription(msg_type, topic, lambda msg, cam=name: self._on_image(cam, msg),
                                                    qos_profile_sensor_data))
        handles.append(self.create_subscription(JointState, get("joint_state_topic"), self._on_joint_state, 50))
        self.chunk_pub = self.create_publisher(ActionChunk, "gem/action_chunk", 10)
        self.status_pub = self.create_publisher(PolicyStatus, "gem/policy_status", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)   # ROS-wide by convention
        self.depth_pubs = {name: self.create_publisher(Image, f"gem/predicted_depth/{name}", 1)
                           for name in (names if depth_every else [])}
        handles += list(self.depth_pubs.values())
        handles += [self.chunk_pub, self.status_pub, self.diag_pub,
                    self.create_timer(STATUS_PERIOD_S, self._on_status_timer)]
        self.goals = GoalServer(self, self.worker, lambda: self._active, self._now,
                                lambda: self.policy.last_timings.get("total", 0.0) if self.policy else 0.0,
                                goal_timeout, get("success_topic"), get("max_executor_rejections"))
        handles += self.goals.handles
        self._status_state, self._status_reason = PolicyStatus.IDLE, "configured"
        threads = f", {torch.get_num_threads()} CPU threads" if self.policy.device.type == "cpu" else ""
        self.get_logger().info(f"loaded {self._checkpoint} on {self.policy.device}{threads} (inference {mode}); "
                               f"cameras {names}")

    def _warm_up(self) -> None:
        io = self.policy.config.io
        instructions = [text for text in self.get_parameter("warmup_instructions").value if text.strip()]
        for instruction in instructions or ["warm up"]:
            dummy = Observation({c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in io.cameras},
                                np.zeros(io.state_dim, np.float32), instruction)
            self.policy.predict_action_chunk(dummy, seed=0)

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.worker.start()
        self._active = True
        self._status_state, self._status_reason = PolicyStatus.IDLE, "active, waiting for an instruction"
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._active = False   # new goals are refused; the running one ends (aborted) when the worker stops
        self.worker.stop("deactivated")
        self.worker.shutdown()
        self._status_state, self._status_reason = PolicyStatus.IDLE, "inactive"
        return super().on_deactivate(state)

    def destroy_node(self) -> None:
        self._release()   # the action server too: Node.destroy_node leaves waitables, and they hold the node
        super().destroy_node()

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        self._status_state, self._status_reason = PolicyStatus.UNCONFIGURED, "cleaned up"
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Destroy what configure created (all of it, or what it got to before it failed) and drop the model."""
        destroyers = ((Subscription, self.destroy_subscription), (Publisher, self.destroy_publisher),
                      (Timer, self.destroy_timer), (Service, self.destroy_service))
        for handle in getattr(self, "_handles", []):
            destroy = next((fn for kind, fn in destroyers if isinstance(handle, kind)), None)
            destroy(handle) if destroy else handle.destroy()   # the action server removes itself
        self._handles = []
        if self.worker is not None:
            self.worker.shutdown()
        self.policy = self.worker = self.buffer = self.goals = None

    # ------------------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, camera: str, msg) -> None:
        source = f"camera/{camera}"
        self.inputs.received(source)
        try:
            # compressed frames stay encoded until the policy picks one (gem_ros.core.observation.EncodedFrame)
            rgb = compressed_msg_to_frame(msg) if isinstance(msg, CompressedImage) else image_msg_to_rgb(msg)
        except ValueError as error:   # a wrong encoding / format: refused, counted on /diagnostics
            self.get_logger().error(self.inputs.rejected(camera, error), throttle_duration_sec=2.0)
            return
        self.buffer.add_image(camera, stamp_to_s(msg.header.stamp), rgb)

    def _on_joint_state(self, msg: JointState) -> None:
        self.inputs.received("joint_states")
        try:
            self.buffer.add_joint_state(stamp_to_s(msg.header.stamp), list(msg.name), list(msg.position))
        except ValueError as error:   # malformed message: report, keep the last good state (it will go stale)
            self.get_logger().error(f"joint state: {error}", throttle_duration_sec=2.0)

    def _on_status_timer(self) -> None:
        worker = self.worker   # a cleanup on another thread may set it to None meanwhile
        if worker is not None:
            worker.watch(self._now())
        self._publish_status()

    # ------------------------------------------------------------------------------ worker callbacks
    def _predict(self, observation):
        chunk = self.policy.predict_action_chunk(observation)
        self._last_observation = observation
        return chunk, self.policy.last_timings

    def _publish_chunk(self, result: ChunkResult) -> None:
        io = self.policy.config.io
        msg = ActionChunk()
        msg.header.stamp = s_to_stamp(result.obs_stamp_s)
        msg.joint_names = list(io.action_names) or [f"action_{i}" for i in range(io.action_dim)]
        msg.dt = 1.0 / io.control_rate_hz
        msg.num_points, msg.num_joints = result.actions.shape
        msg.positions = array.array("d", result.actions.astype(np.float64).tobytes())   # C order = row-major
        msg.action_space = io.action_space
        msg.inference_latency_ms = float(result.latency_ms.get("total", 0.0))
        msg.chunk_index = result.index
        self._emit_chunk(msg)

    def _maybe_publish_depth(self, result: ChunkResult) -> None:
        """After the chunk is out (a cancel does not wait for this): the predicted depth of its observation."""
        if self._depth_every and result.index % self._depth_every == 0 and self._last_observation is not None:
            self._publish_depth(self._last_observation, s_to_stamp(result.obs_stamp_s))

    def _publish_depth(self, observation, stamp) -> None:
        started = time.perf_counter()
        try:
            views = self.policy.predict_depth(observation, num_steps=self._depth_steps)
        except (ValueError, RuntimeError) as error:   # a debug view: it must not stop the arm, so switch it off
            self.get_logger().error(f"predicted depth failed, no longer published: {error}")
            self._depth_every = 0
            return
        for name, view in zip(self.policy.config.io.camera_names, views):
            rgb = (np.clip(view, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            self.depth_pubs[name].publish(rgb_to_image_msg(rgb, stamp, f"{name}_predicted_depth"))
        self._depth_ms = (time.perf_counter() - started) * 1e3

    def _emit_chunk(self, msg: ActionChunk) -> None:
        """In-process listeners first (an executor composed into this process: no DDS hop, no executor wake-up),
        then the topic, which observers and executors in other processes read."""
        for listener in self.chunk_listeners:
            try:
                listener(msg)
            except Exception as error:  # noqa: BLE001 - a listener's bug must not stop the inference thread
                self.get_logger().error(f"in-process chunk listener failed: {error!r}", throttle_duration_sec=1.0)
        self.chunk_pub.publish(msg)

    def _publish_hold(self, reason: str) -> None:
        """An empty chunk tells the executor to stop and hold where it is."""
        msg = ActionChunk()
        msg.header.stamp = s_to_stamp(self._now())
        msg.action_space = self.policy.config.io.action_space if self.policy else ""
        self._emit_chunk(msg)
        self.get_logger().warning(f"hold: {reason}")

    # ------------------------------------------------------------------------------ status
    def _state(self, snap) -> tuple[int, str]:
        if snap is None:
            return self._status_state, getattr(self, "_status_reason", "")
        if snap.holding:
            return PolicyStatus.HOLDING, snap.reason
        if snap.running:
            return PolicyStatus.RUNNING, snap.reason
        return self._status_state, snap.reason

    def _publish_status(self) -> None:
        # Local copies: a cleanup on another thread may set them to None while this timer runs.
        worker, policy, buffer = self.worker, self.policy, self.buffer
        snap = worker.snapshot() if worker else None
        state, reason = self._state(snap)
        timings = policy.last_timings if policy else {}
        msg = PolicyStatus(state=state, state_reason=reason, instruction=snap.instruction if snap else "",
                           checkpoint=self._checkpoint, device=str(policy.device) if policy else "",
                           chunks_produced=snap.chunks if snap else 0)
        msg.header.stamp = self.get_clock().now().to_msg()
        for field, key in (("latency_preprocess_ms", "preprocess"), ("latency_vlm_ms", "vlm"),
                           ("latency_action_expert_ms", "action_expert"), ("latency_postprocess_ms", "postprocess"),
                           ("latency_total_ms", "total")):
            setattr(msg, field, float(timings.get(key, 0.0)))
        self.status_pub.publish(msg)
        self._statuses += 1
        if self._statuses % DIAGNOSTICS_EVERY:
            return
        ages = buffer.health(self._now()) if buffer else {}
        level = {PolicyStatus.HOLDING: DiagnosticStatus.WARN, PolicyStatus.ERROR: DiagnosticStatus.ERROR}.get(
            state, DiagnosticStatus.OK)
        if snap and snap.stale_reasons:
            level = DiagnosticStatus.ERROR
        values = {f"latency_{k}_ms": f"{v:.1f}" for k, v in timings.items()}
        values.update({f"age_{k}_s": f"{v:.3f}" for k, v in ages.items()})
        values["chunks_produced"] = str(snap.chunks if snap else 0)
        level, reason = self.inputs.report(values, buffer, level, reason, self.get_logger())
        if policy is not None:
            values["inference_mode"] = self._inference_mode
            failed = dict(policy.capture_errors)   # copied: the inference thread may add to it
            if failed:   # still correct, but several times slower than configured: say so
                level = max(level, DiagnosticStatus.WARN)
                values["cuda_graph_capture_failed"] = "; ".join(f"{stage}: {err[:200]}"
                                                                for stage, err in failed.items())
                if not reason:
                    reason = "CUDA graph capture failed; running eagerly"
        if self._depth_ms is not None:
            values["latency_predicted_depth_ms"] = f"{self._depth_ms:.1f}"
        diag = DiagnosticArray()
        diag.header.stamp = msg.header.stamp
        # named by node, as gem_executor's: two arms' policies stay apart on the ROS-wide /diagnostics
        diag.status = [diagnostic_status(f"{self.get_fully_qualified_name().lstrip('/')}: policy", level,
                                         reason or "ok", values)]
        self.diag_pub.publish(diag)


def main(args=None) -> None:
    # One executor thread on purpose: inference has its own thread and goals are coroutines. rclpy's
    # MultiThreadedExecutor spent a whole core here (2 x 640x480 x 30 Hz) and dropped half the frames
    # (bench/ros_overhead.py). auto = single here: the events one slows CPU inference (gem_ros.nodes.spinning).
    spin_node(PolicyNode, args, runs_inference=True)

