"""Reading a bounded stretch of the telemetry topic: fixed offset ranges per partition, decoded into one batch.

How much is read never depends on timing: the ranges are fixed before the first fetch, from the partitions'
watermarks at that moment and, for an event-time start, ``offsets_for_times``. The start offset it gives
(the first record stamped at or after the start) is a safe lower bound for event time as long as a record's
Kafka timestamp is not earlier than its event time, which holds both for producers that stamp records
with their event time and for those that leave the producer's clock time (replayed history); a slack of an
hour covers device clocks running ahead. The end is the high watermark captured at start; the caller
filters rows by event time. Reading stops by itself when every partition's position reached its end, and
gives up with an error when nothing moves for a while.

The decoded rows come back grouped by device (devices in sorted order), each device's rows in ``seq`` order
(then partition and offset), with each row's partition and offset: a deterministic order, whatever the
interleaving of partitions in the fetches.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError
from anomstream.kafka_config import consumer_config, registry_client, wrap_kafka_error
from anomstream.serde import TelemetryDecoder
from anomstream.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

# Devices whose clocks run ahead of the producer's host stamp records earlier than their event time; starting
# this much before the window keeps them in (rows before the window are dropped by event time anyway).
START_SLACK_MS = 3_600_000
FETCH_MESSAGES = 10_000  # messages per consume() call: one decode call each
# Large fetches: the reader wants throughput, and ends are fixed so over-fetching past them costs little.
READER_OVERRIDES = {
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760,
    "queued.max.messages.kbytes": 262_144,
    "enable.partition.eof": False,
}


@dataclass(frozen=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition to read."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


@dataclass
class TopicRead:
    """What a read returned.

    Attributes:
        topic: the topic read.
        batch: the good records, grouped by device (sorted ids), each device's rows in ``seq`` order.
        partition: ``(n,)`` partition of each row of ``batch``.
        offset: ``(n,)`` offset of each row of ``batch``.
        ranges: the offset ranges read.
        bad: undecodable or unusable records skipped, by reason.
        elapsed_s: wall time of the read.
    """

    topic: str
    batch: TelemetryBatch
    partition: np.ndarray
    offset: np.ndarray
    ranges: list[PartitionRange]
    bad: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def records(self) -> int:
        """Offsets read (good and bad records)."""
        return len(self.batch) + sum(self.bad.values())


def plan_ranges(
    consumer: Consumer, topic: str, start_ms: int | None = None, timeout_s: float = 30.0
) -> list[PartitionRange]:
    """Fix the offsets to read: from ``start_ms`` (or the earliest offset) to the current high watermark.

    Raises:
        KafkaClientError: the topic does not exist or the broker did not answer.
    """
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            why = metadata.error.str() if metadata is not None and metadata.error is not None else "no partitions"
            raise KafkaClientError(f"topic {topic!r} cannot be read: {why}; check --telemetry-topic")
        partitions = sorted(metadata.partitions)
        watermarks = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions
        }
        starts = {p: watermarks[p][0] for p in partitions}
        if start_ms is not None:
            wanted = [TopicPartition(topic, p, start_ms - START_SLACK_MS) for p in partitions]
            for found in consumer.offsets_for_times(wanted, timeout=timeout_s):
                if found.error is not None:
                    raise KafkaClientError(f"offsets_for_times on {topic}[{found.partition}]: {found.error.str()}")
                # -1: no record stamped at or after the start, so nothing to read in this partition
                starts[found.partition] = found.offset if found.offset >= 0 else watermarks[found.partition][1]
    except KafkaException as exc:
        raise wrap_kafka_error(exc, f"planning the read of {topic}") from exc
    for p in partitions:
        if watermarks[p] is None:
            raise KafkaClientError(f"no watermarks for {topic}[{p}] within {timeout_s:.0f} s", retriable=True)
    return [PartitionRange(p, max(starts[p], watermarks[p][0]), watermarks[p][1]) for p in partitions]


def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    start_ms: int | None = None,
    idle_timeout_s: float = 30.0,
    client_id: str = "anomstream-trainer",
    on_progress: Callable[[int, int], None] | None = None,
) -> TopicRead:
    """Read ``topic`` from ``start_ms`` (event time, or the beginning) up to its end at the time of the call.

    Args:
        kafka: broker and registry.
        topic: the telemetry topic.
        start_ms: the earliest event time wanted (epoch ms), or ``None`` for the whole topic.
        idle_timeout_s: give up when no partition advances for this long.
        client_id: Kafka ``client.id``.
        on_progress: called with ``(offsets read, offsets to read)`` after each fetch.

    Raises:
        KafkaClientError: the topic cannot be read, the registry fails, or reading stalled.
    """
    started = time.monotonic()
    # assign(), never subscribe(): no group membership and no commits, so the group id is only a label
    config = consumer_config(kafka, f"anomstream-reader-{uuid.uuid4().hex[:8]}", client_id, **READER_OVERRIDES)
    consumer = Consumer(config)
    try:
        ranges = plan_ranges(consumer, topic, start_ms)
        collected = _consume(
            consumer, topic, ranges, TelemetryDecoder(registry_client(kafka)), idle_timeout_s, on_progress
        )
    finally:
        consumer.close()
    batch, partition, offset, bad = collected
    read = TopicRead(topic, batch, partition, offset, ranges, bad, time.monotonic() - started)
    logger.info(
        "read %d records (%d bad) from %s in %.1f s (%.0f records/s)",
        read.records,
        sum(bad.values()),
        topic,
        read.elapsed_s,
        read.records / max(read.elapsed_s, 1e-9),
    )
    return read


_Chunk = tuple[TelemetryBatch, np.ndarray, np.ndarray]


def _consume(
    consumer: Consumer,
    topic: str,
    ranges: list[PartitionRange],
    decoder: TelemetryDecoder,
    idle_timeout_s: float,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[TelemetryBatch, np.ndarray, np.ndarray, Counter[str]]:
    """Fetch every range to its end, decoding each fetch; return the rows in device order, and bad counts."""
    end = {r.partition: r.end for r in ranges if r.size}
    total = sum(r.size for r in ranges)
    chunks: list[_Chunk] = []
    bad: Counter[str] = Counter()
    if end:
        consumer.assign([TopicPartition(topic, r.partition, r.start) for r in ranges if r.size])
    done_offsets = {r.partition: r.start for r in ranges}
    last_move = time.monotonic()
    while end:
        messages = consumer.consume(FETCH_MESSAGES, timeout=0.5)
        fetched = _within_ranges(messages, end, topic)
        if fetched is not None:
            chunks.append(_decode(decoder, *fetched, bad))
        moved = _finish_partitions(consumer, topic, end, done_offsets)
        if moved or messages:
            last_move = time.monotonic()
        elif time.monotonic() - last_move > idle_timeout_s:
            stuck = ", ".join(f"[{p}] at {done_offsets[p]} of {e}" for p, e in sorted(end.items()))
            raise KafkaClientError(
                f"reading {topic} stalled for {idle_timeout_s:.0f} s: partitions {stuck} (an open transaction, "
                "or the broker is unreachable); retry later or raise --read-timeout",
                retriable=True,
            )
        if on_progress:
            on_progress(sum(done_offsets[r.partition] - r.start for r in ranges), total)
    return (*_grouped(chunks), bad)


def _within_ranges(
    messages: list[Message], end: dict[int, int], topic: str
) -> tuple[list[bytes | None], np.ndarray, np.ndarray] | None:
    """Values, partitions and offsets of the fetched records below their partition's end (None if none)."""
    failed = [m for m in messages if m.error() is not None]
    if failed:
        for message in failed:
            _raise_unless_benign(message.error(), topic)  # type: ignore[arg-type]
        messages = [m for m in messages if m.error() is None]
    if not messages:
        return None
    # one C-speed comprehension per attribute: this loop sees every record of the topic
    partitions = np.array([m.partition() for m in messages], dtype=np.int32)
    offsets = np.array([m.offset() for m in messages], dtype=np.int64)
    values = [m.value() for m in messages]
    ends = np.zeros(int(partitions.max()) + 1, dtype=np.int64)  # partitions already finished read as end 0
    for partition, partition_end in end.items():
        if partition < len(ends):
            ends[partition] = partition_end
    inside = offsets < ends[partitions]
    if not inside.all():
        values = [values[i] for i in np.flatnonzero(inside).tolist()]
        partitions, offsets = partitions[inside], offsets[inside]
    return (values, partitions, offsets) if values else None


