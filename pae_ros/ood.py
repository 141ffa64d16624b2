"""Out-of-scene gate: is this image from the scene the bundle was trained on?

Per-frame features (dimensionless; which ones exist depends on the bundle):

* ``self_consistency``: ``|z - PAE(APR pose)|^2 / |z|^2`` (the APR contradicts its own latent);
* ``manifold``: ``min_c |z - PAE(c)|^2 / |z|^2`` over the refinement candidates, the latent's
  distance to the PAE manifold at train poses;
* ``residual``: relative residual of the convex latent fit;
* ``retrieval_cos``: cosine of the best train image (a similarity floor; needs the bundle's
  ``table.descriptors``);
* ``flip_match`` (bundles with a decoder): how much better the view the decoder expects at the
  APR pose matches a flipped copy of the frame (mirrored, upside down or turned 180 deg) than the
  frame itself (:func:`flip_match`). Global descriptors and the APR barely tell a mirrored frame
  from the scene; the expected view's layout does. Its threshold is the in-scene
  :data:`FLIP_QUANTILE` bound, and the rule is left out where the decoder cannot tell held-out
  frames from their flips (:data:`FLIP_MIN_NEGATIVE_SHARE`).

The gate is fitted at training on held-back **in-scene** frames (:func:`fit_ood_gate`, called by
the training pipeline; stored in the bundle header under ``ood``): each feature's threshold is
its in-scene ``quantile`` (upper for distances, lower for ``retrieval_cos``) widened by
``margin`` (a factor for distances, a subtraction for the cosine). A frame is in-scene when every
feature the gate knows and the frame has is inside its threshold.

The quantile is the split-conformal order statistic (:func:`conformal_threshold`): the
``ceil(quantile * (n + 1))``-th smallest of ``n`` held-back values, so that a new in-scene frame
falls inside with probability at least ``quantile`` however few frames were held back (with 20
frames at 0.9 that is the 19th, not an interpolation between the 18th and 19th; with fewer than
``1 / (1 - quantile) - 1`` frames it is the largest). With hundreds of frames it equals the
empirical quantile.
"""
from __future__ import annotations

import numpy as np

#: features where a LOW value means out of scene (the rest: a HIGH value means out of scene)
LOWER_IS_OUT = ("retrieval_cos",)
#: default features: the retrieval cosine floor does most of the work; self_consistency lost in-scene
#: frames for no gain on the courtyard (bench/bench_refine_accuracy.py; docs/RESULTS.md, "Out-of-scene gate")
DEFAULT_FEATURES = ("manifold", "retrieval_cos", "flip_match")
#: the decoder flip test's feature name (computed from the images, not from the APR output alone)
FLIP_FEATURE = "flip_match"
#: the flip rule is fitted only when more than this share of the held-out in-scene frames match their
#: expected view better than any flip of themselves (flip_match < 0): a decoder too weak to tell a frame
#: from its flips adds only lost frames (shares per scene: docs/RESULTS.md, "Out-of-scene gate")
FLIP_MIN_NEGATIVE_SHARE = 0.5
#: the flip rule's in-scene pass probability (at least the gate's ``quantile``): flipped frames sit far
#: above in-scene ones where the test works, so a looser bound loses fewer in-scene frames for little
#: (bench/bench_gate.py; docs/RESULTS.md, "Out-of-scene gate")
FLIP_QUANTILE = 0.95


#: default gate settings (fitted on the held-out train walks), chosen on the two built-in scenes with
#: bench/bench_accuracy.py --ood and checked on a third (figures in docs/RESULTS.md, "Out-of-scene gate")
GATE_QUANTILE, GATE_MARGIN, GATE_COS_MARGIN = 0.9, 1.0, 0.0


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row normalised cross-correlation of (B, ...) arrays -> (B,) in [-1, 1]."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    a = (a - a.mean(1, keepdims=True)) / np.maximum(a.std(1, keepdims=True), 1e-6)
    b = (b - b.mean(1, keepdims=True)) / np.maximum(b.std(1, keepdims=True), 1e-6)
    return (a * b).mean(1)


