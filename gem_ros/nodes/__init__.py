"""Thin rclpy nodes: message <-> core conversion, parameters, timers, lifecycle, diagnostics."""
