"""gem_sim: the embedded pybullet arm, speaking the topics of a real arm under ros2_control.

`arm` picks the model (gem_ros/sim/arms.py: panda, ur5e, ur10e, xarm7), with the vendor's joint names.
Out: /clock (sim time), joint_states, camera/<name>/image_raw + camera_info (+ depth/image_raw when asked),
gem/task_success (std_msgs/Bool), robot_description (the URDF loaded, latched as robot_state_publisher does).
In: <controller_name>/joint_trajectory (trajectory_msgs/JointTrajectory), and `status_topic`
(gem_msgs/PolicyStatus): a new instruction there (a goal that came through ROS) makes the cube it names the
target, so gem/task_success answers for the cube the goal asked for.
with JointTrajectoryController semantics (see gem_ros/sim/follower.py). Physics advances `step_s` of sim time
per timer tick; when the machine cannot keep up, sim time simply runs slower than wall time, and every node
on `use_sim_time` stays consistent. Names but /clock are relative: in a namespace the arm's topics follow it
(/clock is process-wide, as Gazebo's).
"""
from __future__ import annotations

import threading

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory

from gem_msgs.msg import PolicyStatus

from gem_ros.nodes.params import spin_node
from gem_ros.nodes.conversions import depth_to_image_msg, make_camera_info, rgb_to_image_msg, s_to_stamp, stamp_to_s
from gem_ros.sim.arms import resolved_urdf_text
from gem_ros.sim.follower import TrajectoryFollower
from gem_ros.sim.scene import SimConfig, TabletopSim


