"""The scorer's pure parts: columnar decode (against serde), batch-boundary independence, dead-letter headers,
and the tensorised Isolation Forest the scorer uses (against scikit-learn)."""

from __future__ import annotations

import hashlib
import io
import struct
import uuid
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from anomstream.detectors.iforest import IsolationForestDetector, _CompiledForest
from anomstream.model import AnomalyModel
from anomstream.scoring.anomalies import score_batch
from anomstream.scoring.decode import ColumnarTelemetryDecoder, reject_foreign_keys
from anomstream.scoring.dlq import (
    CONNECT_PREFIX,
    DEFAULT_MAX_BYTES,
    DROPPED_HEADERS_HEADER,
    KEPT_PREFIX_BYTES,
    KEY_SIZE_HEADER,
    REASON_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    TRUNCATED_HEADER,
    SourceRecord,
    dead_letter,
)
from anomstream.scoring.state import DeviceHistory, last_per_device
from anomstream.serde import (
    KEY_MISMATCH,
    NON_FINITE,
    BadMessage,
    TelemetryDecoder,
    TelemetryEncoder,
    load_schema,
    wire_header,
)
from anomstream.synthetic import FleetSpec, generate_fleet
from anomstream.telemetry import NO_LABEL, TelemetryBatch


@pytest.fixture
def registry(stack: Any) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": stack.registry_url})


def _fleet(devices: int = 5, records: int = 3_000, seed: int = 3) -> TelemetryBatch:
    batch = generate_fleet(FleetSpec(devices=devices, records=records, channels=4, seed=seed, anomaly_rate=0.03))
    # device ids of different lengths and a non-ASCII one: the columnar string decoding must cut each exactly
    names = np.array(["a", "device-two", "ü-3", "d4" * 20, ""], dtype=object)[: devices]
    codes = np.unique(batch.device_id, return_inverse=True)[1]
    label = batch.label.copy()
    label[::7] = NO_LABEL
    return TelemetryBatch(names[codes], batch.event_time_ms, batch.seq, batch.channels, batch.values, label)


def _raw_record(schema_id: int, device: str, channels: dict[str, float], label: int | None = 1) -> bytes:
    """A telemetry record written by fastavro (any map content, NaN included)."""
    body = io.BytesIO()
    record = {"device_id": device, "event_time": 1_700_000_000_000, "seq": 3, "channels": channels, "label": label}
    fastavro.schemaless_writer(body, fastavro.parse_schema(_plain(load_schema("telemetry"))), record)
    return wire_header(schema_id) + body.getvalue()


def _plain(schema_text: str) -> Any:
    import json

    return json.loads(schema_text.replace('"logicalType": "timestamp-millis"', '"x": 0'))


def test_columnar_decode_equals_serde_on_good_and_fuzzed_records(registry: SchemaRegistryClient) -> None:
    encoder = TelemetryEncoder(registry, f"pytest_scoring_{uuid.uuid4().hex[:8]}")
    batch = _fleet()
    values: list[bytes | None] = list(encoder.encode(batch))
    channels = batch.channels
    rng = np.random.default_rng(7)
    for i in rng.choice(len(values), 400, replace=False):
        raw = values[i]
        assert raw is not None
        damaged = bytearray(raw)
        kind = int(rng.integers(0, 7))
        if kind == 0:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        elif kind == 1:
            damaged[0] = 1
        elif kind == 2:
            damaged[1:5] = struct.pack(">I", 987_654_321)
        elif kind == 3:
            damaged[int(rng.integers(5, len(damaged)))] = int(rng.integers(0, 256))
        elif kind == 4:
            damaged += b"\x00"
        elif kind == 5:
            damaged = bytearray(rng.bytes(int(rng.integers(0, 60))))
        else:
            damaged = bytearray(b"")
        values[i] = bytes(damaged)
    first = {name: 1.0 for name in channels}
    values += [
        None,
        _raw_record(encoder.schema_id, "nan-device", first | {channels[1]: float("nan")}),
        _raw_record(encoder.schema_id, "inf-device", first | {channels[2]: float("-inf")}, label=None),
        _raw_record(encoder.schema_id, "short", {name: 2.0 for name in channels[:-1]}),
        _raw_record(encoder.schema_id, "extra", first | {"unknown": 5.0}, label=0),
        _raw_record(encoder.schema_id, "reordered", dict(reversed(list(first.items())))),
    ]
    fast = ColumnarTelemetryDecoder(registry, channels).decode(values)
    slow = TelemetryDecoder(registry, channels).decode(values)
    assert np.array_equal(fast.index, slow.index)
    for column in ("device_id", "event_time_ms", "seq", "label"):
        assert np.array_equal(getattr(fast.batch, column), getattr(slow.batch, column)), column
    assert np.array_equal(fast.batch.values, slow.batch.values)
    assert [(b.index, b.reason) for b in fast.bad] == [(b.index, b.reason) for b in slow.bad]
    assert len(fast.bad) > 300 and NON_FINITE in {b.reason for b in fast.bad}
    assert {"extra", "reordered", "ü-3", "", "d4" * 20} <= set(fast.batch.device_id)


