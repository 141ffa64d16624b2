"""The files of an evaluation report: error CDFs, error vs coverage, the reconstruction grid and
the strict JSON (``pae eval``, ``pae demo``; ``pae bag eval`` shares the CDFs).

Units: position errors in metres, orientation errors in degrees.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: rows drawn in the error CDFs (the others are in the JSON)
CDF_ROWS = ("retrieval_top1", "nearest_snap", "apr", "pae", "refined", "published", "oracle_nearest_train")


def write_error_cdfs(position_m: dict[str, list], orientation_deg: dict[str, list], out_dir: Path,
                     titles: tuple[str, str] = ("position error CDF", "orientation error CDF")) -> dict[str, str]:
    """``error_cdf.png`` (position, m) and ``error_cdf_orientation.png`` (deg) of per-method errors;
    returns ``{"error_cdf": path, "error_cdf_orientation": path}``."""
    from ..metrics import plot_error_cdf

    files = {"error_cdf": str(Path(out_dir) / "error_cdf.png"),
             "error_cdf_orientation": str(Path(out_dir) / "error_cdf_orientation.png")}
    plot_error_cdf(position_m, files["error_cdf"], titles[0], "position error [m]")
    plot_error_cdf(orientation_deg, files["error_cdf_orientation"], titles[1], "orientation error [deg]")
    return files


def _cdf_errors(report: dict) -> tuple[dict[str, list], dict[str, list]]:
    """Every scene's per-frame errors of the :data:`CDF_ROWS`, pooled per row."""
    pos: dict[str, list] = {}
    ori: dict[str, list] = {}
    for by_method in report["per_frame"].values():
        for m, d in by_method.items():
            if m in CDF_ROWS:
                pos.setdefault(m, []).extend(d["position_error_m"])
                ori.setdefault(m, []).extend(d["orientation_error_deg"])
    return pos, ori


def _coverage_plot(report: dict, out_dir: Path) -> str:
    from ..metrics import plot_error_vs_coverage

    cov = [v for c in report["coverage"].values() for v in c["per_frame_m"]]
    errs = {m: [e for s in report["per_frame"] for e in report["per_frame"][s][m]["position_error_m"]]
            for m in ("published", "apr", "retrieval_top1") if all(m in d for d in report["per_frame"].values())}
    path = str(out_dir / "error_vs_coverage.png")
    plot_error_vs_coverage(cov, errs, path, "position error vs coverage")
    return path


def write_outputs(report: dict, out_dir: Path, json_path: Path | None = None) -> dict[str, str]:
    """Write report.json, the error CDF PNGs, error vs coverage and the reconstruction grid; returns paths."""
    import cv2

    from ..training.train_decoder import image_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    pos, ori = _cdf_errors(report)
    files = write_error_cdfs(pos, ori, out_dir)
    if report.get("coverage"):
        files["error_vs_coverage"] = _coverage_plot(report, out_dir)
    if report.get("_grid_rows"):
        files["reconstruction_grid"] = str(out_dir / "reconstruction_grid.png")
        cv2.imwrite(files["reconstruction_grid"], cv2.cvtColor(image_grid(report["_grid_rows"]), cv2.COLOR_RGB2BGR))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["files"] = files
    json_path = json_path or out_dir / "report.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_clean(public), indent=2, allow_nan=False))
    files["report"] = str(json_path)
    return files


def json_clean(o):
    """A copy of ``o`` that strict JSON can hold: numpy scalars/arrays to Python, NaN / inf to None."""
    if isinstance(o, dict):
        return {str(k): json_clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_clean(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o
