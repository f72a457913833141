"""The incident topic as the scorers' record of open incidents.

Every incident event carries the incident's whole state, and events are written in the same transaction as
the batch whose readings made them, so the last committed event of each device says whether that device has
an open incident and what it holds, as of the committed offsets. A scorer that is assigned a telemetry
partition reads the incident partition it writes that partition's incidents to (``partition_for``) from the
beginning, keeps each device's last event and hands them to :meth:`IncidentTracker.restore`: an incident
that a scorer was in the middle of when it died goes on where it was, neither lost, doubled nor split.

Reading the whole partition is cheap while the topic holds incidents, not readings; a topic kept for long
should be compacted (``cleanup.policy=compact,delete``: the last event per device is all this needs).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError
from anomstream.kafka_config import consumer_config, registry_client
from anomstream.serde import registry_failure
from anomstream.topics import ensure_topics

logger = logging.getLogger(__name__)

STALL_TIMEOUT_S = 30.0


class IncidentLog:
    """Reads the last incident event of each device back from the incident topic (``read_committed``).

    Args:
        kafka: broker and registry.
        topic: the incident topic.
        client_id: ``client.id`` prefix of the read-back consumer.
        partitions: partitions to create the topic with if it does not exist (the telemetry topic's).
    """

    def __init__(self, kafka: KafkaSettings, topic: str, client_id: str, partitions: int) -> None:
        self.topic = topic
        ensure_topics(kafka, [NewTopic(topic, partitions, -1)])  # -1: the broker's default replication
        config = consumer_config(kafka, f"anomstream-incidents-{uuid.uuid4().hex[:8]}", f"{client_id}-incidents")
        self._consumer = Consumer(config | {"enable.partition.eof": False})
        self._deserialize = AvroDeserializer(registry_client(kafka))
        metadata = self._consumer.list_topics(topic, timeout=30.0).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise KafkaClientError(f"incident topic {topic!r} cannot be read: check --incident-topic", retriable=True)
        self.partitions = len(metadata.partitions)

    def partition_for(self, source_partition: int) -> int:
        """The incident partition of a telemetry partition's incidents."""
        return source_partition % self.partitions

    def last_events(self, source_partitions: set[int]) -> list[dict[str, Any]]:
        """The last committed event of every device of ``source_partitions``, as decoded records."""
        try:
            return self._read_back(source_partitions)
        except KafkaException as exc:  # a broker away or a leader moving: the caller backs off and asks again
            raise KafkaClientError(f"reading back {self.topic}: {exc}", retriable=True) from exc

    def _read_back(self, source_partitions: set[int]) -> list[dict[str, Any]]:
        ends: dict[int, int] = {}
        for partition in {self.partition_for(p) for p in source_partitions}:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10.0)
            if high > low:
                ends[partition] = high
        if not ends:
            return []
        last: dict[str, dict[str, Any]] = {}
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
        moved = time.monotonic()
        try:
            while ends:
                for message in self._consumer.consume(1_000, timeout=0.2):
                    if message.error() is not None:
                        continue
                    record = self._decode(message.value())
                    if record is not None and record["source_partition"] in source_partitions:
                        last[record["device_id"]] = record
                positions = self._consumer.position([TopicPartition(self.topic, p) for p in ends])
                finished = [tp.partition for tp in positions if tp.offset >= ends[tp.partition]]
                for partition in finished:
                    del ends[partition]
                    moved = time.monotonic()
                if ends and time.monotonic() - moved > STALL_TIMEOUT_S:
                    raise KafkaClientError(f"reading back {self.topic} {sorted(ends)} stalled", retriable=True)
        finally:
            self._consumer.unassign()
        return list(last.values())

    def _decode(self, value: bytes | None) -> dict[str, Any] | None:
        """An incident event; ``None`` for one that cannot be read (logged), which no scorer of ours wrote.

        Raises:
            KafkaClientError: the registry failed (retriable unless it refused access).
        """
        try:
            return self._deserialize(value, SerializationContext(self.topic, MessageField.VALUE))  # type: ignore[no-any-return]
        except SerializationError as exc:
            logger.warning("an unreadable event on %s is not an incident: %s", self.topic, exc)
            return None
        except Exception as exc:  # the registry's refusal, or the network's failure on the way to it
            raise registry_failure(f"reading back {self.topic}", exc) from exc

    def close(self) -> None:
        """Close the read-back consumer."""
        self._consumer.close()

