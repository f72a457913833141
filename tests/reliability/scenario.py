"""One scenario's world: fresh topics on a cluster, a copy of the model store, a scorer group, its processes.

Scorers and producers are the real commands (``anomstream score``, ``anomstream produce``) in
subprocesses, so that a SIGKILL is a real crash. A scenario never waits on luck: after the stream ends it
waits (bounded) until the scorer group's committed offsets reach the end of the telemetry topic, stops the
scorers with SIGTERM (they must exit 0), and only then reads every topic to its end to count
(:mod:`tests.reliability.accounting`).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, Producer
from confluent_kafka import Message as KafkaMessage

from anomstream.config import KafkaSettings, TopicSettings
from anomstream.kafka_config import producer_config
from anomstream.model_store import LoadedModel, ModelStore
from anomstream.synthetic import FleetSpec
from anomstream.topics import delete_topics, ensure_topics, system_topics
from tests.reliability.accounting import (
    Expectation,
    Headers,
    Location,
    Verdict,
    account,
    committed_offsets,
    end_offsets,
)
from tests.reliability.stacks import Cluster

FLEET_DEVICES = 20
FLEET_SEED = 7
MODEL_NAME = "fleet"
SCORER_IDLE_EXIT_S = 180  # a safety net only: scenarios stop their scorers with SIGTERM
COUNTS: list[str] = []  # every scenario's counts line, printed again in the terminal summary


def fleet_spec(records: int, anomaly_rate: float = 0.01) -> FleetSpec:
    """The synthetic fleet every scenario streams (the model was trained on its clean version)."""
    return FleetSpec(devices=FLEET_DEVICES, records=records, seed=FLEET_SEED, anomaly_rate=anomaly_rate)


@dataclass(frozen=True)
class Outgoing:
    """A record to produce as it is, good or bad."""

    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


def send(kafka: KafkaSettings, topic: str, records: list[Outgoing], rate: float | None = None) -> list[Location]:
    """Produce ``records`` in order, keyed as anomstream's producer keys (murmur2), idempotent and acks=all;
    optionally paced at ``rate`` records/s. Returns where each one landed; every one must be delivered."""
    landed: list[Location | None] = [None] * len(records)
    failures: list[str] = []

    def delivered(index: int, error: KafkaError | None, message: KafkaMessage) -> None:
        if error is not None:
            failures.append(error.str())
        else:
            landed[index] = (message.partition(), message.offset())  # type: ignore[assignment]

    producer = Producer(producer_config(kafka, "reliability-producer", partitioner="murmur2_random"))
    started = time.monotonic()
    for index, record in enumerate(records):
        if rate is not None and index % 100 == 0:
            time.sleep(max(started + index / rate - time.monotonic(), 0.0))
        while True:
            try:
                producer.produce(topic, value=record.value, key=record.key, headers=record.headers,
                                 on_delivery=lambda e, m, i=index: delivered(i, e, m))  # fmt: skip
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(180) == 0, "records still unacknowledged after 180 s"
    assert not failures, f"{len(failures)} records not delivered, e.g. {failures[:3]}"
    assert all(where is not None for where in landed)
    return landed  # type: ignore[return-value]


@dataclass
class Process:
    """A subprocess of the scenario, its log, and whether the scenario itself ended it."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    killed: bool = False
    stopped: bool = False
    expected_rc: int | None = None  # an exit status the scenario itself asserted on (a fenced zombie's)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def messages(self) -> list[str]:
        """Log messages (the processes log JSON lines)."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    found.append(str(json.loads(line).get("message", "")))
                except ValueError:
                    continue
        return found

    def wait_for(self, pattern: str, timeout_s: float = 120.0) -> str:
        """Wait until a log message matches ``pattern``; fail if the process ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self.messages():
                if re.search(pattern, message):
                    return message
            if not self.alive:
                break
            time.sleep(0.25)
        raise AssertionError(f"{self.name}: no log message matching {pattern!r}; last lines:\n{self.tail()}")


