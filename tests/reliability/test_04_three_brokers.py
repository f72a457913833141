"""Scenario 4: a three-node KRaft cluster (replication factor 3, min ISR 2) loses a broker mid-stream.

One node, drawn at random, is SIGKILLed and stays down: partition leadership, the group coordinator and
the transaction coordinator of whatever it led move to the two survivors, which still form a quorum and
an in-sync set of two, so acks=all writes and transactions go on. Nothing may be lost or duplicated.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anomstream.synthetic import generate_fleet
from tests.reliability.accounting import Expectation
from tests.reliability.scenario import MODEL_NAME, Scenario, fleet_spec
from tests.reliability.stacks import Cluster, start_private_cluster

RECORDS = 60_000
RATE = 1_500.0  # records/s: a 40 s stream
SCORERS = 2
SEED = 3_003


@pytest.fixture(scope="module")
def three_brokers(tmp_path_factory: pytest.TempPathFactory, shared_cluster: Cluster) -> Iterator[Cluster]:
    """A private `anomstream stack up --brokers 3` cluster (the shared stack's jars), down after this module."""
    cluster = start_private_cluster(Path(tmp_path_factory.mktemp("three-brokers")), brokers=3)
    yield cluster
    cluster.down()


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_broker_killed_in_a_three_node_cluster_loses_nothing(
    three_brokers: Cluster, make_scenario: Callable[[str, Cluster], Scenario]
) -> None:
    victim = random.Random(SEED).choice(["kafka", "kafka-2", "kafka-3"])
    scenario = make_scenario("three-brokers", three_brokers)
    for scorer in [scenario.start_scorer() for _ in range(SCORERS)]:
        scorer.wait_for(r"assigned partitions|^consuming ")
    producer = scenario.produce(RECORDS, rate=RATE)
    scenario.wait_for_records(RECORDS // 3)
    killed_at = time.monotonic() - scenario.started
    three_brokers.stop_server(victim, signal.SIGKILL)
    scenario.finish_producer(producer, RECORDS)
    scenario.wait_until_committed(300)
    scenario.stop_scorers()

    model = scenario.model()
    expectation = Expectation(generate_fleet(fleet_spec(RECORDS)), model.model, {(MODEL_NAME, 1)})
    verdict = scenario.verdict(expectation, notes=[f"SIGKILLed {victim} {killed_at:.1f} s into the scenario"])
    assert three_brokers.pid(victim) is None  # it stayed down: the survivors did all the rest
    assert verdict.records_in == RECORDS
    assert verdict.expected_anomalies > 20
    assert not verdict.problems(), verdict.report()
