"""Rebuilding per-device history when partitions are assigned, by reading back before the committed offset.

A reading with per-device sequence number ``seq`` has ``seq`` predecessors, and its score needs the last
``min(context, seq)`` of them. When a partition is assigned at committed offset ``c``, the readings just
before ``c`` are read back, in windows growing 4x (``[c - K, c)``, then ``[c - 5K, c - K)``, ...), until
every device seen holds ``context`` readings or its first reading (``seq`` 0), or the partition's start is
reached. A device that shows up later without enough history (a sparse device last seen long before
``c``) makes its partition read further back, on demand (:meth:`HistoryRebuilder.complete`), before its
readings are scored. Each partition is read back at most once down to its start per assignment.

A device evicted from history under its memory budget (:meth:`DeviceHistory.evict`) is read back when it
shows up again, from the offset after its last reading down, keeping only its own readings.

Read-back uses its own consumer with ``assign()`` (no group, no commits) and ``read_committed``, and decodes
with the scorer's decoder, so history holds exactly the records the previous owner scored (bad records,
which went to the dead-letter topic, are skipped by both).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from anomstream.config import KafkaSettings
from anomstream.errors import KafkaClientError
from anomstream.kafka_config import consumer_config
from anomstream.scoring.decode import ColumnarTelemetryDecoder, reject_foreign_keys
from anomstream.scoring.state import DeviceHistory, empty_batch
from anomstream.telemetry import TelemetryBatch

logger = logging.getLogger(__name__)

FIRST_WINDOW = 2_000  # records read back first per partition (grows 4x per round)
FETCH_MESSAGES = 10_000
STALL_TIMEOUT_S = 30.0


@dataclass
class _Scan:
    """How far back a partition has been read: ``[low, scanned_from)`` is still unread."""

    low: int
    scanned_from: int

    @property
    def exhausted(self) -> bool:
        return self.scanned_from <= self.low


class HistoryRebuilder:
    """Reads back telemetry before committed offsets into a :class:`DeviceHistory`.

    Args:
        kafka: broker settings.
        topic: the telemetry topic.
        client_id: ``client.id`` prefix of the read-back consumer.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, client_id: str) -> None:
        self.topic = topic
        config = consumer_config(kafka, f"anomstream-history-{uuid.uuid4().hex[:8]}", f"{client_id}-history")
        self._consumer = Consumer(config | {"enable.partition.eof": False})
        self._scans: dict[int, _Scan] = {}
        self.records_read = 0

    def close(self) -> None:
        """Close the read-back consumer."""
        self._consumer.close()

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked or lost: their scan state goes with them."""
        for partition in partitions:
            self._scans.pop(partition, None)

    def assigned(self, history: DeviceHistory, committed: dict[int, int], decoder: ColumnarTelemetryDecoder) -> None:
        """Rebuild history for newly assigned partitions, given their committed offsets (-1: none).

        Raises:
            KafkaClientError: the broker or registry failed (retriable): nothing was changed, call again.
        """
        scans = {}
        for partition, offset in committed.items():
            low, high = self._watermarks(partition)
            start = offset if offset >= 0 else low  # no commit yet: consumption starts at the beginning
            scans[partition] = _Scan(low, min(start, high))
        if history.reach:
            self._read_back(history, scans, decoder, None)
        self._scans.update(scans)

    def complete(self, history: DeviceHistory, batch: TelemetryBatch, partition: np.ndarray,
                 decoder: ColumnarTelemetryDecoder) -> None:  # fmt: skip
        """Read further back for devices of ``batch`` that lack the history their first reading needs, and read
        back evicted devices that show up again."""
        if history.evicted and history.reach and len(batch):
            self._read_back_evicted(history, batch, decoder)
        open_scans = [p for p, scan in self._scans.items() if not scan.exhausted]
        if not history.reach or not len(batch) or not open_scans:
            return
        codes, devices = pd.factorize(batch.device_id)
        _, first_row = np.unique(codes, return_index=True)  # a device's first row holds its lowest seq
        first_seq, first_partition = batch.seq[first_row], np.asarray(partition)[first_row]
        candidates = (first_seq > 0) & np.isin(first_partition, open_scans)
        if not candidates.any():
            return
        held = history.counts(np.asarray(devices, dtype=object)[candidates])
        short = held < np.minimum(history.reach, first_seq[candidates])
        if not short.any():
            return
        wanted = {str(d): int(p) for d, p in zip(
            np.asarray(devices, dtype=object)[candidates][short], first_partition[candidates][short], strict=True
        )}  # fmt: skip
        logger.info("reading back further for %d devices lacking history", len(wanted))
        self._read_back(history, {p: self._scans[p] for p in set(wanted.values())}, decoder, wanted)

    def _read_back_evicted(
        self, history: DeviceHistory, batch: TelemetryBatch, decoder: ColumnarTelemetryDecoder
    ) -> None:
        returning = history.returning(batch.device_id)
        if not returning:
            return
        ends: dict[int, int] = {}
        for partition, end in returning.values():
            ends[partition] = max(ends.get(partition, 0), end)
        scans = {p: _Scan(self._watermarks(p)[0], end) for p, end in ends.items()}
        logger.info("reading back %d evicted devices that showed up again", len(returning))
        self._read_back(history, scans, decoder, {d: p for d, (p, _) in returning.items()}, only_devices=True)
        history.returned(returning)

    def _read_back(
        self,
        history: DeviceHistory,
        scans: dict[int, _Scan],
        decoder: ColumnarTelemetryDecoder,
        devices: dict[str, int] | None,
        only_devices: bool = False,
    ) -> None:
        """Read back windows of growing size until the devices (all seen, or ``devices``) are covered; with
        ``only_devices``, keep the readings of ``devices`` alone (the others' are held already)."""
        window = FIRST_WINDOW
        found: list[tuple[TelemetryBatch, np.ndarray, np.ndarray]] = []
        pending = {p: s.scanned_from for p, s in scans.items() if not s.exhausted}
        reached = dict(pending)
        while pending:
            ranges = {p: (max(scans[p].low, end - window), end) for p, end in pending.items()}
            batch, partition, offset = self._read(ranges, decoder)
            if only_devices and devices is not None:
                ours = pd.Index(batch.device_id, dtype=object).isin(list(devices))
                batch, partition, offset = batch.take(ours), partition[ours], offset[ours]
            found.insert(0, (batch, partition, offset))
            for p, (start, _) in ranges.items():
                reached[p] = start
            covered = _covered(found, history.reach, devices)
            pending = {p: reached[p] for p in pending if reached[p] > scans[p].low and not covered.get(p, False)}
            window *= 4
        if found:
            older = TelemetryBatch.concat([b for b, _, _ in found])
            history.absorb_older(
                older, np.concatenate([p for _, p, _ in found]), np.concatenate([o for _, _, o in found])
            )
        for p, start in reached.items():
            scans[p].scanned_from = start

    def _read(
        self, ranges: dict[int, tuple[int, int]], decoder: ColumnarTelemetryDecoder
    ) -> tuple[TelemetryBatch, np.ndarray, np.ndarray]:
        """Good records of ``[start, end)`` per partition, in offset order per partition; their partitions and
        offsets."""
        todo = {p: r for p, r in ranges.items() if r[1] > r[0]}
        values: list[bytes | None] = []
        keys: list[bytes | None] = []
        partitions: list[int] = []
        offsets: list[int] = []
        self._consumer.assign([TopicPartition(self.topic, p, start) for p, (start, _) in todo.items()])
        last_move = time.monotonic()
        try:
            while todo:
                for message in self._consumer.consume(FETCH_MESSAGES, timeout=0.2):
                    error = message.error()
                    if error is not None:
                        _raise_unless_retriable(error, self.topic)
                        continue
                    p, offset = message.partition() or 0, message.offset() or 0
                    if p in todo and offset < todo[p][1]:
                        values.append(message.value())
                        keys.append(message.key())
                        partitions.append(p)
                        offsets.append(offset)
                if self._drop_finished(todo):
                    last_move = time.monotonic()
                elif time.monotonic() - last_move > STALL_TIMEOUT_S:
                    raise KafkaClientError(f"reading back {self.topic} {todo} stalled", retriable=True)
        finally:
            self._consumer.unassign()
        self.records_read += len(values)
        order = np.lexsort((np.asarray(offsets), np.asarray(partitions)))
        if not values:
            return empty_batch(decoder.channels), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        # the records the previous owner scored: not the bad ones, nor those keyed by another than their device
        result = reject_foreign_keys(decoder.decode([values[i] for i in order]), [keys[i] for i in order])
        kept = order[result.index]
        return result.batch, np.asarray(partitions, dtype=np.int32)[kept], np.asarray(offsets, dtype=np.int64)[kept]

    def _drop_finished(self, todo: dict[int, tuple[int, int]]) -> bool:
        """Drop partitions whose position reached their end; say whether any finished."""
        positions = self._consumer.position([TopicPartition(self.topic, p) for p in todo])
        finished = [tp.partition for tp in positions if tp.offset >= todo[tp.partition][1]]
        for partition in finished:
            del todo[partition]
        return bool(finished)

    def _watermarks(self, partition: int) -> tuple[int, int]:
        try:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10.0)
        except KafkaException as exc:
            # The partition was just assigned to us, so it exists: its leader is moving (a broker went down) or
            # the metadata has not caught up yet. Transient: the scorer pauses and rebuilds again. Look-ups sent
            # to a dead leader only time out, and librdkafka would not learn the new one before its periodic
            # metadata refresh (5 minutes): ask for the topic's metadata now, so the next try finds the leader.
            with contextlib.suppress(KafkaException):
                self._consumer.list_topics(self.topic, timeout=5.0)
            why = f"watermarks of {self.topic}[{partition}]: {exc}"
            raise KafkaClientError(why, "WATERMARKS", retriable=True) from exc
        return int(low), int(high)


