"""The producer's run loop: source -> columnar Avro encoding -> idempotent, keyed confluent-kafka Producer.

Records are keyed by device id (a device stays ordered on one partition), handed to librdkafka a slice at
a time, and every delivery failure is counted: a run succeeds only when every record it handed over was
delivered. Pacing is as fast as possible (default), a fixed rate, or a replay of event
time sped up X times. SIGTERM and Ctrl-C stop reading the source, flush what is in flight and report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anomstream.config import KafkaSettings, env
from anomstream.kafka_config import producer_config, registry_client, wrap_kafka_error
from anomstream.serde import TelemetryEncoder
from anomstream.sources import BadRows, CsvColumns, iter_source
from anomstream.synthetic import FleetSpec
from anomstream.telemetry import TelemetryBatch

log = logging.getLogger(__name__)

SLICE_ROWS = 10_000  # records between checks of pacing, queue depth and the stop flag
_MAX_IN_FLIGHT = 500_000  # wait for deliveries above this many queued records (librdkafka queue is 1M)
_MAX_REPLAY_GAP_MS = 3_600_000  # event-time jumps beyond this (next file of a data set) are not waited for
_FLUSH_TIMEOUT_S = 60.0
# Java-compatible key hashing (a device lands on the partition a Java producer would pick); failures-only
# delivery reports (see DeliveryTally).
PRODUCER_OVERRIDES = {"partitioner": "murmur2_random", "delivery.report.only.error": True}


@dataclass(frozen=True)
class Pacing:
    """How fast to send: ``rate`` records/s, or event time replayed ``speedup`` times faster, or neither.

    Attributes:
        rate: records per second, or ``None``.
        speedup: replay factor for event time (10 sends an hour of data in 6 minutes), or ``None``.
    """

    rate: float | None = None
    speedup: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("choose one of --rate and --speedup")
        if (self.rate is not None and self.rate <= 0) or (self.speedup is not None and self.speedup <= 0):
            raise ValueError(f"pacing must be positive, got {self}")


@dataclass
class ProduceReport:
    """Counts of a producer run.

    Attributes:
        topic: where the records went.
        produced: records handed to the client.
        delivered: records the broker acknowledged (handed over, not failed, not left in flight).
        failed: records whose delivery failed (each has a delivery report saying so).
        in_flight: records still unacknowledged when the final flush gave up.
        elapsed_s: wall time from the first record to the end of the flush.
        stopped_by: the signal name that stopped the run early, or ``None``.
        first_error: the first delivery error, for the summary.
        bad_rows: input rows skipped with ``--on-bad-row skip``.
    """

    topic: str
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    in_flight: int = 0
    elapsed_s: float = 0.0
    stopped_by: str | None = None
    first_error: str | None = None
    bad_rows: BadRows = field(default_factory=BadRows)

    @property
    def ok(self) -> bool:
        """Whether every record handed to the client was delivered."""
        return self.failed == 0 and self.in_flight == 0 and self.delivered == self.produced

    def summary(self) -> str:
        """One line: counts, rate, and what went wrong if anything did."""
        rate = self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0
        line = (
            f"{self.delivered:,} of {self.produced:,} records delivered to {self.topic} in {self.elapsed_s:.1f} s "
            f"({rate:,.0f} records/s); {self.failed:,} failed, {self.in_flight:,} never acknowledged; "
            f"{self.bad_rows.summary()}"
        )
        if self.stopped_by:
            line += f"; stopped by {self.stopped_by}"
        if self.first_error:
            line += f"; first error: {self.first_error}"
        return line


class DeliveryTally:
    """The delivery-report callback: counts failed deliveries into a report.

    With ``delivery.report.only.error`` (the default here: it saves a Python call per record) librdkafka
    reports only failures, so a record is delivered when it was handed over, was not reported failed and
    is no longer queued once ``flush()`` returns; success reports, if enabled, are simply not needed.
    """

    def __init__(self, report: ProduceReport) -> None:
        self.report = report

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            return
        self.report.failed += 1
        if self.report.first_error is None:
            self.report.first_error = f"{error.name()}: {error.str()}"
            log.error("delivery to %s failed: %s", message.topic(), error.str())


class Pacer:
    """When each record is due, in seconds from the start of the run (``None``: right away)."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._sent = 0
        self._last_event_ms: int | None = None
        self._replay_s = 0.0

    def due(self, batch: TelemetryBatch) -> np.ndarray | None:
        """Due times of the batch's rows, continuing from the previous batch."""
        n = len(batch)
        if self.pacing.rate is not None:
            due = (self._sent + np.arange(n)) / self.pacing.rate
            self._sent += n
            return due
        if self.pacing.speedup is None or n == 0:
            return None
        times = batch.event_time_ms
        previous = times[0] if self._last_event_ms is None else self._last_event_ms
        steps = np.diff(times, prepend=previous).astype(np.float64)
        # Replay follows event time forwards; a jump back or a long gap (the next file) is not waited for.
        steps[(steps < 0) | (steps > _MAX_REPLAY_GAP_MS)] = 0.0
        due = self._replay_s + np.cumsum(steps) / 1000.0 / self.pacing.speedup
        self._replay_s, self._last_event_ms = float(due[-1]), int(times[-1])
        return due


