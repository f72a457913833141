"""`anomstream produce` against the real stack: exact replay, bad rows, keying, pacing, failures, SIGTERM."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient

from anomstream.producer import ProducerSettings, run_producer
from anomstream.serde import TelemetryDecoder
from anomstream.topics import delete_topics, ensure_topics

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SKAB_FILE = DATA / "skab" / "data" / "valve1" / "3.csv"
needs_data = pytest.mark.skipif(not SKAB_FILE.exists(), reason="shared data sets not present")
SUMMARY = re.compile(r"([\d,]+) of ([\d,]+) records delivered")


def produce_cli(stack: Any, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "anomstream", "--log-format", "json", "produce", *args]
    return subprocess.run(
        command, env=stack.env(), capture_output=True, text=True, timeout=timeout_s, check=False
    )


def consume_all(stack: Any, topic: str, expected: int, timeout_s: float = 60) -> list[Message]:
    """Every message of ``topic`` (stops once ``expected`` arrived and a further second brings nothing)."""
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"{topic}_reader",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        polled = [m for m in consumer.consume(1000, 1.0) if not m.error()]
        messages += polled
        if len(messages) >= expected and not polled:
            break
    consumer.close()
    return messages


def delivered_in(summary: str) -> tuple[int, int]:
    found = SUMMARY.search(summary)
    assert found, summary
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


@needs_data
def test_replaying_a_skab_file_gives_back_exactly_its_rows(stack: Any, topic: str) -> None:
    result = produce_cli(stack, "--source", f"skab:{SKAB_FILE}", "--topic", topic)
    assert result.returncode == 0, result.stderr
    assert delivered_in(result.stdout) == (1148, 1148)

    with SKAB_FILE.open(newline="") as stream:
        rows = list(csv.reader(stream, delimiter=";"))[1:]
    messages = consume_all(stack, topic, len(rows))
    assert len(messages) == len(rows)
    assert {m.key() for m in messages} == {b"skab-valve1-3"}
    assert len({m.partition() for m in messages}) == 1  # one device, one partition, so offsets are its order
    messages.sort(key=lambda m: m.offset() or 0)

    decoded = TelemetryDecoder(SchemaRegistryClient({"url": stack.registry_url})).decode(
        [m.value() for m in messages]
    )
    assert decoded.bad == []
    batch = decoded.batch
    assert batch.seq.tolist() == list(range(len(rows)))
    assert np.array_equal(batch.values, np.array([[float(v) for v in r[1:9]] for r in rows]))
    assert batch.label.tolist() == [int(float(r[9])) for r in rows]
    assert batch.event_time_ms.tolist() == [int(np.datetime64(r[0], "ms").astype(np.int64)) for r in rows]


def skab_with_bad_rows(tmp_path: Path) -> Path:
    lines = SKAB_FILE.read_bytes().decode().split("\r\n")
    lines[6] = "2020-03-09 11:14:39;0.02;oops;1;1;1;1;1;1;0.0;0.0"  # line 7
    lines[99] = "2020-03-09 11:16:12;0.02"  # line 100
    path = tmp_path / "valve1" / "3.csv"
    path.parent.mkdir()
    path.write_bytes("\r\n".join(lines).encode())
    return path


@needs_data
def test_a_malformed_row_stops_with_file_and_line(stack: Any, topic: str, tmp_path: Path) -> None:
    path = skab_with_bad_rows(tmp_path)
    result = produce_cli(stack, "--source", f"skab:{path}", "--topic", topic)

    assert result.returncode == 1
    errors = [json.loads(line)["message"] for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(f"{path}:7: column 'Accelerometer2RMS': 'oops' is not a number" in e for e in errors), errors
    assert delivered_in(result.stdout) == (0, 0)  # the file is checked before any of it is sent


@needs_data
def test_skipped_rows_are_counted_and_the_rest_delivered(stack: Any, topic: str, tmp_path: Path) -> None:
    path = skab_with_bad_rows(tmp_path)
    result = produce_cli(stack, "--source", f"skab:{path}", "--topic", topic, "--on-bad-row", "skip")

    assert result.returncode == 0, result.stderr
    assert delivered_in(result.stdout) == (1146, 1146)
    assert f"2 bad rows skipped (first: {path}:7:" in result.stdout
    assert len(consume_all(stack, topic, 1146)) == 1146


def test_synthetic_records_are_keyed_by_device_and_ordered(stack: Any, topic: str) -> None:
    args = (
        "--source",
        "synthetic",
        "--devices",
        "20",
        "--records",
        "20000",
        "--seed",
        "4",
        "--limit",
        "15000",
    )
    result = produce_cli(stack, *args, "--topic", topic)
    assert result.returncode == 0, result.stderr
    assert delivered_in(result.stdout) == (15000, 15000)

    messages = consume_all(stack, topic, 15000)
    assert len(messages) == 15000
    partitions: dict[bytes, set[int]] = {}
    for m in messages:
        partitions.setdefault(m.key() or b"", set()).add(m.partition() or 0)
    assert len(partitions) == 20 and all(len(p) == 1 for p in partitions.values())

    messages.sort(key=lambda m: (m.partition() or 0, m.offset() or 0))
    decoded = TelemetryDecoder(SchemaRegistryClient({"url": stack.registry_url})).decode(
        [m.value() for m in messages]
    )
    assert decoded.bad == []
    assert [m.key() for m in messages] == [d.encode() for d in decoded.batch.device_id]
    for device in np.unique(decoded.batch.device_id):
        seq = decoded.batch.seq[decoded.batch.device_id == device]
        assert seq.tolist() == list(range(len(seq)))  # per device: complete and in order


def test_rate_pacing_holds_the_rate(stack: Any, topic: str) -> None:
    settings = ProducerSettings(source="synthetic", records=3000, rate=2000.0, topic=topic)
    report = run_producer(settings, stack.kafka_settings, show_progress=False)
    assert report.ok and report.delivered == 3000
    assert 1.4 < report.elapsed_s < 10.0  # 3000 records at 2000/s: the last is due at 1.5 s


@needs_data
def test_speedup_replays_event_time_faster(stack: Any, topic: str) -> None:
    # SKAB is ~1 Hz: 600 records span ~600 s of event time, so x400 takes about 1.5 s
    settings = ProducerSettings(source=f"skab:{SKAB_FILE}", speedup=400.0, limit=600, topic=topic)
    report = run_producer(settings, stack.kafka_settings, show_progress=False)
    assert report.ok and report.delivered == 600
    assert 1.2 < report.elapsed_s < 10.0


@pytest.fixture
def tiny_message_topic(stack: Any) -> Iterator[str]:
    """A topic whose broker-side size limit is smaller than any telemetry record, deleted afterwards."""
    name = f"pytest_tiny_messages_{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.kafka_settings, [NewTopic(name, 1, 1, config={"max.message.bytes": "60"})])
    yield name
    delete_topics(stack.kafka_settings, [name])


def test_undeliverable_records_give_a_non_zero_exit(stack: Any, tiny_message_topic: str) -> None:
    args = ("--source", "synthetic", "--records", "50", "--topic", tiny_message_topic)
    result = produce_cli(stack, *args, "--kafka-extra-config", '{"compression.type": "none"}')
    assert result.returncode == 1, result.stdout
    delivered, produced = delivered_in(result.stdout)
    assert delivered == 0 and produced == 50
    assert "50 failed" in result.stdout


def test_sigterm_flushes_in_flight_records_and_reports(stack: Any, topic: str) -> None:
    command = [
        sys.executable,
        "-m",
        "anomstream",
        "produce",
        "--source",
        "synthetic",
        "--records",
        "1000000",
        "--rate",
        "3000",
        "--topic",
        topic,
    ]
    process = subprocess.Popen(
        command, env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # signal only once records flow: on a loaded machine start-up alone can take several seconds
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while "producing" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen = process.stderr.readline()
    assert "producing" in seen, f"the producer never started producing: {seen!r}"
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=90)

    assert process.returncode == 0, stderr
    assert "stopped by SIGTERM" in stdout
    delivered, produced = delivered_in(stdout)
    assert 0 < delivered == produced < 1_000_000
    assert len(consume_all(stack, topic, delivered)) == delivered


def test_a_full_local_queue_is_waited_out_without_loss(stack: Any, topic: str) -> None:
    kafka = stack.kafka_settings.model_copy(
        update={"kafka_extra_config": {"queue.buffering.max.messages": "200"}}
    )
    settings = ProducerSettings(source="synthetic", devices=7, records=5000, topic=topic)
    report = run_producer(settings, kafka, show_progress=False)
    assert report.ok and (report.produced, report.delivered) == (5000, 5000)

    messages = sorted(consume_all(stack, topic, 5000), key=lambda m: (m.partition() or 0, m.offset() or 0))
    decoded = TelemetryDecoder(SchemaRegistryClient({"url": stack.registry_url})).decode(
        [m.value() for m in messages]
    )
    assert len(decoded.batch) == 5000
    for device in np.unique(decoded.batch.device_id):
        seq = decoded.batch.seq[decoded.batch.device_id == device]
        assert seq.tolist() == list(range(len(seq)))  # nothing lost or reordered when resuming
