"""Avro serde in the Confluent wire format (magic 0, 4-byte big-endian schema id, Avro body).

Encoding is columnar (:mod:`anomstream.avro_batch`): a whole TelemetryBatch becomes a list of message
values in one numpy pass, readable by confluent-kafka's own ``AvroDeserializer``. The schema is registered
(or looked up) once per subject through confluent-kafka's ``SchemaRegistryClient``.

Decoding works on a list of message values and never fails the whole batch for one bad record: each bad
message is reported with a machine-readable reason (``REASONS``) for the dead-letter topic. A registry that
cannot be reached, times out or answers 5xx is not the record's fault: that raises a retriable
:class:`~anomstream.errors.KafkaClientError` so the caller pauses and retries.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from anomstream import avro_batch
from anomstream.errors import KafkaClientError
from anomstream.telemetry import NO_LABEL, TelemetryBatch

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC_BYTE = 0
BAD_MAGIC = "bad-magic"
UNDECODABLE = "undecodable"
UNKNOWN_SCHEMA = "unknown-schema"
MISSING_CHANNEL = "missing-channel"
NON_FINITE = "non-finite"
REASONS = (BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA, MISSING_CHANNEL, NON_FINITE)
_NOT_FOUND_CODES = {40401, 40403}  # subject not found, schema not found
_UNKNOWN_ID_RETRY_S = 60.0  # how long an id the registry does not know is remembered as unknown


def load_schema(name: str) -> str:
    """The text of ``schemas/<name>.avsc`` (``telemetry`` or ``anomaly``)."""
    return (SCHEMA_DIR / f"{name}.avsc").read_text()


def register_schema(registry: SchemaRegistryClient, subject: str, schema_str: str) -> int:
    """Register ``schema_str`` under ``subject`` (a no-op when already there) and return its id.

    Raises:
        KafkaClientError: the registry is unreachable or refuses the schema (e.g. incompatible).
    """
    try:
        return int(registry.register_schema(subject, Schema(schema_str, "AVRO")))
    except SchemaRegistryError as error:
        raise _registry_error(f"registering the schema under subject {subject!r}", error) from error
    except Exception as error:  # network-level failure (httpx transport errors, timeouts)
        raise KafkaClientError(
            f"schema registry unreachable while registering subject {subject!r}: {error}",
            code="REGISTRY_UNAVAILABLE",
            retriable=True,
        ) from error


def wire_header(schema_id: int) -> bytes:
    """The 5-byte Confluent wire-format header for ``schema_id``."""
    return struct.pack(">bI", MAGIC_BYTE, schema_id)


def encode_telemetry(batch: TelemetryBatch, schema_id: int) -> list[bytes]:
    """Encode every reading of ``batch`` as a Confluent-framed ``Telemetry`` record.

    NaN readings are left out of the ``channels`` map (a missing reading) and ``NO_LABEL`` becomes a null
    label. The layout follows ``schemas/telemetry.avsc`` field by field.

    Args:
        batch: the readings.
        schema_id: the registry id of ``telemetry.avsc``.

    Returns:
        One message value per row, in row order.
    """
    label = batch.label.astype(np.int64)
    pieces = [
        avro_batch.constant(wire_header(schema_id)),
        avro_batch.strings(batch.device_id),
        avro_batch.zigzag_varints(batch.event_time_ms),
        avro_batch.zigzag_varints(batch.seq),
        *avro_batch.double_map(batch.channels, batch.values),
        *avro_batch.optional_ints(label, label == NO_LABEL),
    ]
    return avro_batch.join_rows(pieces, len(batch))


@dataclass(frozen=True)
class AnomalyColumns:
    """Flagged readings, one row each, for :func:`encode_anomalies` (fields of ``schemas/anomaly.avsc``).

    Per-row columns are arrays of one length ``n``; ``threshold`` and ``scored_at_ms`` may also be scalars.

    Attributes:
        device_id: ``(n,)`` object array of str.
        event_time_ms: ``(n,)`` int64 event time of the reading.
        seq: ``(n,)`` int64 the reading's sequence number.
        score: ``(n,)`` float64, higher is more anomalous.
        threshold: the calibrated threshold (scalar or ``(n,)``).
        model: model name.
        model_version: model version.
        channels: names of the contribution columns.
        contributions: ``(n, C)`` float64 per-channel share of the score; NaN entries are left out.
        source_topic: topic the readings came from.
        source_partition: ``(n,)`` int partition of each reading.
        source_offset: ``(n,)`` int64 offset of each reading.
        label: ``(n,)`` int8 ground truth of the input, ``NO_LABEL`` for none.
        scored_at_ms: when the scorer flagged them (scalar or ``(n,)``, epoch ms).
    """

    device_id: np.ndarray
    event_time_ms: np.ndarray
    seq: np.ndarray
    score: np.ndarray
    threshold: np.ndarray | float
    model: str
    model_version: int
    channels: tuple[str, ...]
    contributions: np.ndarray
    source_topic: str
    source_partition: np.ndarray
    source_offset: np.ndarray
    label: np.ndarray
    scored_at_ms: np.ndarray | int

    def __len__(self) -> int:
        return len(self.device_id)


def encode_anomalies(anomalies: AnomalyColumns, schema_id: int) -> list[bytes]:
    """Encode flagged readings as Confluent-framed ``Anomaly`` records (``schemas/anomaly.avsc``).

    Args:
        anomalies: the rows to encode.
        schema_id: the registry id of ``anomaly.avsc``.

    Returns:
        One message value per row, in row order.
    """
    n = len(anomalies)
    label = np.asarray(anomalies.label, dtype=np.int64)
    pieces = [
        avro_batch.constant(wire_header(schema_id)),
        avro_batch.strings(anomalies.device_id),
        avro_batch.zigzag_varints(anomalies.event_time_ms),
        avro_batch.zigzag_varints(anomalies.seq),
        avro_batch.doubles(anomalies.score),
        avro_batch.doubles(np.broadcast_to(np.asarray(anomalies.threshold, dtype=np.float64), (n,))),
        avro_batch.constant(avro_batch.avro_string(anomalies.model)),
        avro_batch.constant(avro_batch.varint_bytes(anomalies.model_version)),
        *avro_batch.double_map(anomalies.channels, np.asarray(anomalies.contributions, dtype=np.float64)),
        avro_batch.constant(avro_batch.avro_string(anomalies.source_topic)),
        avro_batch.zigzag_varints(anomalies.source_partition),
        avro_batch.zigzag_varints(anomalies.source_offset),
        *avro_batch.optional_ints(label, label == NO_LABEL),
        avro_batch.zigzag_varints(np.broadcast_to(np.asarray(anomalies.scored_at_ms, dtype=np.int64), (n,))),
    ]
    return avro_batch.join_rows(pieces, n)


class TelemetryEncoder:
    """Encodes TelemetryBatch chunks for one topic, the schema registered once under ``<topic>-value``.

    Args:
        registry: confluent-kafka's registry client.
        topic: the topic the values go to (subject name by Confluent's TopicNameStrategy).
    """

    def __init__(self, registry: SchemaRegistryClient, topic: str) -> None:
        self.subject = f"{topic}-value"
        self.schema_id = register_schema(registry, self.subject, load_schema("telemetry"))

    def encode(self, batch: TelemetryBatch) -> list[bytes]:
        """Message values for every row of ``batch`` (see :func:`encode_telemetry`)."""
        return encode_telemetry(batch, self.schema_id)


class AnomalyEncoder:
    """Encodes flagged readings for one topic, the anomaly schema registered once under ``<topic>-value``.

    Args:
        registry: confluent-kafka's registry client.
        topic: the anomaly topic.
    """

    def __init__(self, registry: SchemaRegistryClient, topic: str) -> None:
        self.subject = f"{topic}-value"
        self.schema_id = register_schema(registry, self.subject, load_schema("anomaly"))

    def encode(self, anomalies: AnomalyColumns) -> list[bytes]:
        """Message values for every row of ``anomalies`` (see :func:`encode_anomalies`)."""
        return encode_anomalies(anomalies, self.schema_id)


@dataclass(frozen=True)
class BadMessage:
    """A message that cannot be decoded or used, with why (for the dead-letter topic's headers).

    Attributes:
        index: position of the message in the list given to ``decode``.
        reason: one of ``REASONS``.
        exception_class: the exception's class name (Kafka Connect's ``exception.class.name``).
        message: what was wrong, for people (Kafka Connect's ``exception.message``).
        schema_id: the id in the wire header, when there was one.
    """

    index: int
    reason: str
    exception_class: str
    message: str
    schema_id: int | None = None


@dataclass(frozen=True)
class DecodeResult:
    """What a batch of message values decoded to.

    Attributes:
        batch: the good records, in input order.
        index: ``(len(batch),)`` int64 position of each good record in the input list.
        bad: the messages that could not be used, in input order.
        extra_channels: channels seen in good records but not asked for (dropped), by name.
    """

    batch: TelemetryBatch
    index: np.ndarray
    bad: list[BadMessage]
    extra_channels: frozenset[str] = field(default_factory=frozenset)


class RecordDecodeError(ValueError):
    """A message's bytes are not a record of its writer schema (short, trailing bytes, bad encoding)."""


class SchemaResolver:
    """Writer schemas by id from the registry, parsed once and cached; unknown ids remembered briefly.

    Args:
        registry: confluent-kafka's registry client.
        reader_schema: the schema records are read as (JSON text); writers may be older or newer versions.
    """

    def __init__(self, registry: SchemaRegistryClient, reader_schema: str) -> None:
        self._registry = registry
        self.reader = _parse(json.loads(reader_schema))
        self._canonical_reader = _canonical(json.loads(reader_schema))
        self._writers: dict[int, Any] = {}
        self._unknown: dict[int, tuple[float, str]] = {}

    def writer(self, schema_id: int) -> tuple[Any, bool] | str:
        """``(parsed writer schema, same as reader)`` for ``schema_id``, or why it is unusable.

        Raises:
            KafkaClientError: the registry is unreachable, times out or fails (retriable), or refuses
                access (not retriable); never a reason to dead-letter a record.
        """
        if schema_id in self._writers:
            return self._writers[schema_id]  # type: ignore[no-any-return]
        known_unknown = self._unknown.get(schema_id)
        if known_unknown and time.monotonic() - known_unknown[0] < _UNKNOWN_ID_RETRY_S:
            return known_unknown[1]
        try:
            schema = self._registry.get_schema(schema_id)
        except SchemaRegistryError as error:
            if error.http_status_code == 404 or error.error_code in _NOT_FOUND_CODES:
                why = f"schema id {schema_id} is not in the registry: {error.error_message}"
                self._unknown[schema_id] = (time.monotonic(), why)
                return why
            raise _registry_error(f"looking up schema id {schema_id}", error) from error
        except Exception as error:  # network-level failure after the client's own retries
            raise KafkaClientError(
                f"schema registry unreachable while looking up schema id {schema_id}: {error}",
                code="REGISTRY_UNAVAILABLE",
                retriable=True,
            ) from error
        if (schema.schema_type or "AVRO") != "AVRO" or not schema.schema_str:
            why = f"schema id {schema_id} is a {schema.schema_type} schema, not Avro"
            self._unknown[schema_id] = (time.monotonic(), why)
            return why
        writer_json = json.loads(schema.schema_str)
        entry = (_parse(writer_json), _canonical(writer_json) == self._canonical_reader)
        self._writers[schema_id] = entry
        return entry


class TelemetryDecoder:
    """Decodes lists of telemetry message values into TelemetryBatch results.

    Args:
        registry: confluent-kafka's registry client.
        channels: the channels wanted, in order (a model's inputs). A record lacking one is bad
            (``missing-channel``) unless ``allow_missing``; other channels are dropped and listed in
            ``extra_channels``. ``None`` keeps every channel seen, first seen first, NaN where absent.
        allow_missing: with ``channels``, let a missing reading be NaN instead of a bad record.
        reader_schema: the schema to read as; defaults to ``schemas/telemetry.avsc``.
    """

    def __init__(
        self,
        registry: SchemaRegistryClient,
        channels: Sequence[str] | None = None,
        *,
        allow_missing: bool = False,
        reader_schema: str | None = None,
    ) -> None:
        self.schemas = SchemaResolver(registry, reader_schema or load_schema("telemetry"))
        self.channels = tuple(channels) if channels is not None else None
        self.allow_missing = allow_missing

    def decode(self, values: Sequence[bytes | None]) -> DecodeResult:
        """Decode message values; bad ones are reported in the result, never raised.

        Raises:
            KafkaClientError: the registry failed transiently (retriable): pause and decode again later.
        """
        records, bad = decode_records(self.schemas, values)
        return _to_batch(records, bad, self.channels, self.allow_missing)


def decode_records(
    schemas: SchemaResolver, values: Sequence[bytes | None]
) -> tuple[list[tuple[int, dict[str, Any]]], list[BadMessage]]:
    """Decode framed Avro values to ``(input index, record dict)`` pairs plus the bad messages.

    Raises:
        KafkaClientError: the registry failed transiently (see :meth:`SchemaResolver.writer`).
    """
    records: list[tuple[int, dict[str, Any]]] = []
    bad: list[BadMessage] = []
    for i, value in enumerate(values):
        if value is None or len(value) < 5 or value[0] != MAGIC_BYTE:
            what = "no value" if value is None else f"{len(value)} bytes starting {bytes(value[:5]).hex()}"
            bad.append(BadMessage(i, BAD_MAGIC, "ValueError", f"not Confluent wire format (magic 0): {what}"))
            continue
        schema_id = int.from_bytes(value[1:5], "big")
        writer = schemas.writer(schema_id)
        if isinstance(writer, str):
            bad.append(BadMessage(i, UNKNOWN_SCHEMA, "SchemaRegistryError", writer, schema_id))
            continue
        try:
            records.append((i, _read_body(value, writer, schemas.reader)))
        except Exception as error:  # fastavro raises many types on corrupt input; all mean "undecodable"
            message = f"schema id {schema_id}: {error}"
            bad.append(BadMessage(i, UNDECODABLE, type(error).__name__, message, schema_id))
    return records, bad


def _read_body(value: bytes, writer: tuple[Any, bool], reader: Any) -> dict[str, Any]:
    body = io.BytesIO(value)
    body.seek(5)
    writer_schema, same_as_reader = writer
    record = fastavro.schemaless_reader(body, writer_schema, None if same_as_reader else reader)
    if body.tell() != len(value):
        raise RecordDecodeError(f"{len(value) - body.tell()} bytes left over after the record")
    if not isinstance(record, dict):
        raise RecordDecodeError(f"decoded a {type(record).__name__}, not a record")
    return record


def _to_batch(
    records: list[tuple[int, dict[str, Any]]],
    bad: list[BadMessage],
    channels: tuple[str, ...] | None,
    allow_missing: bool,
) -> DecodeResult:
    """Columns from decoded records, checking channels and finiteness per record."""
    names = channels if channels is not None else _channels_seen(records)
    position = {name: j for j, name in enumerate(names)}
    values = np.full((len(records), len(names)), np.nan)
    keep = np.ones(len(records), dtype=bool)
    extra: set[str] = set()
    for row, (i, record) in enumerate(records):
        readings = record["channels"]
        for name, reading in readings.items():
            j = position.get(name)
            if j is None:
                extra.add(name)
            else:
                values[row, j] = reading
        problem = _channel_problem(readings, names, channels is not None and not allow_missing)
        if problem:
            bad.append(BadMessage(i, problem[0], "ValueError", f"{record['device_id']}: {problem[1]}"))
            keep[row] = False
    kept = [r for r, k in zip(records, keep, strict=True) if k]
    batch = TelemetryBatch(
        device_id=np.array([r["device_id"] for _, r in kept], dtype=object),
        event_time_ms=np.array([r["event_time"] for _, r in kept], dtype=np.int64),
        seq=np.array([r["seq"] for _, r in kept], dtype=np.int64),
        channels=names,
        values=values[keep],
        label=np.array([NO_LABEL if r["label"] is None else r["label"] for _, r in kept], dtype=np.int8),
    )
    bad.sort(key=lambda b: b.index)
    return DecodeResult(batch, np.array([i for i, _ in kept], dtype=np.int64), bad, frozenset(extra))


def _channel_problem(
    readings: dict[str, float], names: tuple[str, ...], require_all: bool
) -> tuple[str, str] | None:
    if require_all:
        missing = [name for name in names if name not in readings]
        if missing:
            return MISSING_CHANNEL, f"channels {missing} missing"
    non_finite = [name for name, reading in readings.items() if not math.isfinite(reading)]
    if non_finite:
        return NON_FINITE, f"non-finite readings in {non_finite}"
    return None


def _channels_seen(records: list[tuple[int, dict[str, Any]]]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for _, record in records:
        for name in record["channels"]:
            seen.setdefault(name, None)
    return tuple(seen)


def _without_logical_types(schema: Any) -> Any:
    """The schema with ``logicalType`` removed, so timestamps decode to their exact integer millis."""
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _parse(schema_json: Any) -> Any:
    return fastavro.parse_schema(_without_logical_types(schema_json))


def _canonical(schema_json: Any) -> str:
    return str(fastavro.schema.to_parsing_canonical_form(schema_json))


def _registry_error(doing: str, error: SchemaRegistryError) -> KafkaClientError:
    transient = error.http_status_code >= 500 or error.http_status_code in (408, 429)
    return KafkaClientError(
        f"schema registry failed {doing}: {error}",
        code=f"REGISTRY_HTTP_{error.http_status_code}",
        retriable=transient,
    )
