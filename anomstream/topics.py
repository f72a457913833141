"""Creating the system's topics with confluent-kafka's AdminClient."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from anomstream.config import KafkaSettings, TopicSettings
from anomstream.kafka_config import admin_config, wrap_kafka_error

logger = logging.getLogger(__name__)


def system_topics(topics: TopicSettings, replication_factor: int = 1) -> list[NewTopic]:
    """The topics of the data flow: telemetry, anomalies, incidents, dead letters, and compacted model
    announcements."""
    partitions = topics.telemetry_partitions
    return [
        NewTopic(topics.telemetry_topic, partitions, replication_factor),
        NewTopic(topics.anomaly_topic, partitions, replication_factor),
        NewTopic(topics.incident_topic, partitions, replication_factor),
        NewTopic(topics.dlq_topic, 1, replication_factor),
        NewTopic(topics.models_topic, 1, replication_factor, config={"cleanup.policy": "compact"}),
    ]


def ensure_topics(kafka: KafkaSettings, new_topics: list[NewTopic], timeout_s: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AdminClient(admin_config(kafka))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in new_topics if t.topic not in existing]
    if not missing:
        return []
    created = []
    for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise wrap_kafka_error(exc, f"creating topic {name}") from exc
    logger.info("created topics %s", ", ".join(created))
    return created


def delete_topics(kafka: KafkaSettings, names: list[str], timeout_s: float = 30.0) -> None:
    """Delete topics, ignoring those that do not exist."""
    if not names:
        return
    admin = AdminClient(admin_config(kafka))
    for name, future in admin.delete_topics(names, request_timeout=timeout_s).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise wrap_kafka_error(exc, f"deleting topic {name}") from exc
