"""Shared fixtures: the real local stack (started once per test session) and fresh topics per test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from anomstream.config import KafkaSettings, TopicSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Stack:
    """The running broker and registry, as clients see them."""

    bootstrap_servers: str
    registry_url: str

    @property
    def kafka_settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, schema_registry_url=self.registry_url)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a subprocess (an `anomstream` command) that talks to this stack."""
        return os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.registry_url,
        } | extra


def run_command(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to the end and return it; on timeout, fail with where each of its threads was stuck.

    The child runs with Python's fault handler on, so SIGABRT makes it print every thread's stack to stderr
    before it dies: a hang in CI then names the call that hung instead of just "timed out".
    """
    child_env = (os.environ if env is None else env) | {"PYTHONFAULTHANDLER": "1"}
    with subprocess.Popen(argv, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)
            try:
                stdout, stderr = child.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                stdout, stderr = child.communicate()
            pytest.fail(f"{' '.join(argv[:6])} did not end within {timeout:.0f} s; its stderr ends:\n{stderr[-6000:]}")
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)


def anomstream(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `anomstream` command as a user would; fails the test on timeout, returns the completed process."""
    return run_command([sys.executable, "-m", "anomstream", *args], env=env, timeout=timeout)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The local stack: uses the running one or starts it (`anomstream stack up` is idempotent)."""
    result = anomstream("stack", "up", timeout=600)
    if result.returncode != 0:
        pytest.fail(f"anomstream stack up failed:\n{result.stdout}\n{result.stderr}")
    exports = dict(re.findall(r"export (\w+)=(\S+)", anomstream("stack", "env").stdout))
    return Stack(exports["KAFKA_BOOTSTRAP_SERVERS"], exports["SCHEMA_REGISTRY_URL"])


def _fresh_name(request: pytest.FixtureRequest, suffix: str = "") -> str:
    test_name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    return f"pytest_{test_name}_{uuid.uuid4().hex[:8]}{suffix}"


@pytest.fixture
def topic(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh 6-partition topic `pytest_{name}_{uuid}`, deleted after the test."""
    from confluent_kafka.admin import NewTopic

    from anomstream.topics import delete_topics, ensure_topics

    name = _fresh_name(request)
    ensure_topics(stack.kafka_settings, [NewTopic(name, 6, 1)])
    yield name
    delete_topics(stack.kafka_settings, [name])


@pytest.fixture
def topics(stack: Stack, request: pytest.FixtureRequest) -> Iterator[TopicSettings]:
    """A fresh set of the system's topics (telemetry, anomalies, incidents, dlq, models), deleted afterwards."""
    from anomstream.topics import delete_topics, ensure_topics, system_topics

    base = _fresh_name(request)
    settings = TopicSettings(
        telemetry_topic=f"{base}_telemetry",
        anomaly_topic=f"{base}_anomalies",
        dlq_topic=f"{base}_dlq",
        models_topic=f"{base}_models",
        incident_topic=f"{base}_incidents",
    )
    ensure_topics(stack.kafka_settings, system_topics(settings))
    yield settings
    delete_topics(stack.kafka_settings, [t.topic for t in system_topics(settings)])


@pytest.fixture
def topic_env(stack: Stack, topics: TopicSettings, tmp_path: Path) -> dict[str, str]:
    """Environment for `anomstream` subprocesses: this stack, these fresh topics, a fresh model store."""
    return stack.env(
        ANOMSTREAM_TELEMETRY_TOPIC=topics.telemetry_topic,
        ANOMSTREAM_ANOMALY_TOPIC=topics.anomaly_topic,
        ANOMSTREAM_DLQ_TOPIC=topics.dlq_topic,
        ANOMSTREAM_MODELS_TOPIC=topics.models_topic,
        ANOMSTREAM_INCIDENT_TOPIC=topics.incident_topic,
        ANOMSTREAM_MODEL_DIR=str(tmp_path / "models"),
    )
