"""A Panda as a real arm's driver would show it, on wall time and without /clock: joint states at 50 Hz, the scene
and wrist cameras at 10 Hz, and a JointTrajectoryController that jumps to each trajectory's first point. Names are
relative, so it follows its node's namespace. In-process (RobotStandIn) or as a process of its own (run)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.02, 0.02]


class RobotStandIn:
    def __init__(self, node, image_size: int = 96):
        self.node = node
        self.positions = list(HOME)
        self.trajectories: list[JointTrajectory] = []
        self._joints = node.create_publisher(JointState, "joint_states", 10)
        self._cameras = [node.create_publisher(Image, f"camera/{name}/image_raw", 10) for name in ("scene", "wrist")]
        rng = np.random.default_rng(0)
        self._pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8).tobytes()
        self._size = image_size
        node.create_subscription(JointTrajectory, "arm_controller/joint_trajectory", self._on_trajectory, 50)
        node.create_timer(0.02, self._publish_joints)
        node.create_timer(0.1, self._publish_images)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.trajectories.append(msg)
        by_name = dict(zip(msg.joint_names, msg.points[0].positions))
        self.positions = [by_name.get(n, p) for n, p in zip(JOINTS, self.positions)]

    def _publish_joints(self) -> None:
        msg = JointState(name=JOINTS, position=self.positions, velocity=[0.0] * len(JOINTS))
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self._joints.publish(msg)

    def _publish_images(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for publisher in self._cameras:
            msg = Image(height=self._size, width=self._size, encoding="rgb8", step=3 * self._size,
                        data=self._pixels)
            msg.header.stamp = stamp
            publisher.publish(msg)


def run(namespace: str, stop, counts) -> None:
    """A process of its own (multiprocessing spawn): until `stop` is set; `counts` (a shared dict) gets how many
    trajectories it followed and how many of them were holds (one point)."""
    import time

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node("robot_stand_in", namespace=namespace)
    robot = RobotStandIn(node)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)
            counts.update(trajectories=len(robot.trajectories),
                          holds=sum(len(t.points) == 1 for t in robot.trajectories), at=time.time())
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
