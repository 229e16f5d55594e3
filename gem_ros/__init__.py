"""gem_ros: GEM-VLA vision-language-action policies on ROS 2 robot arms."""