def produce_batches(
    producer: Producer,
    topic: str,
    batches: Iterable[TelemetryBatch],
    encode: Callable[[TelemetryBatch], list[bytes]],
    *,
    report: ProduceReport,
    limit: int | None = None,
    pacing: Pacing | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send batches until the source ends, ``limit`` records are sent or ``stop`` is set; then flush.

    Args:
        producer: from :func:`make_producer` with the same ``report`` (its delivery callback counts failures).
        topic: the telemetry topic.
        batches: the source.
        encode: batch -> message values (e.g. ``TelemetryEncoder.encode``).
        report: counts are added here (its ``bad_rows`` should be the source's tally).
        limit: the most records to send.
        pacing: rate or replay speed; as fast as possible when omitted.
        stop: set it (from a signal handler) to stop early; in-flight records are still flushed.
        on_progress: called with the number of records handed over after each slice.

    Returns:
        ``report``, complete once everything was flushed (or the flush timed out).
    """
    stop = stop or threading.Event()
    pacer = Pacer(pacing or Pacing())
    start = time.monotonic()

    def prepare(batch: TelemetryBatch) -> tuple[list[bytes], list[bytes], np.ndarray | None]:
        return encode(batch), _keys(batch.device_id), pacer.due(batch)

    chunks = (prepare(batch) for batch in _limited(batches, limit))
    try:
        for values, keys, due in chunks:
            position = 0
            while position < len(values) and not stop.is_set():
                end = _next_slice_end(due, position, len(values), time.monotonic() - start, producer)
                if end > position:
                    _send_slice(producer, topic, keys[position:end], values[position:end], report)
                    position = end
                    if on_progress:
                        on_progress(report.produced)
            if stop.is_set():
                break
    finally:
        report.in_flight = producer.flush(_FLUSH_TIMEOUT_S)
        if report.in_flight:
            log.error("%d records still unacknowledged after a %.0f s flush", report.in_flight, _FLUSH_TIMEOUT_S)
        report.delivered = report.produced - report.failed - report.in_flight
        report.elapsed_s = time.monotonic() - start
    return report


def _limited(batches: Iterable[TelemetryBatch], limit: int | None) -> Iterator[TelemetryBatch]:
    left = limit
    for batch in batches:
        if left is not None and len(batch) >= left:
            if left > 0:
                yield batch.take(slice(0, left))
            return
        if left is not None:
            left -= len(batch)
        yield batch


def _keys(device_id: np.ndarray) -> list[bytes]:
    """UTF-8 keys, each distinct device id encoded once."""
    codes, distinct = pd.factorize(device_id, use_na_sentinel=False)
    encoded = np.array([str(d).encode() for d in distinct], dtype=object)
    return encoded[codes].tolist()  # type: ignore[no-any-return]


def _next_slice_end(due: np.ndarray | None, position: int, n: int, elapsed_s: float, producer: Producer) -> int:
    """Where the next slice ends; waits (serving delivery reports) while nothing is due or queues are full."""
    if len(producer) > _MAX_IN_FLIGHT:
        producer.poll(0.05)
        return position
    end = min(n, position + SLICE_ROWS)
    if due is None:
        return end
    ready = int(np.searchsorted(due, elapsed_s, side="right"))
    if ready <= position:
        producer.poll(min(float(due[position]) - elapsed_s, 0.1))
        return position
    return min(end, ready)


def _send_slice(producer: Producer, topic: str, keys: list[bytes], values: list[bytes], report: ProduceReport) -> None:
    """Hand one slice to librdkafka, record by record; a full local queue is waited out and resumed.

    Plain ``produce()`` without a per-call callback measured cheaper per record than ``produce_batch``
    (no dict per message); failures reach the producer-wide ``on_delivery`` (see :func:`make_producer`).
    """
    produce = producer.produce
    position, n = 0, len(values)
    try:
        while position < n:
            resume = position
            try:
                for position in range(resume, n):  # noqa: B007 (the failed index is where to resume)
                    produce(topic, values[position], keys[position])
                position = n
            except BufferError:
                producer.poll(0.1)
    except KafkaException as error:
        raise wrap_kafka_error(error, f"producing to {topic}") from error
    finally:
        report.produced += position
    producer.poll(0)


def make_producer(kafka: KafkaSettings, client_id: str, report: ProduceReport) -> Producer:
    """An idempotent producer (``kafka_config.producer_config``) whose delivery failures count into ``report``."""
    return Producer(producer_config(kafka, client_id, **PRODUCER_OVERRIDES, on_delivery=DeliveryTally(report)))


class ProducerSettings(BaseSettings):
    """What `anomstream produce` sends, where, and how fast."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    source: str = env("ANOMSTREAM_SOURCE", "synthetic", "skab:PATH, nab:PATH, csv:PATH (file or folder) or synthetic")
    topic: str = env("ANOMSTREAM_TELEMETRY_TOPIC", "telemetry", "topic to produce to")
    devices: int = env("ANOMSTREAM_SYNTHETIC_DEVICES", 10, "synthetic: number of devices", ge=1)
    records: int = env("ANOMSTREAM_SYNTHETIC_RECORDS", 100_000, "synthetic: records over the whole fleet", ge=0)
    channels: int = env("ANOMSTREAM_SYNTHETIC_CHANNELS", 8, "synthetic: readings per record", ge=1)
    seed: int = env("ANOMSTREAM_SYNTHETIC_SEED", 0, "synthetic: random seed (same seed, same records)")
    anomaly_rate: float = env(
        "ANOMSTREAM_SYNTHETIC_ANOMALY_RATE", 0.01, "synthetic: fraction of records in injected anomalies", ge=0
    )
    time_column: str | None = env("ANOMSTREAM_CSV_TIME_COLUMN", None, "csv: event-time column (guessed if unset)")
    device_column: str | None = env(
        "ANOMSTREAM_CSV_DEVICE_COLUMN", None, "csv: device-id column (unset: one device per file)"
    )
    label_column: str | None = env("ANOMSTREAM_CSV_LABEL_COLUMN", None, "csv: 0/1 ground-truth column")
    csv_delimiter: str = env("ANOMSTREAM_CSV_DELIMITER", ",", "csv: field separator")
    on_bad_row: Literal["fail", "skip"] = env(
        "ANOMSTREAM_ON_BAD_ROW", "fail", "fail: stop at an unparseable row; skip: count and report it"
    )
    rate: float | None = env("ANOMSTREAM_PRODUCE_RATE", None, "send at most this many records/s", gt=0)
    speedup: float | None = env("ANOMSTREAM_PRODUCE_SPEEDUP", None, "replay event time this many times faster", gt=0)
    limit: int | None = env("ANOMSTREAM_PRODUCE_LIMIT", None, "stop after this many records", ge=0)
    client_id: str = env("ANOMSTREAM_PRODUCER_CLIENT_ID", "anomstream-producer", "Kafka client.id")

    def fleet(self) -> FleetSpec:
        """The synthetic fleet these settings describe."""
        return FleetSpec(
            devices=self.devices,
            records=self.records,
            channels=self.channels,
            seed=self.seed,
            anomaly_rate=self.anomaly_rate,
        )

    def csv_columns(self) -> CsvColumns:
        """Column names for ``csv:`` sources."""
        return CsvColumns(self.time_column, self.device_column, self.label_column, self.csv_delimiter)

    def pacing(self) -> Pacing:
        """Rate or replay speed."""
        return Pacing(rate=self.rate, speedup=self.speedup)


def run_producer(
    settings: ProducerSettings,
    kafka: KafkaSettings,
    *,
    stop: threading.Event | None = None,
    show_progress: bool | None = None,
    report: ProduceReport | None = None,
) -> ProduceReport:
    """Send the configured source to Kafka and report what was delivered.

    The schema is registered once under ``<topic>-value``; records are encoded a chunk at a time and
    produced keyed by device id with an idempotent producer (``kafka_config.producer_config``).

    Args:
        settings: source, topic, pacing and limits.
        kafka: broker, registry and librdkafka pass-through settings.
        stop: an event that ends the run early (the CLI sets it on SIGTERM/SIGINT).
        show_progress: draw a progress bar; by default only when stderr is a terminal.
        report: where to count (pass one to read the counts even when the run raises).

    Returns:
        The counts; ``report.ok`` is false when any record was not delivered.

    Raises:
        SourceError: the source cannot be read (BadRowError for a bad row with ``on_bad_row="fail"``).
        KafkaClientError: the registry or the broker refused to work with us.
    """
    report = report or ProduceReport(topic=settings.topic)
    encoder = TelemetryEncoder(registry_client(kafka), settings.topic)
    producer = make_producer(kafka, settings.client_id, report)
    batches = iter_source(
        settings.source,
        on_bad_row=settings.on_bad_row,
        bad_rows=report.bad_rows,
        csv_columns=settings.csv_columns(),
        fleet=settings.fleet(),
    )
    total = settings.limit
    if settings.source == "synthetic":
        total = min(settings.records, total if total is not None else settings.records)
    with _progress(total, settings.source, show_progress) as on_progress:
        produce_batches(
            producer,
            settings.topic,
            batches,
            encoder.encode,
            report=report,
            limit=settings.limit,
            pacing=settings.pacing(),
            stop=stop,
            on_progress=on_progress,
        )
    return report


@contextmanager
def _progress(total: int | None, source: str, show: bool | None) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar with records/s on stderr, or nothing when stderr is not a terminal."""
    console = Console(stderr=True)
    if not (console.is_terminal if show is None else show):
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} records/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"producing {source}", total=total, rate="-")
        started = time.monotonic()

        def update(produced: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress.update(task, completed=produced, rate=f"{produced / elapsed:,.0f}")

        yield update
