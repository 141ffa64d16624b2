"""The Localizer's run-time settings, resolved in one place from the bundle and the caller.

Three sources, per setting:

* the bundle's **config** (``header["config"]``, the training settings: ``refine.k``, ...);
* the bundle **header**'s recorded training decisions: ``published`` (``apr`` | ``refined``: what
  ``refine.enabled`` decided) and ``refine_weights`` (``pae`` | ``uniform``: what
  ``refine.weights`` decided), and the out-of-scene gate ``ood``;
* **explicit arguments** of the caller (``None`` = not given), which always win.

Between header and config: ``refine.weights`` set to ``pae`` / ``uniform`` in the config wins over
the header (the header is read only when the config says ``auto``); ``published`` wins over
``refine.enabled`` (training writes it from that key: ``true`` / ``false`` are recorded as given,
``auto`` as the held-out walks decided), and ``refine.enabled`` applies only to a header without
``published``. :func:`resolve` is the only function that applies these rules.
"""
from __future__ import annotations

from dataclasses import dataclass

from .bundle import BundleError
from .candidates import CANDIDATE_MODES

#: the values of header ``published`` (``geometric`` publishes the APR/PAE pose when the stage is off)
PUBLISHED = ("apr", "refined", "geometric")


@dataclass(frozen=True)
class LocalizerSettings:
    """What a :class:`pae_ros.pipeline.Localizer` runs with. Units: ``lr`` of the convex-weight fit
    (dimensionless), counts otherwise."""

    #: publish the refined pose (else the APR's)
    refine: bool
    #: the header's decision (``apr`` | ``refined`` | ``geometric``) or None when it has none
    published: str | None
    #: nearest train poses (knn candidates)
    k: int
    #: optimiser steps of the convex-weight fit (0: equal weights)
    steps: int
    lr: float
    weight_decay: float
    #: ``apr`` (the APR's orientation) or ``average`` (the weighted candidates' orientation)
    orientation: str
    #: neighbour metric ``scaled`` | ``reference`` (:class:`pae_ros.refine.PoseTableIndex`)
    metric: str
    #: ``auto`` | ``knn`` | ``retrieval`` | ``union`` (``auto`` resolved by :meth:`candidate_mode`)
    candidates: str
    retrieval_k: int
    #: the candidates' weights: ``pae`` (latent fit) or ``uniform``
    weights: str
    #: the out-of-scene gate dict (:func:`pae_ros.ood.fit_ood_gate`) or None (no gate)
    ood_gate: dict | None
    #: retrieval top-k train images in the geometric stage's shortlist
    geometric_k: int
    #: CPU intra-op threads, None = leave the process setting alone
    threads: int | None

    def candidate_mode(self, has_retrieval: bool) -> str:
        """The candidate source in use: ``knn``, ``retrieval`` or ``union`` (``auto``: retrieval
        when the Localizer has table descriptors, else knn)."""
        if self.candidates == "auto":
            return "retrieval" if has_retrieval else "knn"
        return self.candidates


def _refine_enabled(refine: bool | str | None, published: str | None, config_enabled) -> bool:
    """Argument ``refine`` (True / False / "true" / "false"), else the header's ``published``, else
    the config's ``refine.enabled`` (``auto``: refined)."""
    if refine is None or refine == "auto":
        if published is not None:
            return published == "refined"
        return True if config_enabled in ("auto", None) else bool(config_enabled)
    if isinstance(refine, str):
        if refine not in ("true", "false"):
            raise ValueError(f"refine must be auto, true or false, got {refine!r}")
        return refine == "true"
    return bool(refine)


def _weights_and_steps(steps: int | None, header_weights: str | None, config, where) -> tuple[str, int]:
    """(weights, steps): argument ``steps`` decides both (0 = uniform weights); else the config's
    ``refine.weights`` (``auto``: the header's ``refine_weights``, absent: ``pae``), whose
    ``uniform`` runs 0 steps and ``pae`` the config's ``refine.steps``."""
    weights = (header_weights or "pae") if config.weights == "auto" else config.weights
    if weights not in ("pae", "uniform"):
        raise BundleError(f"{where}: header 'refine_weights' is {weights!r} (expected pae or uniform)")
    if steps is not None:
        steps = int(steps)
        return ("uniform" if steps == 0 else "pae"), steps
    return weights, (0 if weights == "uniform" else config.steps)


def _check_ranges(s: LocalizerSettings) -> None:
    if s.k < 1 or s.steps < 0 or s.lr <= 0 or s.retrieval_k < 1:
        raise ValueError(f"refinement needs k >= 1, steps >= 0, lr > 0, retrieval_k >= 1 (got k={s.k}, "
                         f"steps={s.steps}, lr={s.lr}, retrieval_k={s.retrieval_k})")
    if s.candidates not in CANDIDATE_MODES:
        raise ValueError(f"unknown candidates {s.candidates!r} (use auto, knn, retrieval or union)")
    if s.geometric_k < 1:
        raise ValueError(f"geometric_k must be >= 1, got {s.geometric_k}")
    if s.threads is not None and s.threads < 1:
        raise ValueError(f"threads must be >= 1, got {s.threads}")


def resolve(header: dict, config, *, where="bundle", refine: bool | str | None = None,
            k: int | None = None, steps: int | None = None, lr: float | None = None,
            orientation: str | None = None, metric: str | None = None, candidates: str | None = None,
            retrieval_k: int | None = None, ood: dict | bool | None = None, geometric_k: int | None = None,
            threads: int | None = None) -> LocalizerSettings:
    """The settings of a Localizer over a bundle with ``header`` and ``config`` (a
    :class:`pae_ros.config.Config`). The inference backend and device are chosen by
    :mod:`pae_ros.backends`.

    Arguments left None take the header / config value (module docstring). ``ood``: None = the
    header's gate, False = none, a dict = that gate. ``geometric_k`` None:
    :data:`pae_ros.geometric.stage.SHORTLIST_K`. ``where`` names the bundle in errors. Raises
    :class:`~pae_ros.bundle.BundleError` for a header value this code does not know, ValueError
    for an argument out of range."""
    rc = config.refine
    published = header.get("published")
    if published is not None and published not in PUBLISHED:
        raise BundleError(f"{where}: header 'published' is {published!r} (expected apr or refined)")
    weights, steps = _weights_and_steps(steps, header.get("refine_weights"), rc, where)
    if geometric_k is None:
        from .geometric.stage import SHORTLIST_K

        geometric_k = SHORTLIST_K
    s = LocalizerSettings(
        refine=_refine_enabled(refine, published, rc.enabled), published=published,
        k=rc.k if k is None else int(k), steps=steps, lr=rc.lr if lr is None else float(lr),
        weight_decay=rc.weight_decay, orientation=orientation or rc.orientation, metric=metric or rc.metric,
        candidates=candidates or rc.candidates, retrieval_k=int(rc.retrieval_k if retrieval_k is None else retrieval_k),
        weights=weights, ood_gate=header.get("ood") if ood is None else (ood or None), geometric_k=int(geometric_k),
        threads=None if threads is None else int(threads))
    _check_ranges(s)
    return s
