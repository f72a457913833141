"""The model store: atomic publication, checksum-verified loading, the promotion gate, rollback, announcements."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from anomstream import model_store
from anomstream.errors import ModelError, ModelIntegrityError
from anomstream.model import AnomalyModel
from anomstream.model_store import CURRENT, MANIFEST, ModelStore, announce
from anomstream.synthetic import FleetSpec, generate_fleet
from anomstream.telemetry import TelemetryBatch
from anomstream.topics import delete_topics, ensure_topics

WINDOW = {"topic": "telemetry", "mode": "records-per-device", "records": 400, "offsets": {"0": {"first": 0}}}


@pytest.fixture(scope="module")
def fleet() -> TelemetryBatch:
    return generate_fleet(FleetSpec(devices=2, records=1600, channels=3, seed=5, anomaly_rate=0.02))


@pytest.fixture(scope="module")
def model(fleet: TelemetryBatch) -> AnomalyModel:
    return AnomalyModel.fit(fleet, "iforest", per_device=True, seed=0, params={"n_estimators": 20})


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def evaluated(f1: float, far: float, window: dict[str, Any] | None = None) -> dict[str, Any]:
    """``manifest_extra`` with labelled figures on an evaluation window."""
    return {"evaluation": {"window": window or WINDOW, "metrics": {"f1": f1, "far": far, "mar": 0.0}}}


def test_publish_and_load_round_trip(store: ModelStore, model: AnomalyModel, fleet: TelemetryBatch) -> None:
    result = store.publish("valves", model, evaluated(0.8, 5.0), "auto", probe=fleet.take(slice(0, 500)))

    assert (result.version, result.current, result.current_version) == (1, True, 1)
    assert store.names() == ["valves"] and store.versions("valves") == [1]
    assert store.current_version("valves") == 1 and store.latest_name() == "valves"
    loaded = store.load("valves")
    assert (loaded.name, loaded.version) == ("valves", 1)
    manifest = loaded.manifest
    assert manifest == json.loads((store.path("valves", 1) / MANIFEST).read_text())
    assert manifest["detector"] == "iforest" and manifest["seed"] == 0 and manifest["per_device"] is True
    assert manifest["thresholds"]["global"] == model.global_threshold
    assert manifest["thresholds"]["devices"] == model.device_thresholds
    assert manifest["evaluation"]["metrics"]["f1"] == 0.8
    assert {"numpy", "scikit-learn", "python"} <= set(manifest["libraries"])
    files = {p.relative_to(result.path).as_posix() for p in result.path.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - {MANIFEST}
    assert {"model.json", "global/iforest.npz"} <= set(manifest["files"])
    expected = model.score(fleet, explain="none").score
    np.testing.assert_allclose(loaded.model.score(fleet, explain="none").score, expected, rtol=1e-12)


def test_attachments_are_checksummed_like_the_model(store: ModelStore, model: AnomalyModel) -> None:
    result = store.publish("valves", model, {}, "auto", attachments=lambda d: (d / "report.json").write_text("{}"))

    assert "report.json" in result.manifest["files"]
    (result.path / "report.json").write_text('{"f1": 1.0}')
    with pytest.raises(ModelIntegrityError, match=r"report\.json was modified"):
        store.load("valves")


def test_a_tampered_file_is_refused_before_anything_is_loaded(store: ModelStore, model: AnomalyModel) -> None:
    result = store.publish("valves", model, {}, "auto")
    weights = result.path / "global" / "iforest.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # model.json broken too: had anything been loaded first, the error would be about unreadable JSON
    (result.path / "model.json").write_text("{ not json")

    with pytest.raises(ModelIntegrityError) as refused:
        store.load("valves")

    message = str(refused.value)
    assert "global/iforest.npz was modified" in message
    assert result.manifest["files"]["global/iforest.npz"]["sha256"] in message  # expected checksum
    assert model_store._sha256(weights) in message  # actual checksum


def test_a_truncated_file_is_refused_with_both_sizes(store: ModelStore, model: AnomalyModel) -> None:
    result = store.publish("valves", model, {}, "auto")
    weights = result.path / "global" / "iforest.npz"
    full_size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])

    with pytest.raises(
        ModelIntegrityError, match=rf"iforest\.npz was truncated: .*\(100 bytes\).*\({full_size} bytes\)"
    ):
        store.load("valves")


def test_missing_and_unlisted_files_are_refused(store: ModelStore, model: AnomalyModel) -> None:
    result = store.publish("valves", model, {}, "auto")
    (result.path / "global" / "iforest.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"iforest\.json is missing"):
        store.load("valves")

    second = store.publish("valves", model, {}, "always")
    (second.path / "global" / "extra.npz").write_bytes(b"\x00")
    with pytest.raises(ModelIntegrityError, match=r"does not list: global/extra\.npz"):
        store.load("valves", 2)


def test_a_publication_failing_after_writing_leaves_the_current_version(
    store: ModelStore, model: AnomalyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish("valves", model, {}, "auto")

    def fail_verification(*args: Any) -> None:
        raise OSError("disk pulled out after the files were written")

    monkeypatch.setattr(model_store, "_verify_staged", fail_verification)
    with pytest.raises(OSError, match="disk pulled out"):
        store.publish("valves", model, {}, "always")

    assert store.versions("valves") == [1] and store.current_version("valves") == 1
    assert not list((store.root / "valves").glob(".staging-*"))
    assert store.load("valves").version == 1


def test_a_publication_killed_midway_leaves_the_current_version(store: ModelStore, model: AnomalyModel) -> None:
    store.publish("valves", model, {}, "auto")
    # A real crash: the process is SIGKILLed after the model's files were written, before verification.
    script = textwrap.dedent(
        f"""
        import os, signal
        from anomstream.model_store import ModelStore
        store = ModelStore({str(store.root)!r})
        model = store.load("valves").model
        store.publish("valves", model, {{}}, "always", attachments=lambda d: os.kill(os.getpid(), signal.SIGKILL))
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(list((store.root / "valves").glob(".staging-*"))) == 1  # the half-written version, aside
    assert store.versions("valves") == [1] and store.current_version("valves") == 1
    assert store.load("valves").version == 1
    after = store.publish("valves", model, {}, "always")  # the next publication clears the leftovers
    assert after.version == 2 and not list((store.root / "valves").glob(".staging-*"))


