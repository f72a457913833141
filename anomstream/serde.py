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
from anomstream.telemetry import NO_LABEL, SCORED_BY_GLOBAL, AnomalyColumns, TelemetryBatch

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
MAGIC_BYTE = 0
BAD_MAGIC = "bad-magic"
UNDECODABLE = "undecodable"
UNKNOWN_SCHEMA = "unknown-schema"
MISSING_CHANNEL = "missing-channel"
NON_FINITE = "non-finite"
OUT_OF_RANGE = "out-of-range"
KEY_MISMATCH = "key-mismatch"  # found by the scorer (message keys are not serde's business)
REASONS = (BAD_MAGIC, UNDECODABLE, UNKNOWN_SCHEMA, MISSING_CHANNEL, NON_FINITE, OUT_OF_RANGE, KEY_MISMATCH)
# Largest usable reading magnitude. No measurement comes near it, and below it the feature arithmetic stays
# finite whatever the training statistics: standardised twice against spreads floored at 1e-6, a reading
# stays within float32 (which the detectors compute in), and its square within float64 (rolling statistics).
# Beyond it a finite reading overflows them and turns its device's rolling features to NaN for a window.
MAX_READING = 1e20
_NOT_FOUND_CODES = {40401, 40403}  # subject not found, schema not found
_UNKNOWN_ID_RETRY_S = 60.0  # how long an id the registry does not know is remembered as unknown


def load_schema(name: str) -> str:
    """The text of ``schemas/<name>.avsc`` (``telemetry``, ``anomaly`` or ``incident``)."""
    return (SCHEMA_DIR / f"{name}.avsc").read_text()


def register_schema(registry: SchemaRegistryClient, subject: str, schema_str: str) -> int:
    """Register ``schema_str`` under ``subject`` (a no-op when already there) and return its id.

    Raises:
        KafkaClientError: the registry is unreachable or refuses the schema (e.g. incompatible).
    """
    try:
        return int(registry.register_schema(subject, Schema(schema_str, "AVRO")))
    except Exception as error:  # the registry's refusal, or a network-level failure (httpx errors, timeouts)
        raise registry_failure(f"registering the schema under subject {subject!r}", error) from error


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
        avro_batch.strings(
            np.full(n, SCORED_BY_GLOBAL, dtype=object) if anomalies.scored_by is None else anomalies.scored_by
        ),
        *_channel_map(anomalies.channels, anomalies.observed, n),
        *_channel_map(anomalies.channels, anomalies.expected, n),
    ]
    return avro_batch.join_rows(pieces, n)


def _channel_map(channels: tuple[str, ...], values: np.ndarray | None, n: int) -> list[avro_batch.Piece]:
    """A per-channel ``map<double>`` (NaN entries left out), or an empty map for every row."""
    if values is None:
        return [avro_batch.constant(b"\x00")]
    return avro_batch.double_map(channels, np.asarray(values, dtype=np.float64))


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


