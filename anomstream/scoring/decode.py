"""Columnar decoding of telemetry message values: a whole batch parsed with numpy, no Python per record.

Profiling the scorer showed :class:`anomstream.serde.TelemetryDecoder` (fastavro per record, then a dict per
record turned into columns) at about 20,000 records/s on this machine, ten times slower than everything
else in the batch. Records whose writer schema is the reader schema itself (what anomstream's producer
writes) have one layout: ``device_id`` string, ``event_time`` and ``seq`` varints, the ``channels`` map
(blocks of string key + 8-byte double), the ``label`` union. This module walks that layout for all records
at once: every step is a handful of numpy operations over the batch (varints decoded byte column by byte
column), so the cost per record is well under a microsecond.

It is a fast path, not a second decoder: any record it is not certain about (another writer schema, a
malformed varint, a key that is not one of the model's channels, a missing, non-finite or out-of-range
reading, a duplicate key, trailing bytes) is handed to :class:`~anomstream.serde.TelemetryDecoder`, which
decides whether it is good and, if not, why (the dead-letter reasons). Good records therefore decode to the same
values either way; ``tests/test_scoring_decode.py`` checks that against serde on valid and fuzzed input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka.schema_registry import SchemaRegistryClient

from anomstream.avro_batch import avro_string
from anomstream.serde import KEY_MISMATCH, MAGIC_BYTE, MAX_READING, BadMessage, DecodeResult, TelemetryDecoder
from anomstream.telemetry import NO_LABEL, TelemetryBatch

_MAX_VARINT_BYTES = 10


class ColumnarTelemetryDecoder:
    """Decodes batches of telemetry message values into a :class:`DecodeResult` (see the module docstring).

    Args:
        registry: confluent-kafka's registry client (writer schemas by id, through serde's cache).
        channels: the channels the model reads, in order; a record lacking one is a bad record.
    """

    def __init__(self, registry: SchemaRegistryClient, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self.fallback = TelemetryDecoder(registry, self.channels)
        self._keys = [np.frombuffer(avro_string(name), dtype=np.uint8) for name in self.channels]

    def decode(self, values: Sequence[bytes | None]) -> DecodeResult:
        """Decode message values; bad ones are reported in the result, never raised.

        Raises:
            KafkaClientError: the registry failed transiently (retriable): pause and decode again later.
        """
        n = len(values)
        if n == 0:
            return self.fallback.decode([])
        framed = _Frame.of(values)
        fast = framed.candidates & self._fast_schema_rows(framed)
        parsed = _parse(framed, np.flatnonzero(fast), self._keys)
        slow = np.flatnonzero(~np.isin(np.arange(n), parsed.index))
        if not len(slow):
            return DecodeResult(parsed.batch(self.channels), parsed.index, [])
        rest = self.fallback.decode([values[int(i)] for i in slow])
        return _merge(parsed, rest, slow, self.channels)

    def _fast_schema_rows(self, framed: _Frame) -> np.ndarray:
        """Rows framed with a schema id whose writer schema equals the reader schema."""
        same = np.zeros(len(framed.schema_id), dtype=bool)
        for schema_id in np.unique(framed.schema_id[framed.candidates]):
            writer = self.fallback.schemas.writer(int(schema_id))  # raises on a transient registry failure
            if not isinstance(writer, str) and writer[1]:
                same |= framed.schema_id == schema_id
        return same


@dataclass(frozen=True)
class _Frame:
    """All values in one buffer, with where each starts and ends and its wire-format schema id."""

    buf: np.ndarray
    start: np.ndarray
    end: np.ndarray
    schema_id: np.ndarray
    candidates: np.ndarray

    @classmethod
    def of(cls, values: Sequence[bytes | None]) -> _Frame:
        present = [v if v is not None else b"" for v in values]
        lengths = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
        end = np.cumsum(lengths)
        start = end - lengths
        # Padding lets fixed-width gathers near the end of the last value stay in bounds.
        buf = np.frombuffer(b"".join(present) + bytes(16), dtype=np.uint8)
        candidates = (lengths >= 6) & (buf[np.minimum(start, len(buf) - 1)] == MAGIC_BYTE)
        head = buf[start[:, None] + np.arange(1, 5)].astype(np.int64)
        schema_id = (head[:, 0] << 24) | (head[:, 1] << 16) | (head[:, 2] << 8) | head[:, 3]
        return cls(buf, start, end, schema_id, candidates)


@dataclass
class _Parsed:
    """Columns of the records the fast path decoded, and their positions in the input."""

    index: np.ndarray
    device_id: np.ndarray
    event_time_ms: np.ndarray
    seq: np.ndarray
    values: np.ndarray
    label: np.ndarray

    def batch(self, channels: tuple[str, ...]) -> TelemetryBatch:
        return TelemetryBatch(self.device_id, self.event_time_ms, self.seq, channels, self.values, self.label)


def _parse(framed: _Frame, rows: np.ndarray, keys: list[np.ndarray]) -> _Parsed:
    """Decode ``rows`` of ``framed``; rows that fail any check are left out of the result."""
    buf, end = framed.buf, framed.end[rows]
    pos = framed.start[rows] + 5
    ok = np.ones(len(rows), dtype=bool)
    device_id, pos = _strings(buf, pos, end, ok)
    event_time, pos = _varints(buf, pos, end, ok)
    seq, pos = _varints(buf, pos, end, ok)
    values, pos = _channel_map(buf, pos, end, ok, keys)
    label, pos = _optional_int(buf, pos, end, ok)
    ok &= (pos == end) & (np.abs(values) <= MAX_READING).all(axis=1)  # False for NaN: the slow path decides
    keep = np.flatnonzero(ok)
    return _Parsed(rows[keep], device_id[keep], event_time[keep], seq[keep], values[keep], label[keep])


def _varints(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zig-zag varints at ``pos``: (values, positions after them); clears ``ok`` where malformed."""
    value = np.zeros(len(pos), dtype=np.uint64)
    going = ok.copy()
    size = np.zeros(len(pos), dtype=np.int64)
    for k in range(_MAX_VARINT_BYTES):
        if not going.any():
            break
        byte = buf[np.minimum(pos + k, len(buf) - 1)]
        value[going] |= (byte[going] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        size[going] = k + 1
        going &= byte >= 0x80
    ok &= ~going & (pos + size <= end)
    signed = (value >> np.uint64(1)).astype(np.int64) ^ -(value & np.uint64(1)).astype(np.int64)
    return signed, pos + size


def _strings(buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Avro strings at ``pos`` as an object array of str (each distinct string decoded once)."""
    length, data = _varints(buf, pos, end, ok)
    ok &= (length >= 0) & (data + length <= end)
    length = np.where(ok, length, 0)
    width = int(length.max()) if len(length) else 0
    matrix = np.zeros((len(pos), width + 1), dtype=np.uint8)
    matrix[:, 0] = np.minimum(length, 255)  # distinguishes trailing zero bytes from padding
    columns = np.arange(width)
    inside = columns[None, :] < length[:, None]
    matrix[:, 1:] = np.where(inside, buf[np.minimum(data[:, None] + columns, len(buf) - 1)], 0)
    distinct, code = np.unique(matrix.view(f"V{width + 1}").ravel(), return_inverse=True)
    texts = np.empty(len(distinct), dtype=object)
    for i, raw in enumerate(distinct):
        encoded = bytes(raw)
        try:
            texts[i] = encoded[1 : 1 + encoded[0]].decode()
        except UnicodeDecodeError:
            texts[i] = None
    strings = texts[code.ravel()] if len(code) else np.zeros(0, dtype=object)
    ok &= (strings != None) & (length <= 255)  # noqa: E711 (elementwise comparison)
    return strings, data + length


def _channel_map(
    buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray, keys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``channels`` map at ``pos`` as an ``(n, C)`` matrix (NaN where a channel is absent).

    Blocks are read one entry at a time for all rows together: a row whose block is exhausted reads the
    next block count, a row at count 0 is done. Any key that is not a model channel, or seen twice, clears
    ``ok`` (the slow path then decides).
    """
    n = len(pos)
    values = np.full((n, len(keys)), np.nan)
    left = np.zeros(n, dtype=np.int64)  # entries left in the current block
    active = ok.copy()
    pos = pos.copy()
    for _ in range(4 * len(keys) + 4):  # at most one block count per entry, plus the final 0
        rows = np.flatnonzero(active)
        if not len(rows):
            break
        need_count = rows[left[rows] == 0]
        if len(need_count):
            _read_block_count(buf, pos, end, ok, active, left, need_count)
        rows = np.flatnonzero(active & (left > 0))
        if len(rows):
            _read_entry(buf, pos, end, ok, values, rows, keys)
            left[rows] -= 1
        active &= ok
    ok &= ~active  # still reading after the loop: more entries than channels
    return values, pos


def _read_block_count(
    buf: np.ndarray,
    pos: np.ndarray,
    end: np.ndarray,
    ok: np.ndarray,
    active: np.ndarray,
    left: np.ndarray,
    rows: np.ndarray,
) -> None:
    row_ok = ok[rows].copy()
    count, after = _varints(buf, pos[rows], end[rows], row_ok)
    negative = count < 0  # a negative count is followed by the block's size in bytes
    if negative.any():
        _, after_size = _varints(buf, after, end[rows], row_ok)
        after = np.where(negative, after_size, after)
    ok[rows] = row_ok
    pos[rows] = after
    left[rows] = np.abs(count)
    active[rows[count == 0]] = False


def _read_entry(
    buf: np.ndarray,
    pos: np.ndarray,
    end: np.ndarray,
    ok: np.ndarray,
    values: np.ndarray,
    rows: np.ndarray,
    keys: list[np.ndarray],
) -> None:
    """One ``string -> double`` entry for each of ``rows``; its key must be one of the model's channels."""
    start = pos[rows]
    words, doubles = _unaligned(buf, "<u8"), _unaligned(buf, "<f8")
    limit = len(words) - 1
    channel = np.full(len(rows), -1, dtype=np.int64)
    # Entries usually come in channel order: try the channel after the row's last one first.
    hint = np.argmax(np.isnan(values[rows]), axis=1)
    for c in [*np.unique(hint).tolist(), *range(len(keys))]:
        undecided = np.flatnonzero(channel < 0)
        if not len(undecided):
            break
        match = np.ones(len(undecided), dtype=bool)
        for offset, word, mask in _key_words(keys[c]):
            match &= (words[np.minimum(start[undecided] + offset, limit)] & mask) == word
        channel[undecided[match]] = c
    size = np.array([len(k) for k in keys], dtype=np.int64)[np.maximum(channel, 0)]
    value_at = start + size
    good = (channel >= 0) & (value_at + 8 <= end[rows])
    good &= np.isnan(values[rows, np.maximum(channel, 0)])  # a duplicate key: let the slow path decide
    reading = doubles[np.minimum(value_at, limit)]
    values[rows[good], channel[good]] = reading[good]
    ok[rows[~good]] = False
    pos[rows] = value_at + 8


def _unaligned(buf: np.ndarray, dtype: str) -> np.ndarray:
    """An 8-byte value starting at every byte offset of ``buf`` (a strided view, no copy)."""
    return np.ndarray((len(buf) - 7,), dtype=dtype, buffer=buf, strides=(1,))


def _key_words(key: np.ndarray) -> list[tuple[int, np.uint64, np.uint64]]:
    """``(byte offset, little-endian word, mask)`` triples that compare an encoded key 8 bytes at a time."""
    out = []
    for offset in range(0, len(key), 8):
        part = key[offset : offset + 8]
        padded = np.zeros(8, dtype=np.uint8)
        padded[: len(part)] = part
        mask = np.uint64((1 << (8 * len(part))) - 1)
        out.append((offset, padded.view("<u8")[0], mask))
    return out


def _optional_int(
    buf: np.ndarray, pos: np.ndarray, end: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The ``["null", "int"]`` label: ``NO_LABEL`` for null."""
    branch, pos = _varints(buf, pos, end, ok)
    ok &= (branch == 0) | (branch == 1)
    number_ok = ok & (branch == 1)
    number, after = _varints(buf, pos, end, number_ok)
    ok &= number_ok | (branch == 0)
    ok &= (number >= -128) & (number <= 127)
    label = np.where(branch == 1, number, NO_LABEL).astype(np.int8)
    return label, np.where(branch == 1, after, pos)


def _merge(parsed: _Parsed, rest: DecodeResult, slow: np.ndarray, channels: tuple[str, ...]) -> DecodeResult:
    """One result in input order from the fast rows and the slow path's result over ``slow``."""
    slow_good = slow[rest.index]
    index = np.concatenate([parsed.index, slow_good])
    order = np.argsort(index, kind="stable")
    batch = TelemetryBatch.concat([parsed.batch(channels), _as_channels(rest.batch, channels)]).take(order)
    bad = [
        BadMessage(int(slow[b.index]), b.reason, b.exception_class, b.message, b.schema_id) for b in rest.bad
    ]
    return DecodeResult(batch, index[order], bad, rest.extra_channels)


def _as_channels(batch: TelemetryBatch, channels: tuple[str, ...]) -> TelemetryBatch:
    """``batch`` with exactly ``channels`` (an empty slow-path batch may carry none)."""
    if batch.channels == channels:
        return batch
    values = np.full((len(batch), len(channels)), np.nan)
    for j, name in enumerate(channels):
        if name in batch.channels:
            values[:, j] = batch.values[:, batch.channels.index(name)]
    return TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, channels, values, batch.label)


def reject_foreign_keys(result: DecodeResult, keys: Sequence[bytes | None]) -> DecodeResult:
    """``result`` with every record whose message key is not its device id moved to the bad ones.

    The key is the device id (docs/design.md) so that a device's readings share one partition, hence one scorer
    and one history. A reading keyed otherwise (no key, an empty one, another device's) lands where its
    device's history is not: it would be scored without that history and left out of it, so that neither it
    nor the device's next readings would score as offline. It is a ``key-mismatch`` dead letter instead.

    Args:
        result: what the message values decoded to.
        keys: the messages' keys, in the order of the values that were decoded.
    """
    if not len(result.index):
        return result
    codes, devices = pd.factorize(result.batch.device_id)
    expected = np.array([str(device).encode() for device in devices], dtype=object)[codes]
    got = np.array(keys, dtype=object)[result.index]
    foreign = np.flatnonzero(got != expected)
    if not len(foreign):
        return result
    rejected = [
        BadMessage(int(result.index[row]), KEY_MISMATCH, "ValueError",
                   f"key {got[row]!r} is not the device id {result.batch.device_id[row]!r}: key each reading by "
                   "its device id, so that a device stays on one partition")  # fmt: skip
        for row in foreign.tolist()
    ]
    keep = np.ones(len(result.index), dtype=bool)
    keep[foreign] = False
    bad = sorted([*result.bad, *rejected], key=lambda b: b.index)
    return DecodeResult(result.batch.take(keep), result.index[keep], bad, result.extra_channels)
