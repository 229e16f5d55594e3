"""ROS-free core: policy, observation, chunking, safety, kinematics. Never imports rclpy."""
