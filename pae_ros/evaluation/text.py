"""The printed side of an evaluation report (:mod:`pae_ros.evaluation.report`): row order, the
per-coverage table, and the summary lines (published method, calibration, geometric stage,
bootstrap intervals, gating, reconstruction) that ``pae eval``, ``pae demo`` and the benches print.

Units as in the report: metres, degrees, shares printed as percentages.
"""
from __future__ import annotations


def table_rows(report: dict, include_sweep: bool = True) -> list[str]:
    """Row names of a report, in report order (``refined_k*`` sweep rows optional)."""
    return [r for r in report.get("rows", {}) if include_sweep or not r.startswith("refined_k")]


def row_notes(report: dict) -> dict[str, str]:
    """``row -> "ORACLE"`` for the rows that read the ground truth (marked in the printed table)."""
    return {r: "ORACLE" for r, v in report.get("rows", {}).items() if v.get("oracle")}


def coverage_table(report: dict, rows: list[str] | None = None) -> str:
    """Median position error (m) per coverage bin, one line per (scene, row)."""
    lines = []
    for s, c in report.get("coverage", {}).items():
        labels = list(c["frames_per_bin"])
        head = f"{'scene':<16} {'median pos [m] by coverage':<26}" + "".join(
            f"{lb + ' (' + str(c['frames_per_bin'][lb]) + ')':>14}" for lb in labels)
        lines += [head, "-" * len(head)]
        for r in rows or list(c["by_row"]):
            if r not in c["by_row"]:
                continue
            cells = "".join(f"{(v['median_position_m'] if v['median_position_m'] is not None else float('nan')):>14.3f}"
                            for v in (c["by_row"][r][lb] for lb in labels))
            lines.append(f"{s:<16} {r:<26}{cells}")
        lines.append(f"{s}: coverage median {c['median_m']:.2f} m, {100 * c['share_beyond_2m']:.0f}% of test frames "
                     f"beyond 2 m of a similar-view train camera ({c['reference']})")
    return "\n".join(lines)


def bootstrap_lines(report: dict) -> list[str]:
    """One line per bootstrap pair: the median difference and its interval."""
    lines = []
    for s, pairs in report.get("bootstrap", {}).items():
        for d in pairs:
            if d["diff"] is None:
                continue
            rel = f" ({100 * d['relative']:+.0f}%)" if d.get("relative") is not None else ""
            lines.append(f"{s}: median position {d['a']} - {d['b']} = {d['diff']:+.3f} m{rel}, "
                         f"{100 * d['level']:.0f}% paired bootstrap [{d['low']:+.3f}, {d['high']:+.3f}] m"
                         f"{'' if d['excludes_zero'] else ', cannot be told from zero'}")
    return lines


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def gating_lines(report: dict) -> list[str]:
    """The out-of-scene gate: shares gated and confidence AUROC, overall then per kind."""
    g = report.get("gating")
    if not g:
        return []
    head = ("out-of-scene gate: " + ("Estimate.in_scene" if g["gate_available"] else
                                     "none configured in this Localizer: confidence only"))
    lines = [head + f"; gated {_pct(g['out_of_scene']['gated_share'])} of {g['out_of_scene']['frames']} out-of-scene "
             f"images and {_pct(g['in_scene']['gated_share'])} of {g['in_scene']['frames']} in-scene test frames; "
             f"confidence AUROC in-scene vs out-of-scene {_num(g['out_of_scene']['auroc_confidence'])}"]
    for kind, d in g["kinds"].items():
        lines.append(f"  {kind:<12} {d['frames']:>4} images: gated {_pct(d['gated_share'])}, median confidence "
                     f"{d['median_confidence']:.2f} (in-scene {g['in_scene']['median_confidence']:.2f}), "
                     f"AUROC {_num(d['auroc_confidence_in_scene_vs_this'])}")
    return lines


def published_lines(report: dict) -> list[str]:
    """Frames per published method and what the bundle header declared."""
    pub = report.get("published")
    if not pub:
        return []
    return [f"published: {', '.join(f'{m} {n}' for m, n in pub['methods'].items())} frames "
            f"(bundle header 'published': {pub['declared'] or 'absent -> ' + pub['default_without_header']})"]


def calibration_lines(report: dict) -> list[str]:
    """Coverage of the 1- and 2-sigma radii of the published pose, and the confidence split."""
    cal = report.get("calibration")
    if not cal:
        return []

    def med(v):
        return float("nan") if v is None else v

    lines = [f"calibration ({cal['method']}): {100 * cal['position']['within_1sigma']:.0f}% of position errors "
             f"within the 1-sigma radius (expected 68%), {100 * cal['position']['within_2sigma']:.0f}% within "
             f"2 sigma (expected 95%); orientation {100 * cal['orientation']['within_1sigma']:.0f}% / "
             f"{100 * cal['orientation']['within_2sigma']:.0f}%; median error "
             f"{med(cal['above_threshold']['median_position_m']):.3f} m above confidence "
             f"{cal['confidence_threshold']:g} ({cal['above_threshold']['frames']} frames) vs "
             f"{med(cal['below_threshold']['median_position_m']):.3f} m below "
             f"({cal['below_threshold']['frames']} frames)"]
    by_m = cal.get("by_method") or {}
    if len(by_m) > 1:
        lines.append("calibration by method: " + "; ".join(
            f"{m} ({b['frames']} frames) {100 * b['position']['within_1sigma']:.0f}% / "
            f"{100 * b['position']['within_2sigma']:.0f}% within 1 / 2 sigma" for m, b in by_m.items()))
    return lines


def geometric_lines(report: dict) -> list[str]:
    """Share of geometric fixes, the fallbacks by reason, seconds per query and the map's size."""
    geo = report.get("geometric")
    if not geo:
        return []
    sec = geo["seconds_per_query_median"]
    return [f"geometric stage: {100 * geo['accepted_share']:.0f}% of frames published a geometric fix, "
            f"{100 * geo['fallback_share']:.0f}% fell back"
            + (f" ({', '.join(f'{k} {v}' for k, v in geo['fallback_reasons'].items())})"
               if geo["fallback_reasons"] else "")
            + (f"; {sec:.3f} s per query" if sec is not None else "")
            + (f"; map {geo['map_mb']:.1f} MB beside a {geo['bundle_mb']:.1f} MB bundle"
               if geo.get("map_mb") is not None and geo.get("bundle_mb") is not None else "")]


def summary_lines(report: dict) -> list[str]:
    """Human-readable calibration, published-method, bootstrap, gating and reconstruction lines."""
    lines = published_lines(report) + calibration_lines(report) + geometric_lines(report)
    lines += bootstrap_lines(report)
    lines += gating_lines(report)
    if "reconstruction_psnr_db" in report:
        r = report["reconstruction_psnr_db"]
        lines.append("reconstruction PSNR: " + ", ".join(f"{k} {v:.1f} dB" for k, v in r.items()))
    return lines


def print_report(report: dict) -> None:
    """The row table, the coverage table and the summary lines, as ``pae eval`` prints them."""
    from ..metrics import format_table

    print(format_table(report["scenes"], table_rows(report), row_notes(report)))
    print()
    print(coverage_table(report, table_rows(report, include_sweep=False)))
    print()
    for line in summary_lines(report):
        print(line)