def _raise_unless_benign(error: KafkaError, topic: str) -> None:
    if error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal() or not error.retriable():
        raise KafkaClientError(f"reading {topic}: {error.str()}", code=error.name(), retriable=error.retriable())
    logger.warning("reading %s: %s (retrying)", topic, error.str())


def _finish_partitions(consumer: Consumer, topic: str, end: dict[int, int], done_offsets: dict[int, int]) -> bool:
    """Drop partitions whose position reached their end (control records included); say if any moved."""
    moved = False
    for position in consumer.position([TopicPartition(topic, p) for p in end]):
        if position.offset > done_offsets[position.partition]:
            done_offsets[position.partition] = min(position.offset, end[position.partition])
            moved = True
    finished = [p for p, e in end.items() if done_offsets[p] >= e]
    if finished:
        consumer.pause([TopicPartition(topic, p) for p in finished])
        for p in finished:
            del end[p]
    return moved


def _decode(
    decoder: TelemetryDecoder,
    values: list[bytes | None],
    partitions: np.ndarray,
    offsets: np.ndarray,
    bad: Counter[str],
) -> _Chunk:
    result = decoder.decode(values)
    for message in result.bad:
        bad[message.reason] += 1
    if result.bad:
        first = result.bad[0]
        logger.warning(
            "skipping %d bad records, e.g. %s[%d]@%d: %s",
            len(result.bad),
            first.reason,
            partitions[first.index],
            offsets[first.index],
            first.message,
        )
    return result.batch, partitions[result.index], offsets[result.index]


