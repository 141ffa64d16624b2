"""Glue between the :class:`pae_ros.pipeline.Localizer` and the geometric stage (:mod:`pae_ros.geometric`).

Three plain functions, so the Localizer only composes:

- :func:`open_geometric`: ``"off"`` | ``"auto"`` | a map path -> a :class:`GeometricStage` or None.
- :func:`shortlist`: retrieval top-k train rows united with the refinement's candidate rows.
- :func:`apply_fix`: an APR/PAE :class:`Estimate` + a :class:`GeometricResult` -> the published Estimate
  (``method="geometric"`` with the fix's pose and calibrated covariance when accepted, else the
  prior unchanged with ``extras["geometric_reason"]``).

Units: metres, radians, quaternions wxyz, camera-to-world in the map frame.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("pae.geometric")


def open_geometric(bundle, geometric: str | Path | bool | None = "auto"):
    """The geometric stage for ``bundle`` or None.

    ``"off"`` / None / False: None. ``"auto"``: the map beside the bundle (``<bundle>.map``) when
    it exists (a map that fails to load is logged and the stage stays off). A path: that map;
    a missing, corrupt, foreign or empty map raises :class:`pae_ros.geometric.MapError`."""
    if geometric in (None, False, "off", "false", ""):
        return None
    from .geometric import map_path_for, open_stage
    from .geometric.sparse_map import MapError

    if geometric in ("auto", True, "true"):
        if bundle.path is None:
            return None
        path = map_path_for(bundle.path)
        if not path.exists():
            return None
        try:
            return open_stage(bundle, path)
        except (MapError, ValueError) as e:
            log.warning("geometric stage off: %s", e)
            return None
    path = Path(geometric)
    if not path.exists():
        raise MapError(f"geometric map {path} does not exist (build it with pae train --stage map)")
    return open_stage(bundle, path)


def shortlist(retrieval_rows, candidate_rows) -> list[int]:
    """Train table rows to match against: retrieval top-k (best first) then the refinement's
    candidates, duplicates dropped."""
    rows = [int(i) for i in np.ravel(retrieval_rows if retrieval_rows is not None else [])]
    rows += [int(i) for i in (candidate_rows or [])]
    return list(dict.fromkeys(rows))


def apply_fix(est, res):
    """The Estimate to publish given the prior ``est`` and the stage's result ``res``."""
    extras = dict(est.extras)
    extras.update(res.diagnostics())
    if not res.accepted:
        return dataclasses.replace(est, extras=extras)
    extras["prior_method"] = est.method
    extras["prior_position"] = np.asarray(est.position, np.float64).tolist()
    conf = float(np.exp(-res.sigma_position_m))  # metres -> (0, 1]; a centimetre fix is ~0.99
    return dataclasses.replace(
        est, position=np.asarray(res.position, np.float64).copy(), quaternion=np.asarray(res.quaternion, np.float64).copy(),
        covariance=np.asarray(res.covariance, np.float64).copy(), sigma_position_m=float(res.sigma_position_m),
        sigma_orientation_rad=float(res.sigma_orientation_rad), confidence=max(conf, est.confidence),
        method="geometric", extras=extras)
