"""``pae bag make --robot``: what a robot records while it walks a dataset split. No rclpy.

Each walk (sequence) of the split is one stretch of time (images at ``rate`` Hz), walks follow one
another with a gap of ``walk_gap_s`` seconds, longer than ``pae bag export``'s ``--max-tf-gap``
default, so that no transform is interpolated across two walks. All stamps are integer ns since
the Unix epoch; every message's bag log time is its header stamp.

* ``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage`` (JPEG), frame
  ``camera_optical`` (OpenCV optical axes): the rendered pinhole image **distorted** with the
  ``plumb_bob`` coefficients ``D`` of ``/camera/camera_info``, so that undistorting it with that
  camera_info (as ``image_proc`` or ``pae bag export`` do) gives back the pinhole image.
* ``/camera/camera_info``: K = the dataset's pinhole intrinsics (pixels, scaled to the image
  size), ``D`` non-zero, ``R = I``, ``P = [K | 0]``.
* ``/tf``: ``map -> odom`` and ``odom -> base_link`` at ``odom_hz`` (37 Hz: unlike the camera's
  rate), from ``walk_start - 2 / odom_hz`` to ``walk_end + 2 / odom_hz``. Without drift
  ``map -> odom`` is constant per walk (the planar part of the walk's first ``base_link`` pose:
  odometry starts where the robot starts); with ``odom_drift`` the ``odom -> base_link`` samples
  drift (:func:`pae_ros.tracking.odometry_model.simulate_odometry`, scaled; turns about ``map``'s
  z axis) and ``map -> odom`` is the correction that keeps ``map -> base_link`` exact.
* ``kidnap_ns`` (stamps, ns): at each, the rest of the walk under way is dropped and the next
  walk starts at that image slot without a gap: the robot is carried to the next walk's start.
  The odometry does not see the carry (``odom -> base_link`` continues smoothly, the move and
  turn of the carry missing); ``map -> odom`` absorbs the jump, so ``map -> base_link`` stays the
  ground truth. The stamps that took effect (the first image after each carry) are returned.
* ``/tf_static``: ``base_link -> camera_link`` (:data:`MOUNT`: 0.2 m forward, 0.5 m up, pitched
  10 degrees down) and ``camera_link -> camera_optical`` (REP 103 optical rotation).
* ``/ground_truth/pose`` ``geometry_msgs/PoseStamped``: the camera-to-world pose of
  ``camera_optical`` in ``map`` at each image stamp (the dataset pose; metres, quaternion).

The ``base_link`` samples come from the ground-truth camera poses through the mount: a sample
between two images lies on the straight line / rotation geodesic between their poses, and the
two samples that bracket an image stamp lie on that image pose's tangent (its central-difference
linear and angular velocity). Linear interpolation of translation and slerp of rotation between
the bracketing samples (what tf2 and ``pae bag export`` do) then gives back each image's pose
exactly, at any ``odom_hz > 2 * rate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .. import geometry
from ..tracking.lie import flatten_planar, interpolate_pose, make_pose, pose_inverse, so3_exp, so3_log
from .robot_recording import MOUNT
from .tf_tree import BODY_TO_OPTICAL_WXYZ

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
ODOM_FRAME = "odom"
BASE_FRAME = "base_link"
CAMERA_LINK_FRAME = "camera_link"
#: a mild barrel lens: plumb_bob k1, k2, p1, p2, k3
DEFAULT_DISTORTION = (-0.12, 0.04, 0.0005, -0.0004, 0.0)
#: odometry TF rate, Hz
ODOM_HZ = 37.0
#: seconds between the last image of a walk and the first of the next
WALK_GAP_S = 2.0
#: TF samples written before the first and after the last image of a walk
MARGIN_SAMPLES = 2


@dataclass
class RobotOptions:
    """Settings of a robot recording (rates in Hz, times in seconds / ns, JPEG quality 0..100)."""

    rate: float = 10.0
    odom_hz: float = ODOM_HZ
    walk_gap_s: float = WALK_GAP_S
    distortion: Sequence[float] = DEFAULT_DISTORTION
    odom_drift: float = 0.0
    seed: int = 0
    jpeg_quality: int = 95
    start_ns: int = 1_700_000_000_000_000_000
    kidnap_ns: Sequence[int] = ()
    #: /tf carries map -> odom too (the pose source of ``pae bag export``); False: odometry only
    #: (odom -> base_link), as a robot records it for the localizer that will publish map -> odom
    map_tf: bool = True

    def check(self) -> None:
        """ValueError naming the first setting that cannot give an exact recording."""
        if not (np.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"--rate must be > 0, got {self.rate}")
        if not (np.isfinite(self.odom_hz) and self.odom_hz > 2 * self.rate):
            raise ValueError(f"--odom-hz must be more than twice --rate ({2 * self.rate:g} Hz), got {self.odom_hz}: "
                             "each image stamp needs its own two bracketing TF samples")
        min_gap = 2 * MARGIN_SAMPLES / self.odom_hz
        if not (np.isfinite(self.walk_gap_s) and self.walk_gap_s > min_gap):
            raise ValueError(f"--walk-gap must be more than {min_gap:.3f} s (the TF margins of two walks), "
                             f"got {self.walk_gap_s}")
        if not (np.isfinite(self.odom_drift) and self.odom_drift >= 0):
            raise ValueError(f"--odom-drift must be >= 0, got {self.odom_drift}")
        d = np.asarray(self.distortion, np.float64)
        if d.shape != (5,) or not np.all(np.isfinite(d)):
            raise ValueError(f"--distortion needs 5 finite plumb_bob coefficients k1,k2,p1,p2,k3, got {list(d)}")
        if not 0 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg-quality must be in 0..100, got {self.jpeg_quality}")


def base_to_optical() -> np.ndarray:
    """``T_base_link_camera_optical`` (4x4, metres): the mount then the REP 103 optical rotation."""
    return geometry.pose_to_matrix(*MOUNT) @ geometry.pose_to_matrix(np.zeros(3), BODY_TO_OPTICAL_WXYZ)


# --------------------------------------------------------------------------- lens
def _distort_normalized(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """plumb_bob (OpenCV) distortion of normalised image coordinates."""
    k1, k2, p1, p2, k3 = d
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def distortion_maps(K: np.ndarray, d: Sequence[float], width: int, height: int,
                    iterations: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (float32, ``height x width``) from a pinhole image with intrinsics ``K``
    (3x3, pixels) to the image the ``plumb_bob`` lens ``d`` records: for each recorded pixel, the
    pinhole pixel it sees (the distortion inverted by fixed-point iteration)."""
    d = np.asarray(d, np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    xd, yd = (u - cx) / fx, (v - cy) / fy
    x, y = xd.copy(), yd.copy()
    with np.errstate(all="ignore"):  # a lens too strong to invert diverges; refused below
        for _ in range(iterations):
            dx, dy = _distort_normalized(x, y, d)
            x, y = x + (xd - dx), y + (yd - dy)
        dx, dy = _distort_normalized(x, y, d)
        worst = float(np.max(np.hypot(dx - xd, dy - yd))) * max(fx, fy)
    if not worst < 1e-3:
        raise ValueError(f"distortion {d.tolist()} cannot be inverted over the image (residual {worst:.3g} px); "
                         "use milder coefficients")
    return (x * fx + cx).astype(np.float32), (y * fy + cy).astype(np.float32)


def distort_image(rgb: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The recorded (distorted) image of a pinhole ``rgb`` (H, W, 3) uint8; black where the lens
    sees beyond the pinhole image."""
    import cv2

    return cv2.remap(np.ascontiguousarray(rgb), maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


# --------------------------------------------------------------------------- trajectory
def _tangents(t: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference linear velocity (m/s, parent frame) and angular velocity (rad/s, body
    frame) of poses ``T`` (n, 4, 4) at times ``t`` (n,) s; one-sided at the ends, zero for one pose."""
    n = len(t)
    v, w = np.zeros((n, 3)), np.zeros((n, 3))
    for i in range(n):
        a, b = max(i - 1, 0), min(i + 1, n - 1)
        if a == b:
            continue
        dt = t[b] - t[a]
        v[i] = (T[b][:3, 3] - T[a][:3, 3]) / dt
        w[i] = so3_log(T[a][:3, :3].T @ T[b][:3, :3]) / dt
    return v, w


def walk_samples(t_img: np.ndarray, T_img: np.ndarray, t_samples: np.ndarray) -> np.ndarray:
    """``base_link`` poses (m, 4, 4) at ``t_samples`` (s, increasing) of one walk whose images at
    ``t_img`` (n,) s have ``base_link`` poses ``T_img`` (n, 4, 4); see the module docstring."""
    t_img = np.asarray(t_img, np.float64)
    t_samples = np.asarray(t_samples, np.float64)
    v, w = _tangents(t_img, T_img)
    tangent_of: dict[int, int] = {}
    for j, t in enumerate(t_img):
        k = int(np.searchsorted(t_samples, t, side="right")) - 1
        for kk in (k, k + 1):
            if 0 <= kk < len(t_samples):
                if tangent_of.setdefault(kk, j) != j:
                    raise ValueError(f"TF sample at {t_samples[kk]:.6f} s brackets two image stamps; "
                                     "the TF rate must be more than twice the image rate")
    out = np.zeros((len(t_samples), 4, 4))
    for k, s in enumerate(t_samples):
        j = tangent_of.get(k)
        if j is None and (s <= t_img[0] or s >= t_img[-1]):
            j = 0 if s <= t_img[0] else len(t_img) - 1
        if j is not None:
            # a sample bracketing an image stamp (or a margin one): on that image pose's tangent
            dt = s - t_img[j]
            out[k] = make_pose(T_img[j][:3, :3] @ so3_exp(w[j] * dt), T_img[j][:3, 3] + v[j] * dt)
        else:
            i = int(np.searchsorted(t_img, s)) - 1
            out[k] = interpolate_pose(T_img[i], T_img[i + 1], (s - t_img[i]) / (t_img[i + 1] - t_img[i]))
    return out


def odometry_split(t_samples: np.ndarray, T_base: np.ndarray, drift: float, seed: int, teleports=()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(T_map_odom, T_odom_base)`` (m, 4, 4 each) whose products are ``T_base`` exactly.

    Odometry starts at the planar part of the first pose; ``drift = 0``: ``map -> odom`` constant;
    ``drift > 0``: ``odom -> base_link`` from the seeded drift model at that scale and ``map -> odom``
    the per-sample correction. ``teleports``: sample indices whose carry from the previous sample
    the odometry misses (``map -> odom`` jumps there instead).
    """
    from ..tracking.odometry_model import simulate_odometry

    M0 = flatten_planar(T_base[0])
    if drift == 0 and not len(teleports):
        return np.repeat(M0[None], len(T_base), axis=0), np.einsum("ij,njk->nik", pose_inverse(M0), T_base)
    O = simulate_odometry(t_samples, poses=T_base, scale=drift, seed=seed, start=pose_inverse(M0) @ T_base[0],
                          teleports=teleports)
    M = np.stack([T_base[k] @ pose_inverse(O[k]) for k in range(len(O))])
    return M, O


# --------------------------------------------------------------------------- writing
def _walks(frames: list) -> list[list]:
    """Frames grouped into walks (consecutive frames of one scene and sequence)."""
    walks: list[list] = []
    for f in frames:
        if walks and (walks[-1][0].scene, walks[-1][0].sequence) == (f.scene, f.sequence):
            walks[-1].append(f)
        else:
            walks.append([f])
    return walks


def _stretches(walks: list[list], start_ns: int, period_ns: float, gap_ns: int, kidnap_ns
               ) -> tuple[list[list[tuple[list, list[int]]]], list[int]]:
    """Walks laid out in time: stretches of continuous recording, each a list of segments
    ``(frames, image stamps ns)``, a kidnap between two segments of a stretch; and the stamps
    (ns) of the first image after each kidnap. ValueError for a kidnap outside a walk's images
    (after its first) or in the last walk."""
    pending = sorted(int(k) for k in kidnap_ns)
    stretches, done, cur = [], [], []
    t = start_ns
    wi = 0
    while wi < len(walks):
        walk = walks[wi]
        img_ns = [t + int(round(i * period_ns)) for i in range(len(walk))]
        if pending and pending[0] <= img_ns[0]:
            raise ValueError(f"kidnap at {(pending[0] - start_ns) / 1e9:.3f} s is not inside a walk "
                             f"(after its first image): walk {wi} starts at {(img_ns[0] - start_ns) / 1e9:.3f} s")
        cut = next((i for i, ns in enumerate(img_ns) if pending and ns >= pending[0]), None)
        if cut is None:
            cur.append((walk, img_ns))
            stretches.append(cur)
            cur = []
            t = img_ns[-1] + gap_ns
        else:
            if wi + 1 == len(walks):
                raise ValueError(f"kidnap at {(pending[0] - start_ns) / 1e9:.3f} s falls in the last walk: "
                                 "there is no next walk to carry the robot to")
            cur.append((walk[:cut], img_ns[:cut]))
            done.append(img_ns[cut])
            pending.pop(0)
            t = img_ns[cut]
        wi += 1
    if pending:
        raise ValueError(f"kidnap at {(pending[0] - start_ns) / 1e9:.3f} s is after the last image")
    return stretches, done


def _stretch_samples(stretch: list, smp_ns: list[int], walk_start: int) -> tuple[np.ndarray, list[int]]:
    """``base_link`` samples (m, 4, 4) of a stretch: each segment's samples from
    :func:`walk_samples` over its own images, a sample belonging to the segment whose time span
    (split halfway between two segments' images) holds it; and the indices of the first sample of
    each segment after the first (the kidnaps)."""
    rel = lambda ns: (np.asarray(ns, np.int64) - walk_start) / 1e9  # noqa: E731 - s from the stretch's start
    smp = np.asarray(smp_ns, np.int64)
    bounds = [(a[1][-1] + b[1][0]) / 2 for a, b in zip(stretch[:-1], stretch[1:])]
    seg = np.searchsorted(np.asarray(bounds), smp, side="right") if bounds else np.zeros(len(smp), int)
    G = np.zeros((len(smp), 4, 4))
    X_inv = pose_inverse(base_to_optical())
    for s, (walk, img_ns) in enumerate(stretch):
        idx = np.flatnonzero(seg == s)
        T_img = np.stack([geometry.pose_to_matrix(f.position, f.quaternion) for f in walk]) @ X_inv
        G[idx] = walk_samples(rel(img_ns), T_img, rel(smp[idx]))
    teleports = [int(np.flatnonzero(seg == s)[0]) for s in range(1, len(stretch))]
    return G, teleports


def write_robot_frames(bag, frames: list, pinhole: Callable, opts: RobotOptions, progress=None) -> dict:
    """Write ``frames`` (dataset frames, split order) into the open :class:`~.io.BagWriter` ``bag``.

    ``pinhole(frame, rgb) -> (fx, fy, cx, cy)`` gives the frame's pinhole intrinsics at the
    image's size (pixels). Returns ``{"scene_ranges": {scene: [first, last] image ns},
    "walks": [{scene, sequence, frames, first_ns, last_ns, tf_samples}], "images": n,
    "kidnaps": [first image ns after each kidnap]}`` (``tf_samples``: of the walk's whole stretch).
    """
    from .. import datasets
    from . import CAMERA_FRAME, CAMERA_INFO_TOPIC, COMPRESSED_TOPIC, GT_TOPIC, MAP_FRAME, msgs
    from .io import make_qos

    opts.check()
    reliable = [make_qos(depth=10, reliable=True)]
    bag.add_topic(CAMERA_INFO_TOPIC, msgs.CAMERA_INFO_TYPE, reliable)
    bag.add_topic(COMPRESSED_TOPIC, msgs.COMPRESSED_TYPE, reliable)
    bag.add_topic(GT_TOPIC, msgs.POSE_TYPE, reliable)
    bag.add_topic(TF_TOPIC, msgs.TF_TYPE, [make_qos(depth=100, reliable=True)])
    bag.add_topic(TF_STATIC_TOPIC, msgs.TF_TYPE, [make_qos(depth=1, reliable=True, transient_local=True)])

    period_ns = 1e9 / opts.rate
    odom_ns = 1e9 / opts.odom_hz
    gap_ns = int(round(opts.walk_gap_s * 1e9))
    mount_t, mount_q = MOUNT
    t_static = opts.start_ns - int(round(MARGIN_SAMPLES * odom_ns)) - 1
    bag.write_msg(TF_STATIC_TOPIC, t_static, msgs.tf_msg([
        msgs.transform_msg(BASE_FRAME, CAMERA_LINK_FRAME, mount_t, mount_q, t_static),
        msgs.transform_msg(CAMERA_LINK_FRAME, CAMERA_FRAME, np.zeros(3), BODY_TO_OPTICAL_WXYZ, t_static)]))

    scene_ranges: dict[str, list[int]] = {}
    walks_out = []
    maps_cache: dict[tuple, tuple] = {}
    stretches, kidnaps = _stretches(_walks(frames), opts.start_ns, period_ns, gap_ns, opts.kidnap_ns)
    for w_index, stretch in enumerate(stretches):
        walk_start = stretch[0][1][0]
        img_ns = [t for _, ts in stretch for t in ts]
        walk = [f for fs, _ in stretch for f in fs]
        k_last = int(np.ceil((img_ns[-1] - walk_start) / odom_ns)) + MARGIN_SAMPLES
        smp_ns = [walk_start + int(round(k * odom_ns)) for k in range(-MARGIN_SAMPLES, k_last + 1)]
        rel = lambda ns: (np.asarray(ns, np.int64) - walk_start) / 1e9  # noqa: E731 - s from the walk's start
        G, teleports = _stretch_samples(stretch, smp_ns, walk_start)
        M, O = odometry_split(rel(smp_ns), G, opts.odom_drift, opts.seed + w_index, teleports)
        events = sorted([(t, 0, k) for k, t in enumerate(smp_ns)] + [(t, 1, i) for i, t in enumerate(img_ns)])
        for t_ns, kind, idx in events:
            if kind == 0:
                edges = [msgs.transform_msg(ODOM_FRAME, BASE_FRAME, *geometry.matrix_to_pose(O[idx]), t_ns)]
                if opts.map_tf:
                    edges.insert(0, msgs.transform_msg(MAP_FRAME, ODOM_FRAME, *geometry.matrix_to_pose(M[idx]), t_ns))
                bag.write_msg(TF_TOPIC, t_ns, msgs.tf_msg(edges))
                continue
            frame = walk[idx]
            rgb = datasets.load_rgb(frame.image_path)
            h, w = rgb.shape[:2]
            fx, fy, cx, cy = pinhole(frame, rgb)
            key = (w, h, fx, fy, cx, cy)
            if key not in maps_cache:
                K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
                maps_cache[key] = distortion_maps(K, opts.distortion, w, h)
            recorded = distort_image(rgb, maps_cache[key])
            bag.write_msg(CAMERA_INFO_TOPIC, t_ns, msgs.camera_info_msg(t_ns, CAMERA_FRAME, w, h, fx, fy, cx, cy,
                                                                        d=opts.distortion))
            bag.write_msg(COMPRESSED_TOPIC, t_ns, msgs.compressed_image_msg(
                msgs.encode_jpeg(recorded, opts.jpeg_quality), t_ns, CAMERA_FRAME))
            bag.write_msg(GT_TOPIC, t_ns, msgs.pose_stamped_msg(frame.position, frame.quaternion, t_ns, MAP_FRAME))
            rng = scene_ranges.setdefault(frame.scene, [t_ns, t_ns])
            rng[1] = t_ns
            if progress is not None:
                progress.update(1)
        for fs, ts in stretch:
            walks_out.append({"scene": fs[0].scene, "sequence": fs[0].sequence, "frames": len(fs),
                              "first_ns": ts[0], "last_ns": ts[-1], "tf_samples": len(smp_ns)})
    images = sum(len(fs) for stretch in stretches for fs, _ in stretch)
    return {"scene_ranges": scene_ranges, "walks": walks_out, "images": images, "kidnaps": kidnaps}


# --------------------------------------------------------------------------- round trip
def pose_errors(truth: list, exported: list) -> dict:
    """Largest position (m) and rotation (deg) differences between two equally long lists of
    dataset frames (camera-to-world poses, in order); ValueError when the lengths differ."""
    if len(truth) != len(exported):
        raise ValueError(f"{len(exported)} exported frames for {len(truth)} ground-truth frames")
    if not truth:
        return {"frames": 0, "max_position_m": 0.0, "max_rotation_deg": 0.0}
    p0 = np.array([f.position for f in truth])
    p1 = np.array([f.position for f in exported])
    q0 = np.array([f.quaternion for f in truth])
    q1 = np.array([f.quaternion for f in exported])
    return {"frames": len(truth), "max_position_m": float(np.max(geometry.position_error(p1, p0))),
            "max_rotation_deg": float(np.max(geometry.orientation_error_deg(q1, q0)))}
