"""Evaluation beside its baselines: every row on the tiny fixtures, the paired bootstrap, coverage
strata, the published row, calibration and the out-of-scene gating report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pae_ros.coverage import COVERAGE_BINS_M, coverage_bin_label, coverage_distance
from pae_ros.datasets import read_dataset
from pae_ros.geometry import average_quaternions, orientation_error_deg
from pae_ros.metrics import auroc, paired_bootstrap_median_diff, stratify_errors

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def splits(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "train"), read_dataset(tiny_dataset, "7scenes", "test")


@pytest.fixture(scope="module")
def loc(tiny_bundle):
    from pae_ros.pipeline import Localizer

    return Localizer.from_bundle(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def report(loc, splits):
    from pae_ros.evaluation.report import evaluate
    from pae_ros.evaluation.ood_images import out_of_scene_images
    from pae_ros.datasets import load_rgb

    train, test = splits
    ood = out_of_scene_images([load_rgb(f.image_path) for f in test.frames[:4]], per_kind=3, seed=0)
    return evaluate(loc, test, train, k_sweep=(1,), show_progress=False, n_boot=300, ood=ood)


def _errors(report, row):
    return np.asarray(report["per_frame"]["room"][row]["position_error_m"])


def test_every_baseline_row_runs_and_is_labelled(report):
    rows = report["rows"]
    for r in ("mean_pose", "retrieval_top1", "retrieval_topk", "nearest_snap", "uniform_k", "oracle_nearest_train",
              "apr", "pae", "refined", "published"):
        assert r in rows and r in report["scenes"]["room"], r
        assert report["scenes"]["room"][r]["frames"] == 40
    assert rows["oracle_nearest_train"]["oracle"] and "ORACLE" in rows["oracle_nearest_train"]["label"]
    assert not rows["retrieval_top1"]["oracle"] and not rows["published"]["oracle"]
    assert rows["uniform_k"]["k"] == 3 and rows["retrieval_topk"]["k"] == 3


def test_mean_pose_error_is_the_distance_to_the_mean_train_pose(report, splits):
    train, test = splits
    mean_p = train.positions.mean(0)
    mean_q = average_quaternions(train.quaternions, np.ones(len(train.frames)))
    want_p = np.linalg.norm(test.positions - mean_p, axis=1)
    want_o = orientation_error_deg(np.tile(mean_q, (len(test.frames), 1)), test.quaternions)
    np.testing.assert_allclose(_errors(report, "mean_pose"), want_p, rtol=1e-9)
    np.testing.assert_allclose(report["per_frame"]["room"]["mean_pose"]["orientation_error_deg"], want_o, atol=1e-6)


def test_oracle_is_the_nearest_train_position_and_beats_every_row(report, splits):
    train, test = splits
    d = np.linalg.norm(test.positions[:, None] - train.positions[None], axis=-1).min(1)
    oracle = _errors(report, "oracle_nearest_train")
    np.testing.assert_allclose(oracle, d, rtol=1e-9)
    for r in report["rows"]:
        if r == "oracle_nearest_train" or r == "pae_gt":
            continue
        assert report["scenes"]["room"]["oracle_nearest_train"]["median_position_m"] <= \
            report["scenes"]["room"][r]["median_position_m"], r
    # rows that output a train position can never be closer than the nearest one, frame by frame
    for r in ("nearest_snap", "retrieval_top1"):
        assert np.all(oracle <= _errors(report, r) + 1e-12), r


def test_nearest_snap_and_retrieval_output_train_poses(report, loc, splits):
    train, test = splits
    p_snap, q_snap = report["_arrays"]["estimates"]["nearest_snap"]
    table_p, table_q = loc.bundle.table_positions, loc.bundle.table_quaternions
    i = np.argmin(np.linalg.norm(p_snap[:, None] - table_p[None], axis=-1), axis=1)
    np.testing.assert_allclose(p_snap, table_p[i], atol=0)            # exactly a table position...
    assert np.all(orientation_error_deg(q_snap, table_q[i]) < 1e-4)  # ...with its own orientation
    # it is the table pose nearest the APR's estimate in the refiner's metric: refined with k = 1
    np.testing.assert_allclose(p_snap, report["_arrays"]["estimates"]["refined_k1"][0], atol=1e-9)
    p_ret, _ = report["_arrays"]["estimates"]["retrieval_top1"]
    d = np.linalg.norm(p_ret[:, None] - train.positions[None], axis=-1).min(1)
    assert np.all(d == 0)
    # no test pose is ever a baseline's output
    for r in ("nearest_snap", "retrieval_top1", "oracle_nearest_train"):
        p = report["_arrays"]["estimates"][r][0]
        assert np.linalg.norm(p[:, None] - test.positions[None], axis=-1).min() > 1e-6, r


def test_uniform_k_is_the_plain_mean_of_the_k_nearest_and_refined_with_zero_steps(report, loc):
    p_uni = report["_arrays"]["estimates"]["uniform_k"][0]
    p_apr, q_apr = report["_arrays"]["estimates"]["apr"]
    import torch

    idx = loc.refiner.index.query(torch.as_tensor(p_apr, dtype=torch.float32),
                                  torch.as_tensor(q_apr, dtype=torch.float32), loc.k).numpy()
    np.testing.assert_allclose(p_uni, loc.bundle.table_positions[idx].mean(1), atol=1e-9)


def test_published_is_what_the_localizer_publishes(report, loc, splits):
    from pae_ros.datasets import load_rgb

    _, test = splits
    est = loc.localize_batch([load_rgb(f.image_path) for f in test.frames[:5]])
    np.testing.assert_allclose(report["_arrays"]["estimates"]["published"][0][:5],
                               np.stack([e.position for e in est]), atol=1e-6)
    pub = report["published"]
    assert pub["methods"] == {"refined": 40} and pub["declared"] == "refined"  # the tiny fixture publishes refined
    assert pub["max_position_difference_to_row_m"]["refined"] < 1e-6


def test_published_follows_the_bundle_header(tiny_bundle, splits, tmp_path):
    """With header published = apr, the published row is the APR when the Localizer honours it, and
    the report always names what was declared and what was published."""
    from pae_ros.bundle import load_bundle, save_bundle
    from pae_ros.pipeline import Localizer
    from pae_ros.evaluation.report import evaluate

    b = load_bundle(tiny_bundle)
    header = {k: v for k, v in b.header.items() if k not in ("format", "format_version", "digest")}
    header["published"] = "apr"
    path = tmp_path / "apr_published.pae"
    save_bundle(path, header, dict(b.tensors))
    train, test = splits
    rep = evaluate(Localizer.from_bundle(path, device="cpu"), test, train, show_progress=False, n_boot=50)
    assert rep["published"]["declared"] == "apr"
    method = rep["published"]["method"]
    want = rep["_arrays"]["estimates"][method][0]
    np.testing.assert_allclose(rep["_arrays"]["estimates"]["published"][0], want, atol=1e-6)


def test_coverage_bins_partition_the_frames(report, splits):
    train, test = splits
    cov = report["coverage"]["room"]
    want = coverage_distance(test.positions, test.quaternions, train.positions, train.quaternions)
    got = np.array([np.inf if v is None else v for v in cov["per_frame_m"]])
    np.testing.assert_allclose(got, want)
    assert sum(cov["frames_per_bin"].values()) == 40
    assert list(cov["frames_per_bin"]) == [coverage_bin_label(*b) for b in COVERAGE_BINS_M]
    for r, bins in cov["by_row"].items():
        assert sum(b["frames"] for b in bins.values()) == 40, r
    # the stratum medians are medians of exactly the frames in the bin
    pe = _errors(report, "apr")
    m = (want >= 1.0) & (want < 2.0)
    if m.any():
        assert cov["by_row"]["apr"]["1-2m"]["median_position_m"] == pytest.approx(np.median(pe[m]))


def test_stratify_puts_infinite_coverage_in_the_last_bin():
    s = stratify_errors([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5, [0.5, 1.0, 4.9, 5.0, np.inf], COVERAGE_BINS_M)
    assert [v["frames"] for v in s.values()] == [1, 1, 1, 2]
    assert s[">5m"]["median_position_m"] == 4.5


def test_bootstrap_interval_covers_the_true_difference_and_excludes_zero_for_a_large_shift():
    rng = np.random.default_rng(1)
    covered, reps = 0, 60
    for r in range(reps):
        b = rng.exponential(1.0, 200)
        a = b * rng.uniform(0.9, 1.1, 200) + 0.0     # same population median up to noise: true diff ~ 0
        d = paired_bootstrap_median_diff(a, b, n_boot=400, seed=r)
        covered += d["low"] <= 0.0 <= d["high"]
    assert covered / reps >= 0.85                    # a 95 % interval, up to Monte Carlo noise
    b = rng.exponential(1.0, 200)
    shifted = paired_bootstrap_median_diff(b + 0.5, b, n_boot=400, seed=0)
    assert shifted["diff"] == pytest.approx(0.5) and shifted["low"] == pytest.approx(0.5)
    noisy = paired_bootstrap_median_diff(b + 0.5 + rng.normal(0, 0.2, 200), b, n_boot=400, seed=0)
    assert noisy["excludes_zero"] and noisy["low"] <= 0.5 <= noisy["high"]
    # seeded: the same call gives the same interval
    assert paired_bootstrap_median_diff(b + 0.1, b, 300, 3) == paired_bootstrap_median_diff(b + 0.1, b, 300, 3)
    with pytest.raises(ValueError, match="same frames"):
        paired_bootstrap_median_diff(b, b[:-1])


def test_report_bootstraps_the_asked_pairs_on_the_same_frames(report):
    pairs = {(d["a"], d["b"]): d for d in report["bootstrap"]["room"]}
    for pair in (("published", "apr"), ("refined", "nearest_snap"), ("refined", "uniform_k"),
                 ("published", "retrieval_top1")):
        assert pair in pairs
    d = pairs[("published", "apr")]
    assert d["frames"] == 40
    assert d["diff"] == pytest.approx(np.median(_errors(report, "published")) - np.median(_errors(report, "apr")))
    assert d["low"] <= d["high"]


def test_calibration_reads_the_published_sigma(report):
    cal = report["calibration"]
    pub = report["_arrays"]["published"]
    sp = np.array([e.sigma_position_m for e in pub])
    pe = _errors(report, "published")
    assert cal["method"] == "refined"
    assert cal["position"]["within_1sigma"] == pytest.approx(np.mean(pe <= 1.8776 * sp))
    assert cal["above_threshold"]["frames"] + cal["below_threshold"]["frames"] == 40
    assert 0 <= cal["orientation"]["within_2sigma"] <= 1 and "room" in cal["by_scene"]
    # per published method: the frames split by method, each with the coverage of its own sigma
    methods = np.array([e.method for e in pub])
    assert sum(b["frames"] for b in cal["by_method"].values()) == 40
    for m, b in cal["by_method"].items():
        sel = methods == m
        assert b["frames"] == sel.sum()
        assert b["position"]["within_2sigma"] == pytest.approx(np.mean(pe[sel] <= 2.8327 * sp[sel]), abs=1e-3)


def test_gating_report_without_a_gate_says_so(report):
    g = report["gating"]
    # the tiny bundle's gate is fitted at training; counted when present, None when absent
    if g["gate_available"]:
        assert 0.0 <= g["out_of_scene"]["gated_share"] <= 1.0
    else:
        assert g["out_of_scene"]["gated_share"] is None
    assert set(g["kinds"]) == {"black", "white", "noise", "upside_down", "mirrored", "rotated"}
    assert all(v["frames"] == 3 for v in g["kinds"].values())
    assert g["in_scene"]["frames"] == 40 and 0 <= g["out_of_scene"]["auroc_confidence"] <= 1


def test_gating_report_counts_the_gate_when_estimates_carry_in_scene(loc, splits):
    """A Localizer whose estimates say in_scene: the shares are counted from it."""
    from pae_ros.evaluation.sections import gating_report

    class Gated:
        ood_gate = {"rules": {"constant image": None}}

        def __init__(self, inner):
            self.inner = inner

        @property
        def info(self):
            return {"ood_gate": ["constant image"]}

        def localize_batch(self, images):
            out = self.inner.localize_batch(images)
            for e, im in zip(out, images):
                e.in_scene = bool(im.std() > 1.0)   # constant images are out of scene
            return out

    from pae_ros.datasets import load_rgb
    from pae_ros.evaluation.ood_images import out_of_scene_images

    _, test = splits
    imgs = [load_rgb(f.image_path) for f in test.frames[:4]]
    g = Gated(loc)
    in_scene = g.localize_batch(imgs)
    rep = gating_report(g, out_of_scene_images(imgs, per_kind=2, kinds=("black", "white", "upside_down")), in_scene)
    assert rep["gate_available"] is True and rep["gate"] == ["constant image"]
    assert rep["kinds"]["black"]["gated_share"] == 1.0 and rep["kinds"]["upside_down"]["gated_share"] == 0.0
    assert rep["out_of_scene"]["gated_share"] == pytest.approx(4 / 6) and rep["in_scene"]["gated_share"] == 0.0


def test_out_of_scene_images_are_what_they_say(splits):
    from pae_ros.datasets import load_rgb
    from pae_ros.evaluation.ood_images import out_of_scene_images

    _, test = splits
    src = [load_rgb(f.image_path) for f in test.frames[:3]]
    other = [np.full((10, 12, 3), 7, np.uint8)] * 5
    out = out_of_scene_images(src, per_kind=3, seed=0, other_scene_images=other)
    kinds = [k for k, _ in out]
    assert {k: kinds.count(k) for k in set(kinds)} == {"black": 3, "white": 3, "noise": 3, "upside_down": 3,
                                                       "mirrored": 3, "rotated": 3, "other_scene": 3}
    by = {}
    for k, im in out:
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
        by.setdefault(k, []).append(im)
    assert all(im.max() == 0 for im in by["black"]) and all(im.min() == 255 for im in by["white"])
    assert by["noise"][0].std() > 50
    np.testing.assert_array_equal(by["upside_down"][0], src[0][::-1])
    np.testing.assert_array_equal(by["mirrored"][0], src[0][:, ::-1])
    assert by["rotated"][0].shape == (src[0].shape[1], src[0].shape[0], 3)
    np.testing.assert_array_equal(by["rotated"][0], np.rot90(src[0]))
    assert by["other_scene"][0].shape == (10, 12, 3)
    with pytest.raises(ValueError, match="unknown out-of-scene kinds"):
        out_of_scene_images(src, kinds=("sideways",))


def test_auroc():
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0 and auroc([1, 1], [1, 1]) == 0.5
    assert auroc([], [1]) is None


def test_a_new_method_is_one_more_row(loc, splits):
    from pae_ros.evaluation.baselines import RowSpec
    from pae_ros.evaluation.report import evaluate

    train, test = splits
    extra = {"apr_plus_1m": RowSpec("apr_plus_1m", "the APR moved 1 m along x",
                                    lambda ctx: (ctx.apr_positions + [1.0, 0, 0], ctx.apr_quaternions))}
    rep = evaluate(loc, test, train, show_progress=False, n_boot=50, extra_rows=extra,
                   pairs=(("apr_plus_1m", "apr"),))
    assert rep["rows"]["apr_plus_1m"]["label"] == "the APR moved 1 m along x"
    assert rep["scenes"]["room"]["apr_plus_1m"]["frames"] == 40
    assert rep["bootstrap"]["room"][0]["a"] == "apr_plus_1m"
    assert "apr_plus_1m" in rep["coverage"]["room"]["by_row"]


def test_eval_cli_prints_all_rows_and_writes_strict_json(tiny_bundle, tiny_dataset, tmp_path, capsys):
    from pae_ros.cli import main

    out_json = tmp_path / "r.json"
    rc = main(["eval", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--format", "7scenes",
               "--json", str(out_json), "--quiet", "--bootstrap", "100", "--ood", "--ood-per-kind", "2",
               "--ood-scene", str(tiny_dataset), "--retrieval-k", "2", "--pairs", "published:mean_pose"])
    assert rc == 0
    printed = capsys.readouterr().out
    for r in ("mean_pose", "retrieval_top1", "retrieval_topk", "nearest_snap", "uniform_k", "apr", "pae",
              "refined", "published", "oracle_nearest_train"):
        assert f" {r} " in printed, r
    assert "ORACLE" in printed and "paired bootstrap" in printed and "<1m" in printed
    rep = json.loads(out_json.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert rep["rows"]["retrieval_topk"]["k"] == 2
    assert [(d["a"], d["b"]) for d in rep["bootstrap"]["room"]] == [("published", "mean_pose")]
    assert rep["gating"]["kinds"]["other_scene"]["frames"] == 2
    assert (tmp_path / "error_vs_coverage.png").stat().st_size > 1000


def test_eval_cli_rejects_a_bad_pair(tiny_bundle, tiny_dataset, capsys):
    from pae_ros.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--format", "7scenes",
              "--pairs", "published"])
    assert "ROW_A:ROW_B" in capsys.readouterr().err


def test_bench_accuracy_prints_every_row_side_by_side(tiny_bundle, tiny_dataset, tmp_path, capsys):
    import importlib.util

    from support import REPO

    spec = importlib.util.spec_from_file_location("_bench_accuracy", REPO / "bench" / "bench_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = tmp_path / "acc.md"
    assert mod.main(["--pair", str(tiny_bundle), str(tiny_dataset), "--bootstrap", "50", "--threads", "2",
                     "--markdown", str(md), "--json", str(tmp_path / "acc.json")]) == 0
    out = capsys.readouterr().out
    assert "bench accuracy scene=room row=published:" in out and "bench accuracy scene=room row=retrieval_top1:" in out
    cspec = importlib.util.spec_from_file_location("_bench_common_acc", REPO / "bench" / "common.py")
    common = importlib.util.module_from_spec(cspec)
    cspec.loader.exec_module(common)
    lines = [ln for ln in out.splitlines() if ln.startswith("bench ")]
    assert lines and all(common.LINE_RE.match(ln) for ln in lines), lines[:3]
    table = md.read_text().splitlines()
    assert table[0] == "| row | room |"
    assert any(ln.startswith("| oracle_nearest_train (oracle) |") for ln in table)
    assert any(ln.startswith("| published |") for ln in table)
    rep = json.loads((tmp_path / "acc.json").read_text())
    assert list(rep.values())[0]["scenes"]["room"]["mean_pose"]["frames"] == 40


def test_published_errors_are_split_by_the_method_each_frame_used(report):
    by = report["published"]["by_method"]
    assert set(by) == set(report["published"]["methods"])
    assert sum(v["frames"] for v in by.values()) == 40
    assert by["refined"]["median_position_m"] == pytest.approx(np.median(_errors(report, "published")))


@pytest.mark.slow  # trains a two-scene bundle
def test_two_scene_report_keeps_each_scene_to_its_own_train_poses(two_scene_bundle):
    """Per scene: the mean pose and the oracle come from that scene's train poses, coverage from
    that scene's cameras, and every row is summarised on that scene's frames only."""
    from pae_ros.pipeline import Localizer
    from pae_ros.evaluation.report import evaluate

    root, bundle = two_scene_bundle
    train, test = read_dataset(root, "7scenes", "train"), read_dataset(root, "7scenes", "test")
    rep = evaluate(Localizer.from_bundle(bundle, device="cpu"), test, train, show_progress=False, n_boot=50)
    assert list(rep["scenes"]) == ["room_a", "room_b"]
    for s in ("room_a", "room_b"):
        tr = [f for f in train.frames if f.scene == s]
        te = [f for f in test.frames if f.scene == s]
        tp, gp = np.stack([f.position for f in tr]), np.stack([f.position for f in te])
        np.testing.assert_allclose(rep["per_frame"][s]["mean_pose"]["position_error_m"],
                                   np.linalg.norm(gp - tp.mean(0), axis=1), rtol=1e-9)
        np.testing.assert_allclose(rep["per_frame"][s]["oracle_nearest_train"]["position_error_m"],
                                   np.linalg.norm(gp[:, None] - tp[None], axis=-1).min(1), rtol=1e-9)
        want = coverage_distance(gp, np.stack([f.quaternion for f in te]), tp, np.stack([f.quaternion for f in tr]))
        got = np.array([np.inf if v is None else v for v in rep["coverage"][s]["per_frame_m"]])
        np.testing.assert_allclose(got, want)
        assert all(v["frames"] == len(te) for v in rep["scenes"][s].values())
        assert rep["calibration"] is None or s in rep["calibration"]["by_scene"]


def test_geometric_report_counts_every_frames_reason(loc, tmp_path):
    """Every frame is counted under its reason: the fix, the stage's fallback, an image the stage
    raised on ("unusable image", whatever its message), and frames the stage never saw."""
    from pae_ros.evaluation.sections import geometric_report
    from pae_ros.pipeline import Estimate

    def est(method="refined", extras=None, in_scene=True):
        return Estimate(np.zeros(3), np.array([1.0, 0, 0, 0]), np.zeros(3), np.array([1.0, 0, 0, 0]), 0.5, 1.0, 0.1,
                        np.eye(6), "room", method == "refined", extras=extras or {}, method=method, in_scene=in_scene)

    assert geometric_report(loc, [est()] * 3, np.ones(3), np.array(["refined"] * 3)) is None
    pub = [est("geometric", {"geometric_accepted": True, "geometric_reason": "accepted", "geometric_total_s": 0.2}),
           est("refined", {"geometric_accepted": False, "geometric_reason": "too_few_inliers",
                           "geometric_total_s": 0.1}),
           est("refined", {"geometric_reason": "unusable image: aspect 4:3 vs 16:9"}),
           est("refined", {"geometric_reason": "unusable image: 2 x 2 pixels"}),
           est("apr", in_scene=False),
           est("refined")]
    methods = np.array([e.method for e in pub])
    g = geometric_report(loc, pub, np.array([0.01, 1.0, 2.0, 2.0, 3.0, 2.0]), methods)
    assert g["frames"] == 6 and g["attempted"] == 4
    assert g["reasons"] == {"accepted": 1, "too_few_inliers": 1, "unusable image": 2, "out of scene": 1,
                            "not attempted": 1}
    assert sum(g["fallback_reasons"].values()) == round(g["fallback_share"] * 6) == 5
    assert g["accepted_share"] == pytest.approx(1 / 6) and g["seconds_per_query_median"] == pytest.approx(0.15)
    assert g["median_position_m_accepted"] == 0.01 and g["median_position_m_fallback"] == 2.0
    assert "map_mb" not in g


class _RaisingStage:
    """Stands in for the map-based geometric stage (the tiny scene has no sparse map): records the
    shortlist rows it is given and raises ValueError, as the stage does on an image that is not
    RGB uint8."""

    def __init__(self):
        self.rows: list[list[int]] = []

    def __call__(self, rgb, rows, position, quaternion, sigma_position_m, sigma_orientation_rad,
                 intrinsics=None, scene=None):
        self.rows.append(list(rows))
        raise ValueError("not an RGB uint8 image")


def test_eval_gives_a_bundle_without_table_descriptors_its_train_descriptors(tiny_bundle, splits, tmp_path):
    """A bundle without ``table.descriptors``: evaluate computes the train images' descriptors and
    hands them to the Localizer, so its geometric shortlist starts with the retrieval top-k; they
    equal what the Localizer computes as query descriptors of the same images; the refinement keeps
    its candidates (the published poses do not move); every frame's stage outcome is counted."""
    from pae_ros.bundle import load_bundle, save_bundle
    from pae_ros.datasets import load_rgb
    from pae_ros.evaluation.report import evaluate
    from pae_ros.geometric.build import frames_for_table
    from pae_ros.pipeline import Localizer

    b = load_bundle(tiny_bundle)
    header = {k: v for k, v in b.header.items() if k not in ("format", "format_version", "digest")}
    path = tmp_path / "no_descriptors.pae"
    save_bundle(path, header, {k: v for k, v in b.tensors.items() if k != "table.descriptors"})
    train, test = splits
    loc = Localizer.from_bundle(path, device="cpu", geometric="off")
    assert loc.retrieval is None and "table.descriptors" not in loc.bundle.tensors
    imgs = [load_rgb(f.image_path) for f in test.frames[:6]]
    before = loc.localize_batch(imgs)
    candidates = loc.candidate_mode
    stage = loc.geometric = _RaisingStage()

    rep = evaluate(loc, test, train, show_progress=False, n_boot=50)
    assert loc.retrieval is not None and rep["retrieval"]["localizer_table_descriptors"]
    frames = frames_for_table(loc.bundle, train.frames)
    rows = [0, len(frames) // 2, len(frames) - 1]
    np.testing.assert_allclose(loc.retrieval.descriptors[rows],
                               loc.describe([load_rgb(frames[i].image_path) for i in rows]), atol=1e-5)
    assert loc.candidate_mode == candidates == "knn"
    np.testing.assert_allclose(rep["_arrays"]["estimates"]["published"][0][:6],
                               np.stack([e.position for e in before]), atol=1e-9)
    # the shortlist of each frame the stage saw: the retrieval top geometric_k first
    seen = [e for e in rep["_arrays"]["published"] if e.in_scene and e.finite]
    assert len(stage.rows) == len(seen) > 0
    top, _ = loc.retrieval.query(np.stack([e.descriptor for e in seen]), loc.geometric_k)
    for got, want in zip(stage.rows, top):
        assert got[:len(want)] == [int(i) for i in want]
    g = rep["geometric"]
    assert g["reasons"]["unusable image"] == len(seen) == g["attempted"]
    assert sum(g["reasons"].values()) == len(test.frames)