def flip_match(expected: np.ndarray, images: list[np.ndarray]) -> np.ndarray:
    """The flip test: ``max(NCC(expected, flip(frame)) for flip in (mirror, upside down, 180 deg))
    - NCC(expected, frame)`` per frame, (B,) in [-2, 2]; higher means more out of scene.

    ``expected``: (B, 3, S, S) float in [0, 1], the decoder's image at each frame's estimated pose;
    ``images``: the B frames, RGB uint8 (H, W, 3) of any size (shorter side resized to S, centre
    crop: the decoder's training targets). An in-scene frame matches its expected view better
    than any flip of itself; a flipped frame matches it better once flipped back."""
    from .preprocess import crop, resize_shorter

    exp = np.asarray(expected, np.float64)
    size = exp.shape[-1]
    frames = np.stack([crop(resize_shorter(np.asarray(im), size), size) for im in images])
    frames = frames.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    direct = _ncc(exp, frames)
    flipped = [_ncc(exp, frames[..., ::-1]), _ncc(exp, frames[..., ::-1, :]), _ncc(exp, frames[..., ::-1, ::-1])]
    return np.max(flipped, axis=0) - direct


def flip_features(loc, positions: np.ndarray, quaternions: np.ndarray, scene_idx: np.ndarray,
                  images: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``{"flip_match": (B,)}`` of frames at their estimated poses (metres, wxyz, camera-to-world),
    with the PAE and decoder of the Localizer ``loc``; ``{}`` when it has no decoder."""
    if getattr(loc, "decoder", None) is None or getattr(loc, "pae", None) is None or not len(images):
        return {}
    import torch

    with torch.inference_mode():
        expected = loc.decoder(loc.pae_latents(positions, quaternions, scene_idx)).clamp(0, 1).float().cpu().numpy()
    return {FLIP_FEATURE: flip_match(expected, images)}


def conformal_threshold(values: np.ndarray, quantile: float, upper: bool = True) -> float:
    """The split-conformal ``quantile`` bound of ``values`` (finite, 1-D): upper (``upper``) or lower.

    For exchangeable values, a new one is <= the upper bound (>= the lower) with probability
    >= ``quantile``; with too few values for that, the largest (smallest) value."""
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    if not n:
        raise ValueError("conformal_threshold of no values")
    k = min(int(np.ceil(quantile * (n + 1))), n)  # 1-based rank
    return float(v[k - 1] if upper else v[n - k])


def fit_ood_gate(features: dict[str, np.ndarray], quantile: float = GATE_QUANTILE, margin: float = GATE_MARGIN,
                 cos_margin: float = GATE_COS_MARGIN, names=DEFAULT_FEATURES) -> dict:
    """Thresholds from in-scene frames: ``{name: (N,) values}`` -> the ``ood`` header dict.

    ``quantile`` in (0.5, 1): the in-scene pass probability of each threshold before the margin
    (the conformal order statistic, :func:`conformal_threshold`). Features that are absent or have
    fewer than 10 finite values are left out, and ``flip_match`` unless more than
    :data:`FLIP_MIN_NEGATIVE_SHARE` of its values are negative (named under ``left_out``)."""
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"ood quantile must be in (0.5, 1), got {quantile}")
    rules, left_out = {}, {}
    n_used = 0
    for name in names:
        if name not in features:
            continue
        v = np.asarray(features[name], np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            continue
        if name == FLIP_FEATURE and np.mean(v < 0) <= FLIP_MIN_NEGATIVE_SHARE:
            left_out[name] = {"negative_share": float(np.mean(v < 0))}
            continue
        n_used = max(n_used, len(v))
        if name in LOWER_IS_OUT:
            rules[name] = {"below": conformal_threshold(v, quantile, upper=False) - cos_margin}
        else:
            q = max(quantile, FLIP_QUANTILE) if name == FLIP_FEATURE else quantile
            rules[name] = {"above": conformal_threshold(v, q) * margin}
    if not rules:
        raise ValueError(f"fit_ood_gate: no usable feature among {sorted(features)} (need >= 10 finite values)")
    out = {"version": 1, "rules": rules, "quantile": quantile, "margin": margin, "cos_margin": cos_margin,
           "frames": n_used}
    if left_out:
        out["left_out"] = left_out
    return out


def apply_ood_gate(gate: dict | None, features: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, list[list[str]]]:
    """-> (in_scene (n,) bool, per frame the names of the rules it failed). No gate: all in scene.
    A non-finite feature value counts as failed."""
    inside = np.ones(n, bool)
    failed: list[list[str]] = [[] for _ in range(n)]
    if not gate:
        return inside, failed
    for name, rule in gate["rules"].items():
        if name not in features:
            continue
        v = np.asarray(features[name], np.float64)
        if "below" in rule:
            bad = ~(v >= rule["below"])
        else:
            bad = ~(v <= rule["above"])
        inside &= ~bad
        for i in np.flatnonzero(bad):
            failed[i].append(name)
    return inside, failed
