"""pae_ros.geometry against an independent implementation (transforms3d) and hand-built cases."""
from __future__ import annotations

import numpy as np
import pytest
import transforms3d.quaternions as t3q

from pae_ros import geometry as g


def _random_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _near_180_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    """Rotations of exactly 180 deg and within 1e-9 .. 1e-3 rad of it (w ~ 0), both signs of w."""
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    deltas = np.concatenate([[0.0, 0.0, 0.0], np.geomspace(1e-9, 1e-3, n - 3)])
    ang = np.pi - deltas * rng.choice([-1.0, 1.0], size=n)
    q = np.concatenate([np.cos(ang / 2)[:, None], np.sin(ang / 2)[:, None] * axes], axis=1)
    # plus the axis-aligned half turns, the classic failure cases of trace-based conversions
    special = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]], float)
    special /= np.linalg.norm(special, axis=1, keepdims=True)
    return np.concatenate([q, special])


def _same_rotation(q1: np.ndarray, q2: np.ndarray, atol: float) -> bool:
    """q1 == q2 or q1 == -q2, row-wise."""
    return bool(np.all(np.minimum(np.abs(q1 - q2).max(-1), np.abs(q1 + q2).max(-1)) < atol))


@pytest.fixture(scope="module")
def quats() -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.concatenate([_random_quats(rng, 300), _near_180_quats(rng, 40), np.eye(4)])


def test_quat_to_rotmat_matches_transforms3d(quats):
    R = g.quat_to_rotmat(quats)
    ref = np.stack([t3q.quat2mat(q) for q in quats])
    np.testing.assert_allclose(R, ref, atol=1e-12)
    # proper rotations
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_rotmat_to_quat_matches_transforms3d_including_near_180(quats):
    R = np.stack([t3q.quat2mat(q) for q in quats])
    q = g.rotmat_to_quat(R)
    assert np.all(q[:, 0] >= 0), "rotmat_to_quat must return w >= 0"
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    ref = np.stack([t3q.mat2quat(r) for r in R])
    assert _same_rotation(q, ref, 1e-9)
    assert _same_rotation(q, quats, 1e-9), "quat -> matrix -> quat round trip lost the rotation"
    # and back to the same matrices
    np.testing.assert_allclose(g.quat_to_rotmat(q), R, atol=1e-12)


def test_rotmat_to_quat_batched_shape_and_noisy_matrix():
    rng = np.random.default_rng(2)
    q = _random_quats(rng, 12).reshape(3, 4, 4)
    R = g.quat_to_rotmat(q)
    assert R.shape == (3, 4, 3, 3)
    back = g.rotmat_to_quat(R)
    assert back.shape == (3, 4, 4)
    assert _same_rotation(back.reshape(-1, 4), q.reshape(-1, 4), 1e-9)
    # slightly non-orthonormal input (e.g. parsed from a text file with 6 digits) is still handled
    noisy = np.round(R, 6)
    assert _same_rotation(g.rotmat_to_quat(noisy).reshape(-1, 4), q.reshape(-1, 4), 1e-5)


def test_canonical_and_normalize():
    q = np.array([[-2.0, 0.0, 0.0, 0.0], [0.0, -3.0, 0.0, 4.0]])
    c = g.canonical_quat(q)
    np.testing.assert_allclose(c, [[1, 0, 0, 0], [0, -0.6, 0, 0.8]])
    with pytest.raises(ValueError):
        g.normalize_quat([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        g.normalize_quat([np.nan, 1.0, 0.0, 0.0])


def test_quat_multiply_matches_transforms3d_and_matrices():
    rng = np.random.default_rng(3)
    a, b = _random_quats(rng, 50), _random_quats(rng, 50)
    ab = g.quat_multiply(a, b)
    np.testing.assert_allclose(ab, np.stack([t3q.qmult(x, y) for x, y in zip(a, b)]), atol=1e-12)
    np.testing.assert_allclose(g.quat_to_rotmat(ab), g.quat_to_rotmat(a) @ g.quat_to_rotmat(b), atol=1e-12)
    np.testing.assert_allclose(g.quat_conjugate(a), np.stack([t3q.qconjugate(x) for x in a]))


def test_compose_and_invert_against_4x4_matrices():
    rng = np.random.default_rng(4)
    n = 40
    t1, t2 = rng.normal(size=(n, 3)) * 5, rng.normal(size=(n, 3)) * 5
    q1, q2 = _random_quats(rng, n), _random_quats(rng, n)
    T1, T2 = g.pose_to_matrix(t1, q1), g.pose_to_matrix(t2, q2)
    t, q = g.compose_poses(t1, q1, t2, q2)
    np.testing.assert_allclose(g.pose_to_matrix(t, q), T1 @ T2, atol=1e-10)
    assert np.all(q[:, 0] >= 0)

    ti, qi = g.invert_pose(t1, q1)
    np.testing.assert_allclose(g.pose_to_matrix(ti, qi), np.linalg.inv(T1), atol=1e-10)
    # T * T^-1 = identity
    te, qe = g.compose_poses(t1, q1, ti, qi)
    np.testing.assert_allclose(te, 0.0, atol=1e-10)
    np.testing.assert_allclose(g.orientation_error_deg(qe, np.array([1.0, 0, 0, 0])), 0.0, atol=1e-5)
    # matrix_to_pose inverts pose_to_matrix
    tb, qb = g.matrix_to_pose(T1)
    np.testing.assert_allclose(tb, t1)
    assert _same_rotation(qb, q1, 1e-9)


def test_compose_hand_built():
    # A: translate by (1, 0, 0) and turn 90 deg about z; B: translate by (1, 0, 0).
    qz90 = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])
    t, q = g.compose_poses([1.0, 0, 0], qz90, [1.0, 0, 0], [1.0, 0, 0, 0])
    np.testing.assert_allclose(t, [1.0, 1.0, 0.0], atol=1e-12)  # B's x axis points along A's y
    np.testing.assert_allclose(q, qz90, atol=1e-12)


