"""Offline training and export (``pae train``, ``pae export``); evaluation is :mod:`pae_ros.evaluation`.

Imports no rclpy: runs on a GPU box with no ROS installed.
"""
