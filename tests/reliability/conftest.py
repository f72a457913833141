"""Fixtures of the reliability suite: clusters, the model every scenario serves, scenarios, the counts summary.

The model is trained once per session the way a user trains one: the clean version of the scenarios'
synthetic fleet (same devices and seed, no injected anomalies) goes to a training topic with
``anomstream produce``, and ``anomstream train --model iforest --per-device`` publishes it to a model store.
Each scenario serves a copy of that store, so the streams it scores carry the injected anomalies the
model never saw, and the expected anomaly set is what that same model gives offline.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anomstream.config import TopicSettings
from anomstream.topics import delete_topics, ensure_topics, system_topics
from tests.conftest import Stack, anomstream
from tests.reliability.scenario import COUNTS, FLEET_DEVICES, FLEET_SEED, MODEL_NAME, Scenario
from tests.reliability.stacks import Cluster, start_private_cluster

TRAIN_RECORDS = 200_000  # 10,000 readings per device: the whole time span the scenarios stream
TRAIN_PER_DEVICE = 9_000  # each device's first readings fit; the rest evaluate (the trainer's window)
# A threshold for 5 % of held-back normal readings: a few percent of readings flagged, so that a reading
# scored with the wrong history (a state bug after a takeover) is likely to change the set.
TRAIN_PARAMS = '{"target_far": 0.05}'


@pytest.fixture(scope="session")
def shared_cluster(stack: Stack) -> Cluster:
    """The shared stack (never stopped by this suite)."""
    env = stack.env()
    return Cluster(stack.bootstrap_servers, stack.registry_url, env)


@pytest.fixture(scope="session")
def private_cluster(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Cluster]:
    """A private single-broker stack whose broker and registry scenarios may stop; down at the end."""
    cluster = start_private_cluster(tmp_path_factory.mktemp("private-stack"))
    yield cluster
    cluster.down()


@pytest.fixture(scope="session")
def fleet_model(shared_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding ``fleet`` version 1, trained by `anomstream train` (see the module docstring)."""
    store = tmp_path_factory.mktemp("fleet-model") / "models"
    tag = f"rel_training_{uuid.uuid4().hex[:8]}"
    topics = TopicSettings(telemetry_topic=f"{tag}_telemetry", anomaly_topic=f"{tag}_anomalies",
                           dlq_topic=f"{tag}_dlq", models_topic=f"{tag}_models")  # fmt: skip
    kafka = shared_cluster.kafka_settings
    ensure_topics(kafka, system_topics(topics))
    env = shared_cluster.env | {
        "ANOMSTREAM_TELEMETRY_TOPIC": topics.telemetry_topic,
        "ANOMSTREAM_MODELS_TOPIC": topics.models_topic,
        "ANOMSTREAM_MODEL_DIR": str(store),
    }
    try:
        produced = anomstream("produce", "--source", "synthetic", "--devices", str(FLEET_DEVICES),
                              "--records", str(TRAIN_RECORDS), "--seed", str(FLEET_SEED), "--anomaly-rate", "0",
                              env=env)  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        trained = anomstream("train", "--model", "iforest", "--per-device", "--train-records", str(TRAIN_PER_DEVICE),
                             "--params", TRAIN_PARAMS, "--name", MODEL_NAME, env=env, timeout=600)  # fmt: skip
        assert trained.returncode == 0, f"{trained.stdout}\n{trained.stderr}"
    finally:
        delete_topics(kafka, [topics.telemetry_topic, topics.anomaly_topic, topics.dlq_topic, topics.models_topic])
    return store


@pytest.fixture
def make_scenario(fleet_model: Path, tmp_path: Path) -> Iterator[Callable[[str, Cluster], Scenario]]:
    """Creates scenarios (fresh topics, model store copy, scorer group); closes them after the test."""
    made: list[Scenario] = []

    def make(name: str, cluster: Cluster) -> Scenario:
        folder = tmp_path / f"{name}-{len(made)}"
        folder.mkdir()
        scenario = Scenario(name, cluster, fleet_model, folder)
        made.append(scenario)
        return scenario

    yield make
    for scenario in made:
        scenario.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every scenario's counts line again, together, at the end of the run."""
    if COUNTS:
        terminalreporter.section("reliability counts")
        for line in COUNTS:
            terminalreporter.write_line(line)
