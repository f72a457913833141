"""Committing a batch: its anomaly and dead-letter records together with its consumed offsets.

Exactly-once (:class:`TransactionalCommit`): one Kafka transaction per batch holds the produced records and
the consumed offsets (``send_offsets_to_transaction`` with the consumer's group metadata, so a scorer that
lost its partitions in a rebalance is fenced, KIP-447). Downstream ``read_committed`` consumers see a
batch's records exactly when its offsets are committed. A transaction that must be aborted leaves nothing
behind; the caller rewinds and scores the batch again. Retriable errors of the commit calls are retried
(librdkafka's own rules for which calls may be repeated); fatal ones end the scorer.

The producer itself can fail mid-commit. A transaction call may never return: librdkafka can ignore the
timeout of ``send_offsets_to_transaction`` while the coordinator is away (librdkafka issues #5456 and
#5511; the reliability suite's broker outage wedged both scorers this way, for good). Or a coordinator
failover makes the producer fail fatally (``INVALID_TXN_STATE`` when the reliability suite killed one of
three brokers). Each call therefore runs in a helper thread and is given up after its timeout and a margin,
and a wedged or fatally failed producer is replaced by a new one with the same ``transactional.id``, whose
``init_transactions`` fences the old one and completes its transaction one way or the other (a wedged one
is set aside, never closed: a thread is still inside it). Whether the batch was committed is then read
from the group's committed offsets: committed, it counts as done; else as aborted, to be redone. Only a
producer fenced by another process, or denied access, ends the scorer.

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
from anomstream.kafka_config import kafka_error, wrap_kafka_error

logger = logging.getLogger(__name__)

Output = tuple[str, dict[str, Any]]  # (topic, Producer.produce keyword arguments)
CALL_TIMEOUT_S = 30.0
RETRY_FOR_S = 120.0  # give up retrying a transaction call after this long, and abort instead
WEDGED_AFTER_S = CALL_TIMEOUT_S + 15.0  # a call still running this long after it began is not coming back
REPLACEMENTS_PER_HOUR = 10  # beyond this something is wrong that replacing the producer does not fix
# Fatal errors that a new producer would only run into again (or that fence another process): not replaced.
# Known gap: librdkafka reports a producer fenced by a newer instance as its local ``_FENCED``, which is not
# here: two scorers with one transactional.id then replace their producers and fence each other until one
# gives up (reliability scenario 8). Adding it ended the scorers in the broker-outage and three-broker
# scenarios, where a coordinator failover reports the same code: telling the two apart is still to do.
_FINAL = {"PRODUCER_FENCED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
          "TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED"}  # fmt: skip


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
        self._replaced_at: list[float] = []
        self._retired: list[Producer] = []  # kept referenced: a helper thread may still be inside one
        self.producer = self._initialised_producer()

    @property
    def replaced(self) -> int:
        """How many times the producer was replaced."""
        return len(self._replaced_at)

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
        except (_Wedged, KafkaException) as exc:
            error = kafka_error(exc)
            if error is not None and (not error.fatal() or error.name() in _FINAL):
                raise wrap_kafka_error(exc, "exactly-once commit of a scored batch") from exc  # type: ignore[arg-type]
            self._replace(exc)
        if self._committed_after_all(offsets, consumer):
            return True
        self.aborted += 1
        return False

    def _replace(self, failure: BaseException) -> None:
        """Set the failed producer aside and take a new one with the same ``transactional.id``."""
        now = time.monotonic()
        self._replaced_at = [t for t in self._replaced_at if now - t < 3600.0] + [now]
        if len(self._replaced_at) > REPLACEMENTS_PER_HOUR:
            raise KafkaClientError(f"transactional producer failed again ({failure}) after {REPLACEMENTS_PER_HOUR} "
                                   "replacements within an hour: giving up", "TXN_PRODUCER_FAILING")  # fmt: skip
        logger.error("transactional producer failed mid-commit (%s): replacing it", failure)
        self._retired.append(self.producer)
        self.producer = self._initialised_producer()

    def _committed_after_all(self, offsets: list[TopicPartition], consumer: Consumer) -> bool:
        """Whether a batch whose producer failed mid-commit was committed (the new producer's initialisation
        completed its transaction one way or the other); read from the group's committed offsets of the
        batch's partitions this member still owns, as far as it knows (a rebalance may have given some to
        another member, which commits them from then on)."""
        owned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        mine = [tp for tp in offsets if (tp.topic, tp.partition) in owned]
        if not mine:
            return False  # nothing to redo here: the partitions' new owners start from the committed offsets
        deadline = time.monotonic() + RETRY_FOR_S
        problem: object
        while True:
            try:
                found = consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in mine], CALL_TIMEOUT_S)
                problem = next((f.error for f in found if f.error is not None), None)
            except KafkaException as exc:
                problem = exc
            if problem is None:
                break
            if time.monotonic() > deadline:
                raise KafkaClientError(f"cannot tell whether a batch was committed ({problem}): stopping rather "
                                       "than risk a gap or a duplicate", "TXN_OUTCOME_UNKNOWN")  # fmt: skip
            time.sleep(1.0)
        # Committed, the transaction moved every partition to the batch's offsets or, once the partition went
        # to another member that went on from there, past them. One partition behind them proves it aborted;
        # those ahead of it were taken over (our assignment is only updated in the next poll's callbacks).
        ahead = [f.partition for f, tp in zip(found, mine, strict=True) if f.offset >= tp.offset]
        committed = len(ahead) == len(mine)
        if ahead and not committed:
            logger.warning("partitions %s were committed past the batch by another member meanwhile", ahead)
        logger.warning("the batch's transaction was %s", "committed after all" if committed else "aborted")
        return committed

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
            error = kafka_error(exc)
            if error is not None and error.fatal():
                raise  # commit() decides: replace the producer, or stop
            if error is None or not (error.txn_requires_abort() or error.retriable()):
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
            error = kafka_error(exc)
            if error is None or not error.retriable() or time.monotonic() > deadline:
                raise
            logger.warning("%s: %s (retrying in %.1f s)", doing, error.str(), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

