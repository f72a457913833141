"""Exactly-once batch commits against the real broker: a transaction call that never returns.

librdkafka can ignore the timeout of ``send_offsets_to_transaction`` when the coordinator went away
(librdkafka issues #5456, #5511); the reliability suite's broker outage wedged scorers that way for good.
Here a producer whose call blocks stands in for it: the batch must count as aborted, a new producer with the
same ``transactional.id`` must take over (fencing the wedged one and aborting its open transaction), and
only the next, committed batch may be visible to ``read_committed`` readers.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from anomstream.config import TopicSettings
from anomstream.kafka_config import consumer_config, producer_config
from anomstream.scoring import commit
from anomstream.scoring.commit import TransactionalCommit
from tests.conftest import Stack


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
    consumer = Consumer(consumer_config(kafka, group, "pytest-wedge"))  # group metadata only: never subscribes
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
