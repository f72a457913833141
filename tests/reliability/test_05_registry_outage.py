"""Scenario 5: the Schema Registry of a private stack is down for about thirty seconds mid-stream.

The stream is arranged so that scorers must ask the registry during the outage: before it, records of the
telemetry schema (which every scorer then caches); during it, records written with an evolved, compatible
version of the schema (an id no scorer has seen) and a few records framed with schema ids the registry
never issued; and one scorer is replaced, so a fresh process has to register its anomaly schema. A registry
that does not answer is a transient fault: scorers pause and retry, nothing goes to the dead-letter topic
while it is down, not even the records with unknown ids (unknowable until the registry answers 404). When
it is back, the evolved records are scored like the others and the unknown ids, only they, are dead letters.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Callable

import fastavro
import numpy as np
import pytest

from anomstream.kafka_config import registry_client
from anomstream.serde import UNKNOWN_SCHEMA, TelemetryEncoder, load_schema, register_schema, wire_header
from anomstream.synthetic import generate_fleet
from anomstream.telemetry import NO_LABEL, TelemetryBatch
from tests.reliability.accounting import Expectation, read_records
from tests.reliability.scenario import MODEL_NAME, Outgoing, Scenario, fleet_spec, send
from tests.reliability.stacks import Cluster

RECORDS = 60_000
SCORERS = 2
OUTAGE_S = 30.0
UNKNOWN_IDS = 25
RATE = 1_500.0  # records/s while the registry is down


def evolved_schema() -> str:
    """telemetry.avsc plus an optional field with a default: a BACKWARD-compatible new version."""
    schema = json.loads(load_schema("telemetry"))
    schema["fields"].append({"name": "site", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


def encode_evolved(batch: TelemetryBatch, schema_id: int) -> list[bytes]:
    """Records of ``batch`` written with the evolved schema (fastavro, one by one)."""
    parsed = fastavro.parse_schema(json.loads(evolved_schema()))
    values = []
    for i in range(len(batch)):
        record = {
            "device_id": batch.device_id[i], "event_time": int(batch.event_time_ms[i]), "seq": int(batch.seq[i]),
            "channels": dict(zip(batch.channels, map(float, batch.values[i]), strict=True)),
            "label": None if batch.label[i] == NO_LABEL else int(batch.label[i]), "site": f"plant-{i % 3}",
        }  # fmt: skip
        body = io.BytesIO()
        fastavro.schemaless_writer(body, parsed, record)
        values.append(wire_header(schema_id) + body.getvalue())
    return values


def keyed(batch: TelemetryBatch, values: list[bytes]) -> list[Outgoing]:
    return [Outgoing(str(d).encode(), v) for d, v in zip(batch.device_id, values, strict=True)]


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_registry_outage_pauses_scorers_and_dead_letters_no_good_record(
    private_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    scenario = make_scenario("registry-outage", private_cluster)
    kafka, topic = private_cluster.kafka_settings, scenario.topics.telemetry_topic
    registry = registry_client(kafka)
    current_id = TelemetryEncoder(registry, topic).schema_id
    evolved_id = register_schema(registry, f"{topic}-value", evolved_schema())
    assert evolved_id != current_id
    fleet = generate_fleet(fleet_spec(RECORDS))
    before, during, after = (fleet.take(part) for part in np.array_split(np.arange(len(fleet)), 3))
    unknown = [Outgoing(f"ghost-{k}".encode(), wire_header(1_900_000_000 + k) + b"\x02x") for k in range(UNKNOWN_IDS)]
    outage_records = keyed(during, encode_evolved(during, evolved_id))
    for k, record in enumerate(unknown):  # spread through the outage's stream
        outage_records.insert((k + 1) * len(outage_records) // (UNKNOWN_IDS + 1), record)

    scorers = [scenario.start_scorer() for _ in range(SCORERS)]
    for scorer in scorers:
        scorer.wait_for(r"^consuming ")
    send(kafka, topic, keyed(before, TelemetryEncoder(registry, topic).encode(before)))
    assert scenario.wait_until_committed(180), "the first part was not scored before the outage"

    down_at = time.monotonic()
    private_cluster.stop_server("registry", signal.SIGTERM)
    locations = send(kafka, topic, outage_records, rate=RATE)
    scenario.kill(scorers[1], signal.SIGTERM)  # replaced while the registry is down
    replacement = scenario.start_scorer()
    time.sleep(max(down_at + OUTAGE_S - time.monotonic(), 0.0))
    dead_during_outage = len(read_records(kafka, scenario.topics.dlq_topic))
    paused = [p.name for p in scenario.processes if any("transient fault" in m for m in p.messages())]
    private_cluster.start_missing()
    outage_s = time.monotonic() - down_at
    send(kafka, topic, keyed(after, TelemetryEncoder(registry, topic).encode(after)))
    scenario.wait_until_committed(300)
    replacement.wait_for(r"^consuming ", timeout_s=30)
    scenario.stop_scorers()

    bad = {where: UNKNOWN_SCHEMA for where, record in zip(locations, outage_records, strict=True)
           if (record.key or b"").startswith(b"ghost-")}  # fmt: skip
    model = scenario.model()
    verdict = scenario.verdict(
        Expectation(fleet, model.model, {(MODEL_NAME, 1)}, bad),
        notes=[f"registry down {outage_s:.1f} s; scorers that paused on it: {paused}; "
               f"dead letters while it was down: {dead_during_outage}"],
    )  # fmt: skip
    assert outage_s >= OUTAGE_S
    assert paused, "no scorer met the outage: the scenario did not test what it says"
    assert dead_during_outage == 0, "records went to the DLQ while the registry could not tell good from bad"
    assert verdict.records_in == RECORDS + UNKNOWN_IDS
    assert not verdict.problems(), verdict.report()
