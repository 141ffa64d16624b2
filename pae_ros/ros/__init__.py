"""The ROS 2 side of pae_ros: the only package that imports rclpy.

* :mod:`pae_ros.ros.localizer_node` -- the ``localizer`` executable (managed node ``pae_localizer``):
  lifecycle and image input; its parts: :mod:`~pae_ros.ros.loading` (bundle + map at start-up, no
  rclpy), :mod:`~pae_ros.ros.tf_listener` (``/tf``, ``/tf_static`` in), :mod:`~pae_ros.ros.pose_output`
  (pose topics, TF out), :mod:`~pae_ros.ros.inference_worker` (the inference thread),
  :mod:`~pae_ros.ros.geometric_worker` (the geometric thread, no rclpy),
  :mod:`~pae_ros.ros.camera_info` (camera check and query intrinsics, no rclpy);
* :mod:`pae_ros.ros.localizer_protocol` -- ``LocalizerLike``, what the node needs from a localizer;
* :mod:`pae_ros.ros.params` -- the one parameter table and its start-up validation (no rclpy at import);
* :mod:`pae_ros.ros.tf_publisher` -- the TF output (map -> odom future-dated and re-published);
* :mod:`pae_ros.ros.services` -- ``~/relocalize``, ``~/set_enabled`` and ``/initialpose``;
* :mod:`pae_ros.ros.frames` -- base-frame pose and covariance, planar mode, camera_info check (no rclpy);
* :mod:`pae_ros.ros.conversions` -- message <-> numpy (the node's one quaternion-order helper);
* :mod:`pae_ros.ros.tf_buffer` -- a TF buffer with per-edge history and interpolation, fed from ``/tf`` and
  ``/tf_static`` (no tf2_ros);
* :mod:`pae_ros.ros.qos` -- the QoS profiles (images, TF, outputs) and the ``image_qos`` choice;
* :mod:`pae_ros.ros.diagnostics` -- the node's counters, latency and ``/diagnostics`` message;
* bag play / record (``pae bag play`` / ``pae bag record``).

Importing this package itself imports nothing heavy; every module imports what it needs.
"""
