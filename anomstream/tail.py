"""A downstream reader of the anomaly (or incident) topic, as a user's own consumer would be:
``read_committed``, Avro.

By default the reader has no consumer group: it reads every partition from the beginning (like ``kcat -C
-o beginning``), so ``anomstream tail`` shows all anomalies committed so far and a script can compare the
whole topic with an expectation; nothing is committed. With a group it resumes where that group stopped
and commits what it printed (a dashboard that must not show an anomaly twice).

Records are decoded with confluent-kafka's own ``AvroDeserializer`` (writer schema from the registry), the
way any downstream Python consumer would, and turned into plain rows (:func:`anomaly_row`, :func:`incident_row`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError
from anomstream.kafka_config import consumer_config, registry_client, wrap_kafka_error

logger = logging.getLogger(__name__)

POLL_MESSAGES = 1_000
POLL_TIMEOUT_S = 0.25


def anomaly_row(record: dict[str, Any]) -> dict[str, Any]:
    """A decoded ``Anomaly`` record as the JSON row ``anomstream tail --json`` prints (docs/design.md)."""
    observed, expected = record.get("observed") or {}, record.get("expected") or {}
    return {
        "device_id": record["device_id"],
        "event_time": _iso(record["event_time"]),
        "seq": record["seq"],
        "score": record["score"],
        "threshold": record["threshold"],
        "model": record["model"],
        "model_version": record["model_version"],
        "label": record.get("label"),
        "contributions": dict(record["contributions"]),
        "topic": record["source_topic"],
        "partition": record["source_partition"],
        "offset": record["source_offset"],
        "scored_at": _iso(record["scored_at"]),
        "scored_by": record.get("scored_by", "global"),  # records written before the field existed
        "observed": dict(record.get("observed") or {}),
        "expected": dict(expected),
        "direction": {c: ("up" if observed[c] > v else "down") for c, v in expected.items() if c in observed},
    }


def incident_row(record: dict[str, Any]) -> dict[str, Any]:
    """A decoded ``Incident`` event as the JSON row ``anomstream tail --incidents --json`` prints."""
    sums = dict(record["contributions"])
    return {
        "incident_id": record["incident_id"],
        "state": record["state"],
        "device_id": record["device_id"],
        "start_time": _iso(record["start_time"]),
        "end_time": _iso(record["end_time"]),
        "readings": record["readings"],
        "peak_score": record["peak_score"],
        "peak_time": _iso(record["peak_time"]),
        "threshold": record["threshold"],
        "model": record["model"],
        "model_version": record["model_version"],
        "top_channels": [{"channel": c, "contribution": sums[c]} for c in record["top_channels"]],
        "contributions": sums,
        "topic": record["source_topic"],
        "partition": record["source_partition"],
        "first_offset": record["first_offset"],
        "last_offset": record["last_offset"],
        "first_seq": record["first_seq"],
        "last_seq": record["last_seq"],
        "quiet_s": record["quiet_ms"] / 1000,
        "muted": record.get("muted", False),
        "muted_by": record.get("muted_by", ""),
    }


def _iso(value: datetime | int) -> str:
    """ISO 8601 in UTC with milliseconds (fastavro gives timestamp-millis as aware datetimes)."""
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, tz=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


class AnomalyReader:
    """Reads decoded rows from ``topic`` (see the module docstring).

    Args:
        kafka: broker and registry.
        topic: the anomaly topic (or the incident topic, with ``to_row=incident_row``).
        group_id: a consumer group to resume and commit with; ``None`` reads everything, from the beginning.
        to_row: turns a decoded record into the row returned.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str | None = None,
        to_row: Callable[[dict[str, Any]], dict[str, Any]] = anomaly_row,
    ) -> None:
        self.topic, self.group_id, self._to_row = topic, group_id, to_row
        group = group_id or f"anomstream-tail-{uuid.uuid4().hex[:8]}"  # a label only: no subscribe, no commits
        self._consumer = Consumer(consumer_config(kafka, group, "anomstream-tail", **{"enable.partition.eof": False}))
        self._deserialize = AvroDeserializer(registry_client(kafka))
        self.undecodable = 0

    def rows(self, max_rows: int | None = None, idle_timeout_s: float | None = None,
             stop: Callable[[], bool] | None = None) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        """Chunks of rows as they arrive; ends after ``max_rows`` or ``idle_timeout_s`` without a record."""
        self._start()
        seen, last = 0, time.monotonic()
        try:
            while max_rows is None or seen < max_rows:
                if stop is not None and stop():
                    return
                messages = self._consumer.consume(POLL_MESSAGES, POLL_TIMEOUT_S)
                chunk = [row for row in map(self._row, messages) if row is not None]
                if max_rows is not None:
                    chunk = chunk[: max_rows - seen]
                if chunk:
                    seen, last = seen + len(chunk), time.monotonic()
                    yield chunk
                    if self.group_id and messages:
                        self._consumer.commit(asynchronous=True)
                elif idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    return
        finally:
            self._consumer.close()

    def _start(self) -> None:
        if self.group_id:
            self._consumer.subscribe([self.topic])
            return
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=10.0).topics.get(self.topic)
        except KafkaException as exc:
            raise wrap_kafka_error(exc, f"reading the partitions of {self.topic}") from exc
        if metadata is None or metadata.error is not None or not metadata.partitions:
            why = metadata.error.str() if metadata is not None and metadata.error is not None else "no partitions"
            why = f"topic {self.topic!r} cannot be read: {why}; check --anomaly-topic or --incident-topic"
            raise KafkaClientError(why)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)])

    def _row(self, message: Message) -> dict[str, Any] | None:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaClientError(f"reading {self.topic}: {error.str()}", code=error.name())
            logger.warning("reading %s: %s", self.topic, error.str())
            return None
        try:
            context = SerializationContext(self.topic, MessageField.VALUE)
            record = self._deserialize(message.value(), context)
            return self._to_row(record)
        except Exception as exc:  # a record we cannot read must not stop the tail: count and go on
            self.undecodable += 1
            logger.warning("skipping an unreadable record at %s[%s]@%s: %s", self.topic, message.partition(),
                           message.offset(), exc)  # fmt: skip
            return None
