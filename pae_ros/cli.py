"""The ``pae`` command: one entry point, one subcommand per task.

Every subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Those modules keep their heavy imports (torch, rclpy) inside ``run`` so
that ``pae --help`` is instant and ``pae train`` works on a GPU box with no ROS installed.

Errors a user can fix (a bad bundle, config, dataset or image, a missing / unreadable file) that
a subcommand does not handle itself end as one line on stderr, ``pae <command>: <message>``, and
exit status 2, never as a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train",): ("pae_ros.training.train_cmd", "train the APR, PAE and decoder on a dataset, write a bundle"),
    ("eval",): ("pae_ros.evaluation.eval_cmd", "evaluate a bundle on a dataset split (APR, PAE, refined)"),
    ("export",): ("pae_ros.training.export_cmd", "export a bundle's APR to ONNX"),
    ("scene", "render"): ("pae_ros.scene.render_cmd", "render the built-in demo scene (7Scenes/Cambridge format)"),
    ("bag", "make"): ("pae_ros.bags.make_cmd", "write a rosbag2 of a dataset split (images, camera_info, ground truth)"),
    ("bag", "play"): ("pae_ros.ros.bag_play", "replay a rosbag2 through rclpy at bag timing"),
    ("bag", "record"): ("pae_ros.ros.bag_record", "record topics to a rosbag2 through rclpy"),
    ("bag", "eval"): ("pae_ros.bags.bag_eval_cmd", "evaluate recorded poses against ground truth by header stamp"),
    ("bag", "export"): ("pae_ros.bags.export_cmd", "turn robot recordings (TF or pose topic) into a 7Scenes dataset"),
    ("demo",): ("pae_ros.demo", "the end-to-end demo: scene, training, bag, node, evaluation"),
    ("bundle", "upgrade"): ("pae_ros.bundle_cmd", "re-seal a trusted format-1 bundle as the current format"),
}

GROUP_HELP = {"scene": "the built-in demo scene", "bag": "rosbag2 tools (make, play, record, eval, export)",
              "bundle": "bundle file tools (upgrade)"}

#: (module, class name) of the errors that mean bad input, reported in one line. Looked up in
#: ``sys.modules`` only: an exception of a class can only exist once its module is imported, and
#: importing here would make ``pae --help`` slow.
KNOWN_ERRORS = (("pae_ros.bundle", "BundleError"), ("pae_ros.config", "ConfigError"),
                ("pae_ros.datasets.types", "DatasetError"), ("pae_ros.image_codec", "ImageDecodeError"),
                ("pae_ros.bags.io", "BagError"))


def one_line_error(exc: BaseException) -> str | None:
    """The one-line message for a known user-input error, or None for anything else (a bug)."""
    for module_name, cls_name in KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module_name), cls_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            text = " ".join(str(exc).split()) or cls_name
            return text
    if isinstance(exc, OSError) and exc.filename is not None:
        what = {FileNotFoundError: "not found", IsADirectoryError: "is a directory",
                NotADirectoryError: "a parent is not a directory", PermissionError: "permission denied"}
        reason = what.get(type(exc)) or (exc.strerror or type(exc).__name__)
        return f"{exc.filename}: {reason}"
    return None


def _run(module, args, name: str) -> int:
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        msg = one_line_error(e)
        if msg is None:
            raise
        print(f"pae {name}: {msg}", file=sys.stderr)
        return 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is a meaningful one (not None, False or empty) and the
    help text does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if "default" in text.lower() or d is None or d is False or d is argparse.SUPPRESS or d == []:
            return text
        return super()._get_help_string(action)


class _Unavailable:
    """Stands in for a subcommand whose module could not be imported."""

    def __init__(self, name: str, error: ImportError):
        self.name, self.error = name, error

    def run(self, args) -> int:
        print(f"pae {self.name}: unavailable here ({self.error}); install the missing package", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pae", description="pae_ros offline tools: train, evaluate, export, scenes and bags.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (module_name, help_text) in COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=help_text, description=help_text,
                                 formatter_class=HelpFormatter)
        else:
            if path[0] not in groups:
                gp = top.add_parser(path[0], help=GROUP_HELP.get(path[0], ""))
                groups[path[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[path[0]].add_parser(path[1], help=help_text, description=help_text,
                                             formatter_class=HelpFormatter)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:  # an optional dependency is missing: only this subcommand fails
            sub.set_defaults(_module=_Unavailable(" ".join(path), e))
            sub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            continue
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def standalone_main(module_name: str, argv: list[str] | None = None) -> int:
    """Run one subcommand module on its own (``python -m <module>``), exactly as ``pae`` would."""
    module = importlib.import_module(module_name)
    path = next(p for p, (m, _) in COMMANDS.items() if m == module_name)
    help_text = COMMANDS[path][1]
    parser = argparse.ArgumentParser(prog="pae " + " ".join(path), description=help_text,
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return _run(module, parser.parse_args(argv), " ".join(path))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(x for x in (args.command, getattr(args, "subcommand", None)) if x)
    return _run(args._module, args, name)


if __name__ == "__main__":
    sys.exit(main())
