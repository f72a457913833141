"""The scorer: one member of the scorer consumer group, consume -> decode -> score -> produce, batch by batch.

Each iteration consumes up to ``batch_size`` records (``consume(num_messages, timeout)``), decodes them in
one columnar pass (:mod:`anomstream.scoring.decode`), scores them in one model call after their devices'
history (:mod:`anomstream.scoring.anomalies`), and commits the batch's anomaly records, its dead-letter
records and its consumed offsets together (:mod:`anomstream.scoring.commit`: one transaction by default).

Rebalances (cooperative-sticky): the loop never holds an open transaction while it calls ``consume``, the
only place rebalance callbacks run, so a revocation finds every batch committed; the callbacks drop the
revoked partitions' device history, and newly assigned partitions get theirs rebuilt from the records just
before their committed offset (:mod:`anomstream.scoring.rebuild`) before any of their records is scored.

Transient faults (registry or broker unreachable, 5xx) raise retriable errors: the loop pauses its
partitions, keeps polling (group membership), backs off and retries the same records; nothing goes to the
dead-letter topic for them. Models are swapped between batches (:mod:`anomstream.scoring.reload`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from anomstream.config import KafkaSettings, TopicSettings
from anomstream.errors import KafkaClientError
from anomstream.incidents import IncidentTracker, Step
from anomstream.kafka_config import consumer_config, producer_config, registry_client, wrap_kafka_error
from anomstream.model_store import LoadedModel, ModelStore
from anomstream.scoring.anomalies import ScoredBatch, score_batch
from anomstream.scoring.commit import AtLeastOnceCommit, BatchCommit, Output, TransactionalCommit
from anomstream.scoring.decode import ColumnarTelemetryDecoder, reject_foreign_keys
from anomstream.scoring.dlq import DEFAULT_MAX_BYTES, SourceRecord, dead_letter
from anomstream.scoring.incident_log import IncidentLog
from anomstream.scoring.metrics import Health, OpsServer, ScorerMetrics
from anomstream.scoring.rebuild import HistoryRebuilder
from anomstream.scoring.reload import ModelSource, serving_device
from anomstream.scoring.settings import ScorerSettings
from anomstream.scoring.state import DeviceHistory
from anomstream.serde import AnomalyEncoder, DecodeResult, IncidentEncoder
from anomstream.suppression import SuppressionFile

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
LAG_EVERY_S = 1.0
# Anomalies are few and latency matters: no linger (the commit sends whatever is left anyway). Transactions
# left open by a crashed scorer are aborted by the coordinator after transaction.timeout.ms, which bounds how
# long downstream read_committed consumers can be held up by it.
TRANSACTION_OVERRIDES = {"linger.ms": 0, "transaction.timeout.ms": 10_000, "partitioner": "murmur2_random"}
# A batch takes well under a second; a member that stops polling for a minute (or, killed, stops heartbeating
# for 10 s) is dropped, so that rebalances never wait minutes for it and its partitions move on quickly.
# Prefetch at most 8 MB (librdkafka's default is 64 MB): about a batch's worth; measured on 1M records it
# keeps the peak RSS ~30 MB lower than 16 MB at the same throughput (4 MB starves the consumer).
CONSUMER_OVERRIDES = {
    "queued.max.messages.kbytes": 8_192,
    "fetch.wait.max.ms": 10,
    "enable.partition.eof": False,
    "max.poll.interval.ms": 60_000,
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 2_000,
}


@dataclass
class ScorerReport:
    """What a scorer did, for its exit summary and the benchmark."""

    consumed: int = 0
    scored: int = 0
    anomalies: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    aborted: int = 0
    first_record_at: float | None = None
    first_commit_at: float | None = None
    history_peak_bytes: int = 0  # the most device history held after a batch (estimated)
    history_evicted: int = 0  # devices evicted from history under its budget
    last_commit_at: float | None = None
    started_at: float = field(default_factory=time.time)
    model: str = ""
    stopped_by: str = ""

    @property
    def active_s(self) -> float:
        """Wall time from the first record consumed to the last batch committed."""
        if self.first_record_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_record_at

    def summary(self) -> str:
        rate = self.scored / self.active_s if self.active_s > 0 else 0.0
        return (
            f"scored {self.scored:,} of {self.consumed:,} records in {self.active_s:.1f} s ({rate:,.0f} records/s), "
            f"{self.anomalies:,} anomalies, {sum(self.dead_letters.values()):,} dead letters "
            f"{dict(self.dead_letters)}, {self.batches:,} batches, {self.aborted} aborted; model {self.model}; "
            f"stopped by {self.stopped_by}"
        )


class Scorer:
    """One scorer process (see the module docstring).

    Args:
        settings: scorer settings.
        kafka: broker and registry.
        topics: topic names.
        store: the model store.
        stop: set it to stop after the current batch (SIGTERM does).
    """

    def __init__(
        self,
        settings: ScorerSettings,
        kafka: KafkaSettings,
        topics: TopicSettings,
        store: ModelStore,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings, self.kafka, self.topics, self.store = settings, kafka, topics, store
        self.stop = stop or threading.Event()
        self.metrics, self.health = ScorerMetrics(), Health()
        self.report = ScorerReport()
        self.device = serving_device(settings.device)
        self.registry = registry_client(kafka)
        self.models = ModelSource(store, settings.model, self.device, kafka, topics.models_topic, self.metrics)
        self._model: LoadedModel | None = None
        self._decoder: ColumnarTelemetryDecoder | None = None
        self._history = DeviceHistory(0, ())
        self._assigned: set[int] = set()
        self._assignments: dict[int, int] = {}  # assigned partition -> which assignment gave it
        self._assignment_count = 0
        self._to_rebuild: set[int] = set()
        self._consumer: Consumer | None = None
        self._commit: BatchCommit | None = None
        self._encoder: AnomalyEncoder | None = None
        self._rebuilder: HistoryRebuilder | None = None
        self._incident_encoder: IncidentEncoder | None = None
        self._incident_log: IncidentLog | None = None
        self._incidents = IncidentTracker((), int(settings.incident_quiet * 1000), topics.telemetry_topic)
        self._suppression = SuppressionFile(settings.suppression_file)
        self._lag_at = 0.0
        # a dead letter must fit what the producer may send (see anomstream.scoring.dlq)
        limit = producer_config(kafka, settings.client_id).get("message.max.bytes", DEFAULT_MAX_BYTES)
        self._letter_max_bytes = int(limit)
        self.server = OpsServer(self.metrics, self.health, settings.metrics_host, settings.metrics_port)

    def run(self) -> ScorerReport:
        """Serve until stopped (or idle for ``idle_exit_s``); leave the group cleanly; return the report."""
        self.server.start()
        try:
            loaded = self.models.wait_for_first(self.stop, self.settings.model_poll, self.settings.idle_exit)
            if loaded is None:
                self.report.stopped_by = self.report.stopped_by or "no model"
                logger.warning("no model to serve: stopping without consuming")
                return self.report
            self._use_model(loaded)
            self.models.start_watching()
            self._connect()
            # Start-up objects (modules, the model) never die: keep them out of the cyclic collector's way so
            # that its full collections stay short and do not show in the latency of a batch.
            gc.collect()
            gc.freeze()
            self._loop()
        finally:
            self._close()
        return self.report

    # -- set-up and tear-down ------------------------------------------------------------------------------

    def _connect(self) -> None:
        """Producer (transactions initialised), anomaly schema registered, consumer subscribed."""
        self._encoder = self._until_done(lambda: AnomalyEncoder(self.registry, self.topics.anomaly_topic))
        self._commit = self._until_done(self._make_commit)
        self._rebuilder = HistoryRebuilder(self.kafka, self.topics.telemetry_topic, self.settings.client_id)
        self._incident_encoder = self._until_done(lambda: IncidentEncoder(self.registry, self.topics.incident_topic))
        self._incident_log = self._until_done(lambda: IncidentLog(
            self.kafka, self.topics.incident_topic, self.settings.client_id, self.topics.telemetry_partitions))
        config = consumer_config(self.kafka, self.settings.group_id, self.settings.client_id, **CONSUMER_OVERRIDES)
        self._consumer = Consumer(config)
        self._consumer.subscribe(
            [self.topics.telemetry_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        logger.info("consuming %s as a member of group %s (%s)", self.topics.telemetry_topic,
                    self.settings.group_id, self.settings.guarantee)  # fmt: skip

    def _make_commit(self) -> BatchCommit:
        if self.settings.guarantee == "at-least-once":
            return AtLeastOnceCommit(producer_config(self.kafka, self.settings.client_id, **TRANSACTION_OVERRIDES))
        transactional_id = self.settings.transactional_id or (
            f"{self.settings.group_id}-{socket.gethostname()}-{os.getpid()}"
        )
        conf = producer_config(self.kafka, self.settings.client_id, **TRANSACTION_OVERRIDES)
        return TransactionalCommit(conf | {"transactional.id": transactional_id})

    def _close(self) -> None:
        """Leave the group (revocation callbacks run), flush, stop the watcher and the HTTP server."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except (KafkaException, RuntimeError) as exc:
                logger.warning("closing the consumer: %s", exc)
        for closer in (self._commit, self._rebuilder, self._incident_log):
            if closer is not None:
                closer.close()
        self.models.close()
        self.server.stop()
        self.report.aborted = getattr(self._commit, "aborted", 0)
        logger.info("scorer stopped: %s", self.report.summary(), extra={
            "records_scored": self.report.scored, "anomalies": self.report.anomalies,
            "dead_letters": sum(self.report.dead_letters.values()), "active_s": round(self.report.active_s, 3),
            "first_commit_at": self.report.first_commit_at, "history_peak_bytes": self.report.history_peak_bytes,
            "history_evicted": self.report.history_evicted,
        })  # fmt: skip

    # -- the loop --------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._consumer is not None
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self.health.tick()
            swapped = self.models.take_pending()
            if swapped is not None:
                self._use_model(swapped)
            messages = self._consumer.consume(self._batch_size(), self.settings.batch_timeout)
            if messages and self.report.first_record_at is None:
                self.report.first_record_at = time.time()
            if messages or self._to_rebuild:
                self._process_with_retries(messages)
            if messages:
                idle_since = time.monotonic()
            elif self.settings.idle_exit and time.monotonic() - idle_since >= self.settings.idle_exit:
                logger.info("no records for %.0f s: leaving the group", self.settings.idle_exit)
                self.report.stopped_by = "idle exit"
                return
            self._update_lag()
        self.report.stopped_by = self.report.stopped_by or "stop request"

    def _batch_size(self) -> int:
        """Records to consume at most: ``batch_size``, or more for a scorer holding many devices (see
        ``batch_per_device``), up to ten times ``batch_size``."""
        grown = self.settings.batch_per_device * self._history.device_count
        return min(max(self.settings.batch_size, grown), 10 * self.settings.batch_size)

    def _process_with_retries(self, messages: list[Message]) -> None:
        """Process the batch; on a transient fault pause, back off and retry with the same records."""
        held, backoff = messages, 0.5
        while not self.stop.is_set():
            try:
                self._process(held)
                return
            except KafkaClientError as exc:
                if not exc.retriable:
                    raise
                self.metrics.transient_errors.labels(exc.code or "unknown").inc()
                logger.warning("transient fault, retrying in %.1f s: %s", backoff, exc)
                assignments = dict(self._assignments)
                arrived = self._pause_and_wait(backoff)
                held = still_held(held, arrived, assignments, self._assignments)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _pause_and_wait(self, seconds: float) -> list[Message]:
        """Pause fetching but keep polling (membership, rebalances) for ``seconds``; return what arrived."""
        assert self._consumer is not None
        arrived: list[Message] = []
        self._consumer.pause(self._consumer.assignment())
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.health.tick()
            arrived += self._consumer.consume(self.settings.batch_size, min(0.5, max(deadline - time.monotonic(), 0)))
        self._consumer.resume(self._consumer.assignment())
        return arrived

    def _process(self, messages: list[Message]) -> None:
        """Rebuild pending history, then decode, score and commit one batch."""
        started = time.perf_counter()
        if self._to_rebuild:
            self._rebuild()
        good = _without_errors(messages)
        if not good:
            return
        assert self._decoder is not None and self._rebuilder is not None and self._model is not None
        partition = np.fromiter((m.partition() for m in good), dtype=np.int32, count=len(good))
        offset = np.fromiter((m.offset() for m in good), dtype=np.int64, count=len(good))
        decoded = reject_foreign_keys(self._decoder.decode([m.value() for m in good]), [m.key() for m in good])
        batch = decoded.batch
        rows_partition, rows_offset = partition[decoded.index], offset[decoded.index]
        self._rebuilder.complete(self._history, batch, rows_partition, self._decoder)
        scored = score_batch(
            self._model.model, self._model.name, self._model.version, self._history, batch,
            self.topics.telemetry_topic, rows_partition, rows_offset, int(time.time() * 1000),
        )  # fmt: skip
        self._incidents.suppression = self._suppression.refresh()
        incidents = self._incidents.step(scored.anomalies, batch.device_id, batch.event_time_ms)
        outputs = self._anomaly_outputs(scored.anomalies) + self._incident_outputs(incidents)
        outputs += self._dead_letter_outputs(good, decoded)
        if not self._commit_batch(outputs, partition, offset, good):
            return
        self._history.advance(batch, rows_partition, scored.raw, rows_offset)
        evicted = self._history.evict(self.settings.history_mb * 1e6)
        if evicted:
            self.metrics.history_evicted.inc(evicted)
            self.report.history_evicted += evicted
            logger.debug("%d idle devices evicted from history", evicted)
        self.metrics.history_devices.set(self._history.device_count)
        self.metrics.history_bytes.set(self._history.nbytes)
        self.report.history_peak_bytes = max(self.report.history_peak_bytes, self._history.nbytes)
        self._incidents.apply(incidents)
        self.metrics.incidents.labels("opened").inc(incidents.opened)
        self.metrics.incidents.labels("closed").inc(incidents.closed)
        self.metrics.incidents.labels("muted").inc(incidents.muted)
        self._count(len(good), scored, decoded, time.perf_counter() - started)

    def _commit_batch(self, outputs: list[Output], partition: np.ndarray, offset: np.ndarray,
                      good: list[Message]) -> bool:  # fmt: skip
        """Commit outputs and offsets; on abort rewind the batch's partitions to redo it."""
        assert self._commit is not None and self._consumer is not None
        next_offsets = [
            TopicPartition(self.topics.telemetry_topic, int(p), int(offset[partition == p].max()) + 1)
            for p in np.unique(partition)
        ]
        if self._commit.commit(outputs, next_offsets, self._consumer):
            self.report.last_commit_at = time.time()
            if self.report.first_commit_at is None:
                self.report.first_commit_at = self.report.last_commit_at
                logger.info("first batch committed %.1f s after start", time.time() - self.report.started_at)
            return True
        self.metrics.aborted.inc()
        for p in np.unique(partition):
            first = TopicPartition(self.topics.telemetry_topic, int(p), int(offset[partition == p].min()))
            try:
                self._consumer.seek(first)
            except KafkaException as exc:  # revoked meanwhile: its new owner starts from the committed offset
                logger.info("not rewinding partition %d: %s", p, exc)
        return False

    def _anomaly_outputs(self, anomalies: Any) -> list[Output]:
        assert self._encoder is not None
        if not len(anomalies):
            return []
        values = self._encoder.encode(anomalies)
        topic = self.topics.anomaly_topic
        return [(topic, {"key": str(d).encode(), "value": v}) for d, v in zip(anomalies.device_id, values, strict=True)]

    def _incident_outputs(self, step: Step) -> list[Output]:
        if not step.events:
            return []
        assert self._incident_encoder is not None and self._incident_log is not None
        values = self._incident_encoder.encode(step.events)
        topic, log = self.topics.incident_topic, self._incident_log
        return [
            (topic, {"key": e["device_id"].encode(), "value": v, "partition": log.partition_for(e["source_partition"])})
            for e, v in zip(step.events, values, strict=True)
        ]

    def _dead_letter_outputs(self, good: list[Message], decoded: DecodeResult) -> list[Output]:
        outputs = []
        for bad in decoded.bad:
            message = good[bad.index]
            headers = message.headers() or []
            pairs = headers.items() if isinstance(headers, dict) else headers
            record = SourceRecord(
                message.topic() or "",
                message.partition() or 0,
                message.offset() or 0,
                message.key(),
                message.value(),
                [(name, _as_bytes(value)) for name, value in pairs],
            )
            letter = dead_letter(record, bad, self.settings.group_id, self.settings.client_id, self._letter_max_bytes)
            outputs.append((self.topics.dlq_topic, letter))
            logger.warning("dead letter %s[%d]@%d: %s: %s", record.topic, record.partition, record.offset,
                           bad.reason, bad.message, extra={"reason": bad.reason})  # fmt: skip
        return outputs

    def _count(self, consumed: int, scored: ScoredBatch, decoded: DecodeResult, seconds: float) -> None:
        r, m = self.report, self.metrics
        anomalies = len(scored.anomalies)
        r.consumed += consumed
        r.scored += scored.scored
        r.anomalies += anomalies
        r.batches += 1
        m.consumed.inc(consumed)
        m.scored.inc(scored.scored)
        m.anomalies.inc(anomalies)
        m.warming_up.inc(scored.warming_up)
        m.count_flags(scored.scored, anomalies)
        for bad in decoded.bad:
            r.dead_letters[bad.reason] += 1
            m.dead_letters.labels(bad.reason).inc()
        m.batch_seconds.observe(seconds)
        m.batch_records.observe(consumed)

    # -- models, history and rebalances ----------------------------------------------------------------------

    def _use_model(self, loaded: LoadedModel) -> None:
        """Serve ``loaded`` from the next batch on; history restarts if the model needs other readings."""
        model = loaded.model
        if self._decoder is None or self._decoder.channels != model.channels:
            self._decoder = ColumnarTelemetryDecoder(self.registry, model.channels)
        if self._incidents.channels != model.channels:
            self._incidents = IncidentTracker(model.channels, self._incidents.quiet_ms, self._incidents.topic)
            self._to_rebuild |= self._assigned  # its open incidents are read back with the history
        if not self._history.fits(model):
            self._history = DeviceHistory.for_model(model)
        else:  # the same readings serve; the previous model's detector scores do not
            self._history.forget_scores()
            if self._rebuilder is not None:
                self._rebuilder.forget(set(self._assigned))
            self._to_rebuild |= self._assigned
        if self._model is not None:
            self.metrics.model_reloads.inc()
            logger.info("now serving %s version %d (was version %d)", loaded.name, loaded.version,
                        self._model.version)  # fmt: skip
        self._model = loaded
        self.report.model = f"{loaded.name} v{loaded.version}"
        self.metrics.set_model(loaded.name, loaded.version, model.detector_name, self.device, model.config.target_far)
        self.health.model_loaded = True

    def _rebuild(self) -> None:
        assert self._consumer is not None and self._rebuilder is not None and self._decoder is not None
        partitions = sorted(self._to_rebuild)
        wanted = [TopicPartition(self.topics.telemetry_topic, p) for p in partitions]
        try:
            committed = {tp.partition: tp.offset for tp in self._consumer.committed(wanted, timeout=30.0)}
        except KafkaException as exc:
            raise KafkaClientError(f"committed offsets of {partitions}: {exc}", "COMMITTED", retriable=True) from exc
        # Both read-backs may fail (retriable) and are then asked again: nothing is changed until both are read.
        events = self._incident_log.last_events(set(partitions)) if self._incident_log is not None else None
        before = self._rebuilder.records_read
        self._rebuilder.assigned(self._history, committed, self._decoder)
        if events is not None:
            self._incidents.forget(set(partitions))
            reopened = self._incidents.restore(events)
            logger.info("incidents of partitions %s read back: %d open", partitions, reopened)
        self.metrics.rebuild_records.inc(self._rebuilder.records_read - before)
        self._to_rebuild -= set(partitions)
        read = self._rebuilder.records_read - before
        held = self._history.device_count
        logger.info("history rebuilt for partitions %s from %d records read back (%d devices)", partitions, read, held)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {tp.partition for tp in partitions}
        self._assigned |= added
        self._assignment_count += 1
        for p in added:
            self._assignments[p] = self._assignment_count
        self._to_rebuild |= added
        self._set_assignment_gauges()
        logger.info("assigned partitions %s (now %s)", sorted(added), sorted(self._assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # No transaction is open here: batches are committed before consume(), where callbacks run.
        gone = {tp.partition for tp in partitions}
        self._assigned -= gone
        for p in gone:
            self._assignments.pop(p, None)
        self._to_rebuild -= gone
        dropped = self._history.forget(gone)
        self._incidents.forget(gone)
        if self._rebuilder is not None:
            self._rebuilder.forget(gone)
        for p in gone:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(p))
        self._set_assignment_gauges()
        logger.info("revoked partitions %s (now %s), %d history rows dropped", sorted(gone), sorted(self._assigned),
                    dropped)  # fmt: skip

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [tp.partition for tp in partitions]
        logger.warning("lost partitions %s (session timed out): dropping their state", lost)
        self._on_revoke(consumer, partitions)

    def _set_assignment_gauges(self) -> None:
        self.metrics.assigned.set(len(self._assigned))
        self.health.assigned = bool(self._assigned)

    def _update_lag(self) -> None:
        """Consumer lag per partition (cached high watermark minus position), about once a second."""
        if self._consumer is None or not self._assigned or time.monotonic() - self._lag_at < LAG_EVERY_S:
            return
        self._lag_at = time.monotonic()
        tps = [TopicPartition(self.topics.telemetry_topic, p) for p in sorted(self._assigned)]
        for tp in self._consumer.position(tps):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(high - tp.offset, 0))

    def _until_done(self, make: Any) -> Any:
        """``make()``, retried with backoff while it fails with a retriable error (registry or broker down)."""
        backoff = 0.5
        while True:
            try:
                return make()
            except (KafkaClientError, KafkaException) as exc:
                error = exc if isinstance(exc, KafkaClientError) else wrap_kafka_error(exc, "connecting")
                if not error.retriable or self.stop.is_set():
                    raise error from exc
                logger.warning("%s: retrying in %.1f s", error, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def still_held(
    held: list[Message], arrived: list[Message], before: dict[int, int], after: dict[int, int]
) -> list[Message]:
    """The records to retry after a pause: the held ones of partitions assigned throughout (by the same
    assignment), then what arrived. A partition revoked and assigned again during the pause is fetched again
    from its committed offset, so its held records would be scored twice: they are dropped."""
    def same_assignment(message: Message) -> bool:
        partition = message.partition() or 0
        return partition in after and after[partition] == before.get(partition)

    return [m for m in held if same_assignment(m)] + [m for m in arrived if (m.partition() or 0) in after]


def _without_errors(messages: list[Message]) -> list[Message]:
    """The records among ``messages``; error events are logged (and raised if fatal)."""
    records = []
    for message in messages:
        error = message.error()
        if error is None:
            records.append(message)
        elif error.fatal():
            raise KafkaClientError(f"consumer: {error.str()}", code=error.name())
        else:
            logger.warning("consumer: %s", error.str())
    return records