def _stream(
    model: AnomalyModel, batch: TelemetryBatch, sizes: list[int], rebuild_every: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Score ``batch`` in consecutive chunks of the given sizes, as the scorer does; flags and scores. With
    ``rebuild_every``, every that many chunks the history is lost and rebuilt from the last ``reach``
    readings of each device, as when a partition moves to another scorer."""
    history = DeviceHistory.for_model(model)
    flagged, scores = np.zeros(len(batch), dtype=bool), np.full(len(batch), np.nan)
    start = 0
    partition = np.zeros(len(batch), dtype=np.int32)
    for size in sizes:
        chunk = batch.take(slice(start, start + size))
        offset = np.arange(start, start + len(chunk))
        scored = score_batch(model, "m", 1, history, chunk, "t", partition[: len(chunk)], offset, 0)
        flagged[scored.anomalies.source_offset] = True
        scores[scored.anomalies.source_offset] = scored.anomalies.score
        history.advance(chunk, partition[: len(chunk)], scored.raw)
        start += size
        if rebuild_every and len(scores) and start < len(batch) and (start // size) % rebuild_every == 0:
            seen = batch.take(slice(0, start))
            history = DeviceHistory.for_model(model)
            older = seen.take(last_per_device(seen, history.reach))
            history.absorb_older(older, partition[: len(older)])
    return flagged, scores


def test_history_over_its_budget_evicts_the_devices_seen_least_recently() -> None:
    batch = _fleet(devices=5, records=1_500, seed=2)
    model = AnomalyModel.fit(batch, "pca", per_device=True)
    history = DeviceHistory.for_model(model)
    devices = sorted(set(batch.device_id))
    for i, device in enumerate(devices):  # one device per batch, from partition i, offsets 1000 i ...
        rows = batch.take(batch.device_id == device)
        offset = 1_000 * i + np.arange(len(rows))
        history.advance(rows, np.full(len(rows), i, dtype=np.int32), np.zeros(len(rows)), offset)
    per_device = history.nbytes / len(devices)
    assert history.evict(history.nbytes) == 0  # within the budget: nothing goes
    assert history.evict(3.3 * per_device) == 3  # down to 0.9 x the budget: two devices stay
    sizes = [int((batch.device_id == d).sum()) for d in devices[:3]]
    ends = {d: (i, 1_000 * i + size) for i, (d, size) in enumerate(zip(devices[:3], sizes, strict=True))}
    assert history.evicted == ends  # partition, and the offset after the last reading
    assert sorted(set(history.rows.device_id)) == devices[3:] and history.device_count == 2
    assert history.blocks is not None and set(history.blocks.device_id) == set(devices[3:])
    assert history.returning(np.array([devices[4], devices[1], devices[1]], dtype=object)) == {
        devices[1]: (1, 1_000 + sizes[1])
    }
    assert history.evict(0.0) == 2
    assert not len(history.rows) and not len(history.blocks)
    assert not history.evicted  # the evicted devices' entries are over the budget too: forgotten, oldest first


@pytest.mark.parametrize("detector,params", [
    ("iforest", {"n_estimators": 50, "target_far": 0.01}),
    ("iforest", {"n_estimators": 50, "baseline": 100}),  # blocks of 2 readings: the oldest are dropped
    ("conv-ae", {"window": 8, "channels": [8, 4], "max_epochs": 2, "kernel_size": 3}),
])  # fmt: skip
def test_scores_do_not_depend_on_batch_boundaries(detector: str, params: dict[str, Any]) -> None:
    batch = _fleet(devices=4, records=2_400, seed=5)
    model = AnomalyModel.fit(batch.take(slice(0, 800)), detector, per_device=True, params=params)
    offline = model.score(batch)
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(1, 300, size=200)]
    flagged, scores = _stream(model, batch, sizes)
    assert offline.flagged.sum() > 5
    assert np.array_equal(flagged, offline.flagged)
    assert np.array_equal(scores[flagged], offline.score[flagged])  # bit for bit, whatever the boundaries


def test_scores_after_history_rebuilt_from_read_back_equal_offline() -> None:
    batch = _fleet(devices=3, records=4_500, seed=8)
    params = {"baseline": 200, "n_estimators": 50, "target_far": 0.05}
    model = AnomalyModel.fit(batch.take(slice(0, 900)), "iforest", per_device=True, params=params)
    offline = model.score(batch)
    sizes = [int(s) for s in np.random.default_rng(3).integers(1, 150, size=100)]
    flagged, scores = _stream(model, batch, sizes, rebuild_every=7)
    assert offline.flagged.sum() > 5
    assert np.array_equal(flagged, offline.flagged)
    assert np.array_equal(scores[flagged], offline.score[flagged])


def test_streaming_warm_up_and_fallback_equal_offline() -> None:
    # Two devices trained, a third unseen one appears mid-stream: its first readings warm up unflagged, its
    # anomalies say the global detector scored them, and streaming counts equal the offline pass.
    batch = _fleet(devices=3, records=3_000, seed=6)
    trained = batch.device_id != "ü-3"
    model = AnomalyModel.fit(batch.take(trained).take(slice(0, 1_200)), "pca", per_device=True)
    offline = model.score(batch)
    history = DeviceHistory.for_model(model)
    scored_by, warming_up, start = {}, 0, 0
    partition = np.zeros(len(batch), dtype=np.int32)
    for size in [int(s) for s in np.random.default_rng(2).integers(1, 200, size=100)]:
        chunk = batch.take(slice(start, start + size))
        offset = np.arange(start, start + len(chunk))
        scored = score_batch(model, "m", 1, history, chunk, "t", partition[: len(chunk)], offset, 0)
        scored_by.update(zip(scored.anomalies.source_offset, scored.anomalies.scored_by, strict=True))
        warming_up += scored.warming_up
        history.advance(chunk, partition[: len(chunk)], scored.raw)
        start += size
        if start >= len(batch):
            break
    assert warming_up == offline.warming_up.sum() == 3 * model.warm_up
    assert set(scored_by) == set(np.flatnonzero(offline.flagged))
    expected = np.where(batch.device_id == "ü-3", "global", "device")
    assert all(scored_by[o] == expected[o] for o in scored_by) and "global" in scored_by.values()


def test_records_not_keyed_by_their_device_are_key_mismatches(registry: SchemaRegistryClient) -> None:
    encoder = TelemetryEncoder(registry, f"pytest_scoring_{uuid.uuid4().hex[:8]}")
    batch = _fleet(devices=3, records=6)
    values: list[bytes | None] = [*encoder.encode(batch), b"\x07not avro"]
    keys: list[bytes | None] = [*(str(d).encode() for d in batch.device_id), b"anything"]
    keys[1], keys[2], keys[4] = b"", None, str(batch.device_id[0]).encode() + b"x"  # empty, absent, another
    decoded = ColumnarTelemetryDecoder(registry, batch.channels).decode(values)

    result = reject_foreign_keys(decoded, keys)
    assert result.index.tolist() == [0, 3, 5]
    assert result.batch.device_id.tolist() == [batch.device_id[i] for i in (0, 3, 5)]
    assert [(b.index, b.reason) for b in result.bad] == [(1, KEY_MISMATCH), (2, KEY_MISMATCH),
                                                          (4, KEY_MISMATCH), (6, "bad-magic")]  # fmt: skip
    assert reject_foreign_keys(decoded, [str(d).encode() for d in batch.device_id] + [None]) is decoded


def test_dead_letter_keeps_the_record_and_says_why() -> None:
    record = SourceRecord("telemetry", 4, 1234, b"dev-1", b"\x01garbage", [("trace", b"abc"), ("empty", None)])
    bad = BadMessage(0, "bad-magic", "ValueError", "not Confluent wire format")
    letter = dead_letter(record, bad, "anomstream-scorer", "scorer-1")
    assert letter["key"] == b"dev-1" and letter["value"] == b"\x01garbage"
    headers = letter["headers"]
    assert isinstance(headers, list)
    assert headers[:2] == [("trace", b"abc"), ("empty", None)]
    named = dict(headers[2:])
    assert named[CONNECT_PREFIX + "topic"] == b"telemetry"
    assert named[CONNECT_PREFIX + "partition"] == b"4"
    assert named[CONNECT_PREFIX + "offset"] == b"1234"
    assert named[CONNECT_PREFIX + "exception.class.name"] == b"ValueError"
    assert named[CONNECT_PREFIX + "exception.message"] == b"not Confluent wire format"
    assert named[CONNECT_PREFIX + "stage"] == b"VALUE_CONVERTER"
    assert named[REASON_HEADER] == b"bad-magic"


def test_a_dead_letter_too_large_to_send_becomes_a_reference_to_the_record() -> None:
    value = bytes(range(256)) * 3_906  # 999,936 bytes: the broker took it, the context headers do not fit
    record = SourceRecord("telemetry", 2, 77, b"dev-9", value, [("trace", b"abc")])
    bad = BadMessage(0, "bad-magic", "ValueError", "not Confluent wire format")
    letter = dead_letter(record, bad, "anomstream-scorer", "scorer-1")
    headers = letter["headers"]
    assert isinstance(headers, list) and isinstance(letter["value"], bytes)
    size = len(letter["value"]) + 5 + sum(len(k) + len(v or b"") for k, v in headers)
    assert size <= DEFAULT_MAX_BYTES - 4096
    named = dict(headers)
    assert letter["key"] == b"dev-9" and letter["value"] == value[:KEPT_PREFIX_BYTES]
    assert named["trace"] == b"abc" and named[REASON_HEADER] == b"bad-magic"
    assert named[TRUNCATED_HEADER] == b"true" and named[SIZE_HEADER] == str(len(value)).encode()
    assert named[SHA256_HEADER] == hashlib.sha256(value).hexdigest().encode()
    assert named[DROPPED_HEADERS_HEADER] == b"0" and named[CONNECT_PREFIX + "offset"] == b"77"
    # a record that fits is carried whole; huge original headers are dropped, and counted, when they do not
    small = dead_letter(SourceRecord("telemetry", 2, 78, b"k", b"v" * 1000, []), bad, "g", "c")
    assert small["value"] == b"v" * 1000 and TRUNCATED_HEADER not in dict(small["headers"])  # type: ignore[arg-type]
    crowded = SourceRecord("telemetry", 2, 79, b"k" * 5000, b"v", [("big", b"h" * 999_000), ("small", b"s")])
    letter = dead_letter(crowded, bad, "g", "c")
    named = dict(letter["headers"])  # type: ignore[arg-type]
    assert "big" not in named and named[DROPPED_HEADERS_HEADER] == b"2" and named[KEY_SIZE_HEADER] == b"5000"
    assert letter["key"] == b"k" * KEPT_PREFIX_BYTES and letter["value"] == b"v"


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_tensorised_isolation_forest_equals_scikit_learn(max_features: float) -> None:
    rng = np.random.default_rng(11)
    train = rng.normal(size=(3_000, 12)) * rng.uniform(0.1, 10, size=12)
    test = np.vstack([rng.normal(size=(2_000, 12)) * 3, train[:500]])
    detector = IsolationForestDetector(n_estimators=60, max_features=max_features).fit(train, seed=4)
    reference = -detector._forest.score_samples(test)  # type: ignore[union-attr]
    assert np.abs(detector.score_arrays(test) - reference).max() < 1e-6
    arrays = detector._fitted_arrays()
    torch_walk = _CompiledForest(arrays, "cpu:0")  # any device but "cpu" takes the torch traversal
    assert np.abs(torch_walk.score(test.astype(np.float64)) - reference).max() < 1e-6
    numpy_walk = _CompiledForest(arrays, "cpu")
    total_path = np.concatenate([numpy_walk._walk(chunk, credit=False)[0] for chunk in numpy_walk._chunks(test)])
    walked = np.power(2.0, -total_path / (numpy_walk.n_trees * numpy_walk.c_psi))
    assert np.abs(walked - reference).max() < 1e-6


def _swap_mid_stream(
    old: AnomalyModel, new: AnomalyModel, batch: TelemetryBatch, forget: bool
) -> tuple[int, dict[int, float]]:
    """Stream ``batch`` scored by ``old``, then from about half-way by ``new`` (keeping the history, as the
    scorer does when the new model fits it); the first row ``new`` scored, and the scores it flagged."""
    history = DeviceHistory.for_model(old)
    partition = np.zeros(len(batch), dtype=np.int32)
    start, swapped_at, flagged = 0, None, {}
    for size in [int(s) for s in np.random.default_rng(4).integers(1, 200, size=400)]:
        chunk = batch.take(slice(start, start + size))
        if not len(chunk):
            break
        if swapped_at is None and start >= len(batch) // 2:
            swapped_at = start
            if forget:
                history.forget_scores()
        model = old if swapped_at is None else new
        offset = np.arange(start, start + len(chunk))
        scored = score_batch(model, "m", 1, history, chunk, "t", partition[: len(chunk)], offset, 0)
        if model is new:
            flagged.update(zip(scored.anomalies.source_offset.tolist(), scored.anomalies.score.tolist(), strict=True))
        history.advance(chunk, partition[: len(chunk)], scored.raw)
        start += len(chunk)
    assert swapped_at is not None
    return swapped_at, flagged


def test_after_a_model_swap_readings_score_as_the_new_models_offline_pass() -> None:
    # Two genuinely different models with the same readings in history (context and channels).
    batch = _fleet(devices=3, records=6_000, seed=12)
    training = batch.take(slice(0, 1_500))
    old = AnomalyModel.fit(training, "iforest", params={"n_estimators": 30, "target_far": 0.2})
    new = AnomalyModel.fit(training, "iforest", seed=9, params={"n_estimators": 80, "target_far": 0.4})
    assert DeviceHistory.for_model(old).fits(new)
    swapped_at, flagged = _swap_mid_stream(old, new, batch, forget=True)
    result = new.score(batch)
    offline = {int(o): float(result.score[o]) for o in np.flatnonzero(result.flagged) if o >= swapped_at}
    assert len(offline) > 100 and flagged == offline  # the same readings, the same scores, bit for bit
    # keeping the old model's detector scores, the first readings after the swap differ (the bug this fixes)
    _, kept = _swap_mid_stream(old, new, batch, forget=False)
    assert kept != offline


class _Record:
    """What the retry rule reads of a consumed record: its partition and offset."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def test_records_held_across_a_retry_pause_are_dropped_when_their_partition_was_assigned_again() -> None:
    from anomstream.scorer import still_held

    held = [_Record(0, 10), _Record(1, 20), _Record(2, 30)]
    arrived = [_Record(1, 20), _Record(0, 11)]  # partition 1 was revoked and assigned again: fetched anew
    before, after = {0: 1, 1: 1, 2: 1}, {0: 1, 1: 2}  # partition 2 revoked for good
    kept = still_held(held, arrived, before, after)  # type: ignore[arg-type]
    assert [(m.partition(), m.offset()) for m in kept] == [(0, 10), (1, 20), (0, 11)]  # offset 20 once
