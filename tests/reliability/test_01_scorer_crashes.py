"""Scenario 1: three scorers on a 200,000-record stream; a random one SIGKILLed five times at random moments.

Each crash leaves a transaction open and a member that stops heart-beating; the replacement joins at once.
Exactly-once means the anomaly topic (read_committed) ends with every expected anomaly once: batches the
killed scorer had not committed are aborted by the coordinator and scored again by the partition's next
owner, whose device history is rebuilt from the records before its committed offset.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from anomstream.synthetic import generate_fleet
from tests.reliability.accounting import Expectation
from tests.reliability.scenario import MODEL_NAME, Scenario, fleet_spec
from tests.reliability.stacks import Cluster

RECORDS = 200_000
RATE = 2_500.0  # records/s: the stream lasts 80 s, long enough for five crashes at random moments
SCORERS = 3
KILLS = 5
SEED = 20_240_801


def crash_moments(rng: random.Random, stream_s: float, kills: int, min_gap_s: float = 6.0) -> list[float]:
    """``kills`` random moments (s from the stream's start) inside it, at least ``min_gap_s`` apart."""
    for _ in range(10_000):
        moments = sorted(rng.uniform(0.05 * stream_s, 0.9 * stream_s) for _ in range(kills))
        if all(b - a >= min_gap_s for a, b in zip(moments, moments[1:], strict=False)):
            return moments
    raise AssertionError(f"{kills} moments {min_gap_s} s apart do not fit in a {stream_s:.0f} s stream")


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scorers_killed_at_random_moments_lose_and_duplicate_nothing(
    shared_cluster: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    rng = random.Random(SEED)
    scenario = make_scenario("crashes", shared_cluster)
    for scorer in [scenario.start_scorer() for _ in range(SCORERS)]:
        scorer.wait_for(r"^consuming ")
    producer = scenario.produce(RECORDS, rate=RATE)
    began = time.monotonic()
    victims = []
    for moment in crash_moments(rng, RECORDS / RATE, KILLS):
        time.sleep(max(began + moment - time.monotonic(), 0.0))
        victim = rng.choice(scenario.scorers())
        scenario.kill(victim)
        victims.append(f"{victim.name} at {time.monotonic() - began:.1f} s")
        scenario.start_scorer()
    scenario.finish_producer(producer, RECORDS)
    scenario.wait_until_committed(180)  # bounded; partitions left short are reported by the verdict
    scenario.stop_scorers()

    model = scenario.model()
    expectation = Expectation(generate_fleet(fleet_spec(RECORDS)), model.model, {(MODEL_NAME, 1)})
    verdict = scenario.verdict(expectation, notes=[f"killed {', '.join(victims)}"])
    assert len(victims) == KILLS
    assert verdict.records_in == RECORDS
    assert verdict.expected_anomalies > 100  # the comparison means something only with anomalies to compare
    assert not verdict.problems(), verdict.report()
