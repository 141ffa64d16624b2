"""``pae train --stage map``: the sparse map beside a real (tiny) bundle, bound to it, calibrated.

The map checked here is the one ``textured_mapped`` wrote with that very command (building a map
costs tens of seconds on a small machine, so the session builds it once)."""
from __future__ import annotations

import numpy as np
import pytest

from support.fixtures import copy_textured_bundle
from support.geometric_scene import write_textured_room


def test_train_stage_map_writes_a_bound_calibrated_map(textured_mapped):
    from pae_ros.bundle import load_bundle
    from pae_ros.geometric import load_map, map_path_for, open_stage
    from pae_ros.datasets import load_rgb, read_dataset

    root, out, _ = textured_mapped
    bundle = load_bundle(out)
    smap = load_map(map_path_for(out), bundle)          # bound: loads without complaint
    assert smap.n_points > 100 and smap.meta["bundle_id"] == bundle.bundle_id
    assert smap.n_images == len(bundle.table_positions)
    cal = smap.meta["calibration"]
    assert cal["position_scale"] > 0 and cal["queries"] >= 5
    # the map's rows are the bundle table's rows: a test frame localizes against its nearest rows
    te = read_dataset(root / "data", "7scenes", "test")
    f = te.frames[5]
    near = np.argsort(np.linalg.norm(bundle.table_positions - f.position, axis=1))[:5]
    r = open_stage(bundle)(load_rgb(f.image_path), near)
    assert r.accepted and np.linalg.norm(r.position - f.position) < 0.1


def test_map_stage_on_another_dataset_says_so(textured_room, textured_bundle, tmp_path, capsys):
    from pae_ros.cli import main

    root, out = copy_textured_bundle(textured_room, textured_bundle, tmp_path / "copy")
    other = write_textured_room(tmp_path / "other", train_walks=1, test_walks=1, frames=5, seed=3).parent
    rc = main(["train", "--stage", "map", "--bundle", str(out), "--out", str(out), "--data", str(other),
               "--format", "7scenes", "--device", "cpu", "--quiet"])
    assert rc == 2
    assert "no train frame with that pose" in capsys.readouterr().err


def test_map_calibration_queries_never_match_their_own_walk(textured_mapped, monkeypatch):
    """The covariance is calibrated leave-one-walk-out: every held-out query's shortlist holds
    only train images of the other walks (a spy on the real stage records what it is given)."""
    from pae_ros.bundle import load_bundle
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.geometric import GeometricStage, load_map, map_path_for
    from pae_ros.geometric.build import frames_for_table, held_out_fixes

    root, out, _ = textured_mapped
    bundle = load_bundle(out)
    smap = load_map(map_path_for(out), bundle)
    frames = frames_for_table(bundle, read_dataset(root / "data", "7scenes", "train").frames)
    images = [load_rgb(f.image_path) for f in frames]
    seen = []
    real_call = GeometricStage.__call__

    def spy(self, rgb, shortlist, *a, **k):
        seen.append([int(i) for i in shortlist])
        return real_call(self, rgb, shortlist, *a, **k)

    monkeypatch.setattr(GeometricStage, "__call__", spy)
    fixes = held_out_fixes(smap, bundle, frames, images, queries=12)
    assert len(fixes) == len(seen) == 12
    walk = [f.sequence for f in frames]
    for (row, res), short in zip(fixes, seen):
        assert short and all(walk[i] != walk[row] for i in short), "a calibration query matched its own walk"
    assert any(res.accepted for _, res in fixes)  # the other walks do localize it