class SimNode(Node):
    def __init__(self, sim_config: SimConfig | None = None, **kwargs):
        super().__init__("gem_sim", **kwargs)
        p = self.declare_parameter
        p("seed", 0)
        p("arm", "panda")                 # the model loaded (gem_ros.sim.arms.SIM_ARMS)
        p("controller_name", "arm_controller")
        p("step_s", 0.0125)               # sim time per tick [s], rounded to whole physics steps
        p("real_time_factor", 1.0)        # tick period = step_s / factor (wall); <= 0 = as fast as possible
        p("joint_state_rate_hz", 50.0)
        p("camera_rate_hz", 10.0)
        p("publish_depth", False)
        p("gui", False)                   # pybullet's OpenGL window, for people with a screen
        p("object_colors", [""])          # cubes on the table; [""] = the sim's default (red, green, blue)
        p("coarse_robot_meshes", False)   # draw the Panda with its collision meshes (as some datasets were)
        p("status_topic", "gem/policy_status")   # the policy's instruction sets the target cube; '' = never
        get = lambda name: self.get_parameter(name).value  # noqa: E731
        colors = [c for c in get("object_colors") if c]
        scene = {"arm": get("arm"), "coarse_robot_meshes": bool(get("coarse_robot_meshes")),
                 **({"object_colors": colors} if colors else {})}
        self.sim = TabletopSim(sim_config or SimConfig(seed=get("seed"), gui=bool(get("gui")), **scene))
        # A whole number of physics steps per tick, so /clock advances evenly: 0.02 s at 240 Hz alternated 20.8 and
        # 16.7 ms steps, and the executor's 20 ms ROS-time timer (which cannot fire between /clock updates) lost
        # every fifth tick. Keep step_s below the control period: a timer on sim time can fire at most once per step.
        requested = float(get("step_s"))
        physics_steps = max(1, round(requested * self.sim.cfg.physics_hz))
        self.step_s = physics_steps / self.sim.cfg.physics_hz
        if abs(self.step_s - requested) > 1e-9:
            self.get_logger().info(f"step_s {requested} s -> {self.step_s:.6g} s ({physics_steps} physics steps at "
                                   f"{self.sim.cfg.physics_hz:g} Hz)")
        self._lock = threading.Lock()    # physics, rendering and trajectory updates never interleave
        self._closed = False
        self.instruction = self.sim.reset(get("seed"))
        names, positions, _ = self.sim.joint_state()
        self.follower = TrajectoryFollower(names, positions)
        self.trajectory_errors = 0
        self._ticks = 0
        self._js_every = max(1, round(1.0 / (get("joint_state_rate_hz") * self.step_s)))
        self._cam_every = max(1, round(1.0 / (get("camera_rate_hz") * self.step_s)))
        self._publish_depth = bool(get("publish_depth"))

        self.clock_pub = self.create_publisher(Clock, "/clock", QoSProfile(depth=10))
        self.joint_pub = self.create_publisher(JointState, "joint_states", 50)
        self.success_pub = self.create_publisher(Bool, "gem/task_success", 10)
        # Like robot_state_publisher: a node that reads limits from the topic finds the simulated arm's URDF.
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.description_pub = self.create_publisher(String, "robot_description", latched)
        self.description_pub.publish(String(data=resolved_urdf_text(self.sim.arm)))
        self.camera_pubs = {}
        for cam in self.sim.cfg.cameras:
            base = f"camera/{cam.name}"
            self.camera_pubs[cam.name] = (
                self.create_publisher(Image, f"{base}/image_raw", qos_profile_sensor_data),
                self.create_publisher(CameraInfo, f"{base}/camera_info", qos_profile_sensor_data),
                self.create_publisher(Image, f"{base}/depth/image_raw", qos_profile_sensor_data)
                if self._publish_depth else None)
        self.create_subscription(JointTrajectory, f"{get('controller_name')}/joint_trajectory",
                                 self._on_trajectory, 10)
        self._status_instruction = ""     # last instruction seen on status_topic: only a change re-targets
        if get("status_topic"):
            self.create_subscription(PolicyStatus, get("status_topic"), self._on_status, 10)
        factor = float(get("real_time_factor"))
        self.create_timer(self.step_s / factor if factor > 0 else 1e-4, self.tick)

    @property
    def time_s(self) -> float:
        return self.sim.time_s

    def reset_episode(self, seed: int) -> str:
        """New object layout and home pose; returns the episode's instruction. Pending trajectories are dropped."""
        with self._lock:
            self.instruction = self.sim.reset(seed)
            _, positions, _ = self.sim.joint_state()
            self.follower.reset(positions)
        return self.instruction

    def set_instruction(self, instruction: str) -> str:
        """Make the cube `instruction` names the target (layout unchanged); ValueError if it names none."""
        with self._lock:
            self.sim.set_instruction(instruction)
            self.instruction = instruction
        return instruction

    def outcome(self) -> str:
        """"success", "wrong object" (another cube lifted) or "failure" (TabletopSim.outcome)."""
        with self._lock:
            return self.sim.outcome()

    def _on_status(self, msg: PolicyStatus) -> None:
        # Edge-triggered: the 50 Hz status repeats the previous goal's instruction for a while after a reset, and
        # that stale copy must not undo the new episode's target.
        if msg.instruction == self._status_instruction:
            return
        self._status_instruction = msg.instruction
        if not msg.instruction:
            return
        try:
            self.set_instruction(msg.instruction)
        except ValueError as error:   # the task cannot be scored for it; the target stays
            self.get_logger().warning(f"task success still refers to '{self.instruction}': {error}")

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        times = [pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9 for pt in msg.points]
        positions = [list(pt.positions) for pt in msg.points]
        try:
            with self._lock:
                self.follower.set_trajectory(list(msg.joint_names), stamp_to_s(msg.header.stamp), times,
                                             positions, self.sim.time_s)
        except ValueError as error:   # like JTC: a malformed goal is rejected and the arm keeps its current target
            self.trajectory_errors += 1
            self.get_logger().error(f"rejected trajectory: {error}", throttle_duration_sec=1.0)

    def tick(self) -> None:
        with self._lock:
            if self._closed:   # an executor thread may still run a tick it took before the node was destroyed
                return
            target = self.follower.target(self.sim.time_s)
            self.sim.set_joint_targets(self.follower.joint_names, target)
            self.sim.step(self.step_s)
            self._ticks += 1
            stamp = s_to_stamp(self.sim.time_s)
            self.clock_pub.publish(Clock(clock=stamp))
            if self._ticks % self._js_every == 0:
                names, pos, vel = self.sim.joint_state()
                msg = JointState(name=names, position=pos.tolist(), velocity=vel.tolist())
                msg.header.stamp = stamp
                self.joint_pub.publish(msg)
                self.success_pub.publish(Bool(data=bool(self.sim.task_success())))
            if self._ticks % self._cam_every == 0:
                self._publish_cameras(stamp)

    def _publish_cameras(self, stamp) -> None:
        for cam in self.sim.cfg.cameras:
            rgb, depth = self.sim.render(cam.name)
            image_pub, info_pub, depth_pub = self.camera_pubs[cam.name]
            image_pub.publish(rgb_to_image_msg(rgb, stamp, cam.frame_id))
            k = self.sim.camera_intrinsics(cam.name)
            info_pub.publish(make_camera_info(k.width, k.height, k.fx, k.fy, k.cx, k.cy, cam.frame_id, stamp))
            if depth_pub is not None:
                depth_pub.publish(depth_to_image_msg(depth, stamp, cam.frame_id))

    def destroy_node(self) -> None:
        with self._lock:
            self._closed = True
            self.sim.close()
        super().destroy_node()


def main(args=None) -> None:
    spin_node(SimNode, args)

