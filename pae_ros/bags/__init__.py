"""rosbag2 files through ``rosbags`` (pure Python, no rclpy): ``pae bag make`` / ``pae bag eval`` / ``pae bag export``.

Bag layout written by ``pae bag make`` (all stamps in ns since the Unix epoch; the bag's log
time of every message equals its header stamp):

=================================  =============================  ==================================
topic                              type                           contents
=================================  =============================  ==================================
``/camera/image_raw``              ``sensor_msgs/msg/Image``      ``rgb8``, frame ``camera_optical``
``/camera/image_raw/compressed``   ``sensor_msgs/msg/CompressedImage``  JPEG (``--compressed``)
``/camera/camera_info``            ``sensor_msgs/msg/CameraInfo`` pinhole K/P, ``plumb_bob`` D = 0
``/ground_truth/pose``             ``geometry_msgs/msg/PoseStamped``  camera-to-world pose, frame ``map``
=================================  =============================  ==================================

``pae bag make --robot`` writes a robot's recording instead (distorted JPEG images, ``/tf``,
``/tf_static``): see :mod:`pae_ros.bags.robot_bag`.

``camera_optical`` is an OpenCV/REP 103 optical frame (x right, y down, z forward); the ground
truth pose is the pose of that frame in ``map`` (position = camera centre, metres).
"""
from __future__ import annotations

#: topic names (see docs/ARCHITECTURE.md, "Topics")
IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
CAMERA_INFO_TOPIC = "/camera/camera_info"
GT_TOPIC = "/ground_truth/pose"
POSE_TOPIC = "/pae/pose"
POSE_COV_TOPIC = "/pae/pose_with_covariance"
APR_TOPIC = "/pae/apr_pose"

#: frames
CAMERA_FRAME = "camera_optical"
MAP_FRAME = "map"
