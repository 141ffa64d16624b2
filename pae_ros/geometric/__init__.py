"""Optional geometric stage: local features, a sparse map triangulated from the known train poses,
and PnP against it (hloc-style, one module per job, plain arrays in and out).

- :mod:`.features`: SIFT / RootSIFT / ORB keypoints and descriptors.
- :mod:`.matching`: ratio-test (mutual) matching.
- :mod:`.mapping`: image pairs, epipolar-verified matches, tracks, triangulation -> :class:`SparseMap`.
- :mod:`.sparse_map`: the map and its safetensors file beside the bundle, bound to the bundle.
- :mod:`.pnp`: RANSAC PnP + LM, covariance from the Jacobian.
- :mod:`.calibrate`: the covariance scales fitted on held-out queries.
- :mod:`.stage`: :class:`GeometricStage` -> :class:`GeometricResult` (accepted fix or a fallback reason).
- :mod:`.build`: the ``pae train --stage map`` glue (table rows -> images, leave-one-walk-out calibration).
"""
from .mapping import MapSettings, build_map, scale_intrinsics, select_pairs
from .sparse_map import MapError, SparseMap, load_map, map_path_for, save_map
from .stage import GeometricResult, GeometricStage, StageSettings, open_stage

__all__ = ["MapSettings", "build_map", "scale_intrinsics", "select_pairs", "MapError", "SparseMap", "load_map",
           "map_path_for", "save_map", "GeometricResult", "GeometricStage", "StageSettings", "open_stage"]
