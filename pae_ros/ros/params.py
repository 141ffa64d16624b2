"""The localizer's parameters: the one table (:data:`PARAMETERS`) that the node declares,
``config/localize.yaml`` mirrors, the launch file exposes and the tests compare, plus the
start-up validation.

Validation happens twice, because rcl silently loses some mistakes before the node sees them:

* :func:`check_command_line` reads the node's own command line (``--params-file`` files and
  ``-p name:=value``) *before* rcl merges them: a ``-p k:=abc`` given together with a params file
  that sets ``k: -1`` is dropped by rcl (it keeps the file's type), so the raw values are type-checked
  here against the table, and names the node does not declare (``confidence_gte``) are refused.
* :func:`declare_and_read` declares every parameter and checks each value (type, range, choice).

Both raise :class:`pae_ros.config.ConfigError` (the one error of a bad setting) with one sentence
naming every bad parameter. This module does not
import rclpy at module level (the launch file imports it to check launch arguments).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from pae_ros.config import ConfigError

NODE_NAME = "pae_localizer"

#: tf_mode values (shell-safe) and the old spellings still accepted
TF_MODES = ("map_odom", "map_camera", "none")
TF_MODE_ALIASES = {"map->odom": "map_odom", "map->camera": "map_camera", "map-odom": "map_odom",
                   "map-camera": "map_camera"}
POSE_FRAMES = ("auto", "base", "camera")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
FRAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
#: parameters every rclpy node declares itself
ROS_BUILTIN_PARAMS = frozenset({"use_sim_time", "start_type_description_service"})


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter."""

    name: str
    default: Any
    description: str
    constraints: str = ""
    #: returns an error sentence or None (called on the type-checked value)
    check: Callable[[Any], str | None] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None
    #: also accepted besides the default's type (``refine``: "auto" or a bool)
    also: tuple[type, ...] = ()

    @property
    def kind(self) -> type:
        return type(self.default)


def _one_of(options):
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _frame(v):
    if not FRAME_RE.match(v):
        return "must be a TF frame id (letters, digits, _ . / -, no leading '/')"
    return None


def normalize_tf_mode(v: str) -> str:
    """``map->odom`` -> ``map_odom`` etc.; unknown values are returned unchanged (and refused)."""
    return TF_MODE_ALIASES.get(v, v)


def _tf_mode(v):
    return None if normalize_tf_mode(v) in TF_MODES else \
        f"must be one of {', '.join(TF_MODES)} (old spellings map->odom, map->camera also accepted)"


def _refine(v):
    if isinstance(v, bool) or v in ("auto", "true", "false"):
        return None
    return "must be auto, true or false"


def _geometric(v):
    if isinstance(v, bool) or v in ("auto", "off"):
        return None
    if not v.strip():
        return "must be auto, off or the path of a map file written by `pae train --stage map`"
    return None  # a path: its existence and contents are checked when the bundle is loaded


#: estimate methods the tracking filter knows (pae_ros.tracking.METHODS, without importing it here)
TRACKING_METHODS = ("apr", "refined", "geometric")


def parse_trusted_methods(v: str) -> tuple[str, ...] | None:
    """``tracking_trusted_methods``: None for ``auto``, else the listed methods (order kept)."""
    if v.strip() == "auto":
        return None
    return tuple(m.strip() for m in v.split(",") if m.strip())


def _trusted_methods(v):
    got = parse_trusted_methods(v)
    if got is None:
        return None
    if not got or any(m not in TRACKING_METHODS for m in got):
        return f"must be auto or a comma-separated list of {', '.join(TRACKING_METHODS)}"
    return None


