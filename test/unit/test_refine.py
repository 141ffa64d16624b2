"""Test-time refinement (pae_ros.refine): neighbours from the train table only, stateless per-query fit.

These are the tests that "cannot pass by accident": a leaky implementation (neighbours from the
test labels, like the reference code) or a stateful one (optimiser state carried between
queries) fails them.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.geometry import canonical_quat
from pae_ros.models import PoseAutoEncoder
from pae_ros.pipeline import Localizer
from pae_ros.refine import PoseTableIndex, Refiner, fit_convex_weights, table_metric_scales


# ------------------------------------------------------------------------------------------ helpers
def _rand_quats(rng, n):
    q = rng.normal(size=(n, 4))
    return canonical_quat(q)


def _pae(dim: int = 16, num_scenes: int = 1) -> PoseAutoEncoder:
    torch.manual_seed(123)
    return PoseAutoEncoder(dim, 4, [32], num_scenes).eval()


@torch.no_grad()
def _latents(pae, positions, quats, scene_idx=None) -> torch.Tensor:
    s = None if scene_idx is None else torch.as_tensor(np.asarray(scene_idx), dtype=torch.long)
    zx, zq = pae(torch.as_tensor(positions, dtype=torch.float32), torch.as_tensor(quats, dtype=torch.float32), s)
    return torch.cat([zx, zq], -1)


def _refiner(pae, positions, quats, scene_idx=None, metric="scaled") -> Refiner:
    ps, os_ = table_metric_scales(positions, quats)
    index = PoseTableIndex(positions, quats, scene_idx, metric, ps, os_)
    return Refiner(index, _latents(pae, positions, quats, scene_idx), positions, quats)


def _brute_force_knn(tp, tq, p, q, k, metric, pos_scale, ori_scale, t_scene=None, q_scene=None):
    """Independent numpy reference of the neighbour metric."""
    tq = tq / np.linalg.norm(tq, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d_pos = np.linalg.norm(p[:, None, :] - tp[None, :, :], axis=-1)
    d_ori = 2 * np.arccos(np.clip(np.abs(q @ tq.T), 0, 1))
    if metric == "scaled":
        d = d_pos / pos_scale + d_ori / ori_scale
    else:
        d = d_pos / d_pos.max(1, keepdims=True) + d_ori / d_ori.max(1, keepdims=True)
    if t_scene is not None:
        d = np.where(t_scene[None, :] == q_scene[:, None], d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k], d


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    n = 150
    pos = rng.uniform([0, 0, 1], [8, 6, 2], size=(n, 3))
    quats = _rand_quats(rng, n)
    return pos, quats


@pytest.fixture(scope="module")
def queries(table):
    rng = np.random.default_rng(1)
    pos, quats = table
    idx = rng.choice(len(pos), size=12, replace=False)
    p = pos[idx] + rng.normal(size=(12, 3)) * 0.3
    q = canonical_quat(quats[idx] + rng.normal(size=(12, 4)) * 0.1)
    return p, q


@pytest.fixture(scope="module")
def room_splits(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "train"), read_dataset(tiny_dataset, "7scenes", "test")


# ------------------------------------------------------------------ neighbours from the train table
def _row_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each row of ``rows``, whether it equals some row of ``table`` exactly."""
    return np.array([bool(np.any(np.all(table == r, axis=1))) for r in rows])


def _candidate_positions(refiner, res) -> np.ndarray:
    """The positions (by value) of every candidate the refiner weighed, (B*K, 3)."""
    return refiner.table_positions[res.neighbors.reshape(-1)]