def test_position_error():
    assert g.position_error([0, 0, 0], [3, 4, 0]) == pytest.approx(5.0)
    e = g.position_error(np.zeros((2, 5, 3)), np.ones((2, 5, 3)))
    assert e.shape == (2, 5)
    np.testing.assert_allclose(e, np.sqrt(3))


def test_orientation_error_known_angles_and_sign_invariance():
    rng = np.random.default_rng(5)
    axes = rng.normal(size=(30, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = rng.uniform(0, np.pi, size=30)
    q_rel = np.concatenate([np.cos(angles / 2)[:, None], np.sin(angles / 2)[:, None] * axes], 1)
    q_gt = _random_quats(rng, 30)
    q_est = g.quat_multiply(q_gt, q_rel)
    e = g.orientation_error_deg(q_est, q_gt)
    np.testing.assert_allclose(e, np.degrees(angles), atol=1e-6)
    # sign invariance: q and -q are the same rotation, in either argument
    np.testing.assert_allclose(g.orientation_error_deg(-q_est, q_gt), e, atol=1e-9)
    np.testing.assert_allclose(g.orientation_error_deg(q_est, -q_gt), e, atol=1e-9)
    np.testing.assert_allclose(g.orientation_error_deg(-q_est, -q_gt), e, atol=1e-9)
    # unnormalised inputs are normalised first
    np.testing.assert_allclose(g.orientation_error_deg(3.0 * q_est, 0.5 * q_gt), e, atol=1e-6)
    np.testing.assert_allclose(g.orientation_error_rad(q_est, q_gt), angles, atol=1e-8)
    # half turn -> 180 deg, symmetric
    assert g.orientation_error_deg([0, 1.0, 0, 0], [1.0, 0, 0, 0]) == pytest.approx(180.0)
    assert g.orientation_error_deg([1.0, 0, 0, 0], [0, 1.0, 0, 0]) == pytest.approx(180.0)


def test_orientation_error_clamped_never_nan():
    # |<q1, q2>| can exceed 1 by rounding after normalisation: must be clamped, not NaN
    rng = np.random.default_rng(6)
    q = rng.normal(size=(20000, 4))
    for a, b in ((q, q), (q, -q), (q, q * 7.3), (-q * 1e-3, q)):
        e = g.orientation_error_deg(a, b)
        assert np.all(np.isfinite(e)), "orientation error of identical rotations is NaN (dot product not clamped)"
        assert np.all(e >= 0.0)
        assert e.max() < 1e-5
    # exactly representable unit quaternions: exactly 0
    for qq in ([1.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0, 0, 0, 1.0], [0.6, 0, 0.8, 0]):
        assert g.orientation_error_deg(qq, qq) == 0.0
        assert g.orientation_error_deg(qq, -np.asarray(qq)) == 0.0


def test_orientation_error_identical_quaternions_is_zero():
    """Identical rotations report 0 deg to rounding (not the ~1e-6 deg that acos near 1 gives)."""
    rng = np.random.default_rng(6)
    q = rng.normal(size=(20000, 4))
    e = g.orientation_error_deg(q, q)
    assert np.all(np.isfinite(e))
    assert e.max() < 1e-9, f"orientation_error_deg(q, q) up to {e.max():.2e} deg"
    assert np.all(g.orientation_error_deg(q, -q) < 1e-9)


def test_average_quaternions_sign_flips_and_weights():
    rng = np.random.default_rng(7)
    base = _random_quats(rng, 1)[0]
    # small perturbations around base
    small = np.concatenate([np.ones((6, 1)), rng.normal(size=(6, 3)) * 0.02], 1)
    qs = g.quat_multiply(np.broadcast_to(base, (6, 4)), small)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    w = rng.uniform(0.1, 1.0, size=6)
    avg = g.average_quaternions(qs, w)
    flipped = qs * np.array([1, -1, 1, -1, -1, 1])[:, None]
    avg_f = g.average_quaternions(flipped, w)
    np.testing.assert_allclose(avg_f, avg, atol=1e-12)
    assert avg[0] >= 0
    # for a tight cluster the Markley average ~ the normalised weighted mean of sign-aligned quaternions;
    # a naive mean of the flipped set (signs not aligned) would be far off
    aligned = qs * np.sign(qs @ base)[:, None]
    ref = (w[:, None] * aligned).sum(0)
    ref /= np.linalg.norm(ref)
    assert g.orientation_error_deg(avg_f, ref) < 0.05
    naive = (w[:, None] * flipped).sum(0)
    assert g.orientation_error_deg(naive, ref) > 1.0  # the test set really exercises the sign ambiguity
    # a single non-zero weight returns that quaternion
    one_hot = np.zeros(6)
    one_hot[2] = 1.0
    assert _same_rotation(g.average_quaternions(flipped, one_hot)[None], qs[2][None], 1e-9)
    # q and -q with equal weights -> q (up to sign), not a zero vector
    pair = g.average_quaternions(np.stack([base, -base]), np.array([1.0, 1.0]))
    assert _same_rotation(pair[None], base[None], 1e-9)
    # batched over a leading dimension
    batched = g.average_quaternions(np.stack([qs, flipped]), np.stack([w, w]))
    np.testing.assert_allclose(batched, np.stack([avg, avg]), atol=1e-12)


def test_average_quaternions_of_two_rotations_is_the_midpoint():
    qa = np.array([1.0, 0, 0, 0])
    qb = np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])  # 90 deg about z
    mid = g.average_quaternions(np.stack([qa, -qb]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(mid, [np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)], atol=1e-12)


def test_camera_project_hand_built():
    K = np.array([[500.0, 0, 320.0], [0, 400.0, 240.0], [0, 0, 1]])
    # camera at (1, 2, 3), camera axes = world axes: looks along world +z
    pts = np.array([[1.0, 2.0, 8.0], [2.0, 2.0, 8.0], [1.0, 1.0, 5.0]])
    uv, z = g.camera_project(pts, [1.0, 2.0, 3.0], [1.0, 0, 0, 0], K)
    np.testing.assert_allclose(z, [5.0, 5.0, 2.0])
    np.testing.assert_allclose(uv, [[320.0, 240.0], [320.0 + 500.0 / 5, 240.0], [320.0, 240.0 - 400.0 / 2]])

    # camera at the origin looking along world +x, image x (right) = world +y, image y (down) = world +z
    R_wc = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns = camera axes in world
    q = t3q.mat2quat(R_wc)  # independent conversion
    uv, z = g.camera_project(np.array([[5.0, 1.0, 0.5], [-5.0, 0.0, 0.0]]), np.zeros(3), q, K)
    np.testing.assert_allclose(z, [5.0, -5.0], atol=1e-12)  # second point is behind the camera
    np.testing.assert_allclose(uv[0], [320.0 + 500.0 * 1.0 / 5.0, 240.0 + 400.0 * 0.5 / 5.0], atol=1e-9)


def test_camera_project_inverts_pixel_rays():
    rng = np.random.default_rng(8)
    K = np.array([[585.0, 0, 320.0], [0, 585.0, 240.0], [0, 0, 1]])
    c = np.array([0.3, -1.0, 2.0])
    q = _random_quats(rng, 1)[0]
    uv = rng.uniform([0, 0], [640, 480], size=(25, 2))
    depth = rng.uniform(0.5, 10.0, size=25)
    rays_cam = np.concatenate([(uv - K[:2, 2]) / np.diag(K)[:2], np.ones((25, 1))], 1) * depth[:, None]
    pts_world = rays_cam @ g.quat_to_rotmat(q).T + c
    uv2, z2 = g.camera_project(pts_world, c, q, K)
    np.testing.assert_allclose(uv2, uv, atol=1e-8)
    np.testing.assert_allclose(z2, depth, atol=1e-10)


@pytest.mark.parametrize("angle", [1e-8, 1e-3, 0.03, 0.5, 3.0])
@pytest.mark.parametrize("a", [0.0, 0.25, 0.5, 1.0])
def test_slerp_follows_the_shorter_arc_at_every_angle(angle, a):
    """slerp between two rotations about one axis is the rotation by the interpolated angle, from
    near-equal quaternions (the chord branch) to nearly opposite ones, and the same when the second
    quaternion comes with the opposite sign."""
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    q_of = lambda th: np.concatenate([[np.cos(th / 2)], np.sin(th / 2) * axis])  # noqa: E731
    q0 = q_of(0.2)
    q1 = q_of(0.2 + angle)
    want = q_of(0.2 + a * angle)
    for other in (q1, -q1):
        got = g.slerp(q0, other, a)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(got, want, atol=1e-12)
