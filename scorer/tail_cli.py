"""`anomstream tail`: print the anomaly topic (read_committed), as a table or as JSON lines.

Without ``--group`` it reads every partition from the beginning and commits nothing, so it shows every
anomaly committed so far; with ``--group`` it resumes where that group stopped. ``--max N`` and ``--timeout S``
(seconds without a new record) make it stop by itself; otherwise it follows until Ctrl-C or SIGTERM.
``--json`` prints one object per line: ``device_id``, ``event_time`` (ISO 8601, UTC), ``seq``, ``score``,
``threshold``, ``model``, ``model_version``, ``label``, ``contributions``, the source ``topic``,
``partition`` and ``offset``, ``scored_at`` and ``scored_by``.

``--incidents`` prints the incident topic instead: one event per line (``open``, ``update``, ``closed``), with
``incident_id``, ``state``, ``device_id``, ``start_time`` and ``end_time`` (ISO 8601, UTC), ``readings``,
``peak_score``, ``peak_time``, ``threshold``, ``model``, ``model_version``, ``top_channels`` (``channel``
and summed ``contribution``, largest first), ``contributions``, the source ``topic``, ``partition``,
``first_offset``, ``last_offset``, ``first_seq``, ``last_seq`` and ``quiet_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from anomstream.cli import add_command
from anomstream.config import KafkaSettings, TopicSettings, parse_settings

EPILOG = """examples:
  anomstream tail                          # follow, as a table
  anomstream tail --json --timeout 15      # every anomaly so far, then stop after 15 s without one
  anomstream tail --json --max 10 | jq .contributions
  anomstream tail --incidents --timeout 15 # every incident event so far, as a table
"""


def add_parser(subparsers: Any) -> None:
    """Register ``tail``."""
    parser = add_command(subparsers, "tail", __doc__, EPILOG, (TopicSettings, KafkaSettings), run)
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--incidents", action="store_true", help="print the incident topic instead of anomalies")
    parser.add_argument("--max", type=int, default=None, metavar="N", help="stop after N records")
    parser.add_argument(
        "--timeout",
        type=float,
        default=_env_float("ANOMSTREAM_TAIL_TIMEOUT"),
        metavar="S",
        help="stop after S seconds without a new record [env: ANOMSTREAM_TAIL_TIMEOUT, default: follow]",
    )
    parser.add_argument(
        "--group",
        default=os.environ.get("ANOMSTREAM_TAIL_GROUP") or None,
        help="consumer group to resume and commit with [env: ANOMSTREAM_TAIL_GROUP, default: none, read all]",
    )


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def run(args: argparse.Namespace) -> int:
    """Print anomalies until ``--max``, ``--timeout``, Ctrl-C or SIGTERM; returns the exit status."""
    from anomstream.cli import StopOnSignals
    from anomstream.tail import AnomalyReader, incident_row

    topics, kafka = parse_settings(args, "tail", TopicSettings, KafkaSettings)
    if args.incidents:
        reader = AnomalyReader(kafka, topics.incident_topic, args.group, to_row=incident_row)
    else:
        reader = AnomalyReader(kafka, topics.anomaly_topic, args.group)
    table = None if args.json else (_IncidentTable() if args.incidents else _Table())
    with StopOnSignals() as signals:
        for chunk in reader.rows(args.max, args.timeout, stop=signals.event.is_set):
            if table is None:
                sys.stdout.write("".join(json.dumps(row) + "\n" for row in chunk))
                sys.stdout.flush()
            else:
                table.show(chunk)
    return 130 if signals.signal_name == "SIGINT" else 0


class _Table:
    """Rows printed as they arrive, under one header (rich)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        if not self.console.is_terminal:  # piped: don't squeeze rows into 80 columns
            self.console = Console(width=200)
        self.first = True

    def show(self, chunk: list[dict[str, Any]]) -> None:
        from rich.table import Table

        table = Table(show_header=self.first, box=None, pad_edge=False)
        for name, justify in (("event time", "left"), ("device", "left"), ("score", "right"),
                              ("threshold", "right"), ("model", "left"), ("top channels", "left"),
                              ("label", "right"), ("source", "left")):  # fmt: skip
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for row in chunk:
            top = sorted(row["contributions"].items(), key=lambda item: -item[1])[:2]
            table.add_row(
                row["event_time"][:23].replace("T", " "),
                row["device_id"],
                f"{row['score']:.4f}",
                f"{row['threshold']:.4f}",
                f"{row['model']} v{row['model_version']}",
                ", ".join(f"{name} {share:.0%}" for name, share in top),
                "" if row["label"] is None else str(row["label"]),
                f"p{row['partition']}@{row['offset']}",
            )
        self.console.print(table)
        self.first = False


class _IncidentTable(_Table):
    """Incident events printed as they arrive."""

    def show(self, chunk: list[dict[str, Any]]) -> None:
        from rich.table import Table

        table = Table(show_header=self.first, box=None, pad_edge=False)
        for name in ("state", "incident", "start", "end", "readings", "peak", "model", "top channels"):
            table.add_column(name, no_wrap=True)
        for row in chunk:
            table.add_row(
                row["state"],
                row["incident_id"],
                row["start_time"][:19].replace("T", " "),
                row["end_time"][:19].replace("T", " "),
                f"{row['readings']:,}",
                f"{row['peak_score']:.4f}",
                f"{row['model']} v{row['model_version']}",
                ", ".join(t["channel"] for t in row["top_channels"]),
            )
        self.console.print(table)
        self.first = False
