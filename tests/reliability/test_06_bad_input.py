"""Scenario 6: 10,000 fuzzed messages mixed at random into 100,000 good ones.

Every kind of bad record a telemetry topic meets: random bytes, empty and null values, frames shorter than
the wire-format header, a wrong magic byte, truncated Avro, trailing bytes, schema ids the registry never
issued, NaN and infinite readings, missing channels, absurdly large readings (which overflow the feature
arithmetic and would poison the device's rolling statistics), and keys that are not the device id (empty
or absent: such a record lands on another partition than its device, whose history its scorer does not
hold). Each must reach the dead-letter topic once, byte for byte, with its reason; every good record around
them must be scored exactly as offline; and no scorer may die.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import fastavro
import pytest

from anomstream.kafka_config import registry_client
from anomstream.serde import (
    BAD_MAGIC,
    MISSING_CHANNEL,
    NON_FINITE,
    UNDECODABLE,
    UNKNOWN_SCHEMA,
    TelemetryEncoder,
    load_schema,
    wire_header,
)
from anomstream.synthetic import generate_fleet
from anomstream.telemetry import TelemetryBatch
from tests.reliability.accounting import Expectation
from tests.reliability.scenario import MODEL_NAME, Outgoing, Scenario, fleet_spec, send
from tests.reliability.stacks import Cluster

GOOD = 100_000
SCORERS = 2
SEED = 606
OUT_OF_RANGE = "out-of-range"  # a reading too large for arithmetic on it to stay finite
KEY_MISMATCH = "key-mismatch"  # the key is not the record's device id
HUGE = (1e200, -1e250, 1e300, -1e300, 1.7976931348623157e308)


@dataclass(frozen=True)
class Case:
    """A kind of bad record: how many, and the dead-letter reason each must carry."""

    name: str
    count: int
    reason: str


CASES = (
    Case("random bytes", 1_250, BAD_MAGIC),
    Case("empty value", 250, BAD_MAGIC),
    Case("null value", 250, BAD_MAGIC),
    Case("frame shorter than the header", 250, BAD_MAGIC),
    Case("wrong magic byte", 1_000, BAD_MAGIC),
    Case("truncated Avro", 1_500, UNDECODABLE),
    Case("trailing bytes", 500, UNDECODABLE),
    Case("unknown schema id", 1_000, UNKNOWN_SCHEMA),
    Case("NaN reading", 500, NON_FINITE),
    Case("infinite reading", 500, NON_FINITE),
    Case("missing channels", 1_000, MISSING_CHANNEL),
    Case("huge reading", 1_000, OUT_OF_RANGE),
    Case("empty or absent key", 1_000, KEY_MISMATCH),
)


class Fuzzer:
    """Bad records built from good readings of ``template`` under fresh device ids (seeded)."""

    def __init__(self, rng: random.Random, template: TelemetryBatch, schema_id: int) -> None:
        self.rng, self.template, self.schema_id = rng, template, schema_id
        self.schema = fastavro.parse_schema(json.loads(load_schema("telemetry")))
        self.made = 0

    def reading(self) -> tuple[str, dict[str, object]]:
        """A plausible reading of a device never seen elsewhere: (device id, Avro record)."""
        self.made += 1
        row = self.rng.randrange(len(self.template))
        device = f"fuzz-{self.made:05d}"
        channels = {c: float(v) for c, v in zip(self.template.channels, self.template.values[row], strict=True)}
        return device, {"device_id": device, "event_time": int(self.template.event_time_ms[row]), "seq": 0,
                        "channels": channels, "label": None}  # fmt: skip

    def encode(self, record: dict[str, object], schema_id: int | None = None) -> bytes:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, self.schema, record)
        return wire_header(self.schema_id if schema_id is None else schema_id) + body.getvalue()

    def make(self, case: Case) -> Outgoing:
        """One bad record of ``case``, with headers that the dead letter must keep."""
        rng = self.rng
        device, record = self.reading()
        key: bytes | None = device.encode()
        channels: dict[str, float] = record["channels"]  # type: ignore[assignment]
        value: bytes | None = self.encode(record)
        if case.name == "random bytes":
            value = bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randrange(0, 300))
        elif case.name == "empty value":
            value = b""
        elif case.name == "null value":
            value = None
        elif case.name == "frame shorter than the header":
            value = b"\x00" + rng.randbytes(rng.randrange(0, 4))
        elif case.name == "wrong magic byte":
            value = bytes([rng.randrange(1, 256)]) + value[1:]
        elif case.name == "truncated Avro":
            value = value[: rng.randrange(5, len(value))]
        elif case.name == "trailing bytes":
            value += rng.randbytes(rng.randrange(1, 21))
        elif case.name == "unknown schema id":
            value = self.encode(record, 2_000_000_000 + rng.randrange(50))  # a few misconfigured producers
        elif case.name in ("NaN reading", "infinite reading", "huge reading"):
            choices = {"NaN reading": (float("nan"),), "infinite reading": (float("inf"), float("-inf"))}
            channels[rng.choice(list(channels))] = rng.choice(choices.get(case.name, HUGE))
            value = self.encode(record)
        elif case.name == "missing channels":
            for name in rng.sample(list(channels), rng.randrange(1, 4)):
                del channels[name]
            value = self.encode(record)
        elif case.name == "empty or absent key":
            key = rng.choice([b"", None])
        headers: list[tuple[str, bytes | None]] = [("fuzz-case", case.name.encode()), ("trace", rng.randbytes(8))]
        if rng.random() < 0.2:
            headers.append(("empty-header", None))
        return Outgoing(key, value, headers)


def mixed_stream(rng: random.Random, good: list[Outgoing], bad: list[tuple[Outgoing, str]]) -> list[Outgoing]:
    """Good records in their order with the bad ones at random places among them."""
    slots = [True] * len(good) + [False] * len(bad)
    rng.shuffle(slots)
    good_iter, bad_iter = iter(good), iter(record for record, _ in bad)
    return [next(good_iter) if is_good else next(bad_iter) for is_good in slots]


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_bad_record_is_a_dead_letter_with_its_reason_and_every_good_one_is_scored(
    shared_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    rng = random.Random(SEED)
    scenario = make_scenario("bad-input", shared_cluster)
    kafka, topic = shared_cluster.kafka_settings, scenario.topics.telemetry_topic
    encoder = TelemetryEncoder(registry_client(kafka), topic)
    fleet = generate_fleet(fleet_spec(GOOD))
    good = [Outgoing(str(d).encode(), v) for d, v in zip(fleet.device_id, encoder.encode(fleet), strict=True)]
    fuzzer = Fuzzer(rng, fleet, encoder.schema_id)
    bad = [(fuzzer.make(case), case.reason) for case in CASES for _ in range(case.count)]
    stream = mixed_stream(rng, good, bad)
    reason_of = {id(record): reason for record, reason in bad}

    for scorer in [scenario.start_scorer() for _ in range(SCORERS)]:
        scorer.wait_for(r"^consuming ")
    locations = send(kafka, topic, stream)
    scenario.wait_until_committed(180)
    scenario.stop_scorers()

    expected_bad = {where: reason_of[id(r)] for where, r in zip(locations, stream, strict=True) if id(r) in reason_of}
    model = scenario.model()
    verdict = scenario.verdict(Expectation(fleet, model.model, {(MODEL_NAME, 1)}, expected_bad))
    assert len(bad) == 10_000 and len(expected_bad) == len(bad)
    assert verdict.records_in == GOOD + len(bad)
    assert verdict.expected_anomalies > 100
    assert not verdict.problems(), verdict.report()
    assert verdict.dead_letters == len(bad)
    assert verdict.scored == GOOD
