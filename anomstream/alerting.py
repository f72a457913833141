"""`anomstream alert`: incidents drive Prometheus Alertmanager through its v2 API.

An open incident fires an alert, its updates refresh it, its close resolves it; a muted incident does not
fire (and resolves the alert if it was firing). The alert's labels identify it (``alertname``, ``device``,
``model``, ``top_channel``, ``incident_id``) and its annotations describe it (peak score and threshold,
readings, top channels, start).

Alertmanager keeps alerts in memory only, and ends each one at its ``endsAt``: like Prometheus, the service
sends every firing alert again every ``resend`` seconds with ``endsAt`` four resends ahead, so an
Alertmanager that restarts has them back within one resend, and an alert whose sender has died resolves by
itself. The service keeps no state of its own: on start it reads the incident topic from the beginning
(``read_committed``), takes the last event of each incident, and fires only the incidents still open, so a
restart never fires a closed incident again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic_settings import BaseSettings, SettingsConfigDict

from anomstream.config import KafkaSettings, env
from anomstream.errors import KafkaClientError
from anomstream.kafka_config import consumer_config, registry_client
from anomstream.tail import incident_row

logger = logging.getLogger(__name__)

ALERT_NAME = "AnomstreamIncident"


class AlertSettings(BaseSettings):
    """How `anomstream alert` reaches Alertmanager."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    alertmanager_url: str = env("ANOMSTREAM_ALERTMANAGER_URL", "http://127.0.0.1:9093", "Alertmanager base URL")
    resend: float = env("ANOMSTREAM_ALERT_RESEND_S", 60.0, "seconds between sends of each firing alert", gt=0)
    idle_exit: float | None = env(
        "ANOMSTREAM_IDLE_EXIT", None, "exit 0 after this many seconds without an incident event", gt=0
    )


def alert_payload(row: dict[str, Any], now: datetime, resend_s: float) -> dict[str, Any]:
    """The Alertmanager alert of an incident event (an ``anomstream tail --incidents --json`` row): firing
    until four resends from ``now``, or resolved at the incident's end when it is closed or muted."""
    top = [t["channel"] for t in row["top_channels"]]
    resolved = row["state"] == "closed" or row["muted"]
    ends = row["end_time"] if resolved else _iso(now.timestamp() + 4 * resend_s)
    if resolved and ends < row["start_time"]:  # never before it started
        ends = row["start_time"]
    return {
        "labels": {
            "alertname": ALERT_NAME,
            "device": row["device_id"],
            "model": row["model"],
            "top_channel": top[0] if top else "",
            "incident_id": row["incident_id"],
        },
        "annotations": {
            "summary": f"{row['device_id']}: anomalous readings, mostly {', '.join(top) or 'no channel'}",
            "peak_score": f"{row['peak_score']:.4g}",
            "threshold": f"{row['threshold']:.4g}",
            "readings": str(row["readings"]),
            "model_version": str(row["model_version"]),
            "top_channels": ", ".join(top),
        },
        "startsAt": row["start_time"],
        "endsAt": ends,
    }


@dataclass
class Forwarder:
    """The incidents to tell Alertmanager about, by id: firing ones resent, closed ones resolved once."""

    settings: AlertSettings
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)  # to send now: opened, updated, resolved
    last_sent: float = 0.0
    sent: int = 0

    def take(self, row: dict[str, Any], live: bool) -> None:
        """Take an incident event; ``live`` False while catching up on the topic (a closed incident then
        needs no resolving: it was resolved before, or its alert ends by itself)."""
        incident_id = row["incident_id"]
        if row["state"] == "closed" or row["muted"]:
            was_firing = self.firing.pop(incident_id, None) is not None
            if live and (was_firing or row["state"] == "closed"):
                self.changed[incident_id] = row
            else:
                self.changed.pop(incident_id, None)
        else:
            self.firing[incident_id] = row
            if live:
                self.changed[incident_id] = row

    def flush(self, force: bool = False) -> bool:
        """Send what is due: alerts that changed, and every firing one when ``force`` or once per resend.
        Returns whether Alertmanager took them (else they are sent again next time)."""
        now = time.monotonic()
        due = force or now - self.last_sent >= self.settings.resend
        if not self.changed and not (due and self.firing):
            return True
        rows = {**(self.firing if due else {}), **self.changed}.values()
        moment = datetime.now(tz=UTC)
        alerts = [alert_payload(row, moment, self.settings.resend) for row in rows]
        if not self._post(alerts):
            return False
        self.changed.clear()
        if due:
            self.last_sent = now
        self.sent += len(alerts)
        return True

    def _post(self, alerts: list[dict[str, Any]]) -> bool:
        url = self.settings.alertmanager_url.rstrip("/") + "/api/v2/alerts"
        request = urllib.request.Request(url, data=json.dumps(alerts).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                ok = 200 <= response.status < 300
        except (urllib.error.URLError, OSError) as exc:
            logger.warning("Alertmanager at %s: %s; sending again in a moment", self.settings.alertmanager_url, exc)
            return False
        if ok:
            logger.info("sent %d alerts to Alertmanager (%d firing)", len(alerts), len(self.firing))
        return ok


def run_alerts(settings: AlertSettings, kafka: KafkaSettings, topic: str, stop: threading.Event) -> int:
    """Catch up on the incident topic, then follow it and keep Alertmanager told, until ``stop`` or idle."""
    consumer = Consumer(consumer_config(kafka, f"anomstream-alert-{uuid.uuid4().hex[:8]}", "anomstream-alert",
                                        **{"enable.partition.eof": False}))  # fmt: skip
    deserialize = AvroDeserializer(registry_client(kafka))
    forwarder = Forwarder(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=30.0).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaClientError(f"incident topic {topic!r} cannot be read: check --incident-topic")
        partitions = sorted(metadata.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        live, last_event = not any(ends.values()), time.monotonic()
        while not stop.is_set():
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is not None:
                    continue
                try:
                    record = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
                except Exception as exc:  # an unreadable event must not stop alerting
                    logger.warning("skipping an unreadable incident event at %s@%s: %s", message.partition(),
                                   message.offset(), exc)  # fmt: skip
                    continue
                if record is not None:
                    forwarder.take(incident_row(record), live)
                    last_event = time.monotonic()
            if not live:  # caught up once every partition that held events is read to where it ended
                positions = consumer.position([TopicPartition(topic, p) for p in partitions if ends[p] > 0])
                live = all(tp.offset >= ends[tp.partition] for tp in positions)
                if live:
                    logger.info("caught up on %s: %d incidents open", topic, len(forwarder.firing))
                    forwarder.flush(force=True)
            else:
                forwarder.flush()
            if settings.idle_exit is not None and live and time.monotonic() - last_event > settings.idle_exit:
                break
        forwarder.flush()
    except KafkaException as exc:
        raise KafkaClientError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()
    logger.info("alert stopped: %d alerts sent, %d firing", forwarder.sent, len(forwarder.firing))
    return 0


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).isoformat(timespec="milliseconds")