def test_the_gate_refuses_a_worse_model_under_auto(store: ModelStore, model: AnomalyModel) -> None:
    assert store.publish("valves", model, evaluated(0.80, 5.0), "auto").current

    lower_f1 = store.publish("valves", model, evaluated(0.70, 1.0), "auto")
    more_alarms = store.publish("valves", model, evaluated(0.80, 7.0), "auto")

    assert not lower_f1.current and "worse" in lower_f1.reason
    assert not more_alarms.current and "more false alarms" in more_alarms.reason
    assert store.versions("valves") == [1, 2, 3] and store.current_version("valves") == 1
    assert lower_f1.current_version == 1 and lower_f1.manifest["promotion"]["made_current"] is False
    better = store.publish("valves", model, evaluated(0.85, 9.0), "auto")
    assert better.current and store.current_version("valves") == 4


def test_the_gate_compares_only_like_with_like(store: ModelStore, model: AnomalyModel) -> None:
    store.publish("valves", model, evaluated(0.80, 5.0), "auto")

    other_window = store.publish("valves", model, evaluated(0.10, 50.0, window={**WINDOW, "records": 401}), "auto")
    assert other_window.current and "no labelled evaluation comparable" in other_window.reason
    # the trainer's own figures for the current version on the new window decide when given
    scored = store.publish("valves", model, evaluated(0.5, 5.0), "auto", incumbent_metrics={"f1": 0.6, "far": 1.0})
    assert not scored.current and store.current_version("valves") == 2


