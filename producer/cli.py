"""`anomstream produce`: send a data set or a synthetic fleet to the telemetry topic.

Every flag defaults from an environment variable (shown in --help). Exit status: 0 when every record
handed to Kafka was delivered (also after a SIGTERM, which flushes and stops), 1 when any record was not
delivered or the input could not be read, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from anomstream.cli import StopOnSignals, add_command
from anomstream.config import KafkaSettings, parse_settings
from anomstream.errors import ConfigError
from anomstream.producer import ProduceReport, ProducerSettings, run_producer

log = logging.getLogger(__name__)

EPILOG = """examples:
  anomstream produce --source skab:../shared/data/skab/data/valve1/3.csv
  anomstream produce --source synthetic --devices 100 --records 1000000 --seed 7 --rate 5000
  anomstream produce --source nab:../shared/data/nab/data/realAWSCloudwatch --speedup 600
  anomstream produce --source csv:plant.csv --time-column ts --device-column machine --on-bad-row skip
"""


def add_parser(subparsers: Any) -> None:
    """Register ``produce``."""
    add_command(subparsers, "produce", __doc__, EPILOG, (ProducerSettings, KafkaSettings), run)


def run(args: argparse.Namespace) -> int:
    """Run the producer with the parsed flags; returns the exit status."""
    settings, kafka = parse_settings(args, "produce", ProducerSettings, KafkaSettings)
    try:
        settings.pacing()
    except ValueError as error:
        raise ConfigError(f"invalid produce settings: {error}") from error
    log.info("producing %s to %s", settings.source, settings.topic)
    report = ProduceReport(topic=settings.topic)
    with StopOnSignals() as signals:
        try:
            run_producer(settings, kafka, stop=signals.event, report=report)
        finally:
            report.stopped_by = signals.signal_name
            print(report.summary(), flush=True)
    if not report.ok:
        return 1
    return 130 if signals.signal_name == "SIGINT" else 0
