"""`anomstream alert`: fire, refresh and resolve Prometheus Alertmanager alerts from the incident topic.

An open incident fires an alert (labels ``alertname=AnomstreamIncident``, ``device``, ``model``,
``top_channel``, ``incident_id``), updates refresh it, a close resolves it; muted incidents do not fire. Every
firing alert is sent again every ``--resend`` seconds, so an Alertmanager restart loses nothing, and on its
own start the service reads the incident topic from the beginning and fires only what is still open.
"""

from __future__ import annotations

import argparse
from typing import Any

from anomstream.cli import add_command
from anomstream.config import KafkaSettings, TopicSettings, parse_settings

EPILOG = """examples:
  anomstream alert --alertmanager-url http://127.0.0.1:9093
  ANOMSTREAM_ALERT_RESEND_S=30 anomstream alert
"""


def add_parser(subparsers: Any) -> None:
    """Register ``alert``."""
    from anomstream.alerting import AlertSettings

    add_command(subparsers, "alert", __doc__, EPILOG, (AlertSettings, TopicSettings, KafkaSettings), run)


def run(args: argparse.Namespace) -> int:
    """Forward incidents until Ctrl-C, SIGTERM or ``--idle-exit``."""
    from anomstream.alerting import AlertSettings, run_alerts
    from anomstream.cli import StopOnSignals

    settings, topics, kafka = parse_settings(args, "alert", AlertSettings, TopicSettings, KafkaSettings)
    with StopOnSignals() as signals:
        return run_alerts(settings, kafka, topics.incident_topic, signals.event)
