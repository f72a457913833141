"""The trainer against the real stack: windows read from a topic, artifacts, reproducibility, the commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from anomstream.config import TopicSettings
from anomstream.model import AnomalyModel
from anomstream.model_store import ModelStore
from anomstream.producer import ProducerSettings, run_producer
from anomstream.sources import read_skab_file
from anomstream.synthetic import DEFAULT_START_MS
from anomstream.trainer import TrainSettings, fit_model, read_windows, score_evaluation, train
from tests.conftest import SHARED_DATA, anomstream

DEVICES, RECORDS = 4, 6000  # 1,500 readings per device, one a second from DEFAULT_START_MS
SKAB_FILES = [SHARED_DATA / "skab" / "data" / "valve1" / name for name in ("1.csv", "2.csv")]
FAST = {"n_estimators": 25}  # small forests: the tests check plumbing and exactness, not detection quality


@pytest.fixture
def fleet_topics(stack: Any, topics: TopicSettings) -> TopicSettings:
    """Fresh system topics with a labelled synthetic fleet in the telemetry topic."""
    source = ProducerSettings(
        source="synthetic", topic=topics.telemetry_topic, devices=DEVICES, records=RECORDS, seed=3, anomaly_rate=0.03
    )
    assert run_producer(source, stack.kafka_settings, show_progress=False).delivered == RECORDS
    return topics


def at(seconds: int) -> datetime:
    """The event time ``seconds`` after the synthetic fleet's first reading."""
    return datetime.fromtimestamp(DEFAULT_START_MS / 1000 + seconds, UTC)


def test_training_from_a_topic_window_publishes_a_complete_version(
    stack: Any, fleet_topics: TopicSettings, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "models")
    settings = TrainSettings(name="fleet", model="iforest", per_device=True, train_records=1000, params=FAST)

    outcome = train(settings, stack.kafka_settings, fleet_topics, store, show_progress=False)

    assert (outcome.publication.version, outcome.publication.current) == (1, True)
    folder = store.path("fleet", 1)
    manifest = store.load("fleet").manifest
    assert {"model.json", "global/iforest.npz", "report.json", "report.png", "incidents.png"} <= set(manifest["files"])
    on_global = manifest["evaluation"]["metrics"]["calibration"]["devices_on_global"]
    assert on_global["too_few_rows"] == 0  # 1,000 readings each; a device model no better than the global one goes
    own = DEVICES - on_global["worse_than_global"]
    # iforest's bank: a folder per own detector (arrays + params) and the bank's index
    assert own >= 1 and sum(f.startswith("devices/") for f in manifest["files"]) == 2 * own + 1
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "incidents.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the incident timeline
    report = json.loads((folder / "report.json").read_text())
    training, evaluation = manifest["training"]["window"], manifest["evaluation"]["window"]
    assert (training["records"], evaluation["records"]) == (DEVICES * 1000, DEVICES * 500)
    assert training["devices"] == evaluation["devices"] == DEVICES
    metrics = manifest["evaluation"]["metrics"]
    assert metrics["tp"] + metrics["fp"] + metrics["fn"] + metrics["tn"] == DEVICES * 500
    assert report["f1"] == metrics["f1"] and 0.0 <= metrics["f1"] <= 1.0 and metrics["roc_auc"] is not None
    incidents = metrics["incidents"]  # the flags as incidents, against the labelled faults
    assert incidents["true_incidents"] <= incidents["incidents"] and incidents["faults"] > 0
    assert 0.0 <= incidents["incident_precision"] <= 1.0 and 0.0 <= incidents["incident_recall"] <= 1.0
    # the rate asked for and the rate achieved on the evaluation window's normal readings, side by side
    calibration = metrics["calibration"]
    assert calibration["target_far"] == settings.target_far == 0.001 and calibration["detectors"] == own + 1
    assert calibration["achieved_far"] == pytest.approx(metrics["fp"] / (metrics["fp"] + metrics["tn"]))
    assert sum(r[1] - r[0] for r in manifest["source"]["read_ranges"].values()) == RECORDS
    assert (
        manifest["per_device"] is True and manifest["seed"] == 0 and manifest["detector_params"]["n_estimators"] == 25
    )
    # each device sits on one partition: its evaluation offsets come after its training offsets
    for partition, offsets in evaluation["offsets"].items():
        assert offsets["first"] > training["offsets"][partition]["first"]
    announced = _announcements(stack, fleet_topics.models_topic)
    assert [(a["name"], a["version"], a["current_version"]) for a in announced] == [("fleet", 1, 1)]


def test_the_evaluation_window_is_strictly_after_the_training_window(stack: Any, fleet_topics: TopicSettings) -> None:
    by_time = TrainSettings(train_start=at(100), train_end=at(700), eval_end=at(1000))
    windows = read_windows(by_time, stack.kafka_settings, fleet_topics.telemetry_topic)
    times = windows.read.batch.event_time_ms

    assert (windows.train.sum(), windows.evaluate.sum()) == (DEVICES * 600, DEVICES * 300)
    assert times[windows.train].max() < times[windows.evaluate].min()
    assert (
        times[windows.train].min() == DEFAULT_START_MS + 100_000
        and times[windows.evaluate].max() < DEFAULT_START_MS + 1_000_000
    )
    assert windows.read.ranges[0].start >= 0 and len(windows.read.batch) <= RECORDS

    by_count = read_windows(TrainSettings(train_records=900), stack.kafka_settings, fleet_topics.telemetry_topic)
    batch = by_count.read.batch
    for name in np.unique(batch.device_id):
        mine = batch.device_id == name
        assert (by_count.train & mine).sum() == 900 and (by_count.evaluate & mine).sum() == 600
        assert batch.event_time_ms[by_count.train & mine].max() < batch.event_time_ms[by_count.evaluate & mine].min()
        assert (np.diff(batch.seq[mine]) == 1).all()  # a device's rows in the order it sent them


