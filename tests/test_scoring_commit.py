"""Exactly-once batch commits against the real broker when the transactional producer fails mid-commit.

librdkafka can ignore the timeout of ``send_offsets_to_transaction`` when the coordinator went away
(librdkafka issues #5456, #5511), and a coordinator failover can fail the producer fatally; the reliability
suite met both. Stand-ins for them here: a producer whose call blocks, and one that fails fatally once its
commit went through. Either way a new producer with the same ``transactional.id`` must take over, and the
batch must count as committed exactly when it was: nothing lost, nothing visible twice.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from anomstream.config import TopicSettings
from anomstream.kafka_config import consumer_config, producer_config
from anomstream.scoring import commit
from anomstream.scoring.commit import TransactionalCommit
from tests.conftest import Stack


class _FailingAfterCommit:
    """A producer whose ``commit_transaction`` commits, then reports a fatal error (all else is the real one)."""

    def __init__(self, inner: Producer) -> None:
        self._inner = inner

    def commit_transaction(self, *args: Any) -> None:
        self._inner.commit_transaction(*args)
        raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "stand-in for a failover", fatal=True))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Wedging:
    """A producer whose ``send_offsets_to_transaction`` blocks until released (all else is the real one)."""

    def __init__(self, inner: Producer, release: threading.Event) -> None:
        self._inner, self._release = inner, release

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self._release.wait()
        self._inner.send_offsets_to_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _committed_values(stack: Stack, topic: str) -> list[bytes]:
    reader = Consumer(consumer_config(stack.kafka_settings, f"pytest-{uuid.uuid4().hex[:8]}", "pytest-reader"))
    reader.assign([TopicPartition(topic, p, 0) for p in range(6)])
    values: list[bytes] = []
    try:
        for _ in range(20):
            values += [m.value() for m in reader.consume(100, timeout=0.5) if m.error() is None]
    finally:
        reader.close()
    return values


@pytest.mark.slow
def test_a_wedged_transaction_call_aborts_the_batch_and_a_new_producer_takes_over(
    stack: Stack, topics: TopicSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "WEDGED_AFTER_S", 3.0)
    kafka, group = stack.kafka_settings, f"pytest-wedge-{uuid.uuid4().hex[:8]}"
    conf = producer_config(kafka, "pytest-wedge") | {"transactional.id": group, "transaction.timeout.ms": 60_000}
    batches = TransactionalCommit(conf)
    consumer = Consumer(consumer_config(kafka, group, "pytest-wedge"))
    consumer.assign([TopicPartition(topics.telemetry_topic, 0)])  # the batch's partition is this member's
    release = threading.Event()
    wedged = batches.producer
    batches.producer = _Wedging(wedged, release)  # type: ignore[assignment]
    offsets = [TopicPartition(topics.telemetry_topic, 0, 5)]
    try:
        lost = [(topics.anomaly_topic, {"key": b"d", "value": b"from the wedged producer"})]
        assert batches.commit(lost, offsets, consumer) is False
        assert batches.replaced == 1 and batches.aborted == 1 and batches.producer is not wedged

        kept = [(topics.anomaly_topic, {"key": b"d", "value": b"from its replacement"})]
        assert batches.commit(kept, offsets, consumer) is True
        release.set()  # the wedged call may now go on: fenced, it can commit nothing
        assert _committed_values(stack, topics.anomaly_topic) == [b"from its replacement"]
        committed = consumer.committed([TopicPartition(topics.telemetry_topic, 0)], timeout=30)
        assert committed[0].offset == 5
    finally:
        release.set()
        batches.close()
        consumer.close()


@pytest.mark.slow
def test_a_partition_taken_over_meanwhile_does_not_make_an_aborted_batch_look_half_committed(
    stack: Stack, topics: TopicSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker outage of the reliability suite: while the wedged call hung, the group gave partition 1 to
    # the other scorer, which went on past the batch; this member learns of it only in its next poll.
    monkeypatch.setattr(commit, "WEDGED_AFTER_S", 3.0)
    kafka, group = stack.kafka_settings, f"pytest-taken-{uuid.uuid4().hex[:8]}"
    conf = producer_config(kafka, "pytest-taken") | {"transactional.id": group, "transaction.timeout.ms": 60_000}
    batches = TransactionalCommit(conf)
    consumer = Consumer(consumer_config(kafka, group, "pytest-taken"))
    consumer.assign([TopicPartition(topics.telemetry_topic, p) for p in (0, 1)])
    other = Consumer(consumer_config(kafka, group, "pytest-other-member"))
    release = threading.Event()
    batches.producer = _Wedging(batches.producer, release)  # type: ignore[assignment]

    def take_over() -> None:
        other.commit(offsets=[TopicPartition(topics.telemetry_topic, 1, 9)], asynchronous=False)

    timer = threading.Timer(1.0, take_over)
    timer.start()
    try:
        lost = [(topics.anomaly_topic, {"key": b"d", "value": b"never committed"})]
        offsets = [TopicPartition(topics.telemetry_topic, p, 5) for p in (0, 1)]
        assert batches.commit(lost, offsets, consumer) is False  # redone, not a fatal inconsistency
        assert batches.aborted == 1 and batches.replaced == 1
        committed = consumer.committed([TopicPartition(topics.telemetry_topic, p) for p in (0, 1)], timeout=30)
        assert [tp.offset for tp in committed] == [OFFSET_INVALID, 9]
        release.set()
        assert _committed_values(stack, topics.anomaly_topic) == []
    finally:
        timer.join()
        release.set()
        batches.close()
        consumer.close()
        other.close()


@pytest.mark.slow
def test_a_producer_failing_after_its_commit_went_through_counts_the_batch_as_committed(
    stack: Stack, topics: TopicSettings
) -> None:
    kafka, group = stack.kafka_settings, f"pytest-fatal-{uuid.uuid4().hex[:8]}"
    batches = TransactionalCommit(producer_config(kafka, "pytest-fatal") | {"transactional.id": group})
    consumer = Consumer(consumer_config(kafka, group, "pytest-fatal"))
    consumer.assign([TopicPartition(topics.telemetry_topic, 0)])
    failing = batches.producer
    batches.producer = _FailingAfterCommit(failing)  # type: ignore[assignment]
    offsets = [TopicPartition(topics.telemetry_topic, 0, 7)]
    try:
        batch = [(topics.anomaly_topic, {"key": b"d", "value": b"committed once"})]
        assert batches.commit(batch, offsets, consumer) is True  # not redone: that would be a duplicate
        assert batches.replaced == 1 and batches.aborted == 0 and batches.producer is not failing
        assert batches.commit([], [TopicPartition(topics.telemetry_topic, 0, 8)], consumer) is True
        assert _committed_values(stack, topics.anomaly_topic) == [b"committed once"]
    finally:
        batches.close()
        consumer.close()
