"""pae_ros: single-image camera localization with an absolute pose regressor refined by
Camera Pose Auto-Encoders (Shavit & Keller, ECCV 2022).

Conventions used everywhere in this package unless a docstring says otherwise:

* positions in metres; angles in radians (reports use degrees and say so);
* quaternions are unit quaternions in **wxyz** order;
* a camera pose is **camera-to-world**: ``position`` is the camera centre in the world (map)
  frame and the quaternion rotates camera-frame vectors into the world frame;
* camera axes are **OpenCV optical** axes (REP 103 ``*_optical``): x right, y down, z forward.

The core (everything outside :mod:`pae_ros.ros`) imports no rclpy.
"""

import os as _os

# OpenMP workers that spin while waiting starve everything else on a small CPU (the ROS
# executor, the DDS threads, a bag player): a PAE training step measured 535 ms instead of 9 ms
# with two torch threads on a loaded 2-core machine. Passive waiting fixes it. libgomp reads
# this when torch is first imported, so it is set here, before any pae_ros module imports
# torch; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
