"""The ``pae`` command: one entry point, one subcommand per task.

Every subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Those modules keep their heavy imports (torch, rclpy) inside ``run`` so
that ``pae --help`` is instant and ``pae train`` works on a GPU box with no ROS installed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train",): ("pae_ros.training.train_cmd", "train the APR, PAE and decoder on a dataset, write a bundle"),
    ("eval",): ("pae_ros.training.eval_cmd", "evaluate a bundle on a dataset split (APR, PAE, refined)"),
    ("export",): ("pae_ros.training.export_cmd", "export a bundle's APR to ONNX"),
    ("scene", "render"): ("pae_ros.scene.render_cmd", "render the built-in demo scene (7Scenes/Cambridge format)"),
    ("bag", "make"): ("pae_ros.bags.make_cmd", "write a rosbag2 of a dataset split (images, camera_info, ground truth)"),
    ("bag", "play"): ("pae_ros.ros.bag_play", "replay a rosbag2 through rclpy at bag timing"),
    ("bag", "record"): ("pae_ros.ros.bag_record", "record topics to a rosbag2 through rclpy"),
    ("bag", "eval"): ("pae_ros.bags.eval_cmd", "evaluate recorded poses against ground truth by header stamp"),
    ("demo",): ("pae_ros.demo", "the end-to-end demo: scene, training, bag, node, evaluation"),
}

GROUP_HELP = {"scene": "the built-in demo scene", "bag": "rosbag2 tools (make, play, record, eval)"}


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
    try:
        return int(module.run(parser.parse_args(argv)) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
