"""librdkafka client configuration: typed defaults, pass-through extras, logging routed to Python.

Producers, consumers and admin clients are configured here only, so a reader finds "where is the consumer
configured" by file name. librdkafka property names are used unchanged; ``KafkaSettings.kafka_extra_config``
is merged last so users can set anything librdkafka knows.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError

logger = logging.getLogger("anomstream.kafka")

def _error_cb(error: KafkaError) -> None:
    # Most client errors are transient (broker restarting, connection refused) and librdkafka retries them
    # itself; only fatal ones need attention from the caller, which sees them on its next call.
    level = logging.ERROR if error.fatal() else logging.WARNING
    logger.log(level, "kafka client: %s (%s)", error.str(), error.name())


def _common(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": client_id,
        "error_cb": _error_cb,
        # librdkafka's own log lines go to this Python logger at their syslog-mapped level
        "logger": logger,
    }


def producer_config(settings: KafkaSettings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, batched producer: ``enable.idempotence`` with acks=all, lz4, a short linger."""
    config = _common(settings, client_id) | {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    return config | overrides | dict(settings.kafka_extra_config)


def consumer_config(settings: KafkaSettings, group_id: str, client_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer in ``group_id`` with manual commits, cooperative-sticky assignment, read_committed."""
    config = _common(settings, client_id) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "fetch.min.bytes": 1,
        "fetch.wait.max.ms": 100,
    }
    return config | overrides | dict(settings.kafka_extra_config)


def admin_config(settings: KafkaSettings, client_id: str = "anomstream-admin") -> dict[str, Any]:
    """An admin client for topic management."""
    return _common(settings, client_id) | dict(settings.kafka_extra_config)


def registry_client(settings: KafkaSettings) -> SchemaRegistryClient:
    """confluent-kafka's own SchemaRegistryClient for the configured registry."""
    # confluent-kafka leaves httpx without a timeout: one stalled connection would block a service for good.
    # With one, a stall is a transport error the client retries, then raises, and our callers back off.
    conf: dict[str, Any] = {"url": settings.schema_registry_url, "timeout": settings.schema_registry_timeout_s}
    if settings.schema_registry_auth is not None:
        conf["basic.auth.user.info"] = settings.schema_registry_auth.get_secret_value()
    return SchemaRegistryClient(conf)


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The ``KafkaError`` a ``KafkaException`` carries (``None`` for any other exception)."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def wrap_kafka_error(exc: KafkaException, doing: str) -> KafkaClientError:
    """A KafkaException as our error, with its code and whether retrying may help."""
    error = kafka_error(exc)
    if error is None:
        return KafkaClientError(f"{doing}: {exc}")
    return KafkaClientError(f"{doing}: {error.str()}", code=error.name(), retriable=error.retriable())
