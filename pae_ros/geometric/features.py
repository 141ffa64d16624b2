"""Local features of one image: OpenCV SIFT (stored as uint8), RootSIFT for matching, or ORB.

Plain arrays: keypoints ``xy`` (N, 2) float32 pixel coordinates (u right, v down; integer values
are pixel centres, the convention of the intrinsics), descriptors ``desc`` (N, D) uint8
(SIFT: 128 values 0-255; ORB: 32 bytes of binary tests). ``kind`` is ``"sift"``, ``"rootsift"``
(SIFT keypoints and storage, Hellinger-normalised for matching) or ``"orb"``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("rootsift", "sift", "orb")


@dataclass
class Features:
    xy: np.ndarray      # (N, 2) float32 px
    desc: np.ndarray    # (N, D) uint8

    def __len__(self) -> int:
        return len(self.xy)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r} (use one of {', '.join(KINDS)})")
    return kind


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luminance of an RGB uint8 (H, W, 3) image (a gray (H, W) image passes through)."""
    import cv2

    a = np.asarray(rgb)
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return a
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB or (H, W) gray, got shape {a.shape}")
    return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)


class FeatureExtractor:
    """``extractor(rgb) -> Features``; at most ``max_keypoints`` strongest keypoints."""

    def __init__(self, kind: str = "rootsift", max_keypoints: int = 1024, threads: int | None = 1):
        import cv2

        self.kind = check_kind(kind)
        self.max_keypoints = int(max_keypoints)
        if self.max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
        if threads is not None:
            cv2.setNumThreads(int(threads))
        if self.kind == "orb":
            self._det = cv2.ORB_create(nfeatures=self.max_keypoints, scaleFactor=1.2, nlevels=8,
                                       edgeThreshold=15, patchSize=15, fastThreshold=10)
        else:
            self._det = cv2.SIFT_create(nfeatures=self.max_keypoints, contrastThreshold=0.02)

    @property
    def dim(self) -> int:
        return 32 if self.kind == "orb" else 128

    def __call__(self, rgb: np.ndarray) -> Features:
        gray = to_gray(rgb)
        kps, desc = self._det.detectAndCompute(gray, None)
        if desc is None or not kps:
            return Features(np.zeros((0, 2), np.float32), np.zeros((0, self.dim), np.uint8))
        xy = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        if self.kind != "orb":  # SIFT values are integers in [0, 255] stored as float32
            desc = np.clip(np.rint(desc), 0, 255)
        desc = np.ascontiguousarray(desc, np.uint8)
        if len(xy) > self.max_keypoints:  # SIFT may return a few more (ties, orientations)
            resp = np.array([k.response for k in kps])
            keep = np.sort(np.argsort(-resp, kind="stable")[: self.max_keypoints])
            xy, desc = xy[keep], desc[keep]
        return Features(xy, desc)


def matching_descriptors(desc: np.ndarray, kind: str) -> np.ndarray:
    """Descriptors in the space matched with L2 (float32) or Hamming (ORB: uint8 as is).

    RootSIFT: L1-normalise, then square root (L2 distance = Hellinger distance of the SIFT
    histograms); SIFT: float32 L2-normalised.
    """
    check_kind(kind)
    d = np.asarray(desc)
    if kind == "orb":
        return np.ascontiguousarray(d, np.uint8)
    d = d.astype(np.float32)
    if kind == "rootsift":
        return np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-6))
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)