def _nonneg(unit):
    return lambda v: None if v >= 0 else f"must be >= 0 ({unit})"


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("bundle", "", "path of the model bundle (.pae, a safetensors file) written by `pae train`",
              "required", lambda v: None if v.strip() else "is required: the path of a bundle written by `pae train`"),
    ParamSpec("autostart", True,
              "lifecycle: configure (load the bundle) and activate at start; false = wait for "
              "`ros2 lifecycle set` / a lifecycle manager"),
    ParamSpec("device", "auto", "inference device: auto (first GPU when present, else CPU), cpu, cuda, cuda:N",
              "auto | cpu | cuda | cuda:N",
              lambda v: None if DEVICE_RE.match(v) else "must be auto, cpu, cuda or cuda:N"),
    ParamSpec("backend", "auto",
              "APR inference engine: auto (first available: TensorRT, ONNX Runtime CUDA, torch CUDA, ONNX Runtime "
              "CPU, torch CPU), tensorrt, onnx (ONNX Runtime on device), torch",
              "auto | tensorrt | onnx | torch", _one_of(("auto", "tensorrt", "onnx", "torch"))),
    ParamSpec("precision", "fp32",
              "APR arithmetic: fp32, or fp16 (tensorrt and torch on a CUDA GPU only)", "fp32 | fp16",
              _one_of(("fp32", "fp16"))),
    ParamSpec("threads", 1,
              "CPU threads for inference (torch intra-op and ONNX Runtime); 1 was fastest for one frame at a "
              "time on a small CPU and leaves cores to DDS; 0 = the libraries' default", ">= 0",
              lambda v: None if v >= 0 else "must be >= 0 (0 = library default)", int_range=(0, 256)),
    ParamSpec("refine", "auto",
              "PAE refinement of the APR pose: auto (what training published for this bundle), true, false",
              "auto | true | false", _refine, also=(bool,)),
    ParamSpec("k", -1, "refinement neighbours; -1 = the bundle's value; at most the pose table's size",
              ">= 1, or -1", lambda v: None if v == -1 or v >= 1 else "must be >= 1, or -1 for the bundle's value",
              int_range=(-1, 10_000_000)),
    ParamSpec("steps", -1, "refinement optimisation steps; -1 = the bundle's value", ">= 0, or -1",
              lambda v: None if v >= -1 else "must be >= 0, or -1 for the bundle's value",
              int_range=(-1, 100000)),
    ParamSpec("image_topic", "/camera/image_raw",
              "image topic (sensor_msgs/Image); with compressed:=true the node subscribes "
              "<image_topic>/compressed", "a valid topic name",
              lambda v: None if v.strip() else "must be a topic name"),
    ParamSpec("compressed", False, "subscribe <image_topic>/compressed (sensor_msgs/CompressedImage, jpeg/png)"),
    ParamSpec("camera_info_topic", "",
              "sensor_msgs/CameraInfo checked against the bundle's training intrinsics; empty = "
              "camera_info next to image_topic (/camera/image_raw -> /camera/camera_info)", "topic or empty"),
    ParamSpec("fov_tolerance", 0.05,
              "relative field-of-view / aspect difference to the training camera that raises a WARN in /diagnostics",
              "0 < value <= 1", lambda v: None if 0.0 < v <= 1.0 else "must be in (0, 1]"),
    ParamSpec("image_qos", "auto",
              "image subscription reliability: auto (match the publishers), reliable, best_effort",
              "auto | reliable | best_effort", _one_of(("auto", "reliable", "best_effort"))),
    ParamSpec("max_image_size", 8192,
              "largest accepted image width or height, pixels (larger ones are counted as too_large)", ">= 16",
              lambda v: None if v >= 16 else "must be >= 16 (pixels)", int_range=(16, 1 << 20)),
    ParamSpec("map_frame", "map", "frame of the output poses (the bundle's world frame)", "frame id", _frame),
    ParamSpec("odom_frame", "odom", "odometry frame (tf_mode map_odom)", "frame id", _frame),
    ParamSpec("base_frame", "base_link",
              "robot body frame: pae/pose* give its pose in map_frame (camera -> base_frame from TF)",
              "frame id", _frame),
    ParamSpec("camera_frame", "", "camera (optical) frame; empty = the image header's frame_id",
              "frame id or empty", lambda v: None if v == "" else _frame(v)),
    ParamSpec("pose_frame", "auto",
              "what pae/pose and pae/pose_with_covariance describe: base (base_frame; no pose when TF "
              "has no base_frame -> camera chain), camera (the camera's optical frame), auto (base when "
              "that chain exists, else the camera, with a warning)", " | ".join(POSE_FRAMES), _one_of(POSE_FRAMES)),
    ParamSpec("tf_mode", "map_odom",
              "TF to publish: map_odom (REP 105, needs odom -> camera on /tf), map_camera, none",
              " | ".join(TF_MODES), _tf_mode),
    ParamSpec("transform_tolerance", 0.1,
              "seconds map -> odom is future-dated by (as AMCL's transform_tolerance)", ">= 0", _nonneg("seconds")),
    ParamSpec("tf_publish_rate", 20.0,
              "Hz at which the last good map -> odom is re-published between images; 0 = only with each image",
              ">= 0", _nonneg("Hz")),
    ParamSpec("tf_wait", 0.1,
              "seconds to wait for odom -> camera at the image stamp when odometry lags the image", ">= 0",
              _nonneg("seconds")),
    ParamSpec("tf_history", 10.0, "seconds of TF history kept per edge (interpolated at the image stamp)",
              "> 0", lambda v: None if v > 0 else "must be > 0 (seconds)"),
    ParamSpec("two_d_mode", False, "planar robot: zero z, roll and pitch of map -> odom and of the base pose"),
    ParamSpec("confidence_gate", 0.0,
              "below this confidence (0..1), or out of scene, the pose is published (with its large "
              "covariance) but no TF and no /initialpose", "0.0 <= value <= 1.0",
              lambda v: None if 0.0 <= v <= 1.0 else "must be in [0, 1]", float_range=(0.0, 1.0)),
    ParamSpec("pose_transient_local", True,
              "pose topics reliable + transient local depth 1 (late joiners get the last pose, as amcl_pose); "
              "false = volatile depth 10"),
    ParamSpec("publish_initial_pose", False,
              "publish the pose on initial_pose_topic when confidence >= initial_pose_confidence and it "
              "moved more than initial_pose_jump from the last one published there (seeds AMCL)"),
    ParamSpec("initial_pose_topic", "/initialpose", "where ~/relocalize and publish_initial_pose publish",
              "topic", lambda v: None if v.strip() else "must be a topic name"),
    ParamSpec("initial_pose_confidence", 0.5, "confidence needed for /initialpose (and >= confidence_gate)",
              "0.0 <= value <= 1.0", lambda v: None if 0.0 <= v <= 1.0 else "must be in [0, 1]",
              float_range=(0.0, 1.0)),
    ParamSpec("initial_pose_jump", 1.0, "metres between the pose and the last /initialpose that trigger a new one "
              "(publish_initial_pose)", ">= 0", _nonneg("metres")),
    ParamSpec("publish_reconstruction", False,
              "publish pae/reconstruction: the decoder's image at the estimated pose (bundles with a decoder)"),
    ParamSpec("geometric", "auto",
              "geometric stage (local features + PnP against the sparse map) on its own thread: auto (the map "
              "beside the bundle, <bundle>.map, when present), off, or the path of a map (pae train --stage map); "
              "accepted fixes are published on the pose topics stamped with their own image; "
              "`geometric:=off` reaches the node as the YAML boolean false, also accepted (true = auto)",
              "auto | off | a map path", _geometric, also=(bool,)),
    ParamSpec("geometric_rate_hz", 2.0,
              "upper bound on geometric queries (and so fixes) per second; 0 = as fast as the stage runs",
              ">= 0", lambda v: None if 0.0 <= v <= 1000.0 else "must be in [0, 1000] (Hz, 0 = unbounded)"),
    ParamSpec("geometric_threads", 1,
              "OpenCV threads of the geometric stage (cv2.setNumThreads, process-wide: also bounds the node's "
              "other OpenCV calls); 1 = one core at most; 0 = OpenCV's default", ">= 0",
              lambda v: None if v >= 0 else "must be >= 0 (0 = OpenCV's default)", int_range=(0, 256)),
    ParamSpec("tracking", True,
              "tracking filter (pae_ros.tracking): fuses every estimate with odometry (map_odom) or a random-walk "
              "model (no odometry chain) into pae/filtered_pose and, in tf_mode map_odom, the published map -> odom "
              "(slew-limited, outliers gated); false = map -> odom from each confident estimate directly"),
    ParamSpec("tracking_trusted_methods", "auto",
              "estimate methods the tracking filter uses, the others counted as ignored: auto (geometric when "
              "the localizer has a geometric stage, else all), or a comma-separated list of apr, refined, geometric",
              "auto | list of apr, refined, geometric", _trusted_methods),
    ParamSpec("tracking_gate_probability", 0.999,
              "chi-square probability of the tracking filter's Mahalanobis gate (outliers beyond it are rejected)",
              "0 < value < 1", lambda v: None if 0.0 < v < 1.0 else "must be in (0, 1)"),
    ParamSpec("tracking_init_count", 3,
              "mutually consistent estimates the tracking filter needs to start or restart", ">= 2",
              lambda v: None if v >= 2 else "must be >= 2", int_range=(2, 1000)),
    ParamSpec("tracking_init_min_spread_m", 1.0,
              "the estimates the tracking filter starts (or restarts when lost) from must span this much "
              "odometry travel (m): fixes from one spot can agree on the same wrong place; 0 = start at "
              "standstill (/initialpose always sets the track)", ">= 0",
              lambda v: None if 0.0 <= v <= 1000.0 else "must be in [0, 1000] (metres)"),
    ParamSpec("tracking_odom_max_speed", 3.0,
              "odometry moving faster than this (m/s, plus 0.1 m) between two samples is a reset of the "
              "odometry frame: the tracking filter clears its odometry and restarts the track", "> 0",
              lambda v: None if 0.0 < v <= 1000.0 else "must be in (0, 1000] (m/s)"),
    ParamSpec("tracking_max_step_m", 0.2,
              "largest step (m) of the published map -> odom per estimate (slew limit; jumps only at a start, "
              "relocalisation or /initialpose)", "> 0", lambda v: None if v > 0 else "must be > 0 (metres)"),
    ParamSpec("tracking_max_step_rad", 0.05,
              "largest rotation step (rad) of the published map -> odom per estimate", "> 0",
              lambda v: None if v > 0 else "must be > 0 (radians)"),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", "> 0",
              lambda v: None if 0.0 < v <= 3600.0 else "must be > 0 (seconds)"),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)
