"""`anomstream score` against the real stack: the anomaly topic equals offline scoring, exactly.

Every test runs real scorer processes (``anomstream score``) in a fresh set of topics and a fresh model store,
and reads the anomaly topic the way a downstream user does (``read_committed``). The expected anomalies are
computed offline with the very model the scorers load from the store (``AnomalyModel.score`` over each
device's whole stream, the ``anomstream eval`` code path), so any lost, duplicated or differently scored
reading shows up as a difference of sets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from anomstream.config import KafkaSettings, TopicSettings
from anomstream.incidents import DEFAULT_QUIET_S, IncidentTracker, offline_incidents
from anomstream.model import AnomalyModel
from anomstream.model_store import CURRENT, ModelStore, announce
from anomstream.producer import PRODUCER_OVERRIDES, ProducerSettings, run_producer
from anomstream.scoring.anomalies import score_batch
from anomstream.scoring.state import DeviceHistory
from anomstream.serde import TelemetryEncoder, wire_header
from anomstream.skab_eval import evaluate_file
from anomstream.sources import read_skab_file
from anomstream.synthetic import FleetSpec, generate_fleet
from anomstream.tail import AnomalyReader, incident_row
from anomstream.telemetry import TelemetryBatch
from anomstream.trainer import TrainSettings, train
from tests.conftest import SHARED_DATA

SKAB = SHARED_DATA / "skab" / "data" / "valve1"
SKAB_FILES = ("0.csv", "3.csv", "5.csv", "9.csv")  # ~4,400 readings, plenty of labelled anomalies
TINY_CONV_AE = {"window": 8, "channels": [8, 4], "kernel_size": 3, "max_epochs": 3}
FAST_IFOREST = {"n_estimators": 50}
# A killed member leaves the group after the session timeout: keep it at the broker's minimum in tests.
FAST_GROUP = json.dumps({"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"})

Key = tuple[str, int]  # (device id, seq)


@dataclass
class ScorerProcess:
    """A running `anomstream score` and its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def messages(self) -> list[str]:
        return [entry.get("message", "") for entry in self.lines()]

    def wait_for(self, pattern: str, timeout_s: float = 90.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.messages():
                if re.search(pattern, message):
                    return message
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no log line matching {pattern!r} from the scorer:\n{self.log.read_text()[-3000:]}")

    def finish(self, timeout_s: float = 180.0) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def scorer_env(topic_env: dict[str, str]) -> dict[str, str]:
    """``topic_env`` with a consumer group of the test's own (a shared group would rebalance with others)."""
    return topic_env | {"ANOMSTREAM_SCORER_GROUP": f"pytest-scorer-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def scorers(topic_env: dict[str, str], tmp_path: Path) -> Iterator[list[ScorerProcess]]:
    """Started scorers (append with :func:`start_scorer`); any still running at the end are killed."""
    started: list[ScorerProcess] = []
    yield started
    for scorer in started:
        if scorer.process.poll() is None:
            scorer.process.kill()
            scorer.process.wait()


def start_scorer(started: list[ScorerProcess], env: dict[str, str], tmp_path: Path, *args: str) -> ScorerProcess:
    log = tmp_path / f"scorer-{len(started)}.log"
    command = [sys.executable, "-m", "anomstream", "--log-format", "json", "score", *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    scorer = ScorerProcess(process, log)
    started.append(scorer)
    return scorer


def skab_subset(tmp_path: Path) -> Path:
    """A folder ``valve1/`` with a few SKAB files (device ids ``skab-valve1-N`` as for the whole folder)."""
    folder = tmp_path / "data" / "valve1"
    folder.mkdir(parents=True)
    for name in SKAB_FILES:
        (folder / name).symlink_to(SKAB / name)
    return folder


def anomalies(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    """Every anomaly on ``topic`` (read_committed), as ``anomstream tail --json`` rows."""
    return [row for chunk in AnomalyReader(kafka, topic).rows(idle_timeout_s=5.0) for row in chunk]


def keys_of(rows: list[dict[str, Any]]) -> list[Key]:
    return [(row["device_id"], int(row["seq"])) for row in rows]


def offline_flags(model: AnomalyModel, batches: list[TelemetryBatch]) -> set[Key]:
    """(device, seq) of every reading the model flags when it scores each device's whole stream at once."""
    flagged: set[Key] = set()
    for batch in batches:
        result = model.score(batch, explain="none")
        flagged |= {(str(d), int(s)) for d, s in zip(batch.device_id[result.flagged], batch.seq[result.flagged],
                                                      strict=True)}  # fmt: skip
    return flagged


def offline_incidents_of(model: AnomalyModel, batches: list[TelemetryBatch], topic: str) -> dict[str, dict[str, Any]]:
    """The last event of every incident an offline pass over each device's whole stream gives, as
    ``anomstream tail --incidents --json`` rows."""
    found: dict[str, dict[str, Any]] = {}
    for batch in batches:
        partition, offset = np.zeros(len(batch), dtype=np.int32), np.arange(len(batch))
        scored = score_batch(model, "m", 1, DeviceHistory.for_model(model), batch, topic, partition, offset, 0)
        tracker = IncidentTracker(model.channels, int(DEFAULT_QUIET_S * 1000), topic)
        for incident_id, event in offline_incidents(tracker, scored.anomalies, batch.device_id,
                                                    batch.event_time_ms).items():  # fmt: skip
            found[incident_id] = incident_row(event)
    return found


def per_device(batch: TelemetryBatch) -> list[TelemetryBatch]:
    return [batch.take(batch.device_id == device) for device in np.unique(batch.device_id)]


def produce(kafka: KafkaSettings, topic: str, source: str, rate: float | None = None, **fleet: Any) -> None:
    settings = ProducerSettings(source=source, topic=topic, rate=rate, **fleet)
    assert run_producer(settings, kafka, show_progress=False).ok


def publish(store: ModelStore, name: str, model: AnomalyModel, kafka: KafkaSettings, topics: TopicSettings) -> int:
    """Publish ``model`` as the current version of ``name`` and announce it, as the trainer does."""
    result = store.publish(name, model, promote="always")
    announce(kafka, topics.models_topic, name, result.version, result.manifest)
    return result.version


# -- SKAB through producer -> scorers: the anomaly topic equals offline scoring -------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("detector,scorer_count", [("iforest", 1), ("iforest", 3), ("conv-ae", 1), ("conv-ae", 3)])
def test_streamed_skab_anomalies_equal_offline_flags(
    stack: Any,
    topics: TopicSettings,
    topic: str,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
    detector: str,
    scorer_count: int,
) -> None:
    kafka = stack.kafka_settings
    data = skab_subset(tmp_path)
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    # Train from another topic holding the same files, so that scoring starts on an empty telemetry topic
    # with every scorer already in the group, and the stream arrives while they run.
    produce(kafka, topic, f"skab:{data}")
    # a generous false-alarm rate: what is compared is the flags, and there must be many of them; each
    # device's threshold from its own scores, so that its flags can be compared with `eval skab`'s below
    params = (TINY_CONV_AE if detector == "conv-ae" else {}) | {"target_far": 0.02, "pooled_tail": False}
    training = TrainSettings.model_validate(
        {"name": "skab", "model": detector, "per_device": True, "train_records": 400, "params": params}
    )
    train(training, kafka, topics.model_copy(update={"telemetry_topic": topic}), store, show_progress=False)

    env = scorer_env | {"ANOMSTREAM_KAFKA_EXTRA_CONFIG": FAST_GROUP}
    first = [start_scorer(scorers, env, tmp_path, "--idle-exit", "10") for _ in range(max(scorer_count - 1, 1))]
    for scorer in first:
        scorer.wait_for(r"assigned partitions \[\d")
    producing = _produce_in_background(kafka, topics.telemetry_topic, "--source", f"skab:{data}", "--rate", "1500")
    if scorer_count > 1:  # the last one joins mid-stream: a rebalance, and history rebuilt from read-back
        time.sleep(1.5)
        start_scorer(scorers, env, tmp_path, "--idle-exit", "10")
    assert producing.wait(120) == 0
    assert [s.finish() for s in scorers] == [0] * scorer_count

    rows = anomalies(kafka, topics.anomaly_topic)
    loaded = store.load("skab")
    files = [read_skab_file(data / name) for name in SKAB_FILES]
    expected = offline_flags(loaded.model, files)
    streamed = keys_of(rows)
    assert len(streamed) == len(set(streamed)), "duplicates on the anomaly topic"
    assert set(streamed) == expected
    assert len(expected) > 100
    assert {(r["model"], r["model_version"]) for r in rows} == {("skab", loaded.version)}
    # the incidents of the offline pass, each opened once, across the rebalance
    events = [row for chunk in AnomalyReader(kafka, topics.incident_topic, to_row=incident_row).rows(
        idle_timeout_s=5.0) for row in chunk]  # fmt: skip
    assert max(Counter(e["incident_id"] for e in events if e["state"] == "open").values()) == 1
    last = {e["incident_id"]: (e["start_time"], e["end_time"], e["readings"]) for e in events}
    offline = offline_incidents_of(loaded.model, files, topics.telemetry_topic)
    assert last == {i: (e["start_time"], e["end_time"], e["readings"]) for i, e in offline.items()}
    for row in rows[:50]:
        assert abs(sum(row["contributions"].values()) - 1.0) < 1e-9 and row["score"] > row["threshold"]
    if detector == "iforest" and scorer_count == 1:  # and the same as `anomstream eval skab` on the test rows
        kept = loaded.model.device_detectors
        own = [(n, b) for n, b in zip(SKAB_FILES, files, strict=True) if str(b.device_id[0]) in kept]
        assert own  # a device no better on its own than the global detector is scored by the global one
        for name, batch in own:
            device = str(batch.device_id[0])
            evaluated = evaluate_file(data / name, "iforest", train_rows=400, params=params)
            assert evaluated is not None
            offline_test = {(device, 400 + int(i)) for i in np.flatnonzero(evaluated.flagged)}
            assert {k for k in set(streamed) if k[0] == device and k[1] >= 400} == offline_test


# -- bad records: each in the dead-letter topic with its reason; the good ones around them scored ----------------


def _bad_records(encoder: TelemetryEncoder, good: TelemetryBatch) -> list[tuple[str, bytes, bytes]]:
    """(expected reason, key, value) for each kind of bad record, keyed like good records of the fleet."""
    import io

    import fastavro

    from anomstream.serde import load_schema

    schema = json.loads(load_schema("telemetry").replace('"logicalType": "timestamp-millis"', '"note": ""'))
    parsed = fastavro.parse_schema(schema)

    def written(channels: dict[str, float]) -> bytes:
        body = io.BytesIO()
        record = {"device_id": "sim-0001", "event_time": 1, "seq": 10**6, "channels": channels, "label": None}
        fastavro.schemaless_writer(body, parsed, record)
        return wire_header(encoder.schema_id) + body.getvalue()

    readings = {name: 0.5 for name in good.channels}
    valid = encoder.encode(good.take(slice(0, 1)))[0]
    return [
        ("undecodable", b"sim-0001", wire_header(encoder.schema_id) + b"\xff\xfe garbage that is no Avro record"),
        ("bad-magic", b"sim-0002", b"\x07" + valid[1:]),
        ("unknown-schema", b"sim-0000", wire_header(2_000_000_000) + valid[5:]),
        ("non-finite", b"sim-0001", written(readings | {good.channels[2]: float("nan")})),
        ("missing-channel", b"sim-0002", written({k: v for k, v in readings.items() if k != good.channels[0]})),
    ]


def _largest_accepted(producer: Producer, topic: str, key: bytes, on_delivery: Any) -> bytes:
    """Produce the largest undecodable value the producer takes (just under its 1,000,000-byte limit)."""
    for size in range(999_990, 990_000, -10):
        value = b"\x07" * size
        try:
            producer.produce(topic, value=value, key=key, headers=[("h", b"x" * 10)], on_delivery=on_delivery)
        except (KafkaException, BufferError):
            continue
        return value
    raise AssertionError("the producer took no record of 990,000 bytes or more")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_records_go_to_the_dead_letter_topic_and_good_ones_are_scored(
    stack: Any,
    topics: TopicSettings,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
) -> None:
    kafka = stack.kafka_settings
    fleet = generate_fleet(FleetSpec(devices=3, records=3_000, seed=9, anomaly_rate=0.03))
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    model = AnomalyModel.fit(fleet.take(slice(0, 1_200)), "iforest", per_device=True, params=FAST_IFOREST)
    publish(store, "fleet", model, kafka, topics)
    encoder = TelemetryEncoder(kafka_registry(kafka), topics.telemetry_topic)
    partitioner = PRODUCER_OVERRIDES["partitioner"]  # as `anomstream produce` keys devices to partitions
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "partitioner": partitioner})
    delivered: dict[bytes, tuple[int, int]] = {}

    def remember(error: Any, message: Any) -> None:
        assert error is None
        delivered[message.value()] = (message.partition(), message.offset())

    halves = (fleet.take(slice(0, 1_500)), fleet.take(slice(1_500, None)))
    bad = _bad_records(encoder, fleet)
    for half, bad_part in zip(halves, (bad[:3], bad[3:]), strict=True):
        for key, value in zip(half.device_id, encoder.encode(half), strict=True):
            producer.produce(topics.telemetry_topic, value=value, key=str(key).encode())
        for reason, key, value in bad_part:
            headers: list[tuple[str, str | bytes | None]] = [("origin", b"pytest"), ("expected", reason.encode())]
            producer.produce(topics.telemetry_topic, value=value, key=key, headers=headers, on_delivery=remember)
    # A poison pill: as large as the broker accepts, so that its dead letter, headers added, would not be.
    pill = _largest_accepted(producer, topics.telemetry_topic, b"sim-0002", remember)
    assert producer.flush(30) == 0

    scorer = start_scorer(scorers, scorer_env, tmp_path, "--idle-exit", "6")
    assert scorer.finish() == 0
    assert sum("loaded model" in m for m in scorer.messages()) == 1  # one process, never restarted
    assert any("scored 3,000 of 3,006 records" in m for m in scorer.messages())

    letters = read_all(kafka, topics.dlq_topic)
    assert len(letters) == len(bad) + 1
    (reference,) = [letter for letter in letters if letter["headers"].get("payload.truncated") == b"true"]
    assert reference["value"] == pill[:1024] and reference["headers"]["reason"] == b"bad-magic"
    assert reference["headers"]["payload.size"] == str(len(pill)).encode()
    assert reference["headers"]["payload.sha256"] == hashlib.sha256(pill).hexdigest().encode()
    assert reference["headers"]["__connect.errors.offset"] == str(delivered[pill][1]).encode()
    by_value = {letter["value"]: letter for letter in letters}
    for reason, key, value in bad:
        letter = by_value[value]  # the value byte for byte
        assert letter["key"] == key
        got = letter["headers"]
        assert got["reason"] == reason.encode()
        assert got["origin"] == b"pytest" and got["expected"] == reason.encode()
        assert got["__connect.errors.topic"] == topics.telemetry_topic.encode()
        partition, offset = delivered[value]
        assert got["__connect.errors.partition"] == str(partition).encode()
        assert got["__connect.errors.offset"] == str(offset).encode()
        assert got["__connect.errors.exception.class.name"] and got["__connect.errors.exception.message"]

    rows = anomalies(kafka, topics.anomaly_topic)
    assert sorted(keys_of(rows)) == sorted(offline_flags(model, per_device(fleet)))


def kafka_registry(kafka: KafkaSettings) -> Any:
    from anomstream.kafka_config import registry_client

    return registry_client(kafka)


def read_all(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    """Every record of a one-partition topic (read_committed) with its headers as a dict."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "pytest-reader",
                         "isolation.level": "read_committed", "enable.auto.commit": False})  # fmt: skip
    consumer.assign([TopicPartition(topic, 0, 0)])
    records, idle = [], time.monotonic()
    while time.monotonic() - idle < 5:
        for message in consumer.consume(100, 0.5):
            if message.error() is None:
                headers = dict(message.headers() or [])
                records.append({"key": message.key(), "value": message.value(), "headers": headers})
                idle = time.monotonic()
    consumer.close()
    return records


# -- hot reload: a new version picked up mid-stream, a corrupted one refused -----------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_new_model_is_picked_up_mid_stream_and_a_corrupted_one_refused(
    stack: Any,
    topics: TopicSettings,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
) -> None:
    kafka = stack.kafka_settings
    spec = FleetSpec(devices=6, records=36_000, seed=4, anomaly_rate=0.03)
    fleet = generate_fleet(spec)
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    training = fleet.take(slice(0, 6_000))
    v1 = AnomalyModel.fit(training, "iforest", per_device=True, params=FAST_IFOREST | {"target_far": 0.02})
    v2 = AnomalyModel.fit(training, "iforest", per_device=True, params=FAST_IFOREST | {"target_far": 0.05}, seed=1)
    publish(store, "fleet", v1, kafka, topics)
    scorer = start_scorer(scorers, scorer_env, tmp_path, "--idle-exit", "8")
    scorer.wait_for(r"assigned partitions \[\d")
    port = int(re.findall(r"http://127\.0\.0\.1:(\d+)/", scorer.wait_for(r"metrics on http://"))[0])

    producing = _produce_in_background(kafka, topics.telemetry_topic, *_fleet_args(spec, rate=3_000))
    time.sleep(3)
    assert publish(store, "fleet", v2, kafka, topics) == 2
    scorer.wait_for(r"now serving fleet version 2", timeout_s=30)
    corrupted = store.publish("fleet", v1, promote="never").version
    target = next(p for p in store.path("fleet", corrupted).rglob("*.npz"))
    target.write_bytes(target.read_bytes()[:-10] + bytes(10))
    # the store's pointer now names a damaged version (a disk fault, a bad copy): scorers must refuse it
    (store.root / "fleet" / CURRENT).write_text(json.dumps({"version": corrupted, "previous": [1, 2]}))
    announce(kafka, topics.models_topic, "fleet", corrupted, store.manifest("fleet", corrupted))
    scorer.wait_for(rf"refusing model fleet version {corrupted}", timeout_s=30)
    exposition = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'anomstream_scorer_model_load_failures_total{model="fleet"} 1.0' in exposition
    assert 'anomstream_scorer_model_info{detector="iforest",device="cpu",model="fleet",version="2"} 1.0' in exposition
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10).status == 200
    assert producing.wait(120) == 0
    assert scorer.finish() == 0

    assert sum("loaded model" in m for m in scorer.messages()) == 2  # v1 at start, v2 hot: no restart, v3 refused
    rows = anomalies(kafka, topics.anomaly_topic)
    versions = {r["model_version"] for r in rows}
    assert versions == {1, 2}
    flags = {1: offline_flags(v1, per_device(fleet)), 2: offline_flags(v2, per_device(fleet))}
    streamed = keys_of(rows)
    assert len(streamed) == len(set(streamed))
    for row in rows:  # every anomaly is what its version flags offline
        assert (row["device_id"], row["seq"]) in flags[row["model_version"]]
    for partition in {r["partition"] for r in rows}:  # one switch per partition, from 1 to 2
        ordered = sorted((r["offset"], r["model_version"]) for r in rows if r["partition"] == partition)
        assert [v for _, v in ordered] == sorted(v for _, v in ordered)
    assert flags[1] & flags[2] <= set(streamed)  # flagged by both: present whenever the switch happened


def _fleet_args(spec: FleetSpec, rate: float) -> list[str]:
    return ["--source", "synthetic", "--devices", str(spec.devices), "--records", str(spec.records),
            "--seed", str(spec.seed), "--anomaly-rate", str(spec.anomaly_rate), "--rate", str(rate)]  # fmt: skip


def _produce_in_background(kafka: KafkaSettings, topic: str, *args: str) -> subprocess.Popen[bytes]:
    """`anomstream produce ARGS` to ``topic``, running while the test goes on."""
    command = [sys.executable, "-m", "anomstream", "produce", *args, "--topic", topic]
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                        "SCHEMA_REGISTRY_URL": kafka.schema_registry_url}  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- history under a memory budget: idle devices evicted, read back when they return ---------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_devices_evicted_under_the_history_budget_are_read_back_when_they_return_and_score_as_offline(
    stack: Any,
    topics: TopicSettings,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
) -> None:
    # Half the fleet goes quiet while the other half reports, then returns: with room for about four
    # devices' history, the quiet ones are evicted and must be read back, or their next readings would score
    # as a new device's (warm-up, no slow baseline) instead of as the offline pass over each whole stream.
    kafka = stack.kafka_settings
    fleet = generate_fleet(FleetSpec(devices=8, records=8_000, seed=4, anomaly_rate=0.03))
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    params = FAST_IFOREST | {"target_far": 0.02}
    model = AnomalyModel.fit(fleet.take(slice(0, 2_400)), "iforest", per_device=True, params=params)
    publish(store, "fleet", model, kafka, topics)
    first = np.isin(fleet.device_id, [f"sim-000{i}" for i in range(4)])
    early = fleet.seq < 500
    phases = [first & early, ~first & early, ~first & ~early, first & ~early]
    encoder = TelemetryEncoder(kafka_registry(kafka), topics.telemetry_topic)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for phase in phases:  # into one partition, so that the scorer reads the phases in this order
        part = fleet.take(phase)
        for key, value in zip(part.device_id, encoder.encode(part), strict=True):
            producer.produce(topics.telemetry_topic, value=value, key=str(key).encode(), partition=0)
    assert producer.flush(30) == 0
    assert sum(int(p.sum()) for p in phases) == len(fleet)

    probe = DeviceHistory.for_model(model)  # what four devices' history holds: rows and baseline blocks
    quiet_first = fleet.take(phases[0])
    probe.advance(quiet_first, np.zeros(len(quiet_first), dtype=np.int32), np.zeros(len(quiet_first)))
    budget = 4.5 * probe.nbytes / 4 / 1e6  # room for about four devices
    env = scorer_env | {"ANOMSTREAM_SCORER_HISTORY_MB": str(budget), "ANOMSTREAM_SCORER_BATCH_SIZE": "400"}
    scorer = start_scorer(scorers, env, tmp_path, "--idle-exit", "6")
    assert scorer.finish() == 0
    assert any("scored 8,000 of 8,000 records" in m for m in scorer.messages())
    returned = [m for m in scorer.messages() if m.startswith("reading back") and "evicted devices" in m]
    assert returned, "no device was evicted and read back: the budget did not bite"
    streamed = keys_of(anomalies(kafka, topics.anomaly_topic))
    assert len(streamed) == len(set(streamed)), "duplicates on the anomaly topic"
    expected = offline_flags(model, per_device(fleet))
    late = {k for k in expected if k[1] >= 500}
    assert len(late) > 20  # flags after the quiet time: what a lost history would change
    assert set(streamed) == expected


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_churning_fleet_of_100000_devices_seen_once_each_stays_within_the_history_budget(
    stack: Any,
    topics: TopicSettings,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
) -> None:
    # Without eviction this history would hold ~38 MB (a row and a baseline block per device); with 5 MB it
    # must evict, and forget the oldest evicted devices' entries too. Every record is still scored.
    kafka = stack.kafka_settings
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    training = generate_fleet(FleetSpec(devices=5, records=5_000, seed=3))
    publish(store, "churn", AnomalyModel.fit(training, "pca"), kafka, topics)
    produce(kafka, topics.telemetry_topic, "synthetic", devices=100_000, records=100_000, seed=5)
    budget_mb = 5.0
    env = scorer_env | {"ANOMSTREAM_SCORER_HISTORY_MB": str(budget_mb)}
    scorer = start_scorer(scorers, env, tmp_path, "--idle-exit", "6")
    assert scorer.finish() == 0
    (stopped,) = [e for e in scorer.lines() if str(e.get("message", "")).startswith("scorer stopped")]
    assert stopped["records_scored"] == 100_000 and stopped["dead_letters"] == 0
    assert stopped["history_evicted"] > 50_000
    assert 0 < stopped["history_peak_bytes"] <= budget_mb * 1e6


# -- SIGKILL: no duplicate, no gap -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_of_one_scorer_leaves_no_duplicate_and_no_gap(
    stack: Any,
    topics: TopicSettings,
    topic_env: dict[str, str],
    scorer_env: dict[str, str],
    tmp_path: Path,
    scorers: list[ScorerProcess],
) -> None:
    kafka = stack.kafka_settings
    spec = FleetSpec(devices=12, records=36_000, seed=6, anomaly_rate=0.03)
    fleet = generate_fleet(spec)
    store = ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"])
    params = FAST_IFOREST | {"target_far": 0.02}  # incidents on most devices, muted and not
    model = AnomalyModel.fit(fleet.take(slice(0, 6_000)), "iforest", per_device=True, params=params)
    publish(store, "fleet", model, kafka, topics)
    rules = tmp_path / "mute.json"  # half the fleet's incidents muted: still written, marked
    rules.write_text(json.dumps({"rules": [{"device_pattern": "sim-000[0-5]", "reason": "under maintenance"}]}))
    env = scorer_env | {"ANOMSTREAM_KAFKA_EXTRA_CONFIG": FAST_GROUP, "ANOMSTREAM_SUPPRESSION_FILE": str(rules)}
    victim = start_scorer(scorers, env, tmp_path, "--idle-exit", "12", "--batch-timeout", "0.2")
    survivor = start_scorer(scorers, env, tmp_path, "--idle-exit", "12", "--batch-timeout", "0.2")
    for scorer in (victim, survivor):
        scorer.wait_for(r"assigned partitions \[\d")

    producing = _produce_in_background(kafka, topics.telemetry_topic, *_fleet_args(spec, rate=4_000))
    time.sleep(4)
    victim.process.send_signal(signal.SIGKILL)
    assert victim.process.wait(10) == -signal.SIGKILL
    time.sleep(2)
    restarted = start_scorer(scorers, env, tmp_path, "--idle-exit", "12")
    assert producing.wait(120) == 0
    assert survivor.finish() == 0 and restarted.finish() == 0
    assert any("history rebuilt" in m and "from 0 records" not in m for s in (survivor, restarted)
               for m in s.messages())  # fmt: skip

    rows = anomalies(kafka, topics.anomaly_topic)
    streamed = keys_of(rows)
    assert len(streamed) == len(set(streamed)), "duplicates on the anomaly topic"
    assert set(streamed) == offline_flags(model, per_device(fleet)), "gap or difference against offline scoring"

    # Incidents: those of an offline pass, each opened once, the victim's open ones taken up by the others.
    events = [row for chunk in AnomalyReader(kafka, topics.incident_topic, to_row=incident_row).rows(
        idle_timeout_s=5.0) for row in chunk]  # fmt: skip
    opened = Counter(e["incident_id"] for e in events if e["state"] == "open")
    assert opened and max(opened.values()) == 1, "an incident opened twice"
    last = {e["incident_id"]: e for e in events}
    expected = offline_incidents_of(model, per_device(fleet), topics.telemetry_topic)
    assert set(last) == set(expected), "incidents lost, doubled or split"
    assert 5 < len(expected) < len(streamed) / 5
    for incident_id, event in last.items():
        want = expected[incident_id]
        assert (event["state"] == "closed") == (want["state"] == "closed"), incident_id
        for key in ("start_time", "end_time", "readings", "peak_time"):
            assert event[key] == want[key], (incident_id, key)
        assert abs(event["peak_score"] - want["peak_score"]) < 1e-9
    muted = {e["device_id"] for e in events if e["muted"]}
    with_incidents = {e["device_id"] for e in events}
    assert muted == {d for d in with_incidents if d <= "sim-0005"} and muted and with_incidents - muted
    assert all(e["muted_by"].endswith("(under maintenance)") for e in events if e["muted"])
