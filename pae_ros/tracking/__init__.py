"""Tracking filter: per-frame pose estimates + odometry -> a continuous ``map -> odom``
(ROS-free, numpy only). See :mod:`pae_ros.tracking.filter`."""
from .filter import COUNTERS, METHODS, TrackingFilter, TrackingParams, TrackOutput, TrackState
from .odometry_model import simulate_odometry
from .replay import Estimates, ReplayTrace, replay, replay_metrics

__all__ = ["COUNTERS", "METHODS", "TrackingFilter", "TrackingParams", "TrackOutput", "TrackState", "simulate_odometry",
           "Estimates", "ReplayTrace", "replay", "replay_metrics"]
