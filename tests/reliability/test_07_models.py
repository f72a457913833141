"""Scenario 7: broken model versions while two scorers serve the stream.

In turn, between parts of the stream:

1. a trainer publishing a new version is SIGKILLed while its version is being written: the store keeps
   the current version, intact and current, and the next publication clears what the crash left;
2. a version whose artifact was altered after publication is made current and announced;
3. a version whose artifact was truncated is made current and announced;
4. a good version (the same model again) is published and announced.

Scorers must refuse 2 and 3 (checksums), keep serving version 1 meanwhile, and switch to 4 between two
batches. A third scorer started while 3 is current must serve version 1 (current before the broken ones)
rather than wait, and join the group. The anomaly topic must equal offline scoring, and carry version 1
for everything before the switch and version 4 after it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from anomstream.errors import ModelIntegrityError
from anomstream.kafka_config import registry_client
from anomstream.model_store import CURRENT, ModelStore, announce
from anomstream.serde import TelemetryEncoder
from anomstream.synthetic import generate_fleet
from tests.reliability.accounting import Expectation, decode_anomalies, read_records
from tests.reliability.scenario import MODEL_NAME, Outgoing, Process, Scenario, fleet_spec, send
from tests.reliability.stacks import Cluster

RECORDS = 60_000
PARTS = 5
SCORERS = 2
SEED = 77


def point_current_at(store: ModelStore, version: int, previous: list[int]) -> None:
    """Make ``version`` current without the store's checks, as a corrupted shared volume would present it."""
    pointer = store.root / MODEL_NAME / CURRENT
    aside = pointer.with_name(".CURRENT.reliability")
    updated = datetime.now(UTC).isoformat()
    aside.write_text(json.dumps({"version": version, "previous": previous, "updated_at": updated}))
    os.replace(aside, pointer)


def largest_artifact(store: ModelStore, version: int) -> Path:
    files = store.manifest(MODEL_NAME, version)["files"]
    return store.path(MODEL_NAME, version) / max(files, key=lambda name: files[name]["bytes"])


def kill_trainer_during_publication(scenario: Scenario, rng: random.Random) -> tuple[Process, list[Path]]:
    """Start `anomstream train` and SIGKILL it once its version is being written; return what it left."""
    folder = scenario.model_dir / MODEL_NAME
    trainer = scenario.spawn("trainer", "train", "--model", "iforest", "--per-device", "--train-records", "300",
                             "--name", MODEL_NAME, "--promote", "always")  # fmt: skip
    deadline = time.monotonic() + 300
    while trainer.alive and time.monotonic() < deadline and not list(folder.glob(".staging-*")):
        time.sleep(0.001)
    time.sleep(rng.uniform(0.0, 0.05))
    scenario.kill(trainer)
    trainer.process.wait(30)
    return trainer, list(folder.glob(".staging-*"))


def wait_all(scorers: list[Process], pattern: str) -> None:
    for scorer in scorers:
        scorer.wait_for(pattern, timeout_s=60)


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_broken_versions_are_refused_and_a_killed_trainer_leaves_the_current_version(
    shared_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    rng = random.Random(SEED)
    scenario = make_scenario("models", shared_cluster)
    kafka, topics, store = shared_cluster.kafka_settings, scenario.topics, scenario.store
    fleet = generate_fleet(fleet_spec(RECORDS))
    values = TelemetryEncoder(registry_client(kafka), topics.telemetry_topic).encode(fleet)
    records = [Outgoing(str(d).encode(), v) for d, v in zip(fleet.device_id, values, strict=True)]
    parts = np.array_split(np.arange(len(records)), PARTS)
    scorers = [scenario.start_scorer() for _ in range(SCORERS)]
    wait_all(scorers, r"^consuming ")
    version_one = scenario.model()

    def stream_part(k: int) -> list[tuple[int, int]]:
        landed = send(kafka, topics.telemetry_topic, [records[i] for i in parts[k]])
        assert scenario.wait_until_committed(180), f"part {k + 1} was not scored"
        return landed

    stream_part(0)
    trainer, leftovers = kill_trainer_during_publication(scenario, rng)
    assert trainer.process.returncode == -signal.SIGKILL, f"the trainer ended by itself:\n{trainer.tail()}"
    assert leftovers, "the trainer was not killed while writing its version"
    assert store.current_version(MODEL_NAME) == 1 and store.versions(MODEL_NAME) == [1]
    assert store.load(MODEL_NAME).version == 1  # verified: every checksum of the current version still matches

    stream_part(1)
    tampered = store.publish(MODEL_NAME, version_one.model, promote="never")
    assert not list((store.root / MODEL_NAME).glob(".staging-*")), "the crash's leftovers were not cleared"
    artifact = largest_artifact(store, tampered.version)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    point_current_at(store, tampered.version, [1])
    announce(kafka, topics.models_topic, MODEL_NAME, tampered.version, tampered.manifest)
    wait_all(scorers, rf"refusing model {MODEL_NAME} version {tampered.version}\b")

    stream_part(2)
    truncated = store.publish(MODEL_NAME, version_one.model, promote="never")
    artifact = largest_artifact(store, truncated.version)
    artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    point_current_at(store, truncated.version, [1, tampered.version])
    announce(kafka, topics.models_topic, MODEL_NAME, truncated.version, truncated.manifest)
    wait_all(scorers, rf"refusing model {MODEL_NAME} version {truncated.version}\b")
    for broken in (tampered.version, truncated.version):
        with pytest.raises(ModelIntegrityError):
            store.load(MODEL_NAME, broken)
    # a scorer starting now finds a damaged current version: it serves the last good one and joins the group
    late = scenario.start_scorer()
    late.wait_for(rf"serving model {MODEL_NAME} version 1, current before the refused version {truncated.version}\b")
    late.wait_for(r"^consuming ")
    scorers.append(late)

    stream_part(3)
    good = store.publish(MODEL_NAME, version_one.model, promote="always")
    announce(kafka, topics.models_topic, MODEL_NAME, good.version, good.manifest)
    wait_all(scorers, rf"now serving {MODEL_NAME} version {good.version}\b")
    first_served_by_good: dict[int, int] = {}  # partition -> first offset of the last part
    for partition, offset in stream_part(4):
        first_served_by_good[partition] = min(offset, first_served_by_good.get(partition, offset))
    scenario.stop_scorers()

    versions = {(MODEL_NAME, 1), (MODEL_NAME, good.version)}  # the same model: the same scores
    verdict = scenario.verdict(
        Expectation(fleet, version_one.model, versions),
        notes=[f"trainer killed leaving {[p.name for p in leftovers]}; refused versions {tampered.version} "
               f"(altered) and {truncated.version} (truncated); {late.name}, started while {truncated.version} was "
               f"current, served version 1; switched to version {good.version}"],
    )  # fmt: skip
    assert not verdict.problems(), verdict.report()
    rows = decode_anomalies(kafka, topics.anomaly_topic, read_records(kafka, topics.anomaly_topic))
    served_by = [(r["model_version"], r["source_offset"] >= first_served_by_good.get(r["source_partition"], 1 << 62))
                 for r in rows]  # fmt: skip
    assert all((version == good.version) == after for version, after in served_by), (
        "anomalies before the switch must carry version 1, after it the new version"
    )
    assert {version for version, _ in served_by} == {1, good.version}
