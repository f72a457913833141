"""Dead-letter records: a bad telemetry record, byte for byte, with headers saying where it came from and why.

The headers follow Kafka Connect's dead-letter-queue convention (``errors.deadletterqueue.context.headers
.enable``): ``__connect.errors.topic``, ``.partition``, ``.offset``, ``.connector.name``, ``.task.id``,
``.stage``, ``.class.name``, ``.exception.class.name``, ``.exception.message``, all UTF-8 strings, so tools
written for Connect's DLQs read ours. One more header, ``reason``, holds a short machine-readable cause
(:data:`anomstream.serde.REASONS`: ``bad-magic``, ``undecodable``, ``unknown-schema``, ``missing-channel``,
``non-finite``, ``out-of-range``, ``key-mismatch``) for alerting and replay tooling. The original key, value
and headers come first, unchanged.

A dead letter must fit the producer's size limit (librdkafka's ``message.max.bytes``), or the transaction that
carries it fails on every retry and the partition stalls behind the record: a record that the broker accepted
at nearly that size no longer fits once the context headers are added. Such a record becomes a *reference*:
the first ``KEPT_PREFIX_BYTES`` of its value, its original headers if they fit, and headers
``payload.truncated`` (``true``), ``payload.size`` (the original value's size in bytes), ``payload.sha256``
(its SHA-256, hex), ``payload.headers.dropped`` (original headers left out) and, for a key longer than the
prefix, ``payload.key.size`` (the key is cut like the value); the source topic, partition
and offset in the context headers say where the whole record still is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from anomstream.serde import BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA, BadMessage

CONNECT_PREFIX = "__connect.errors."
REASON_HEADER = "reason"
# Kafka Connect's stage names: failures to turn bytes into a record happen in the value converter, a
# record that decodes but cannot be scored fails in the (scoring) task.
_CONVERTER_REASONS = {BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA}

TRUNCATED_HEADER = "payload.truncated"
SIZE_HEADER = "payload.size"
SHA256_HEADER = "payload.sha256"
DROPPED_HEADERS_HEADER = "payload.headers.dropped"
KEY_SIZE_HEADER = "payload.key.size"  # only when the key, too, was cut to its first KEPT_PREFIX_BYTES
DEFAULT_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes
KEPT_PREFIX_BYTES = 1024  # of a value too large to carry whole
_RECORD_OVERHEAD = 4096  # room for the record's framing, on top of key, value and headers

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


def dead_letter(
    record: SourceRecord, bad: BadMessage, group_id: str, client_id: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, object]:
    """Keyword arguments for ``Producer.produce`` to the dead-letter topic (topic not included): the record as
    it arrived, or a reference to it when that would not fit in ``max_bytes`` (see the module docstring)."""
    context = dead_letter_headers(record, bad, group_id, client_id)
    headers: list[tuple[str, bytes | None]] = [*record.headers, *context]
    budget = max_bytes - _RECORD_OVERHEAD
    if _size(record.key, record.value, headers) <= budget:
        return {"key": record.key, "value": record.value, "headers": headers}
    value = record.value or b""
    prefix = value[:KEPT_PREFIX_BYTES]
    reference = [
        (TRUNCATED_HEADER, b"true"),
        (SIZE_HEADER, str(len(value)).encode()),
        (SHA256_HEADER, hashlib.sha256(value).hexdigest().encode()),
    ]
    key = record.key
    if key is not None and len(key) > KEPT_PREFIX_BYTES:
        key = key[:KEPT_PREFIX_BYTES]
        reference.append((KEY_SIZE_HEADER, str(len(record.key or b"")).encode()))
    kept = list(record.headers)
    if _size(key, prefix, [*kept, *context, *reference]) > budget:
        kept = []
    reference.append((DROPPED_HEADERS_HEADER, str(len(record.headers) - len(kept)).encode()))
    return {"key": key, "value": prefix, "headers": [*kept, *context, *reference]}


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]) -> int:
    """Bytes of a record's key, value and headers."""
    return len(key or b"") + len(value or b"") + sum(len(name) + len(v or b"") for name, v in headers)