SPECS = {p.name: p for p in PARAMETERS}

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def type_error(p: ParamSpec, v: Any) -> str | None:
    """None when ``v`` has the parameter's type (ints are numbers; ``also`` types allowed), else
    the sentence ``must be <type>``."""
    ok_types = (p.kind,) + p.also
    if bool in ok_types and isinstance(v, bool):
        return None
    if isinstance(v, bool):
        ok = False
    elif p.kind is float:
        ok = isinstance(v, (int, float))
    else:
        ok = isinstance(v, ok_types)
    if ok:
        return None
    words = " or ".join(_TYPE_WORDS[t] for t in ok_types)
    return f"must be {words}{' (' + p.constraints + ')' if p.constraints else ''}"


def check_value(name: str, v: Any, source: str = "") -> str | None:
    """One error sentence for parameter ``name`` = ``v``, or None. Unknown names are an error."""
    where = f" ({source})" if source else ""
    p = SPECS.get(name)
    if p is None:
        if name in ROS_BUILTIN_PARAMS:
            return None
        close = [n for n in PARAMETER_NAMES if _similar(n, name)]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown parameter '{name}'{where}{hint}"
    msg = type_error(p, v)
    if msg:
        return f"parameter '{name}' {msg}, got {v!r}{where}"
    if p.kind is float and not math.isfinite(float(v)):
        return f"parameter '{name}' must be finite, got {v!r}{where}"
    if p.check is not None:
        msg = p.check(float(v) if p.kind is float else v)
        if msg:
            return f"parameter '{name}' {msg} (got {v!r}){where}"
    return None


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


