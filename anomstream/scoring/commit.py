"""Committing a batch: its anomaly and dead-letter records together with its consumed offsets.

Exactly-once (:class:`TransactionalCommit`): one Kafka transaction per batch holds the produced records and
the consumed offsets (``send_offsets_to_transaction`` with the consumer's group metadata, so a scorer that
lost its partitions in a rebalance is fenced, KIP-447). Downstream ``read_committed`` consumers see a
batch's records exactly when its offsets are committed. A transaction that must be aborted leaves nothing
behind; the caller rewinds and scores the batch again. Retriable errors of the commit calls are retried
(librdkafka's own rules for which calls may be repeated); fatal ones end the scorer.

A transaction call can also never return: librdkafka may ignore the timeout of
``send_offsets_to_transaction`` while the coordinator is away (librdkafka issues #5456 and #5511; the
reliability suite's broker-outage scenario wedged both scorers this way, for good, once the broker was
back). So each call runs in a helper thread and is given up after its timeout and a margin; the wedged
producer is then set aside (never closed: a thread is still inside it) and replaced by a new one with the
same ``transactional.id``, whose ``init_transactions`` fences it and aborts its open transaction. The batch
counts as aborted and is redone.

At-least-once (:class:`AtLeastOnceCommit`): produce, flush, and only then commit the offsets; a crash
between the two replays the batch (duplicates possible, no loss).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from anomstream.errors import KafkaClientError
from anomstream.kafka_config import wrap_kafka_error

logger = logging.getLogger(__name__)

Output = tuple[str, dict[str, Any]]  # (topic, Producer.produce keyword arguments)
CALL_TIMEOUT_S = 30.0
RETRY_FOR_S = 120.0  # give up retrying a transaction call after this long, and abort instead
WEDGED_AFTER_S = CALL_TIMEOUT_S + 15.0  # a call still running this long after it began is not coming back


class BatchCommit(Protocol):
    """Writes a batch's outputs and commits its offsets; ``False`` means "aborted: rewind and redo"."""

    def commit(self, outputs: list[Output], offsets: list[TopicPartition], consumer: Consumer) -> bool: ...

    def close(self) -> None: ...


def _produce_all(producer: Producer, outputs: list[Output], **extra: Any) -> None:
    for topic, kwargs in outputs:
        while True:
            try:
                producer.produce(topic, **kwargs, **extra)
                break
            except BufferError:  # local queue full: let librdkafka send, then try again
                producer.poll(0.1)


class TransactionalCommit:
    """One transaction per batch (see the module docstring).

    Args:
        producer_conf: producer configuration with ``transactional.id`` set.
    """

    def __init__(self, producer_conf: dict[str, Any]) -> None:
        self._conf = producer_conf
        self.aborted = 0
        self.replaced = 0
        self._wedged: list[Producer] = []  # kept referenced: a helper thread may still be inside them
        self.producer = self._initialised_producer()

    def _initialised_producer(self) -> Producer:
        producer = Producer(self._conf)
        try:
            _retry(lambda: producer.init_transactions(CALL_TIMEOUT_S), "initialising transactions")
        except _Wedged as exc:
            raise KafkaClientError(f"initialising transactions: {exc}", "TXN_WEDGED") from exc
        return producer

    def commit(self, outputs: list[Output], offsets: list[TopicPartition], consumer: Consumer) -> bool:
        """Produce ``outputs`` and commit ``offsets`` atomically; ``False`` if the transaction was aborted."""
        try:
            return self._commit(outputs, offsets, consumer)
        except _Wedged as exc:
            logger.error("%s: replacing the transactional producer; it is fenced and its transaction aborted", exc)
            self._wedged.append(self.producer)
            self.producer = self._initialised_producer()
            self.replaced += 1
            self.aborted += 1
            return False

    def _commit(self, outputs: list[Output], offsets: list[TopicPartition], consumer: Consumer) -> bool:
        try:
            self.producer.begin_transaction()
            _produce_all(self.producer, outputs)
            metadata = consumer.consumer_group_metadata()
            send = self.producer.send_offsets_to_transaction
            _retry(lambda: send(offsets, metadata, CALL_TIMEOUT_S), "sending offsets")
            _retry(lambda: self.producer.commit_transaction(CALL_TIMEOUT_S), "committing")
            return True
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None or error.fatal() or not (error.txn_requires_abort() or error.retriable()):
                raise wrap_kafka_error(exc, "exactly-once commit of a scored batch") from exc
            logger.warning("aborting the batch's transaction: %s", error.str())
            _retry(lambda: self.producer.abort_transaction(CALL_TIMEOUT_S), "aborting")
            self.aborted += 1
            return False
        finally:
            self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(CALL_TIMEOUT_S)


class AtLeastOnceCommit:
    """Produce and flush, then commit the offsets (see the module docstring).

    Args:
        producer_conf: an idempotent producer's configuration.
    """

    def __init__(self, producer_conf: dict[str, Any]) -> None:
        self.producer = Producer(producer_conf)
        self._failures: list[str] = []

    def commit(self, outputs: list[Output], offsets: list[TopicPartition], consumer: Consumer) -> bool:
        """Produce ``outputs``, wait for every delivery, then commit ``offsets``; ``False``: redo the batch."""
        self._failures.clear()
        _produce_all(self.producer, outputs, on_delivery=self._on_delivery)
        left = self.producer.flush(CALL_TIMEOUT_S)
        if left or self._failures:
            logger.warning("%d records undelivered (%s): the batch will be redone", left + len(self._failures),
                           self._failures[:1])  # fmt: skip
            return False
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partitions: their new owner redoes what we did (duplicates).
            logger.warning("offset commit failed, records may be scored again: %s", exc)
        return True

    def close(self) -> None:
        self.producer.flush(CALL_TIMEOUT_S)

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(error.str())


class _Wedged(Exception):
    """A transaction call did not return long after its timeout (see the module docstring)."""


def _bounded(call: Callable[[], object], doing: str) -> None:
    """``call()`` in a helper thread; raises :class:`_Wedged` if it is still running after ``WEDGED_AFTER_S``."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    helper = threading.Thread(target=run, name=f"txn-{doing}", daemon=True)
    helper.start()
    helper.join(WEDGED_AFTER_S)
    if helper.is_alive():
        raise _Wedged(f"{doing} did not return within {WEDGED_AFTER_S:.0f} s")
    if failure:
        raise failure[0]


def _retry(call: Callable[[], object], doing: str) -> None:
    """Repeat ``call`` while it fails with a retriable error (for up to ``RETRY_FOR_S``), each try bounded."""
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.1
    while True:
        try:
            _bounded(call, doing)
            return
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None or not error.retriable() or time.monotonic() > deadline:
                raise
            logger.warning("%s: %s (retrying in %.1f s)", doing, error.str(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

