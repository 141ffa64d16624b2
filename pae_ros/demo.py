"""``pae demo``: the end-to-end demo on the built-in scene.

Renders (or reuses) the demo courtyard, trains the APR, PAE and decoder (``quick`` preset, or
``--full``), evaluates offline, writes the test walks as a robot recording (JPEG images,
``camera_info``, drifting wheel odometry ``odom -> base_link`` on ``/tf``, the camera mount on
``/tf_static``, ground truth), starts the localizer node as its own process the way the launch
file does (``--ros-args --params-file ... -p ... -r ...``; ``tf_mode`` ``map_odom`` with the
tracking filter), plays the recording into it, records ``/pae/pose``, ``pae/filtered_pose`` and
``/tf``, evaluates the recording by header stamp, and prints every row beside its baselines (mean
pose, image retrieval, nearest train pose, uniform k, the oracle, APR, PAE, refined, published)
and the raw against the filtered tracking rows. Everything lands in one output folder.
ROS runs in its own domain id on localhost only, so the demo never talks to other robots.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "localize.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo", help="output folder (bundle, bags, reports, plots)")
    p.add_argument("--scene-dir", default="data/demo_scene", help="where the rendered scene is kept (reused)")
    p.add_argument("--full", action="store_true", help="the 'full' training preset (longer, better; GPU advised)")
    p.add_argument("--retrain", action="store_true", help="train again even if the output folder has a bundle")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate (Hz) of the replayed test walk")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="scene and training seed")
    p.add_argument("--no-map", action="store_true",
                   help="skip the sparse map (geometric stage); by default it is built beside the bundle after training")


def _step(i: int, n: int, text: str) -> float:
    print(f"\n[{i}/{n}] {text}", flush=True)
    return time.perf_counter()


def _done(t0: float, extra: str = "") -> None:
    print(f"      done in {time.perf_counter() - t0:.0f} s{(': ' + extra) if extra else ''}", flush=True)


def _params_file() -> Path:
    """The installed share/pae_ros/config/localize.yaml when present, else the repo's."""
    try:
        from ament_index_python.packages import get_package_share_directory

        p = Path(get_package_share_directory("pae_ros")) / "config" / "localize.yaml"
        if p.is_file():
            return p
    except Exception:  # not installed through colcon: use the source tree's file
        pass
    return REPO_CONFIG


