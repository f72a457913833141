"""The local stack against confluent-kafka's own clients: Avro serde through the registry, compatibility,
and durability across restarts. Restart tests run on a private second stack (own folder and ports, the
installed jars linked in), so they never disturb the shared one."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from anomstream.config import KafkaSettings
from anomstream.stack.servers import _cmdline
from anomstream.topics import ensure_topics
from tests.conftest import Stack, anomstream

READING_V1 = """{"type": "record", "name": "Reading", "namespace": "pytest.stack", "fields": [
  {"name": "device_id", "type": "string"},
  {"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "channels", "type": {"type": "map", "values": "double"}}]}"""
# BACKWARD-compatible: a new field with a default
READING_V2 = READING_V1.replace(
    '{"name": "channels"', '{"name": "site", "type": ["null", "string"], "default": null},\n  {"name": "channels"'
)
# BACKWARD-incompatible: a new field without a default cannot be filled in when reading old data
READING_BAD = READING_V1.replace('{"name": "channels"', '{"name": "site", "type": "string"},\n  {"name": "channels"')


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"pytest-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(1000, 1.0) if m.error() is None]
    finally:
        consumer.close()
    return messages


def test_avro_round_trip_through_registry(stack: Stack, topic: str) -> None:
    registry = SchemaRegistryClient({"url": stack.registry_url})
    serializer, deserializer = AvroSerializer(registry, READING_V1), AvroDeserializer(registry)
    context = SerializationContext(topic, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "enable.idempotence": True, "linger.ms": 10})
    sent: dict[str, list[dict]] = defaultdict(list)
    for i in range(10_000):
        device_id = f"device-{i % 13}"
        reading = {"device_id": device_id, "event_time": 1_700_000_000_000 + i, "channels": {"a": i * 0.5, "b": -i}}
        producer.produce(topic, key=device_id, value=serializer(reading, context))
        sent[device_id].append(reading)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    received: dict[str, list[dict]] = defaultdict(list)
    for message in _consume_all(stack.bootstrap_servers, topic, 10_000):
        reading = deserializer(message.value(), context)
        reading["event_time"] = int(reading["event_time"].timestamp() * 1000)
        received[message.key().decode()].append(reading)
    assert sum(map(len, received.values())) == 10_000
    assert received == sent  # same values, same order per key


def test_registry_enforces_backward_compatibility(stack: Stack) -> None:
    registry = SchemaRegistryClient({"url": stack.registry_url})
    subject = f"pytest-compat-{uuid.uuid4().hex[:8]}-value"
    first = registry.register_schema(subject, Schema(READING_V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as refused:
        registry.register_schema(subject, Schema(READING_BAD, "AVRO"))
    assert refused.value.http_status_code == 409
    second = registry.register_schema(subject, Schema(READING_V2, "AVRO"))
    assert second != first
    assert registry.get_versions(subject) == [1, 2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def private_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A second stack in its own folder and ports, reusing the shared stack's installed servers."""
    shared_dir = Path(os.environ.get("ANOMSTREAM_STACK_DIR", Path(__file__).resolve().parents[1] / ".stack"))
    private_dir = tmp_path_factory.mktemp("stack")
    (private_dir / "kafka").mkdir()
    (private_dir / "kafka" / "libs").symlink_to(shared_dir / "kafka" / "libs")
    (private_dir / "registry").symlink_to(shared_dir / "registry")
    for stamp in shared_dir.glob(".installed-*"):
        (private_dir / stamp.name).touch()
    env = os.environ | {
        "ANOMSTREAM_STACK_DIR": str(private_dir),
        "ANOMSTREAM_KAFKA_PORT": str(_free_port()),
        "ANOMSTREAM_CONTROLLER_PORT": str(_free_port()),
        "ANOMSTREAM_REGISTRY_PORT": str(_free_port()),
        "ANOMSTREAM_REGISTRY_MANAGEMENT_PORT": str(_free_port()),
    }
    up = anomstream("stack", "up", env=env, timeout=300)
    assert up.returncode == 0, up.stderr
    yield env
    anomstream("stack", "down", env=env, timeout=120)


def _exports(env: dict[str, str]) -> dict[str, str]:
    lines = anomstream("stack", "env", env=env).stdout.splitlines()
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def _pids(env: dict[str, str]) -> list[int]:
    run = Path(env["ANOMSTREAM_STACK_DIR"]) / "run"
    return [int((run / f"{name}.pid").read_text()) for name in ("kafka", "registry")]


@pytest.mark.slow
def test_schema_survives_registry_restart(private_stack: dict[str, str]) -> None:
    url = _exports(private_stack)["SCHEMA_REGISTRY_URL"]
    subject = f"pytest-restart-{uuid.uuid4().hex[:8]}-value"
    schema_id = SchemaRegistryClient({"url": url}).register_schema(subject, Schema(READING_V1, "AVRO"))
    registry_pid = _pids(private_stack)[1]
    os.kill(registry_pid, 15)  # the registry alone; its schemas live in Kafka (kafkasql)
    deadline = time.monotonic() + 60
    while _cmdline(registry_pid) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cmdline(registry_pid) is None
    up = anomstream("stack", "up", env=private_stack, timeout=300)
    assert up.returncode == 0, up.stderr
    # a fresh client (no cache) resolves the id through the restarted registry
    fetched = SchemaRegistryClient({"url": url}).get_schema(schema_id)
    assert "pytest.stack" in fetched.schema_str and "Reading" in fetched.schema_str
    with urllib.request.urlopen(f"{url}/schemas/ids/{schema_id}", timeout=10) as response:
        assert response.status == 200


@pytest.mark.slow
def test_records_survive_down_and_up(stack: Stack, private_stack: dict[str, str]) -> None:
    bootstrap = _exports(private_stack)["KAFKA_BOOTSTRAP_SERVERS"]
    topic = f"pytest_durable_{uuid.uuid4().hex[:8]}"
    ensure_topics(KafkaSettings(bootstrap_servers=bootstrap), [NewTopic(topic, 3, 1)])
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(500):
        producer.produce(topic, key=str(i % 5), value=str(i).encode())
    assert producer.flush(30) == 0

    pids = _pids(private_stack)
    down = anomstream("stack", "down", env=private_stack, timeout=120)
    assert down.returncode == 0, down.stderr
    assert all(_cmdline(pid) is None for pid in pids)  # exactly the processes it started are gone...
    shared_pids = [int(p.read_text()) for p in (Path(__file__).resolve().parents[1] / ".stack" / "run").glob("*.pid")]
    assert all(_cmdline(pid) is not None for pid in shared_pids)  # ...and not the shared stack's
    status = anomstream("stack", "status", env=private_stack)
    assert status.returncode != 0 and "not running" in status.stdout

    up = anomstream("stack", "up", env=private_stack, timeout=300)
    assert up.returncode == 0, up.stderr
    values = sorted(int(m.value()) for m in _consume_all(bootstrap, topic, 500))
    assert values == list(range(500))


def test_up_is_idempotent_and_fast_when_running(stack: Stack) -> None:
    started = time.monotonic()
    again = anomstream("stack", "up")
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert "started" not in again.stderr  # reused, nothing new started
    status = anomstream("stack", "status")
    assert status.returncode == 0 and status.stdout.count("answering") == 2
    assert elapsed < 30  # generous bound for a loaded CI machine; `make bench` reports the real figure