def _covered(
    found: list[tuple[TelemetryBatch, np.ndarray, np.ndarray]], context: int, devices: dict[str, int] | None
) -> dict[int, bool]:
    """Per partition: whether every device seen (or each of ``devices``, by partition) has its history."""
    batch = TelemetryBatch.concat([b for b, _, _ in found])
    partition = np.concatenate([p for _, p, _ in found])
    frame = pd.DataFrame({"device": batch.device_id, "seq": batch.seq, "partition": partition})
    if devices is not None:
        frame = frame[frame["device"].isin(list(devices))]
    per_device = frame.groupby("device", sort=False).agg(
        count=("seq", "size"), first=("seq", "min"), partition=("partition", "first")
    )
    done = (per_device["count"] >= context) | (per_device["first"] == 0)
    covered = {int(p): bool(c) for p, c in done.groupby(per_device["partition"]).all().items()}
    for device, p in (devices or {}).items():
        if device not in per_device.index:  # not seen yet: keep reading its partition back
            covered[p] = False
    return covered


def _raise_unless_retriable(error: KafkaError, topic: str) -> None:
    if error.code() == KafkaError._PARTITION_EOF:
        return
    if error.fatal() or not error.retriable():
        raise KafkaClientError(f"reading back {topic}: {error.str()}", code=error.name(), retriable=error.retriable())
    logger.warning("reading back %s: %s (retrying)", topic, error.str())