def test_always_and_never_override_the_gate(store: ModelStore, model: AnomalyModel) -> None:
    store.publish("valves", model, evaluated(0.80, 5.0), "auto")

    assert not store.publish("valves", model, evaluated(0.99, 0.0), "never").current
    assert store.publish("valves", model, evaluated(0.10, 90.0), "always").current
    assert store.current_version("valves") == 3
    with pytest.raises(ModelError, match="promote='sometimes'"):
        store.publish("valves", model, {}, "sometimes")  # type: ignore[arg-type]


def test_rollback_restores_the_previous_version(store: ModelStore, model: AnomalyModel, fleet: TelemetryBatch) -> None:
    other = AnomalyModel.fit(fleet, "iforest", seed=1, params={"n_estimators": 20})
    store.publish("valves", model, {}, "auto")
    store.publish("valves", other, {}, "always")
    assert store.load("valves").model.global_threshold == other.global_threshold

    assert store.rollback("valves") == 1
    assert store.current_version("valves") == 1
    assert store.load("valves").model.global_threshold == model.global_threshold
    with pytest.raises(ModelError, match="no earlier current version"):
        store.rollback("valves")
    store.promote("valves", 2)
    store.promote("valves", 1)
    assert json.loads((store.root / "valves" / CURRENT).read_text())["previous"] == [1, 2]
    assert store.rollback("valves") == 2 and store.rollback("valves") == 1


def test_rollback_and_promote_skip_broken_versions(store: ModelStore, model: AnomalyModel) -> None:
    for _ in range(3):
        store.publish("valves", model, {}, "always")
    (store.path("valves", 2) / "model.json").write_text("{}")

    assert store.rollback("valves") == 1  # version 2 fails verification, so it is passed over
    with pytest.raises(ModelIntegrityError, match="model.json was"):
        store.promote("valves", 2)
    assert store.current_version("valves") == 1


def test_names_and_latest(store: ModelStore, model: AnomalyModel) -> None:
    assert store.names() == [] and store.latest_name() is None and store.current_version("pumps") is None
    store.publish("valves", model, {}, "auto")
    store.publish("pumps", model, {}, "auto")
    store.publish("valves", model, {}, "never")  # stored only: the latest current change is still pumps'

    assert store.names() == ["pumps", "valves"] and store.latest_name() == "pumps"
    store.promote("valves", 2)
    assert store.latest_name() == "valves"
    with pytest.raises(ModelError, match="invalid model name"):
        store.versions("../etc")
    with pytest.raises(ModelError, match="has no version 7"):
        store.load("valves", 7)


@pytest.fixture
def models_topic(stack: Any) -> Iterator[str]:
    name = f"pytest_models_{uuid.uuid4().hex[:8]}"
    ensure_topics(stack.kafka_settings, [NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})])
    yield name
    delete_topics(stack.kafka_settings, [name])


def test_announcements_are_keyed_by_name_on_the_models_topic(
    stack: Any, models_topic: str, store: ModelStore, model: AnomalyModel
) -> None:
    first = store.publish("valves", model, evaluated(0.8, 5.0), "auto")
    refused = store.publish("valves", model, evaluated(0.5, 5.0), "auto")
    announce(stack.kafka_settings, models_topic, "valves", first.version, first.manifest)
    announce(stack.kafka_settings, models_topic, "valves", 2, refused.manifest, current_version=refused.current_version)

    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": "pytest", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(models_topic, 0, 0)])
    messages = consumer.consume(2, timeout=20)
    consumer.close()

    assert [m.key() for m in messages] == [b"valves", b"valves"]
    values = [json.loads(m.value()) for m in messages]  # type: ignore[arg-type]
    assert [(v["version"], v["current_version"]) for v in values] == [(1, 1), (2, 1)]
    assert values[0]["detector"] == "iforest" and values[0]["metrics"]["f1"] == 0.8
