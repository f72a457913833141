"""The ``anomstream`` command: one sub-command per service, each defined in its own module.

Only the module of the command being run is imported, so ``anomstream stack up`` does not pay for torch or
pandas. Each module exposes ``add_parser(subparsers)``, which registers its command and sets ``func``
(:func:`add_command` does it for a command whose flags are settings classes); long-running commands stop on
SIGTERM and Ctrl-C through :class:`StopOnSignals`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from anomstream import __version__

logger = logging.getLogger(__name__)

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


def add_command(
    subparsers: Any,
    name: str,
    doc: str | None,
    epilog: str,
    settings: Sequence[Any],
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Register command ``name`` (its one-line help from :data:`COMMANDS`): ``doc`` as its description,
    ``epilog`` as examples, one flag per field of each settings class in ``settings`` (a class, or a
    ``(class, group title)`` pair) and ``run`` as what it does. Returns the parser, for extra flags."""
    from anomstream.config import add_settings_arguments

    parser = subparsers.add_parser(
        name,
        help=COMMANDS[name][1],
        description=doc,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for entry in settings:
        cls, title = entry if isinstance(entry, tuple) else (entry, None)
        add_settings_arguments(parser, cls, title)
    parser.set_defaults(func=run)
    return parser


class StopOnSignals:
    """Context manager: SIGTERM and SIGINT set an event (and name the signal) instead of killing the run.

    A second Ctrl-C while stopping raises KeyboardInterrupt as usual, for a user who will not wait.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s: stopping; finishing the work in flight", self.signal_name)
        self.event.set()


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
