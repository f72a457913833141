"""Counting every record of a scenario: what went in, what the scorers committed, what came out, what should have.

The check is the one Kafka's own transaction system tests and Jepsen's checkers make: read every topic to its
end (``read_committed``, as downstream does), key every reading by ``(device_id, seq)``, and compare record
by record with the expectation computed offline by the very model the scorers loaded from the store, over
the known content that was produced:

- lost: an expected anomaly missing from the anomaly topic;
- duplicated: an anomaly present more than once;
- unexpected: an anomaly offline scoring does not give (or with another score, model or source location);
- dead letters: every bad record in the DLQ once, byte for byte (key, value, original headers) with the
  reason expected for it, and no good record there;
- scored: every offset of the telemetry topic covered by the scorer group's committed offsets.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from anomstream.config import KafkaSettings
from anomstream.kafka_config import registry_client
from anomstream.model import AnomalyModel
from anomstream.serde import TelemetryDecoder
from anomstream.telemetry import TelemetryBatch

Key = tuple[str, int]  # (device id, seq): one reading
Location = tuple[int, int]  # (partition, offset) in the telemetry topic
Headers = list[tuple[str, bytes | None]]
SCORE_RTOL = 1e-9  # streamed and offline scores come from the same arithmetic; allow rounding only


@dataclass(frozen=True)
class RawRecord:
    """One record as it sits in a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers


