"""Dead-letter records: a bad telemetry record, byte for byte, with headers saying where it came from and why.

The headers follow Kafka Connect's dead-letter-queue convention (``errors.deadletterqueue.context.headers
.enable``): ``__connect.errors.topic``, ``.partition``, ``.offset``, ``.connector.name``, ``.task.id``,
``.stage``, ``.class.name``, ``.exception.class.name``, ``.exception.message``, all UTF-8 strings, so tools
written for Connect's DLQs read ours. One more header, ``reason``, holds a short machine-readable cause
(:data:`anomstream.serde.REASONS`: ``bad-magic``, ``undecodable``, ``unknown-schema``, ``missing-channel``,
``non-finite``, ``out-of-range``, ``key-mismatch``) for alerting and replay tooling. The original key, value
and headers come first, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from anomstream.serde import BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA, BadMessage

CONNECT_PREFIX = "__connect.errors."
REASON_HEADER = "reason"
# Kafka Connect's stage names: failures to turn bytes into a record happen in the value converter, a
# record that decodes but cannot be scored fails in the (scoring) task.
_CONVERTER_REASONS = {BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA}

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class SourceRecord:
    """The consumed record as it arrived.

    Attributes:
        topic: source topic.
        partition: source partition.
        offset: source offset.
        key: record key bytes (or ``None``).
        value: record value bytes (or ``None``).
        headers: original headers, in order (``None`` values are kept).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def dead_letter_headers(record: SourceRecord, bad: BadMessage, group_id: str, client_id: str) -> Headers:
    """The Connect-style context headers plus ``reason`` for one bad record."""
    converter = bad.reason in _CONVERTER_REASONS
    context = {
        "topic": record.topic,
        "partition": str(record.partition),
        "offset": str(record.offset),
        "connector.name": group_id,
        "task.id": client_id,
        "stage": "VALUE_CONVERTER" if converter else "TASK_PUT",
        "class.name": "anomstream.serde.TelemetryDecoder" if converter else "anomstream.scorer.Scorer",
        "exception.class.name": bad.exception_class,
        "exception.message": bad.message,
    }
    return [(CONNECT_PREFIX + name, text.encode()) for name, text in context.items()] + [
        (REASON_HEADER, bad.reason.encode())
    ]


def dead_letter(record: SourceRecord, bad: BadMessage, group_id: str, client_id: str) -> dict[str, object]:
    """Keyword arguments for ``Producer.produce`` to the dead-letter topic (topic not included)."""
    headers: list[tuple[str, bytes | None]] = list(record.headers)
    headers += dead_letter_headers(record, bad, group_id, client_id)
    return {"key": record.key, "value": record.value, "headers": headers}