class IncidentEncoder:
    """Encodes incident events (:mod:`anomstream.incidents`) for one topic, the incident schema registered once
    under ``<topic>-value``. Incidents are few: each is written by fastavro on its own.

    Args:
        registry: confluent-kafka's registry client.
        topic: the incident topic.
    """

    def __init__(self, registry: SchemaRegistryClient, topic: str) -> None:
        self.subject = f"{topic}-value"
        text = load_schema("incident")
        self.schema_id = register_schema(registry, self.subject, text)
        self._schema = fastavro.parse_schema(json.loads(text))

    def encode(self, records: list[dict[str, Any]]) -> list[bytes]:
        """Confluent-framed message values, one per record."""
        values = []
        for record in records:
            body = io.BytesIO()
            body.write(wire_header(self.schema_id))
            fastavro.schemaless_writer(body, self._schema, record)
            values.append(body.getvalue())
        return values


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
            raise registry_failure(f"looking up schema id {schema_id}", error) from error
        except Exception as error:  # network-level failure after the client's own retries
            raise registry_failure(f"looking up schema id {schema_id}", error) from error
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

        Records written with the reader's own schema are decoded column-wise for the whole list at once;
        others (an evolved writer schema) and any record the fast path cannot read go through fastavro one
        by one, which also says precisely what is wrong with a broken one.

        Raises:
            KafkaClientError: the registry failed transiently (retriable): pause and decode again later.
        """
        decoded = _Decoded()
        bad: list[BadMessage] = []
        buffer, start, end = avro_batch.concatenate(values)  # type: ignore[arg-type]
        framed = (end - start >= 5) & (buffer[start] == MAGIC_BYTE)
        for i in np.flatnonzero(~framed).tolist():
            value = values[i]
            what = "no value" if value is None else f"{len(value)} bytes starting {bytes(value[:5]).hex()}"
            bad.append(BadMessage(i, BAD_MAGIC, "ValueError", f"not Confluent wire format (magic 0): {what}"))
        header = buffer[start[:, None] + np.arange(1, 5)[None, :]].astype(np.int64)
        schema_ids = (header[:, 0] << 24) | (header[:, 1] << 16) | (header[:, 2] << 8) | header[:, 3]
        for schema_id in np.unique(schema_ids[framed]).tolist():
            members = np.flatnonzero(framed & (schema_ids == schema_id)).tolist()
            writer = self.schemas.writer(schema_id)
            if isinstance(writer, str):
                for i in members:
                    bad.append(BadMessage(i, UNKNOWN_SCHEMA, "SchemaRegistryError", writer, schema_id))
                continue
            if writer[1]:  # same schema as the reader: the column-wise path
                members = _read_columns(buffer, start, end, np.array(members), decoded).tolist()
            for i in members:
                try:
                    decoded.add_record(i, _read_body(values[i] or b"", writer, self.schemas.reader))
                except Exception as error:  # fastavro raises many types on corrupt input: all "undecodable"
                    why = f"schema id {schema_id}: {error}"
                    bad.append(BadMessage(i, UNDECODABLE, type(error).__name__, why, schema_id))
        return decoded.result(bad, self.channels, self.allow_missing)


def _read_columns(
    buffer: np.ndarray, start: np.ndarray, end: np.ndarray, members: np.ndarray, decoded: _Decoded
) -> np.ndarray:
    """Decode ``members`` column-wise (telemetry.avsc layout); returns those it could not read."""
    cursor = avro_batch.Cursor(buffer, start[members] + 5, end[members], np.ones(len(members), dtype=bool))
    device_codes, devices = cursor.strings()
    event_time_ms = cursor.varints()
    seq = cursor.varints()
    count = cursor.varints()
    cursor.ok &= count >= 0  # a negative count starts a sized block: rare, left to fastavro
    cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for k in range(int(count[cursor.ok].max(initial=0))):
        active = cursor.ok & (count > k)
        key_codes, keys = cursor.strings(active)
        readings = cursor.doubles(active)
        channel = np.array([decoded.code(key) for key in keys] + [-1], dtype=np.int64)[key_codes]
        rows = np.flatnonzero(active & cursor.ok)
        cells.append((rows, channel[rows], readings[rows]))
    block_end = cursor.varints(count > 0)
    cursor.ok &= ~((count > 0) & (block_end != 0))  # a second block: left to fastavro
    branch = cursor.varints()
    labelled = branch == 1
    label = np.where(labelled, cursor.varints(labelled), NO_LABEL)
    cursor.ok &= ((branch == 0) | labelled) & (cursor.position == cursor.end)
    cursor.ok &= (label >= -128) & (label <= 127)  # TelemetryBatch labels are int8
    good = cursor.ok
    decoded.add_columns(
        index=members[good],
        device_id=np.array(devices + [""], dtype=object)[device_codes[good]],
        event_time_ms=event_time_ms[good],
        seq=seq[good],
        label=label[good],
        cells=[_good_cells(members, good, *cell) for cell in cells],
    )
    return members[~good]


def _good_cells(members: np.ndarray, good: np.ndarray, *cells: np.ndarray) -> _Cells:
    """The readings of messages that decoded fully, indexed by input position."""
    rows, codes, values = cells
    keep = good[rows]
    return members[rows[keep]], codes[keep], values[keep]


def _read_body(value: bytes, writer: tuple[Any, bool], reader: Any) -> dict[str, Any]:
    body = io.BytesIO(value)
    body.seek(5)
    writer_schema, same_as_reader = writer
    record = fastavro.schemaless_reader(body, writer_schema, None if same_as_reader else reader)
    if body.tell() != len(value):
        raise RecordDecodeError(f"{len(value) - body.tell()} bytes left over after the record")
    if not isinstance(record, dict):
        raise RecordDecodeError(f"decoded a {type(record).__name__}, not a record")
    if record["label"] is not None and not -128 <= record["label"] <= 127:
        raise RecordDecodeError(f"label {record['label']} out of range")
    return record


_Cells = tuple[np.ndarray, np.ndarray, np.ndarray]  # (input index, channel code, reading) per reading


class _Decoded:
    """Readings decoded so far (column-wise and record by record), assembled into a batch at the end."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self.columns: dict[str, list[np.ndarray]] = {k: [] for k in _ROW_COLUMNS}
        self.cells: list[_Cells] = []

    def code(self, channel: str) -> int:
        """The channel's number among all channels seen."""
        return self.names.setdefault(channel, len(self.names))

    def add_columns(self, cells: list[_Cells], **columns: np.ndarray) -> None:
        """Rows decoded column-wise; ``cells`` are ``(input index, channel code, reading)`` triples."""
        for name, column in columns.items():
            self.columns[name].append(column)
        self.cells += cells

    def add_record(self, index: int, record: dict[str, Any]) -> None:
        """One record decoded by fastavro."""
        label = NO_LABEL if record["label"] is None else record["label"]
        self.add_columns(
            index=np.array([index]),
            device_id=np.array([record["device_id"]], dtype=object),
            event_time_ms=np.array([record["event_time"]]),
            seq=np.array([record["seq"]]),
            label=np.array([label]),
            cells=[(
                np.full(len(record["channels"]), index),
                np.array([self.code(name) for name in record["channels"]], dtype=np.int64),
                np.array(list(record["channels"].values()), dtype=np.float64),
            )],
        )

    def result(
        self, bad: list[BadMessage], channels: tuple[str, ...] | None, allow_missing: bool
    ) -> DecodeResult:
        """The batch in input order, after the per-record channel checks."""
        joined = {
            k: np.concatenate(v) if v else np.zeros(0, dtype=_ROW_COLUMNS[k]) for k, v in self.columns.items()
        }
        order = np.argsort(joined["index"], kind="stable")
        joined = {k: v[order] for k, v in joined.items()}
        index = joined["index"]
        cell_index, cell_code, cell_value = (
            np.concatenate([c[j] for c in self.cells]) if self.cells else np.zeros(0) for j in range(3)
        )
        contiguous = len(index) > 0 and index[-1] == len(index) - 1  # every message good, the usual case
        cell_row = cell_index.astype(np.int64) if contiguous else np.searchsorted(index, cell_index)
        cell_code = cell_code.astype(np.int64)
        names, column_of = self._columns(channels, cell_row, cell_code)
        column = column_of[cell_code] if len(cell_code) else np.zeros(0, dtype=np.int64)
        kept = column >= 0
        values = np.full((len(index), len(names)), np.nan)
        present = np.zeros(values.shape, dtype=bool)
        values[cell_row[kept], column[kept]] = cell_value[kept]
        present[cell_row[kept], column[kept]] = True
        non_finite_rows = cell_row[kept & ~np.isfinite(cell_value)]
        huge_rows = cell_row[kept & np.isfinite(cell_value) & (np.abs(cell_value) > MAX_READING)]
        problems = self._problems(names, present, non_finite_rows, huge_rows, channels, allow_missing)
        devices = joined["device_id"]
        for row, (reason, why) in problems.items():
            bad.append(BadMessage(int(index[row]), reason, "ValueError", f"{devices[row]}: {why}"))
        keep = np.ones(len(index), dtype=bool)
        keep[list(problems)] = False
        bad.sort(key=lambda b: b.index)
        extra = frozenset(name for name, code in self.names.items() if column_of[code] < 0)
        batch = TelemetryBatch(
            device_id=devices[keep],
            event_time_ms=joined["event_time_ms"][keep].astype(np.int64),
            seq=joined["seq"][keep].astype(np.int64),
            channels=names,
            values=values[keep],
            label=joined["label"][keep].astype(np.int8),
        )
        return DecodeResult(batch, index[keep].astype(np.int64), bad, extra)

    def _columns(
        self, channels: tuple[str, ...] | None, cell_row: np.ndarray, cell_code: np.ndarray
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """The batch's channel names and, per channel code, its column (-1: not wanted)."""
        by_code = list(self.names)
        if channels is not None:
            wanted = {name: j for j, name in enumerate(channels)}
            return channels, np.array([wanted.get(name, -1) for name in by_code] + [-1], dtype=np.int64)
        first_row = np.full(len(by_code), np.iinfo(np.int64).max)
        np.minimum.at(first_row, cell_code, cell_row)
        order = sorted(range(len(by_code)), key=lambda code: (first_row[code], code))  # first seen first
        column_of = np.full(len(by_code) + 1, -1, dtype=np.int64)
        column_of[order] = np.arange(len(order))
        return tuple(by_code[code] for code in order), column_of

    @staticmethod
    def _problems(
        names: tuple[str, ...],
        present: np.ndarray,
        non_finite_rows: np.ndarray,
        huge_rows: np.ndarray,
        channels: tuple[str, ...] | None,
        allow_missing: bool,
    ) -> dict[int, tuple[str, str]]:
        problems: dict[int, tuple[str, str]] = {}
        if channels is not None and not allow_missing:
            for row in np.flatnonzero(~present.all(axis=1)).tolist():
                missing = [name for name, here in zip(names, present[row], strict=True) if not here]
                problems[row] = (MISSING_CHANNEL, f"channels {missing} missing")
        for row in np.unique(non_finite_rows).tolist():
            problems.setdefault(row, (NON_FINITE, "non-finite readings"))
        for row in np.unique(huge_rows).tolist():
            problems.setdefault(row, (OUT_OF_RANGE, f"readings beyond +-{MAX_READING:g}: not a measurement"))
        return problems


_ROW_COLUMNS = {
    "index": np.int64,
    "device_id": object,
    "event_time_ms": np.int64,
    "seq": np.int64,
    "label": np.int64,
}


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


def registry_failure(doing: str, error: Exception) -> KafkaClientError:
    """A failed registry call as our error: an HTTP error is retriable when the server failed (5xx) or asked
    to slow down (408, 429); any other exception is the network's (httpx transport errors, timeouts after the
    client's own retries), and retriable."""
    if not isinstance(error, SchemaRegistryError):
        why = f"schema registry unreachable while {doing}: {error}"
        return KafkaClientError(why, "REGISTRY_UNAVAILABLE", retriable=True)
    transient = error.http_status_code >= 500 or error.http_status_code in (408, 429)
    return KafkaClientError(
        f"schema registry failed {doing}: {error}",
        code=f"REGISTRY_HTTP_{error.http_status_code}",
        retriable=transient,
    )