def _wait_for(path: Path, needle: bytes, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while needle not in path.read_bytes():
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {needle!r}:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_online(bundle: Path, bag: Path, out: Path, device: str, rate_factor: float = 1.0) -> Path:
    """Node + recorder + player as separate processes on a private ROS domain; returns the recorded bag."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_DOMAIN_ID=str(os.environ.get("PAE_DEMO_DOMAIN_ID", 90 + os.getpid() % 10)))
    env.pop("ROS_LOCALHOST_ONLY", None)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rec_bag = out / "recorded"
    if rec_bag.exists():
        shutil.rmtree(rec_bag)
    py = sys.executable
    node_log, rec_log, play_log = logs / "localizer.log", logs / "record.log", logs / "play.log"
    node = rec = None
    try:
        # exactly how launch/localize.launch.py starts it: params file + overrides + remapping
        with open(node_log, "wb") as f:
            node = subprocess.Popen([py, "-m", "pae_ros.ros.localizer_node", "--ros-args", "-r", "__node:=pae_localizer",
                                     "--params-file", str(_params_file()), "-p", f"bundle:={bundle}",
                                     "-p", f"device:={device}", "-p", "tf_mode:=map_odom", "-p", "compressed:=true",
                                     # the geometric thread takes the newest frame whenever it is free (the
                                     # robot default bounds it at 2 Hz: then most stamps keep their APR/PAE pose)
                                     "-p", "geometric_rate_hz:=0.0",
                                     "-r", "/camera/image_raw:=/camera/image_raw"],
                                    env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_for(node_log, b"ready:", node, 180)
        print("      localizer node is ready (log: %s)" % node_log, flush=True)
        with open(rec_log, "wb") as f:
            rec = subprocess.Popen([py, "-m", "pae_ros.cli", "bag", "record", "--out", str(rec_bag), "--quiet",
                                    "--topics", "/pae/pose", "/pae/pose_with_covariance", "/pae/apr_pose",
                                    "/pae/filtered_pose", "/ground_truth/pose", "/tf", "/diagnostics",
                                    "--idle-timeout", "10"],
                                   env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(2.0)
        with open(play_log, "wb") as f:
            play = subprocess.run([py, "-m", "pae_ros.cli", "bag", "play", str(bag), "--rate", str(rate_factor),
                                   "--wait-subscribers", "/camera/image_raw/compressed:1", "--start-delay", "1"],
                                  env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800)
        if play.returncode != 0:
            raise RuntimeError(f"bag play failed ({play.returncode}), see {play_log}")
        time.sleep(3.0)  # let the last poses arrive
    finally:
        rc_rec = _stop(rec)
        rc_node = _stop(node)
    if rc_node not in (0, None):
        print(f"      warning: the node exited with {rc_node} (log: {node_log})", flush=True)
    if rc_rec not in (0, None):
        raise RuntimeError(f"bag record exited with {rc_rec}, see {rec_log}")
    return rec_bag


def _render(args):
    """Step 1: the demo scene, rendered once and reused; ``(scene folder, train split, test split)``."""
    from .datasets import read_dataset
    from .scene.render import render_scene

    scene_dir = render_scene(args.scene_dir, seed=args.seed, workers=2, progress=True)
    return scene_dir, read_dataset(scene_dir, "7scenes", "train"), read_dataset(scene_dir, "7scenes", "test")


def _train(args, cfg, train, out: Path, bundle_path: Path) -> None:
    """Step 2: the bundle, reused when one with the same config is there (unless ``--retrain``)."""
    from .bundle import load_bundle

    reuse = False
    if bundle_path.exists() and not args.retrain:
        try:
            reuse = load_bundle(bundle_path).header["config"] == cfg.to_dict()
        except Exception:
            reuse = False
    if reuse:
        print(f"      reusing {bundle_path} (same config; --retrain to train again)")
        return
    from .training.run import train_all

    # a retraining starts afresh: an earlier demo's checkpoints are discarded, not refused
    stats = train_all(cfg, train, bundle_path, out / "train_work", args.device, restart=True)
    if stats.get("apr", {}).get("images_per_s"):
        print(f"      APR training throughput {stats['apr']['images_per_s']:.0f} images/s", flush=True)


def _map(bundle_path: Path, train) -> None:
    """The geometric stage's map (``pae train --stage map``): rebuilt when missing or bound to another bundle."""
    from .bundle import load_bundle
    from .geometric import MapError, load_map, map_path_for
    from .geometric.build import run_map_stage

    t_map = time.perf_counter()
    bundle = load_bundle(bundle_path)
    try:
        load_map(map_path_for(bundle_path), bundle)
        print(f"      reusing {map_path_for(bundle_path)}", flush=True)
        return
    except MapError:
        pass
    try:
        st = run_map_stage(bundle, train)
    except ValueError as e:  # no 3-D points: the demo goes on without the geometric stage
        print(f"      no sparse map: {e}", flush=True)
        return
    print(f"      sparse map {st['path']}: {st['map_bytes'] / 1e6:.1f} MB (bundle {st['bundle_bytes'] / 1e6:.1f} MB), "
          f"built in {time.perf_counter() - t_map:.0f} s", flush=True)


def _offline_eval(args, bundle_path: Path, train, test, out: Path) -> tuple[dict, str]:
    """Step 3: ``pae eval`` of the bundle on the test walk with out-of-scene images; ``(report, its JSON path)``."""
    from .datasets import load_rgb
    from .evaluation.ood_images import out_of_scene_images, pick_evenly
    from .evaluation.plots import write_outputs
    from .evaluation.report import evaluate
    from .evaluation.text import coverage_table, row_notes, table_rows
    from .metrics import format_table
    from .pipeline import Localizer

    loc = Localizer.from_bundle(bundle_path, device=args.device)
    ood = out_of_scene_images([load_rgb(test.frames[i].image_path) for i in pick_evenly(len(test.frames), 16)],
                              per_kind=16, seed=args.seed)
    report = evaluate(loc, test, train, k_sweep=(1, 5, 10), ood=ood)
    files = write_outputs(report, out / "offline")
    print(format_table(report["scenes"], table_rows(report), row_notes(report)))
    print(coverage_table(report, table_rows(report, include_sweep=False)))
    return report, files["report"]


def _summary(report: dict, online: dict, out: Path, preset: str, t_start: float) -> None:
    """Step 7: the offline and online tables side by side, the summary lines and ``summary.json``."""
    from .evaluation.plots import json_clean
    from .evaluation.text import row_notes, summary_lines, table_rows
    from .metrics import format_table

    print("offline (pae eval, every test frame; baselines first, 'published' is what the node publishes):")
    print(format_table(report["scenes"], table_rows(report, include_sweep=False), row_notes(report)))
    print("\nonline (node over DDS, matched by header stamp; /pae/pose is 'published': a stamp's geometric fix when "
          "the node's geometric thread, run unbounded here, got to that frame, else its APR/PAE pose):")
    print(format_table(online["scenes"], ["apr", "published"]))
    if "tracking" in online:
        from .bags.track_eval import format_rows

        print("\ntracking (raw: /pae/pose, one fix per frame; filtered: pae/filtered_pose, the fixes fused with the "
              "drifting odometry):")
        print(format_rows(online["tracking"]))
    print()
    for line in summary_lines(report):
        print(line)
    summary = {"offline": {s: {m: v for m, v in d.items() if not m.startswith("refined_k")}
                           for s, d in report["scenes"].items()},
               "published": report["published"], "bootstrap": report["bootstrap"],
               "online": online["scenes"], "tracking": online.get("tracking"),
               "seconds": time.perf_counter() - t_start, "preset": preset}
    (out / "summary.json").write_text(json.dumps(json_clean(summary), indent=2))
    print(f"\nplots: {out / 'offline'} (error CDF, reconstruction grid), {out / 'online'} (top-down trajectory, CDF)")
    print(f"all outputs: {out}   (total {time.perf_counter() - t_start:.0f} s)")


def run(args) -> int:
    from .bags import bag_eval_cmd, make_cmd
    from .config import load_config
    from .training.common_args import setup_logging

    setup_logging()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    n = 7
    t_start = time.perf_counter()
    print(f"pae demo: output folder {out}", flush=True)

    t0 = _step(1, n, f"rendering the demo scene into {args.scene_dir} (reused when already rendered)")
    scene_dir, train, test = _render(args)
    _done(t0, f"{len(train)} train / {len(test)} test frames in {scene_dir}")

    preset = "full" if args.full else "quick"
    bundle_path = out / "model.pae"
    t0 = _step(2, n, f"training APR -> PAE -> decoder -> calibration ({preset} preset)")
    _train(args, load_config(None, preset, {"seed": args.seed}), train, out, bundle_path)
    _done(t0, str(bundle_path))
    if not args.no_map:
        _map(bundle_path, train)

    t0 = _step(3, n, "offline evaluation on the test walk (pae eval)")
    report, report_path = _offline_eval(args, bundle_path, train, test, out)
    _done(t0, report_path)

    t0 = _step(4, n, f"writing the test walks as a robot recording at {args.rate:g} Hz (pae bag make --robot)")
    bag = out / "test_walk"
    # wheel odometry with the default drift model; an undistorted lens, as the scene was rendered
    rc = make_cmd.main(["--data", str(scene_dir), "--format", "7scenes", "--split", "test", "--out", str(bag),
                        "--rate", str(args.rate), "--force", "--robot", "--odom-only", "--odom-drift", "1",
                        "--distortion=0,0,0,0,0"])
    if rc != 0:
        return rc
    _done(t0, str(bag))

    t0 = _step(5, n, "localizer node + pae bag play + pae bag record over real DDS")
    rec_bag = run_online(bundle_path, bag, out, args.device)
    _done(t0, str(rec_bag))

    t0 = _step(6, n, "evaluating the recorded poses by header stamp (pae bag eval)")
    rc = bag_eval_cmd.main([str(rec_bag), "--gt-bag", str(bag), "--out", str(out / "online"),
                            "--estimate-name", "published"])
    if rc != 0:
        return rc
    online = json.loads((out / "online" / "report.json").read_text())
    _done(t0)

    _step(7, n, "summary")
    _summary(report, online, out, preset, t_start)
    return 0