def _grouped(chunks: list[_Chunk]) -> tuple[TelemetryBatch, np.ndarray, np.ndarray]:
    """One batch from the fetched chunks, channels aligned by name, rows ordered by device, seq, offset."""
    channels = tuple(dict.fromkeys(name for batch, _, _ in chunks for name in batch.channels))
    if not chunks:
        empty = TelemetryBatch(
            np.empty(0, dtype=object), np.empty(0, np.int64), np.empty(0, np.int64), (), np.empty((0, 0)),
            np.empty(0, np.int8),
        )  # fmt: skip
        return empty, np.empty(0, np.int32), np.empty(0, np.int64)
    batch = TelemetryBatch.concat([_with_channels(b, channels) for b, _, _ in chunks])
    partition = np.concatenate([p for _, p, _ in chunks])
    offset = np.concatenate([o for _, _, o in chunks]).astype(np.int64)
    device_code, _ = pd.factorize(batch.device_id, sort=True)
    order = np.lexsort((offset, partition, batch.seq, device_code))
    return batch.take(order), partition[order], offset[order]


def _with_channels(batch: TelemetryBatch, channels: tuple[str, ...]) -> TelemetryBatch:
    if batch.channels == channels:
        return batch
    values = np.full((len(batch), len(channels)), np.nan)
    position = {name: j for j, name in enumerate(channels)}
    for j, name in enumerate(batch.channels):
        values[:, position[name]] = batch.values[:, j]
    return TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, channels, values, batch.label)
