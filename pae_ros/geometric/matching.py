"""Descriptor matching with Lowe's ratio test (and optionally mutual nearest neighbours).

Inputs are :func:`pae_ros.geometric.features.matching_descriptors` arrays; output is index
pairs ``(ia, ib)`` int64 into the two descriptor sets.
"""
from __future__ import annotations

import numpy as np


def match(da: np.ndarray, db: np.ndarray, kind: str, ratio: float = 0.8, mutual: bool = True,
          ) -> tuple[np.ndarray, np.ndarray]:
    """Matches a -> b passing ``d1 < ratio * d2`` (and, with ``mutual``, b's best is a)."""
    import cv2

    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(da) == 0 or len(db) == 0:
        return empty
    norm = cv2.NORM_HAMMING if kind == "orb" else cv2.NORM_L2
    bf = cv2.BFMatcher(norm)
    if len(db) >= 2:
        knn = bf.knnMatch(da, db, k=2)
        ia, ib = [], []
        for m in knn:
            if len(m) == 2 and m[0].distance < ratio * m[1].distance:
                ia.append(m[0].queryIdx)
                ib.append(m[0].trainIdx)
            elif len(m) == 1:
                ia.append(m[0].queryIdx)
                ib.append(m[0].trainIdx)
    else:
        ms = bf.match(da, db)
        ia, ib = [m.queryIdx for m in ms], [m.trainIdx for m in ms]
    ia, ib = np.asarray(ia, np.int64), np.asarray(ib, np.int64)
    if mutual and len(ia):
        back = np.asarray([m.trainIdx for m in bf.match(db, da)], np.int64)  # best a for every b
        keep = back[ib] == ia
        ia, ib = ia[keep], ib[keep]
    return ia, ib