def test_neighbours_only_from_train_table_never_return_test_ground_truth(room_splits):
    """Query with the test frame's exact ground truth pose AND its exact PAE latent (maximally leak-
    tempting input). No candidate the refiner weighs may be a test pose (by value), for any k. A
    table that contains the test poses (the reference code's mistake) fails exactly this check for
    every k, and returns the ground truth itself with k = 1: the contrast shows the check bites."""
    train, test = room_splits
    tp, tq = train.positions, train.quaternions
    gp, gq = test.positions, test.quaternions
    assert not _row_in(gp, tp).any(), "fixture problem: a test pose is also a train pose"
    pae = _pae()
    z = _latents(pae, gp, gq)

    ref = _refiner(pae, tp, tq)
    for k in (1, 3, 5):
        res = ref.refine(gp, gq, z, k=k, steps=30, lr=0.1)
        assert not _row_in(_candidate_positions(ref, res), gp).any(), f"k={k}: a candidate is a test pose"
        # the refined position is the weighted mean of those candidates (nothing else enters)
        np.testing.assert_allclose(res.position, np.einsum("bk,bkj->bj", res.weights, tp[res.neighbors]), atol=1e-12)
    # retrieval-style extra candidates are table rows too
    extra = np.tile(np.arange(4), (len(gp), 1))
    res = ref.refine(gp, gq, z, k=2, steps=10, lr=0.1, extra_candidates=extra)
    assert not _row_in(_candidate_positions(ref, res), gp).any()

    # leaky table (train + test): the same checks fail for every k
    leaky = _refiner(pae, np.concatenate([tp, gp]), np.concatenate([tq, gq]))
    for k in (1, 3, 5):
        res_leak = leaky.refine(gp, gq, z, k=k, steps=30, lr=0.1)
        assert _row_in(_candidate_positions(leaky, res_leak), gp).any()
    np.testing.assert_array_equal(leaky.refine(gp, gq, z, k=1, steps=30, lr=0.1).position, gp)


def test_localizer_table_is_the_train_split_and_refinement_never_returns_test_gt(tiny_bundle, room_splits):
    train, test = room_splits
    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    table_p = loc.bundle.table_positions
    # the pose table the refiner searches is exactly the train split (every frame, nothing else)
    assert len(table_p) == len(train.frames)
    assert _row_in(train.positions, table_p).all() and _row_in(table_p, train.positions).all()
    assert not _row_in(test.positions, table_p).any()
    np.testing.assert_array_equal(loc.refiner.table_positions, table_p)
    np.testing.assert_array_equal(loc.refiner.index.positions.numpy(), table_p)

    images = [load_rgb(f.image_path) for f in test.frames]
    ests = loc.localize_batch(images)
    assert all(e.refined and e.method == "refined" for e in ests)
    for e in ests:
        nb = np.asarray(e.extras["neighbors"])
        assert len(nb) == loc.k
        # every candidate (by value) is a train pose and none is a test pose
        assert _row_in(table_p[nb], train.positions).all()
        assert not _row_in(table_p[nb], test.positions).any()
        w = np.asarray(e.extras["weights"])
        # refined position = convex combination of the neighbours' train positions
        np.testing.assert_allclose(e.position, w @ table_p[nb], atol=1e-9)
        assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-9