@dataclass
class Scenario:
    """Fresh topics, model store copy and scorer group on ``cluster`` (see the module docstring)."""

    name: str
    cluster: Cluster
    model_source: Path
    folder: Path
    topics: TopicSettings = field(init=False)
    group: str = field(init=False)
    processes: list[Process] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        tag = f"rel_{self.name}_{uuid.uuid4().hex[:8]}"
        self.topics = TopicSettings(telemetry_topic=f"{tag}_telemetry", anomaly_topic=f"{tag}_anomalies",
                                    dlq_topic=f"{tag}_dlq", models_topic=f"{tag}_models")  # fmt: skip
        ensure_topics(self.cluster.kafka_settings, system_topics(self.topics, self.cluster.replication_factor))
        self.group = f"reliability-{tag}"
        self.model_dir = self.folder / "models"
        shutil.copytree(self.model_source, self.model_dir)

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.model_dir)

    def model(self) -> LoadedModel:
        return self.store.load(MODEL_NAME)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of this scenario's `anomstream` commands."""
        return self.cluster.env | {
            "ANOMSTREAM_TELEMETRY_TOPIC": self.topics.telemetry_topic,
            "ANOMSTREAM_ANOMALY_TOPIC": self.topics.anomaly_topic,
            "ANOMSTREAM_DLQ_TOPIC": self.topics.dlq_topic,
            "ANOMSTREAM_MODELS_TOPIC": self.topics.models_topic,
            "ANOMSTREAM_MODEL_DIR": str(self.model_dir),
            "ANOMSTREAM_MODEL_NAME": MODEL_NAME,
            "ANOMSTREAM_SCORER_GROUP": self.group,
            "ANOMSTREAM_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        } | extra

    def spawn(self, kind: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Start ``anomstream <args>`` logging JSON lines to a file of its own."""
        name = f"{kind}-{sum(p.name.startswith(kind) for p in self.processes) + 1}"
        log = self.folder / f"{name}.log"
        command = [sys.executable, "-m", "anomstream", "--log-format", "json", *args]
        with open(log, "wb") as out:
            popen = subprocess.Popen(command, env=env or self.env(), stdout=out, stderr=subprocess.STDOUT)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_scorer(self) -> Process:
        """A new member of the scorer group, with the settings it ships with."""
        return self.spawn("scorer", "score", "--idle-exit", str(SCORER_IDLE_EXIT_S))

    def scorers(self) -> list[Process]:
        """The scorers still running."""
        return [p for p in self.processes if p.name.startswith("scorer") and p.alive]

    def kill(self, process: Process, sig: signal.Signals = signal.SIGKILL) -> None:
        """A crash (SIGKILL) or a graceful stop (SIGTERM) that the scenario asked for."""
        process.killed = sig == signal.SIGKILL
        process.stopped = True
        process.process.send_signal(sig)

    def produce(self, records: int, rate: float | None = None, anomaly_rate: float = 0.01) -> Process:
        """`anomstream produce` of the scenario's fleet (its first ``records`` records), optionally paced."""
        spec = fleet_spec(records, anomaly_rate)
        args = ["produce", "--source", "synthetic", "--devices", str(spec.devices), "--records", str(records),
                "--seed", str(spec.seed), "--anomaly-rate", str(anomaly_rate)]  # fmt: skip
        if rate is not None:
            args += ["--rate", str(rate)]
        return self.spawn("producer", *args)

    def finish_producer(self, producer: Process, records: int, timeout_s: float = 600.0) -> None:
        """Wait for a producer; it must exit 0 having delivered every record."""
        rc = producer.process.wait(timeout_s)
        producer.stopped = True
        assert rc == 0, f"{producer.name} exited {rc}:\n{producer.tail()}"
        assert f"{records:,} of {records:,} records delivered" in producer.text(), producer.tail()

    def wait_for_records(self, records: int, timeout_s: float = 120.0) -> None:
        """Wait until the telemetry topic holds at least ``records`` records (the stream is under way)."""
        deadline = time.monotonic() + timeout_s
        while sum(end_offsets(self.cluster.kafka_settings, self.topics.telemetry_topic).values()) < records:
            assert time.monotonic() < deadline, f"fewer than {records:,} records in telemetry after {timeout_s:.0f} s"
            time.sleep(0.2)

    def wait_until_committed(self, timeout_s: float = 300.0) -> bool:
        """Wait until the group committed every telemetry partition to its end; False if time ran out."""
        kafka = self.cluster.kafka_settings
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends = end_offsets(kafka, self.topics.telemetry_topic)
            committed = committed_offsets(kafka, self.group, self.topics.telemetry_topic, sorted(ends))
            if all(committed[p] >= end for p, end in ends.items() if end > 0):
                return True
            if not self.scorers():
                return False
            time.sleep(1.0)
        return False

    def stop_scorers(self, timeout_s: float = 90.0) -> None:
        """SIGTERM every running scorer and wait for them (each must finish its batch and exit 0)."""
        running = self.scorers()
        for scorer in running:
            self.kill(scorer, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for scorer in running:
            try:
                scorer.process.wait(max(deadline - time.monotonic(), 1.0))
            except subprocess.TimeoutExpired:
                scorer.process.kill()
                scorer.process.wait()

    def process_failures(self) -> list[str]:
        """Processes that died by themselves, or did not exit 0 when stopped gracefully."""
        failures = []
        for p in self.processes:
            rc = p.process.poll()
            if p.killed or rc == 0 or (rc is not None and rc == p.expected_rc):
                continue
            why = "still running" if rc is None else f"exited {rc}" + ("" if p.stopped else " by itself")
            failures.append(f"{p.name} {why}; last lines:\n{p.tail(12)}")
        return failures

    def verdict(self, expectation: Expectation, notes: list[str] | None = None) -> Verdict:
        """Count everything (after the scorers stopped), print the counts line and return the verdict."""
        verdict = account(self.name, self.cluster.kafka_settings, self.topics, self.group, expectation, self.started)
        verdict.process_failures = self.process_failures()
        verdict.notes += notes or []
        COUNTS.extend([verdict.line(), *(f"    {note}" for note in verdict.notes)])
        print(verdict.report(), flush=True)
        return verdict

    def close(self) -> None:
        """Kill what still runs; delete the topics (best effort: a private cluster may be going away)."""
        for p in self.processes:
            if p.alive:
                p.process.kill()
                p.process.wait()
        try:
            delete_topics(self.cluster.kafka_settings, [self.topics.telemetry_topic, self.topics.anomaly_topic,
                                                        self.topics.dlq_topic, self.topics.models_topic],
                          timeout_s=15)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the test's own outcome
            print(f"could not delete the topics of {self.name}: {exc}")
