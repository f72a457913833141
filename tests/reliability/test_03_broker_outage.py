"""Scenario 3: the only broker of a private stack stops for about ten seconds mid-stream, then starts again.

The producer (idempotent, acks=all) keeps its records queued and retries them: when the broker is back,
each record is in telemetry exactly once (a retried batch the broker had already written is recognised by
its producer id and sequence number, not written twice). Scorers see fetch and transaction errors, abort
or retry, and carry on: the anomaly topic ends exactly as offline scoring says.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from anomstream.synthetic import generate_fleet
from tests.reliability.accounting import Expectation
from tests.reliability.scenario import MODEL_NAME, Scenario, fleet_spec
from tests.reliability.stacks import Cluster

RECORDS = 60_000
RATE = 1_500.0  # records/s: a 40 s stream
SCORERS = 2
OUTAGE_S = 10.0


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_broker_stopped_mid_stream_loses_and_duplicates_nothing(
    private_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    scenario = make_scenario("broker-outage", private_cluster)
    for scorer in [scenario.start_scorer() for _ in range(SCORERS)]:
        scorer.wait_for(r"assigned partitions|^consuming ")
    producer = scenario.produce(RECORDS, rate=RATE)
    scenario.wait_for_records(RECORDS // 4)
    stopping = time.monotonic()
    private_cluster.stop_server("kafka", signal.SIGTERM)
    time.sleep(max(stopping + OUTAGE_S - time.monotonic(), 0.0))
    private_cluster.start_missing()
    outage_s = time.monotonic() - stopping
    scenario.finish_producer(producer, RECORDS)
    scenario.wait_until_committed(300)
    scenario.stop_scorers()

    model = scenario.model()
    expectation = Expectation(generate_fleet(fleet_spec(RECORDS)), model.model, {(MODEL_NAME, 1)})
    verdict = scenario.verdict(expectation, notes=[f"broker down (stopping to answering again) for {outage_s:.1f} s"])
    assert verdict.records_in == RECORDS  # the idempotent producer wrote nothing twice
    assert outage_s >= OUTAGE_S
    assert verdict.expected_anomalies > 20
    assert not verdict.problems(), verdict.report()