def test_localizer_retrieval_candidates_are_train_rows(tiny_bundle, room_splits):
    """candidates=retrieval: the candidates are the top-r train images by descriptor cosine (train
    rows only); a train image queried against the table finds its own row first."""
    train, test = room_splits
    base = Localizer.from_bundle(tiny_bundle, device="cpu")
    table_p = base.bundle.table_positions
    row_of = np.array([int(np.flatnonzero(np.all(table_p == p, axis=1))[0]) for p in train.positions])
    tr_imgs = [load_rgb(f.image_path) for f in train.frames]
    desc = np.zeros((len(table_p), 0), np.float32)
    d = base.describe(tr_imgs)
    desc = np.zeros((len(table_p), d.shape[1]), np.float32)
    desc[row_of] = d
    loc = Localizer(base.bundle, device="cpu", table_descriptors=desc, candidates="retrieval", retrieval_k=4)
    # the tiny bundle's backbone is not frozen and not pretrained: share the one describer that made
    # the table descriptors (a second random tiny_cnn would describe differently)
    loc.describer = base.describer
    assert loc.info["candidates"] == "retrieval" and loc.info["retrieval"] is True
    te_imgs = [load_rgb(f.image_path) for f in test.frames[::4]]
    ests = loc.localize_batch(te_imgs)
    top, _ = loc.retrieval.query(loc.describe(te_imgs), 4)
    for e, t in zip(ests, top):
        nb = np.asarray(e.extras["neighbors"])
        assert sorted(nb.tolist()) == sorted(t.tolist())
        assert not _row_in(table_p[nb], test.positions).any()
    own = loc.localize_batch(tr_imgs[:5])
    for i, e in enumerate(own):
        assert row_of[i] in e.extras["neighbors"]
    with pytest.raises(Exception, match="descriptors"):
        Localizer(base.bundle, device="cpu", candidates="retrieval")


