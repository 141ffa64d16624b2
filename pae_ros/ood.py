"""Out-of-scene gate: is this image from the scene the bundle was trained on?

Per-frame features (dimensionless; which ones exist depends on the bundle):

* ``self_consistency``: ``|z - PAE(APR pose)|^2 / |z|^2`` (the APR contradicts its own latent);
* ``manifold``: ``min_c |z - PAE(c)|^2 / |z|^2`` over the refinement candidates, the latent's
  distance to the PAE manifold at train poses;
* ``residual``: relative residual of the convex latent fit;
* ``retrieval_cos``: cosine of the best train image (a similarity floor; needs the bundle's
  ``table.descriptors``).

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
DEFAULT_FEATURES = ("manifold", "retrieval_cos")


#: default gate settings (fitted on the held-out train walks), chosen on the two built-in scenes with
#: bench/bench_accuracy.py --ood and checked on a third (figures in docs/RESULTS.md, "Out-of-scene gate")
GATE_QUANTILE, GATE_MARGIN, GATE_COS_MARGIN = 0.9, 1.0, 0.0


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
    fewer than 10 finite values are left out."""
    if not 0.5 < quantile < 1.0:
        raise ValueError(f"ood quantile must be in (0.5, 1), got {quantile}")
    rules = {}
    n_used = 0
    for name in names:
        if name not in features:
            continue
        v = np.asarray(features[name], np.float64)
        v = v[np.isfinite(v)]
        if len(v) < 10:
            continue
        n_used = max(n_used, len(v))
        if name in LOWER_IS_OUT:
            rules[name] = {"below": conformal_threshold(v, quantile, upper=False) - cos_margin}
        else:
            rules[name] = {"above": conformal_threshold(v, quantile) * margin}
    if not rules:
        raise ValueError(f"fit_ood_gate: no usable feature among {sorted(features)} (need >= 10 finite values)")
    return {"version": 1, "rules": rules, "quantile": quantile, "margin": margin, "cos_margin": cos_margin,
            "frames": n_used}


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
