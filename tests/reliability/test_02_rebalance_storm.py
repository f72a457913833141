"""Scenario 2: a rebalance storm, scaling the scorer group 1 -> 3 -> 1 twice while the stream flows.

Joining members take partitions from the first one (cooperative-sticky: only the moved partitions are
revoked) and must rebuild their devices' history before scoring; leaving members (SIGTERM) finish and
commit their batch, leave the group, and hand their partitions back. Nothing may be lost or scored twice,
and every reading must score as if one scorer had seen the whole stream.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections.abc import Callable

import pytest

from anomstream.synthetic import generate_fleet
from tests.reliability.accounting import Expectation
from tests.reliability.scenario import MODEL_NAME, Scenario, fleet_spec
from tests.reliability.stacks import Cluster

RECORDS = 120_000
RATE = 1_500.0  # records/s: an 80 s stream
CYCLES = 2
SEED = 7_022


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scaling_one_three_one_while_streaming_loses_and_duplicates_nothing(
    shared_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    rng = random.Random(SEED)
    scenario = make_scenario("rebalance-storm", shared_cluster)
    first = scenario.start_scorer()
    first.wait_for(r"assigned partitions")
    producer = scenario.produce(RECORDS, rate=RATE)
    began = time.monotonic()
    cycle_s = RECORDS / RATE / (CYCLES + 0.5)
    events = []
    for cycle in range(CYCLES):
        # scale out somewhere in the first half of the cycle, back in somewhere in the second half
        out_at, in_at = cycle_s * (cycle + rng.uniform(0.1, 0.4)), cycle_s * (cycle + rng.uniform(0.6, 0.9))
        time.sleep(max(began + out_at - time.monotonic(), 0.0))
        joined = [scenario.start_scorer(), scenario.start_scorer()]
        for scorer in joined:  # members that never joined would make no storm
            scorer.wait_for(r"^assigned partitions \[\d", timeout_s=90)
        events.append(f"1->3 at {time.monotonic() - began:.1f} s")
        time.sleep(max(began + in_at - time.monotonic(), 2.0))  # and each scores a little before leaving
        for scorer in joined:
            scenario.kill(scorer, signal.SIGTERM)
        events.append(f"3->1 at {time.monotonic() - began:.1f} s")
    scenario.finish_producer(producer, RECORDS)
    scenario.wait_until_committed(180)
    scenario.stop_scorers()

    model = scenario.model()
    expectation = Expectation(generate_fleet(fleet_spec(RECORDS)), model.model, {(MODEL_NAME, 1)})
    verdict = scenario.verdict(expectation, notes=[", ".join(events)])
    assert verdict.records_in == RECORDS
    assert verdict.expected_anomalies > 100
    assert not verdict.problems(), verdict.report()
    # the storm happened: the first scorer gave partitions away at each scale-out and got them back after
    moves = [m for m in first.messages() if re.match(r"(revoked|assigned) partitions \[\d", m)]
    assert sum(m.startswith("revoked") for m in moves) >= CYCLES, first.tail()
    assert sum(m.startswith("assigned") for m in moves) >= CYCLES + 1, first.tail()
