"""The ``anomstream`` command: one sub-command per service, each defined in its own module.

Only the module of the command being run is imported, so ``anomstream stack up`` does not pay for torch or
pandas. Each module exposes ``add_parser(subparsers)``, which registers its command and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from anomstream import __version__

# command -> (module defining it, one-line help shown by `anomstream --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("anomstream.stack.cli", "install, start and stop the local Kafka broker and Schema Registry"),
    "produce": ("producer.cli", "send a data set or a synthetic fleet to the telemetry topic"),
    "train": ("trainer.cli", "fit a model on a window of the telemetry topic, evaluate it, publish it"),
    "models": ("trainer.models_cli", "list, show, promote and roll back models in the model store"),
    "score": ("scorer.cli", "score the telemetry topic as a member of the scorer group (exactly-once)"),
    "tail": ("scorer.tail_cli", "print the anomaly topic as a table or JSON lines (read_committed)"),
    "alert": ("scorer.alert_cli", "drive Prometheus Alertmanager from the incident topic (fire, refresh, resolve)"),
    "eval": ("trainer.eval_cli", "evaluate detectors offline on labelled benchmark data (SKAB, NAB)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; with ``only``, just that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="anomstream",
        description="Real-time anomaly detection for telemetry streams on Apache Kafka.",
        epilog="Run `anomstream COMMAND --help` for a command's flags; every flag has an environment default.",
    )
    parser.add_argument("--version", action="version", version=f"anomstream {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ANOMSTREAM_LOG_LEVEL", "INFO"),
        help="logging level [env: ANOMSTREAM_LOG_LEVEL, default: INFO]",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("ANOMSTREAM_LOG_FORMAT", "text"),
        help="text for people, json for log collectors [env: ANOMSTREAM_LOG_FORMAT, default: text]",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def _command_in(argv: list[str]) -> str | None:
    for arg in argv:
        if arg in COMMANDS:
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``anomstream`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(only=_command_in(argv))
    args = parser.parse_args(argv)
    from anomstream.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from anomstream.errors import AnomstreamError

    try:
        return int(args.func(args) or 0)
    except AnomstreamError as exc:
        logging.getLogger("anomstream").error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