# ------------------------------------------------------------------------- statelessness / order
def test_result_independent_of_order_history_and_batching(table, queries):
    pos, quats = table
    p, q = queries
    pae = _pae()
    ref = _refiner(pae, pos, quats)
    z = _latents(pae, p, q) + 0.05 * torch.randn(len(p), 32, generator=torch.Generator().manual_seed(0))
    kw = dict(k=4, steps=25, lr=0.1)

    batch = ref.refine(p, q, z, **kw)
    rev = ref.refine(p[::-1].copy(), q[::-1].copy(), z.flip(0), **kw)
    one_by_one = [ref.refine(p[i:i + 1], q[i:i + 1], z[i:i + 1], **kw) for i in range(len(p))]
    # A, B then B, A
    ab = [ref.refine(p[i:i + 1], q[i:i + 1], z[i:i + 1], **kw) for i in (0, 1)]
    ba = [ref.refine(p[i:i + 1], q[i:i + 1], z[i:i + 1], **kw) for i in (1, 0)]
    # and A again after many unrelated queries
    for _ in range(3):
        ref.refine(p[::-1].copy(), q[::-1].copy(), z.flip(0) * 2.0, **kw)
    a_again = ref.refine(p[:1], q[:1], z[:1], **kw)

    np.testing.assert_array_equal(rev.neighbors[::-1], batch.neighbors)
    np.testing.assert_allclose(rev.position[::-1], batch.position, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rev.weights[::-1], batch.weights, rtol=0, atol=1e-6)
    for i, r in enumerate(one_by_one):
        np.testing.assert_array_equal(r.neighbors[0], batch.neighbors[i])
        np.testing.assert_allclose(r.weights[0], batch.weights[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(r.position[0], batch.position[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(r.residual[0], batch.residual[i], rtol=1e-5, atol=1e-9)
    for x, y in ((ab[0], ba[1]), (ab[1], ba[0]), (ab[0], a_again)):
        np.testing.assert_array_equal(x.position, y.position)  # single queries: bit-identical
        np.testing.assert_array_equal(x.weights, y.weights)


def test_localizer_independent_of_query_history(tiny_bundle, room_splits):
    _, test = room_splits
    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    a, b = load_rgb(test.frames[0].image_path), load_rgb(test.frames[-1].image_path)
    e_a1, e_b1 = loc.localize(a), loc.localize(b)
    e_b2, e_a2 = loc.localize(b), loc.localize(a)
    np.testing.assert_array_equal(e_a1.position, e_a2.position)
    np.testing.assert_array_equal(e_b1.position, e_b2.position)
    assert e_a1.extras["weights"] == e_a2.extras["weights"]


# -------------------------------------------------------------------------------- the kNN index
@pytest.mark.parametrize("metric", ["scaled", "reference"])
def test_index_matches_brute_force(table, queries, metric):
    pos, quats = table
    p, q = queries
    ps, os_ = table_metric_scales(pos, quats)
    index = PoseTableIndex(pos, quats, None, metric, ps, os_)
    got = index.query(torch.as_tensor(p), torch.as_tensor(q), 5).numpy()
    want, d = _brute_force_knn(pos, quats, p, q, 5, metric, ps, os_)
    # same sets, nearest first (ties are impossible with random data)
    np.testing.assert_array_equal(got, want)
    assert np.all(np.diff(np.take_along_axis(d, got, 1), axis=1) >= 0)


def test_metrics_differ(table):
    """The metric option is not ignored: scaled and reference rank some queries differently."""
    pos, quats = table
    rng = np.random.default_rng(5)
    p = rng.uniform([0, 0, 1], [8, 6, 2], size=(50, 3))
    q = _rand_quats(rng, 50)
    ps, os_ = table_metric_scales(pos, quats)
    a = PoseTableIndex(pos, quats, None, "scaled", ps, os_).query(torch.as_tensor(p), torch.as_tensor(q), 3)
    b = PoseTableIndex(pos, quats, None, "reference", ps, os_).query(torch.as_tensor(p), torch.as_tensor(q), 3)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="metric"):
        PoseTableIndex(pos, quats, metric="euclid")


@pytest.mark.parametrize("metric", ["scaled", "reference"])
def test_refiner_runs_with_both_metrics(table, queries, metric):
    pos, quats = table
    p, q = queries
    pae = _pae()
    ref = _refiner(pae, pos, quats, metric=metric)
    res = ref.refine(p, q, _latents(pae, p, q), k=3, steps=20, lr=0.1)
    ps, os_ = table_metric_scales(pos, quats)
    want, _ = _brute_force_knn(pos, quats, p, q, 3, metric, ps, os_)
    np.testing.assert_array_equal(res.neighbors, want)
    assert np.all(np.isfinite(res.position))


def test_k1_returns_nearest_train_position_exactly(table, queries):
    pos, quats = table
    p, q = queries
    pae = _pae()
    ref = _refiner(pae, pos, quats)
    res = ref.refine(p, q, _latents(pae, p, q), k=1, steps=30, lr=0.1)
    ps, os_ = table_metric_scales(pos, quats)
    want, _ = _brute_force_knn(pos, quats, p, q, 1, "scaled", ps, os_)
    np.testing.assert_array_equal(res.position, pos[want[:, 0]])  # float64 table, weight exactly 1
    np.testing.assert_array_equal(res.weights, 1.0)
    np.testing.assert_array_equal(res.spread_m, 0.0)


def test_quaternion_sign_ambiguity(table, queries):
    pos, quats = table
    p, q = queries
    ps, os_ = table_metric_scales(pos, quats)
    index = PoseTableIndex(pos, quats, None, "scaled", ps, os_)
    a = index.query(torch.as_tensor(p), torch.as_tensor(q), 5)
    b = index.query(torch.as_tensor(p), torch.as_tensor(-q), 5)
    assert torch.equal(a, b)
    # a table stored with flipped signs is the same table
    flip = np.where(np.arange(len(quats))[:, None] % 2 == 0, -quats, quats)
    c = PoseTableIndex(pos, flip, None, "scaled", ps, os_).query(torch.as_tensor(p), torch.as_tensor(q), 5)
    assert torch.equal(a, c)
    # unnormalised query quaternions are normalised
    d = index.query(torch.as_tensor(p), torch.as_tensor(3.0 * q), 5)
    assert torch.equal(a, d)


def test_k_larger_than_table():
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    quats = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    index = PoseTableIndex(pos, quats)
    idx = index.query(torch.zeros(1, 3), torch.tensor([[1.0, 0, 0, 0]]), 5)
    assert idx.tolist() == [[0, 1]]


def test_scene_masking(table):
    pos, quats = table
    n = len(pos)
    # scene 1 is a copy of scene 0 shifted by 1 mm: without masking, neighbours mix the two scenes
    tp = np.concatenate([pos, pos + 1e-3])
    tq = np.concatenate([quats, quats])
    ts = np.concatenate([np.zeros(n, int), np.ones(n, int)])
    pae = _pae(num_scenes=2)
    ps, os_ = table_metric_scales(tp, tq)
    index = PoseTableIndex(tp, tq, ts, "scaled", ps, os_)
    p, q = pos[:10] + 5e-4, quats[:10]
    for s in (0, 1):
        idx = index.query(torch.as_tensor(p), torch.as_tensor(q), 4, torch.full((10,), s)).numpy()
        assert np.all(ts[idx] == s), f"neighbours from another scene than {s}"
    mixed = index.query(torch.as_tensor(p), torch.as_tensor(q), 4).numpy()
    assert len(np.unique(ts[mixed])) == 2  # the masking is what separates them
    # per-query scenes in one batch, through the refiner
    qs = np.array([0, 1] * 5)
    ref = Refiner(index, _latents(pae, tp, tq, ts), tp, tq)
    res = ref.refine(p, q, _latents(pae, p, q, qs), k=4, steps=10, lr=0.1, scene_idx=qs)
    assert np.all(ts[res.neighbors] == qs[:, None])


def test_orientation_modes(table, queries):
    pos, quats = table
    p, q = queries
    pae = _pae()
    ref = _refiner(pae, pos, quats)
    z = _latents(pae, p, q)
    r_apr = ref.refine(p, -q, z, k=3, steps=10, lr=0.1, orientation="apr")
    np.testing.assert_allclose(r_apr.quaternion, canonical_quat(q), atol=1e-12)


def test_average_orientation_and_spread_by_hand():
    """Two table poses 2 m apart, rotations 0 and 90 deg about z, uniform weights (0 steps): the
    refined pose is the midpoint, rotated 45 deg about z, and the spread is exactly 1 m."""
    pos = np.array([[0.0, 0, 0], [2.0, 0, 0]])
    c, s_ = np.cos(np.pi / 4), np.sin(np.pi / 4)
    quats = np.array([[1.0, 0, 0, 0], [c, 0, 0, s_]])
    pae = _pae()
    ref = Refiner(PoseTableIndex(pos, quats), _latents(pae, pos, quats), pos, quats)
    r = ref.refine(np.array([[1.0, 0, 0]]), np.array([[1.0, 0, 0, 0]]), _latents(pae, pos[:1], quats[:1]),
                   k=2, steps=0, lr=0.1, orientation="average")
    np.testing.assert_allclose(r.weights, [[0.5, 0.5]], atol=1e-12)
    np.testing.assert_allclose(r.position, [[1.0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(r.spread_m, [1.0], atol=1e-12)
    want = np.array([np.cos(np.pi / 8), 0, 0, np.sin(np.pi / 8)])
    np.testing.assert_allclose(r.quaternion[0], want, atol=1e-9)


# ------------------------------------------------------------- exact search far from the origin
@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_nearest_neighbour_exact_far_from_origin(offset):
    """A dense table (1 cm spacing) 100 m / 1000 m from the origin: the index returns exactly the
    float64 brute-force neighbours. float32 cdist on raw coordinates (the old code) gets many wrong."""
    rng = np.random.default_rng(3)
    n = 400
    pos = np.array([offset, -offset, 2.0]) + rng.uniform(0, 0.2, size=(n, 3))
    quats = np.tile([1.0, 0, 0, 0], (n, 1))
    p = pos[rng.choice(n, 60)] + rng.normal(size=(60, 3)) * 0.004
    q = np.tile([1.0, 0, 0, 0], (60, 1))
    want = np.argsort(np.linalg.norm(p[:, None] - pos[None], axis=-1), axis=1, kind="stable")[:, :3]
    index = PoseTableIndex(pos, quats, None, "scaled", 1.0, 1.0)
    got = index.query(p, torch.as_tensor(q), 3).numpy()
    np.testing.assert_array_equal(got, want)
    old = torch.topk(torch.cdist(torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(pos, dtype=torch.float32)),
                     3, largest=False).indices.numpy()
    assert (old != want).any(axis=1).mean() > 0.05, "fixture too easy: float32 cdist is exact here too"


def test_shortlist_search_is_exact_and_falls_back(monkeypatch):
    """Tables >= ann_min poses use the faiss shortlist + lower bound; results equal brute force,
    including queries whose shortlist cannot prove exactness (they fall back)."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    n = 3000
    pos = rng.uniform(0, 30, size=(n, 3))
    quats = _rand_quats(rng, n)
    p = np.concatenate([pos[:40] + rng.normal(size=(40, 3)) * 0.5, rng.uniform(-50, 80, size=(10, 3))])
    q = _rand_quats(rng, 50)
    ps, os_ = table_metric_scales(pos, quats)
    index = PoseTableIndex(pos, quats, None, "scaled", ps, os_, ann_min=1000, shortlist=16)
    assert index.ann is not None
    got = index.query(p, torch.as_tensor(q), 5).numpy()
    want, _ = _brute_force_knn(pos, quats, p, q, 5, "scaled", ps, os_)
    np.testing.assert_array_equal(got, want)
    assert index.fallbacks > 0, "the fallback path was not exercised"


def test_merge_candidates_masks_duplicates_and_fit_ignores_them():
    from pae_ros.candidates import merge_candidates

    idx, valid = merge_candidates(np.array([[3, 5, 7]]), np.array([[5, 9]]))
    assert idx.tolist() == [[3, 5, 7, 5, 9]]
    assert valid.tolist() == [[True, True, True, False, True]]
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(1, 5, 8, generator=g)
    z = torch.randn(1, 8, generator=g)
    w, _ = fit_convex_weights(z, Z, 0, 0.1, mask=valid)
    np.testing.assert_allclose(w.numpy(), [[0.25, 0.25, 0.25, 0.0, 0.25]], atol=1e-12)
    w, _ = fit_convex_weights(z, Z, 30, 0.1, mask=valid)
    assert float(w[0, 3]) == 0.0 and abs(float(w.sum()) - 1) < 1e-6


# ----------------------------------------------------------------------------- the convex fit
def _reference_fit(z, Z, steps, lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8):
    """Autograd + a FRESH torch.optim.AdamW per query, logits started at 0."""
    out = []
    D = z.shape[-1]
    for b in range(z.shape[0]):
        a = torch.zeros(Z.shape[1], dtype=z.dtype, requires_grad=True)
        opt = torch.optim.AdamW([a], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            w = torch.softmax(a, -1)
            loss = ((z[b] - w @ Z[b]) ** 2).sum() / D
            loss.backward()
            opt.step()
        out.append(torch.softmax(a.detach(), -1))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("steps,lr,wd,betas,eps", [
    (30, 0.1, 0.0, (0.9, 0.999), 1e-8),
    (50, 0.05, 0.01, (0.8, 0.99), 1e-6),
    (5, 0.5, 0.1, (0.9, 0.999), 1e-8),
    (0, 0.1, 0.0, (0.9, 0.999), 1e-8),
])
def test_fit_matches_autograd_adamw_reference(dtype, steps, lr, wd, betas, eps):
    g = torch.Generator().manual_seed(0)
    B, k, D = 6, 4, 24
    Z = torch.randn(B, k, D, generator=g, dtype=dtype)
    w_true = torch.softmax(torch.randn(B, k, generator=g, dtype=dtype) * 2, -1)
    z = torch.einsum("bk,bkd->bd", w_true, Z) + 0.1 * torch.randn(B, D, generator=g, dtype=dtype)
    w, resid = fit_convex_weights(z, Z, steps, lr, wd, betas, eps)
    w_ref = _reference_fit(z, Z, steps, lr, wd, betas, eps)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-5)
    # convex weights
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, dtype=dtype), rtol=0, atol=1e-6)
    # the reported residual is |z - Zw|^2 / |z|^2
    direct = ((z - torch.einsum("bk,bkd->bd", w, Z)) ** 2).sum(-1) / (z ** 2).sum(-1)
    torch.testing.assert_close(resid, direct, rtol=1e-4, atol=1e-6)
    if steps == 0:
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / k))


def test_fit_reduces_the_objective_and_is_per_query():
    g = torch.Generator().manual_seed(1)
    Z = torch.randn(8, 5, 32, generator=g)
    z = torch.randn(8, 32, generator=g)
    _, r0 = fit_convex_weights(z, Z, 0, 0.1)
    _, r = fit_convex_weights(z, Z, 40, 0.1)
    assert torch.all(r <= r0 + 1e-7)
    # query i's result does not depend on the other queries of the batch
    w_all, _ = fit_convex_weights(z, Z, 40, 0.1)
    w_3, _ = fit_convex_weights(z[3:4], Z[3:4], 40, 0.1)
    torch.testing.assert_close(w_all[3:4], w_3, rtol=0, atol=1e-6)


def test_fit_moves_weight_to_the_matching_neighbour(table):
    pos, quats = table
    pae = _pae()
    nb = np.array([3, 17, 42, 99])
    Z = _latents(pae, pos[nb], quats[nb])[None]          # (1, 4, D)
    for j in range(4):
        z = Z[:, j].clone()                              # z is exactly neighbour j's latent
        w, resid = fit_convex_weights(z, Z, 100, 0.1)
        assert int(w.argmax()) == j and float(w[0, j]) > 0.5, f"weights {w.tolist()} do not favour neighbour {j}"
        _, r0 = fit_convex_weights(z, Z, 0, 0.1)
        assert float(resid) < float(r0)
        # and through the refiner: the refined position moves towards neighbour j's position
        ref = Refiner(PoseTableIndex(pos[nb], quats[nb]), Z[0], pos[nb], quats[nb])
        r = ref.refine(pos[nb][j:j + 1], quats[nb][j:j + 1], z, k=4, steps=100, lr=0.1)
        uniform = pos[nb].mean(0)
        assert np.linalg.norm(r.position[0] - pos[nb][j]) < np.linalg.norm(uniform - pos[nb][j])


# ---------------------------------------------------------------------- refinement switched off
def test_refine_disabled_returns_apr_pose(tiny_bundle, room_splits):
    _, test = room_splits
    images = [load_rgb(f.image_path) for f in test.frames[:6]]
    off = Localizer.from_bundle(tiny_bundle, device="cpu", refine=False)
    on = Localizer.from_bundle(tiny_bundle, device="cpu", refine=True)
    assert off.info["refine"] is False
    for e_off, e_on in zip(off.localize_batch(images), on.localize_batch(images)):
        assert e_off.refined is False
        np.testing.assert_array_equal(e_off.position, e_off.apr_position)
        np.testing.assert_array_equal(e_off.quaternion, e_off.apr_quaternion)
        assert "neighbors" not in e_off.extras
        # the APR part is the same with refinement on; refinement changes the position only
        np.testing.assert_allclose(e_on.apr_position, e_off.apr_position, atol=1e-9)
        assert e_on.refined is True
        assert not np.array_equal(e_on.position, e_on.apr_position)
        np.testing.assert_allclose(e_on.quaternion, e_on.apr_quaternion, atol=1e-12)  # orientation "apr"


def test_hnsw_shortlist_matches_brute_force():
    """Large tables use an HNSW shortlist (approximate in principle): on a 6 k table it returns the
    brute-force neighbours for every query here."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    n = 6000
    pos = rng.uniform(0, 40, size=(n, 3))
    quats = _rand_quats(rng, n)
    p = pos[:60] + rng.normal(size=(60, 3)) * 0.3
    q = _rand_quats(rng, 60)
    ps, os_ = table_metric_scales(pos, quats)
    index = PoseTableIndex(pos, quats, None, "scaled", ps, os_, ann_min=1000, hnsw_min=5000)
    assert index.ann_kind == "hnsw"
    want, _ = _brute_force_knn(pos, quats, p, q, 3, "scaled", ps, os_)
    np.testing.assert_array_equal(index.query(p, torch.as_tensor(q), 3).numpy(), want)


def test_retrieval_index_for_large_tables_agrees_with_the_exhaustive_search():
    """From ann_min rows an inverted-file index answers; its scores are the exact cosines of the rows
    it returns, its top-1 agrees with the exhaustive search on clustered descriptors, and masked
    (per-scene) queries use the exhaustive search."""
    pytest.importorskip("faiss")
    from pae_ros.retrieval import RetrievalIndex

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, 64)).astype(np.float32)
    table = centres[rng.integers(0, 100, 3000)] + 0.3 * rng.normal(size=(3000, 64)).astype(np.float32)
    queries = centres[rng.integers(0, 100, 50)] + 0.3 * rng.normal(size=(50, 64)).astype(np.float32)
    ivf = RetrievalIndex(table, ann_min=1000)
    assert ivf.ann is not None and ivf.ann_kind.startswith("ivf")
    exact = RetrievalIndex(table, ann_min=None)
    assert exact.ann is None
    idx, cos = ivf.query(queries, 5)
    want, _ = exact.query(queries, 5)
    assert np.mean(idx[:, 0] == want[:, 0]) >= 0.95
    unit = ivf.descriptors
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, np.einsum("bd,bkd->bk", qn, unit[idx]), atol=1e-5)
    assert (np.diff(cos, axis=1) <= 1e-6).all()                      # best first
    # per-scene masking: exhaustive, and never a row of another scene
    scenes = np.arange(3000) % 2
    masked = RetrievalIndex(table, scene_idx=scenes, ann_min=1000)
    m_idx, _ = masked.query(queries, 3, scene_idx=np.ones(50, int))
    assert (scenes[m_idx] == 1).all()


def test_pose_table_index_from_bundle_is_the_localizers_index(tiny_bundle, room_splits):
    """One factory builds the index over a bundle's pose table: the Localizer's refiner uses it, and a
    Localizer without refinement builds the same one on demand (evaluation's k-NN rows)."""
    from pathlib import Path

    from pae_ros.bundle import Bundle, BundleError

    _, test = room_splits
    on = Localizer.from_bundle(tiny_bundle, device="cpu", geometric="off")
    assert on.refiner.index is on.pose_index
    b = on.bundle
    index = PoseTableIndex.from_bundle(b, "scaled")
    scales = b.header["metric_scales"]
    assert (index.pos_scale, index.ori_scale) == (scales["position_m"], scales["orientation_rad"])
    assert index.scene_idx is None and len(index) == len(b.table_positions)   # one scene: no masking
    q = torch.as_tensor(test.quaternions)
    want = index.query(test.positions, q, 3)
    assert torch.equal(on.pose_index.query(test.positions, q, 3), want)
    no_pae = Bundle(b.header, {k: v for k, v in b.tensors.items() if not k.startswith("pae.")}, b.path)
    apr_only = Localizer(no_pae, device="cpu", refine=False, geometric="off")
    assert apr_only.refiner is None
    assert torch.equal(apr_only.pose_index.query(test.positions, q, 3), want)
    header = {k: v for k, v in b.header.items() if k != "metric_scales"}
    with pytest.raises(BundleError, match="broken.pae: bundle header has no 'metric_scales'"):
        PoseTableIndex.from_bundle(Bundle(header, b.tensors, Path("broken.pae")), "scaled")