# --------------------------------------------------------------------------- the command line

def _yaml_scalar(text: str) -> Any:
    """A ``-p`` value as rcl reads it (YAML scalar rules: true/false, ints, floats, else string)."""
    try:
        v = yaml.safe_load(text)
    except Exception:
        return text
    return text if v is None and text.strip() not in ("~", "null") else v


def _key_matches(key: str, fqn: str) -> bool:
    """Whether a params-file node key (``/**``, ``pae_localizer``, ``/ns/pae_localizer``,
    ``/**/pae_localizer``, with ``*`` wildcards) addresses the node called ``fqn``."""
    key = key if key.startswith("/") else "/" + key
    rx = "^" + re.escape(key).replace(r"/\*\*", "(/[^/]+)*").replace(r"\*\*", ".*").replace(r"\*", "[^/]*") + "$"
    return re.match(rx, fqn) is not None


def command_line_parameters(argv: list[str], fqn: str) -> list[tuple[str, Any, str]]:
    """(name, value, source) of every parameter the command line gives node ``fqn``, in order:
    ``--params-file`` entries addressing the node, then ``-p`` / ``--param`` values. Raises
    :class:`ConfigError` for an unreadable params file."""
    out: list[tuple[str, Any, str]] = []
    in_ros = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--ros-args":
            in_ros = True
        elif a == "--":
            in_ros = False
        elif in_ros and a == "--params-file" and i + 1 < len(argv):
            path = argv[i + 1]
            i += 1
            try:
                doc = yaml.safe_load(Path(path).read_text()) or {}
            except Exception as e:
                raise ConfigError(f"cannot read params file '{path}': {type(e).__name__}: {e}") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"params file '{path}' is not a mapping of node names")
            for key, body in doc.items():
                if not isinstance(body, dict) or not _key_matches(str(key), fqn):
                    continue
                params = body.get("ros__parameters")
                if not isinstance(params, dict):
                    continue
                for name, value in _flatten(params):
                    out.append((name, value, f"params file {path}"))
        elif in_ros and a in ("-p", "--param") and i + 1 < len(argv):
            item = argv[i + 1]
            i += 1
            if ":=" in item:
                name, text = item.split(":=", 1)
                if ":" in name:  # node-name prefixed: other_node:k:=v
                    target, name = name.rsplit(":", 1)
                    if not _key_matches(target, fqn) and target != fqn.rsplit("/", 1)[-1]:
                        i += 1
                        continue
                out.append((name, _yaml_scalar(text), f"-p {item}"))
        i += 1
    return out


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, name + ".")
        else:
            yield name, v


