"""Offline training, evaluation and export (``pae train``, ``pae eval``, ``pae export``).

Imports no rclpy: runs on a GPU box with no ROS installed.
"""
