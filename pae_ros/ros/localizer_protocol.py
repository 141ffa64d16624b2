"""What the node needs from a localizer (:class:`pae_ros.pipeline.Localizer` is the real one).

No rclpy and no torch here: the protocol is for type checking and for the tests' stand-ins, which
return real :class:`pae_ros.pipeline.Estimate` objects.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # the pipeline imports torch; only the annotations need it
    from pae_ros.datasets.types import CameraIntrinsics
    from pae_ros.pipeline import Estimate


class LocalizerLike(Protocol):
    """Positions metres, quaternions wxyz, camera-to-map poses, images RGB uint8 (H, W, 3)."""

    #: the loaded bundle; the node reads ``bundle.header["intrinsics"]`` (training camera)
    bundle: Any
    #: the geometric stage, or None when the localizer has none
    geometric: Any

    @property
    def info(self) -> dict:
        """device, bundle_id, backend, scenes, refine, k, steps, decoder, geometric_map, ..."""

    def warmup(self) -> float:
        """Run a few dummy frames; seconds of the last one."""

    def localize(self, rgb: np.ndarray, geometric: bool | None = None) -> "Estimate":
        """The APR/PAE estimate of one image (the node passes ``geometric=False``)."""

    def localize_geometric(self, rgb: np.ndarray, prior: "Estimate", descriptor: np.ndarray | None = None,
                           intrinsics: "CameraIntrinsics | None" = None) -> "Estimate":
        """The geometric fix of one image, or ``prior`` with ``extras["geometric_reason"]``;
        ``intrinsics``: the query camera's (None: the map's)."""

    def reconstruct(self, position: np.ndarray, quaternion: np.ndarray,
                    scene: str | None = None) -> np.ndarray | None:
        """The decoder's RGB uint8 image of a pose, or None without a decoder."""