def check_command_line(argv: list[str], fqn: str) -> None:
    """Raise :class:`ConfigError` naming every wrong-typed, out-of-range or unknown parameter the
    command line gives node ``fqn`` (what rcl would drop or ignore silently)."""
    errors = []
    last: dict[str, tuple[Any, str]] = {}
    for name, value, source in command_line_parameters(argv, fqn):
        last[name] = (value, source)  # later sources override earlier ones, as in rcl
    for name, (value, source) in last.items():
        msg = check_value(name, value, source)
        if msg and msg not in errors:
            errors.append(msg)
    if errors:
        raise ConfigError("; ".join(errors))


# --------------------------------------------------------------------------- declaration

def _descriptor(p: ParamSpec):
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    d = ParameterDescriptor(name=p.name, type=types[p.kind], description=p.description,
                            additional_constraints=p.constraints, read_only=True)
    if p.kind is float or p.also:
        d.dynamic_typing = True  # `-p confidence_gate:=1` (an integer), `refine:=true` (a bool); checked here
    if p.float_range:
        d.floating_point_range = [FloatingPointRange(from_value=p.float_range[0], to_value=p.float_range[1], step=0.0)]
    if p.int_range:
        d.integer_range = [IntegerRange(from_value=p.int_range[0], to_value=p.int_range[1], step=0)]
    return d


def declare_and_read(node) -> dict[str, Any]:
    """Declare every :data:`PARAMETERS` entry on ``node`` (an rclpy Node) and return validated
    values (``tf_mode`` normalised to the shell-safe spelling, ``refine`` to auto/True/False).

    Also refuses parameter overrides for this node that no entry declares (a misspelled name in a
    params file). Raises :class:`ConfigError` naming every bad parameter.
    """
    errors: list[str] = []
    values: dict[str, Any] = {}
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    for name in overrides:
        if name not in SPECS and name not in ROS_BUILTIN_PARAMS:
            msg = check_value(name, None)
            errors.append(msg)
    for p in PARAMETERS:
        try:
            v = node.declare_parameter(p.name, p.default, _descriptor(p)).value
        except Exception as e:  # InvalidParameterTypeException / InvalidParameterValueException
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            errors.append(f"parameter '{p.name}' {type_error(p, object()) or 'is invalid'}: {reason}")
            continue
        msg = check_value(p.name, v)
        if msg:
            errors.append(msg)
            continue
        if p.kind is float:
            v = float(v)
        values[p.name] = v
    if not errors:
        values["tf_mode"] = normalize_tf_mode(values["tf_mode"])
        r = values["refine"]
        values["refine"] = r if isinstance(r, bool) else {"auto": "auto", "true": True, "false": False}[r]
        g = values["geometric"]  # YAML reads `off` / `on` as booleans
        values["geometric"] = ("auto" if g else "off") if isinstance(g, bool) else g
        if values["map_frame"] == values["odom_frame"]:
            errors.append(f"parameters 'map_frame' and 'odom_frame' must differ (both {values['map_frame']!r})")
    if errors:
        raise ConfigError("; ".join(errors))
    return values