def test_the_same_seed_gives_identical_scores(stack: Any, fleet_topics: TopicSettings, tmp_path: Path) -> None:
    settings = TrainSettings(train_records=1000, seed=7, params=FAST)
    windows = read_windows(settings, stack.kafka_settings, fleet_topics.telemetry_topic)
    again = read_windows(settings, stack.kafka_settings, fleet_topics.telemetry_topic)

    first = score_evaluation(fit_model(windows, settings), windows)[1]
    second = score_evaluation(fit_model(again, settings), again)[1]
    other_seed = score_evaluation(fit_model(windows, settings.model_copy(update={"seed": 8})), windows)[1]

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)  # the seed matters, so the equality above says something


def test_per_device_training_matches_fitting_each_skab_file_alone(stack: Any, topics: TopicSettings) -> None:
    for path in SKAB_FILES:
        source = ProducerSettings(source=f"skab:{path}", topic=topics.telemetry_topic)
        assert run_producer(source, stack.kafka_settings, show_progress=False).ok
    settings = TrainSettings(model="iforest", per_device=True, train_records=400, params={"pooled_tail": False})
    model = fit_model(read_windows(settings, stack.kafka_settings, topics.telemetry_topic), settings)

    # A device keeps its own detector unless it flags more of its held-back readings than the global one.
    kept = 0
    for path in SKAB_FILES:
        rows = read_skab_file(path)
        alone = AnomalyModel.fit(rows.take(slice(0, 400)), "iforest", seed=0)
        device = str(rows.device_id[0])
        if device not in model.device_detectors:
            continue
        kept += 1
        assert model.device_thresholds[device] == alone.global_threshold
        assert np.array_equal(model.score(rows, explain="none").score, alone.score(rows, explain="none").score)
    assert kept >= 1 and kept + model.calibration["devices_on_global"]["worse_than_global"] == len(SKAB_FILES)


def test_undecodable_records_are_skipped_and_counted(stack: Any, fleet_topics: TopicSettings) -> None:
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for value in (b"not avro", b"\x00\x00\x00\x00\x01\xff", None):
        producer.produce(fleet_topics.telemetry_topic, key=b"sim-0000", value=value)
    assert producer.flush(30) == 0

    windows = read_windows(TrainSettings(train_records=1000), stack.kafka_settings, fleet_topics.telemetry_topic)

    assert len(windows.read.batch) == RECORDS and windows.read.records == RECORDS + 3
    assert sum(windows.read.bad.values()) == 3 and windows.read.bad["bad-magic"] == 2


def test_anomstream_train_and_models_commands(fleet_topics: TopicSettings, topic_env: dict[str, str]) -> None:
    trained = anomstream(
        "train", "--model", "iforest", "--train-records", "1000", "--name", "cli_model",
        "--params", json.dumps(FAST), env=topic_env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "published cli_model version 1 (current)" in trained.stdout

    listed = anomstream("models", "list", "--json", env=topic_env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["version"], r["current"], r["training_records"]) for r in rows] == [
        ("cli_model", 1, True, DEVICES * 1000)
    ]
    shown = anomstream("models", "show", "cli_model", env=topic_env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "cli_model"

    stored = anomstream(
        "train", "--train-records", "1200", "--name", "cli_model", "--promote", "never",
        "--params", json.dumps(FAST), env=topic_env,
    )  # fmt: skip
    assert stored.returncode == 0 and "stored, not current (current: 1)" in stored.stdout
    assert anomstream("models", "promote", "cli_model", "2", env=topic_env).returncode == 0
    assert ModelStore(topic_env["ANOMSTREAM_MODEL_DIR"]).current_version("cli_model") == 2
    rolled = anomstream("models", "rollback", "cli_model", env=topic_env)
    assert rolled.returncode == 0 and "version 1 is current" in rolled.stdout
    announced = [(a["version"], a["current_version"]) for a in _announcements_env(topic_env)]
    assert announced == [(1, 1), (2, 1), (2, 2), (1, 1)]


def test_an_empty_training_window_is_an_error(fleet_topics: TopicSettings, topic_env: dict[str, str]) -> None:
    result = anomstream("--log-format", "json", "train", "--train-end", "2001-01-01T00:00:00", env=topic_env)

    assert result.returncode == 1
    error = json.loads(result.stderr.splitlines()[-1])
    assert error["level"] == "error" and "no training records" in error["message"]
    assert (
        f"{RECORDS} records read, event times 2024-01-01T00:00:00.000Z to 2024-01-01T00:24:59.000Z" in error["message"]
    )


def _announcements(stack: Any, models_topic: str) -> list[dict[str, Any]]:
    return _read_all(stack.bootstrap_servers, models_topic)


def _announcements_env(env: dict[str, str]) -> list[dict[str, Any]]:
    return _read_all(env["KAFKA_BOOTSTRAP_SERVERS"], env["ANOMSTREAM_MODELS_TOPIC"])


def _read_all(bootstrap_servers: str, models_topic: str) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "pytest", "enable.auto.commit": False})
    try:
        _, end = consumer.get_watermark_offsets(TopicPartition(models_topic, 0), timeout=10)
        consumer.assign([TopicPartition(models_topic, 0, 0)])
        messages = consumer.consume(end, timeout=20) if end else []
    finally:
        consumer.close()
    return [json.loads(m.value()) for m in messages]  # type: ignore[arg-type]