def read_records(kafka: KafkaSettings, topic: str, timeout_s: float = 150.0) -> list[RawRecord]:
    """Every record of ``topic`` up to its current end, ``read_committed``, in partition and offset order.

    The end is each partition's high watermark when the read starts. A read_committed consumer cannot pass
    a transaction still open (one a killed scorer left until the coordinator aborts it), so the read waits
    for that, up to ``timeout_s``, and then fails rather than report a partial topic as complete.
    """
    consumer = Consumer({
        "bootstrap.servers": kafka.bootstrap_servers, "group.id": f"reliability-read-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": False,
    })  # fmt: skip
    records: list[RawRecord] = []
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {}
        for p in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            for message in consumer.consume(5_000, timeout=0.5):
                if message.error() is None:
                    headers = list(message.headers() or [])
                    records.append(RawRecord(message.partition(), message.offset(), message.key(),  # type: ignore[arg-type]
                                             message.value(), headers))  # fmt: skip
            for position in consumer.position([TopicPartition(topic, p) for p in ends]):
                if position.offset >= ends[position.partition]:
                    del ends[position.partition]
            if ends and time.monotonic() > deadline:
                raise AssertionError(f"{topic} could not be read to its end within {timeout_s:.0f} s (an open "
                                     f"transaction?): partitions still short of their end: {ends}")  # fmt: skip
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def committed_offsets(kafka: KafkaSettings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """The consumer group's committed offsets (-1: none); the reading consumer never joins the group."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False, "isolation.level": "read_committed"})  # fmt: skip
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
    except KafkaException:  # coordinator moving (a broker restarting): report nothing committed yet
        return dict.fromkeys(partitions, -1)
    finally:
        consumer.close()
    return {tp.partition: tp.offset if tp.error is None else -1 for tp in found}


def end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    """High watermark of every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "reliability-watermarks"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
    finally:
        consumer.close()


def decode_anomalies(kafka: KafkaSettings, topic: str, records: list[RawRecord]) -> list[dict[str, Any]]:
    """Anomaly records decoded as a downstream consumer would (confluent-kafka's AvroDeserializer)."""
    deserialize = AvroDeserializer(registry_client(kafka))
    context = SerializationContext(topic, MessageField.VALUE)
    return [deserialize(record.value, context) for record in records]


def telemetry_locations(
    kafka: KafkaSettings, records: list[RawRecord]
) -> tuple[dict[Key, list[Location]], set[Location]]:
    """Where each good reading sits in the telemetry topic, and the locations of records that do not decode."""
    result = TelemetryDecoder(registry_client(kafka)).decode([r.value for r in records])
    where: dict[Key, list[Location]] = {}
    for row, index in enumerate(result.index.tolist()):
        record = records[index]
        key = (str(result.batch.device_id[row]), int(result.batch.seq[row]))
        where.setdefault(key, []).append((record.partition, record.offset))
    undecodable = {(records[bad.index].partition, records[bad.index].offset) for bad in result.bad}
    return where, undecodable


def offline_anomalies(model: AnomalyModel, batch: TelemetryBatch) -> dict[Key, float]:
    """(device, seq) -> score of every reading the model flags scoring each device's whole stream at once."""
    result = model.score(batch, explain="none")
    rows = np.flatnonzero(result.flagged)
    return {
        (str(d), int(s)): float(score)
        for d, s, score in zip(batch.device_id[rows], batch.seq[rows], result.score[rows], strict=True)
    }


def header_value(headers: Headers, name: str) -> str | None:
    """The last value of header ``name`` as text (context headers follow the original ones)."""
    found = [value for key, value in headers if key == name]
    return found[-1].decode() if found and found[-1] is not None else None


@dataclass
class Verdict:
    """A scenario's outcome, record by record, and its counts line."""

    scenario: str
    records_in: int = 0
    scored: int = 0
    anomalies: int = 0
    expected_anomalies: int = 0
    dead_letters: int = 0
    wall_s: float = 0.0
    lost: list[Key] = field(default_factory=list)
    duplicated: list[Key] = field(default_factory=list)
    unexpected: list[Key] = field(default_factory=list)
    misscored: list[str] = field(default_factory=list)
    telemetry_duplicates: list[Key] = field(default_factory=list)
    telemetry_missing: list[Key] = field(default_factory=list)
    uncommitted: dict[int, tuple[int, int]] = field(default_factory=dict)
    good_in_dlq: list[Location] = field(default_factory=list)
    bad_not_in_dlq: list[Location] = field(default_factory=list)
    dlq_duplicates: list[Location] = field(default_factory=list)
    dlq_wrong: list[str] = field(default_factory=list)
    process_failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The scenario's counts, one line."""
        return (
            f"{self.scenario}: records in {self.records_in:,}, scored {self.scored:,}, anomalies {self.anomalies:,} "
            f"(expected {self.expected_anomalies:,}), DLQ {self.dead_letters:,}, lost {len(self.lost):,}, "
            f"duplicated {len(self.duplicated):,}, unexpected {len(self.unexpected):,}, wall {self.wall_s:.1f} s"
        )

    def problems(self) -> list[str]:
        """Every way the scenario broke a promise, with examples; empty when it kept them all."""
        checks: list[tuple[str, list[Any]]] = [
            ("expected anomalies missing from the anomaly topic (lost)", self.lost),
            ("anomalies on the topic more than once (duplicated)", self.duplicated),
            ("anomalies offline scoring does not give (unexpected)", self.unexpected),
            ("anomalies with another score, model or source location", self.misscored),
            ("readings more than once in telemetry", self.telemetry_duplicates),
            ("produced readings missing from telemetry", self.telemetry_missing),
            ("partitions the scorer group did not commit to the end (partition: (committed, end))",
             list(self.uncommitted.items())),
            ("good records in the DLQ ((partition, offset))", self.good_in_dlq),
            ("bad records missing from the DLQ ((partition, offset))", self.bad_not_in_dlq),
            ("bad records in the DLQ more than once", self.dlq_duplicates),
            ("dead letters not byte for byte or with the wrong reason", self.dlq_wrong),
            ("processes that failed", self.process_failures),
        ]  # fmt: skip
        return [f"{len(items):,} {what}, e.g. {sorted(items, key=str)[:5]}" for what, items in checks if items]

    def report(self) -> str:
        return "\n".join([self.line(), *self.problems(), *self.notes])


@dataclass
class Expectation:
    """What a scenario should end with.

    Attributes:
        good: the good readings produced (known content), each device's rows in ``seq`` order.
        model: the model the scorers serve (same scores for every version they may carry).
        model_versions: the (name, version) pairs anomalies may carry.
        bad: source location -> the DLQ reason each bad record must carry.
        telemetry_exact: also require telemetry to hold every good reading exactly once.
    """

    good: TelemetryBatch
    model: AnomalyModel
    model_versions: set[tuple[str, int]]
    bad: dict[Location, str] = field(default_factory=dict)
    telemetry_exact: bool = True


def account(scenario: str, kafka: KafkaSettings, topics: Any, group: str, expectation: Expectation,
            started: float) -> Verdict:  # fmt: skip
    """Read every topic of a scenario to its end and compare it with ``expectation`` (module docstring)."""
    verdict = Verdict(scenario)
    telemetry = read_records(kafka, topics.telemetry_topic)
    verdict.records_in = len(telemetry)
    where, _ = telemetry_locations(kafka, telemetry)
    produced = set(zip(expectation.good.device_id.tolist(), expectation.good.seq.tolist(), strict=True))
    if expectation.telemetry_exact:
        verdict.telemetry_duplicates = [k for k, places in where.items() if len(places) > 1]
        verdict.telemetry_missing = sorted(produced - set(where))
    _account_offsets(verdict, kafka, topics.telemetry_topic, group, telemetry, expectation)
    _account_anomalies(verdict, kafka, topics.anomaly_topic, expectation, where)
    _account_dead_letters(verdict, kafka, topics.dlq_topic, topics.telemetry_topic, telemetry, expectation)
    verdict.wall_s = time.monotonic() - started
    return verdict


def _account_offsets(verdict: Verdict, kafka: KafkaSettings, topic: str, group: str, telemetry: list[RawRecord],
                     expectation: Expectation) -> None:  # fmt: skip
    ends = end_offsets(kafka, topic)
    committed = committed_offsets(kafka, group, topic, sorted(ends))
    verdict.uncommitted = {p: (committed[p], end) for p, end in ends.items() if end > 0 and committed[p] < end}
    covered = [r for r in telemetry if r.offset < committed.get(r.partition, -1)]
    verdict.scored = sum((r.partition, r.offset) not in expectation.bad for r in covered)


def _account_anomalies(verdict: Verdict, kafka: KafkaSettings, topic: str, expectation: Expectation,
                       where: dict[Key, list[Location]]) -> None:  # fmt: skip
    rows = decode_anomalies(kafka, topic, read_records(kafka, topic))
    expected = offline_anomalies(expectation.model, expectation.good)
    seen = Counter((row["device_id"], int(row["seq"])) for row in rows)
    verdict.anomalies, verdict.expected_anomalies = len(rows), len(expected)
    verdict.lost = sorted(set(expected) - set(seen))
    verdict.duplicated = sorted(k for k, n in seen.items() if n > 1)
    verdict.unexpected = sorted(set(seen) - set(expected))
    for row in rows:
        key = (row["device_id"], int(row["seq"]))
        if key not in expected:
            continue
        want = expected[key]
        if abs(row["score"] - want) > SCORE_RTOL * max(abs(want), 1.0):
            verdict.misscored.append(f"{key}: score {row['score']!r}, offline {want!r}")
        if (row["model"], row["model_version"]) not in expectation.model_versions:
            verdict.misscored.append(f"{key}: model {row['model']} v{row['model_version']}")
        if (row["source_partition"], row["source_offset"]) not in where.get(key, []):
            verdict.misscored.append(f"{key}: source {row['source_partition']}@{row['source_offset']}, "
                                     f"telemetry has it at {where.get(key)}")  # fmt: skip


def _account_dead_letters(verdict: Verdict, kafka: KafkaSettings, topic: str, source_topic: str,
                          telemetry: list[RawRecord], expectation: Expectation) -> None:  # fmt: skip
    letters = read_records(kafka, topic)
    verdict.dead_letters = len(letters)
    by_location = {(r.partition, r.offset): r for r in telemetry}
    sources: Counter[Location] = Counter()
    for letter in letters:
        partition = header_value(letter.headers, "__connect.errors.partition")
        offset = header_value(letter.headers, "__connect.errors.offset")
        if partition is None or offset is None:
            verdict.dlq_wrong.append(f"dead letter at DLQ offset {letter.offset} without source headers")
            continue
        source = (int(partition), int(offset))
        sources[source] += 1
        if source not in expectation.bad:
            verdict.good_in_dlq.append(source)
            continue
        original = by_location.get(source)
        reason, wanted = header_value(letter.headers, "reason"), expectation.bad[source]
        problems = []
        if original is None:
            problems.append("no such telemetry record")
        else:
            if (letter.key, letter.value) != (original.key, original.value):
                problems.append("key or value changed")
            if letter.headers[: len(original.headers)] != original.headers:
                problems.append("original headers changed")
        if reason != wanted:
            problems.append(f"reason {reason!r}, expected {wanted!r}")
        if header_value(letter.headers, "__connect.errors.topic") != source_topic:
            problems.append("__connect.errors.topic is not the telemetry topic")
        for name in ("exception.class.name", "exception.message"):
            if not header_value(letter.headers, f"__connect.errors.{name}"):
                problems.append(f"no __connect.errors.{name}")
        if problems:
            verdict.dlq_wrong.append(f"{source}: {', '.join(problems)}")
    reasons = Counter(header_value(letter.headers, "reason") for letter in letters)
    if reasons:
        verdict.notes.append(f"dead letters by reason: {dict(sorted(reasons.items(), key=str))}")
    verdict.dlq_duplicates = [s for s, n in sources.items() if n > 1]
    verdict.bad_not_in_dlq = sorted(set(expectation.bad) - set(sources))
