"""Which model a scorer serves when it starts: the current version, or, when that one is damaged, the
version that was current before it (ModelSource.wait_for_first; the store alone, no broker)."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest

from anomstream.config import KafkaSettings
from anomstream.model import AnomalyModel
from anomstream.model_store import CURRENT, ModelStore
from anomstream.scoring.metrics import ScorerMetrics
from anomstream.scoring.reload import ModelSource
from anomstream.synthetic import FleetSpec, generate_fleet


@pytest.fixture(scope="module")
def model() -> AnomalyModel:
    fleet = generate_fleet(FleetSpec(devices=2, records=800, channels=3, seed=5, anomaly_rate=0.02))
    return AnomalyModel.fit(fleet, "iforest", per_device=False, seed=0, params={"n_estimators": 10})


def source(store: ModelStore, metrics: ScorerMetrics, name: str = "fleet") -> ModelSource:
    return ModelSource(store, name, "cpu", KafkaSettings(), "unused-models-topic", metrics)


def first(model_source: ModelSource) -> int | None:
    loaded = model_source.wait_for_first(threading.Event(), poll_s=0.05, give_up_s=0.2)
    return None if loaded is None else loaded.version


def damage(store: ModelStore, version: int) -> None:
    target = next(p for p in store.path("fleet", version).rglob("*") if p.is_file() and p.name != "manifest.json")
    target.write_bytes(target.read_bytes()[:-7])


def test_a_scorer_starts_on_the_current_version(tmp_path: Path, model: AnomalyModel) -> None:
    store = ModelStore(tmp_path)
    store.publish("fleet", model, promote="always")
    store.publish("fleet", model, promote="always")
    assert first(source(store, ScorerMetrics())) == 2


def test_a_damaged_current_version_falls_back_to_the_one_current_before(
    tmp_path: Path, model: AnomalyModel, caplog: pytest.LogCaptureFixture
) -> None:
    store = ModelStore(tmp_path)
    for _ in range(3):
        store.publish("fleet", model, promote="always")
    damage(store, 3)
    metrics = ScorerMetrics()
    assert first(source(store, metrics)) == 2
    assert store.current_version("fleet") == 3  # the scorer only reads the store
    assert metrics.model_load_failures.labels("fleet")._value.get() == 1
    assert "refusing model fleet version 3" in caplog.text and "serving model fleet version 2" in caplog.text


def test_damaged_earlier_versions_are_skipped_and_none_left_means_waiting(tmp_path: Path, model: AnomalyModel) -> None:
    store = ModelStore(tmp_path)
    for _ in range(3):
        store.publish("fleet", model, promote="always")
    damage(store, 3)
    damage(store, 2)
    assert first(source(store, ScorerMetrics())) == 1
    damage(store, 1)
    assert first(source(store, ScorerMetrics())) is None  # nothing good: wait (here: give up) instead of crashing


def test_an_unreadable_current_pointer_does_not_stop_the_scorer(tmp_path: Path, model: AnomalyModel) -> None:
    store = ModelStore(tmp_path)
    store.publish("fleet", model, promote="always")
    (store.root / "fleet" / CURRENT).write_text("{not json")
    assert first(source(store, ScorerMetrics())) is None
    (store.root / "fleet" / CURRENT).write_text(json.dumps({"version": 1, "previous": []}))
    assert first(source(store, ScorerMetrics())) == 1


def test_an_announcement_only_prompts_a_look_at_current(tmp_path: Path, model: AnomalyModel) -> None:
    # Anyone who can write the models topic could announce a version the promotion gate refused.
    store = ModelStore(tmp_path)
    store.publish("fleet", model, promote="always")
    refused = store.publish("fleet", model, promote="never")
    assert (refused.version, store.current_version("fleet")) == (2, 1)
    model_source = source(store, ScorerMetrics())
    assert first(model_source) == 1
    assert model_source.on_announcement("fleet", 2) is None  # announced, not current: not loaded
    store.promote("fleet", 2)
    loaded = model_source.on_announcement("fleet", 2)
    assert loaded is not None and loaded.version == 2  # now CURRENT names it


def test_a_version_that_fails_to_copy_for_lack_of_a_temporary_folder_is_tried_again(
    tmp_path: Path, model: AnomalyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish("fleet", model, promote="always")
    gone = tmp_path / "tmp-not-there-yet"  # a real OSError from the file system, as a full disk gives
    monkeypatch.setattr(tempfile, "tempdir", str(gone))
    model_source = source(store, ScorerMetrics())
    assert first(model_source) is None  # nothing served yet, and nothing refused for good
    gone.mkdir()
    assert first(model_source) == 1
