"""AnomalyModel: per-device routing and fallback, calibration, streaming equivalence, persistence, seeds."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from anomstream.calibration import calibrate
from anomstream.errors import ModelError, ModelIntegrityError
from anomstream.features import BASELINE_SAMPLES, device_positions
from anomstream.fitting import Fitted, pool_tails, worse_than_global
from anomstream.model import DEFAULT_CONFIGS, MANIFEST, AnomalyModel, ModelConfig
from anomstream.telemetry import TelemetryBatch

CHANNELS = ("flow", "pressure", "vibration")
FAST_IFOREST = {"n_estimators": 25}


def readings(devices: dict[str, float], n: int, seed: int, start: int = 0) -> TelemetryBatch:
    """Interleaved readings of devices, each around its own level (``devices``: id -> level)."""
    rng = np.random.default_rng(seed)
    names = list(devices)
    device = np.array(names, dtype=object)[rng.integers(0, len(names), n)]
    level = np.array([devices[d] for d in device])
    seq = np.zeros(n, dtype=np.int64)
    for d in names:
        seq[device == d] = start + np.arange((device == d).sum())
    values = level[:, None] * np.array([1.0, 0.5, 0.1]) + rng.normal(size=(n, 3)) * level[:, None] * 0.02
    return TelemetryBatch(device, seq * 1000, seq, CHANNELS, values, np.zeros(n, dtype=np.int8))


FLEET = {"pump-a": 10.0, "pump-b": 100.0, "pump-c": 1000.0}


@pytest.fixture(scope="module")
def fleet_model() -> AnomalyModel:
    return AnomalyModel.fit(readings(FLEET, 3000, seed=0), "pca", per_device=True, seed=0)


def test_every_trained_device_gets_its_own_detector_and_threshold(fleet_model):
    assert set(fleet_model.device_detectors) == set(FLEET)
    assert len({id(d) for d in fleet_model.device_detectors.values()}) == 3
    assert fleet_model.global_detector not in fleet_model.device_detectors.values()


def test_scoring_routes_to_the_device_detector_and_falls_back_to_the_global_one(fleet_model):
    batch = TelemetryBatch.concat([readings(FLEET, 600, seed=1), readings({"pump-new": 100.0}, 200, seed=2)])
    result = fleet_model.score(batch)
    for device, threshold in fleet_model.device_thresholds.items():
        assert (result.threshold[batch.device_id == device] == threshold).all()
    assert (result.threshold[batch.device_id == "pump-new"] == fleet_model.global_threshold).all()
    # Raw scores are those of the routed detector on the pipeline's features (the device detectors score in
    # one vectorised bank: the same arithmetic in another order, equal to rounding).
    features = fleet_model.pipeline.transform(batch)
    rows = batch.device_id == "pump-b"
    own_detector = fleet_model.device_detectors["pump-b"]
    assert np.allclose(result.raw_score[rows], own_detector.score(features[rows]), rtol=1e-12, atol=0)
    new = batch.device_id == "pump-new"
    assert np.array_equal(result.raw_score[new], fleet_model.global_detector.score(features[new]))


def test_a_device_with_few_training_rows_uses_the_global_detector():
    batch = TelemetryBatch.concat([readings(FLEET, 2000, seed=3), readings({"pump-rare": 100.0}, 15, seed=4)])
    model = AnomalyModel.fit(batch, "pca", per_device=True)
    assert "pump-rare" not in model.device_detectors
    rare = model.score(readings({"pump-rare": 100.0}, 50, seed=5))
    assert (rare.threshold == model.global_threshold).all()


def test_a_device_with_fewer_than_min_device_rows_uses_the_global_detector_and_is_counted():
    batch = TelemetryBatch.concat([readings(FLEET, 3000, seed=3), readings({"pump-short": 100.0}, 150, seed=14)])
    kept = AnomalyModel.fit(batch, "pca", per_device=True, params={"min_device_rows": 150})
    short = AnomalyModel.fit(batch, "pca", per_device=True, params={"min_device_rows": 151})
    assert "pump-short" in kept.device_detectors and "pump-short" not in short.device_detectors
    assert short.calibration["devices_on_global"]["too_few_rows"] == 1
    probe = readings({"pump-short": 100.0}, 80, seed=5)
    assert not short.score(probe).own_model.any() and kept.score(probe).own_model[kept.warm_up :].all()


def test_a_device_whose_own_detector_flags_more_held_back_readings_than_the_global_one_uses_the_global_one():
    # pump-odd's last training stretch steps away from the rest of its training rows: its own detector, fitted
    # without that stretch, flags it; the global detector, which has seen a level like it in another
    # device's rows, does not. Its own detector is not worth keeping.
    rng = np.random.default_rng(8)
    fleet = readings(FLEET, 3000, seed=8)
    odd = readings({"pump-odd": 100.0}, 1000, seed=9)
    values = odd.values.copy()
    values[800:] = values[800:] * 1.5 + rng.normal(size=(200, 3))
    odd = TelemetryBatch(odd.device_id, odd.event_time_ms, odd.seq, odd.channels, values, odd.label)
    params = {"baseline": 0, "detrend_persistent": False}
    model = AnomalyModel.fit(TelemetryBatch.concat([fleet, odd]), "pca", per_device=True, params=params)
    assert "pump-odd" not in model.device_detectors
    assert set(model.device_detectors) == set(FLEET)
    assert model.calibration["devices_on_global"] == {"too_few_rows": 0, "worse_than_global": 1}


def test_worse_than_global_compares_flags_on_the_last_held_back_block():
    fold = np.repeat(np.arange(5), 100)
    calm = np.random.default_rng(10).normal(size=500)
    global_scores = calm.copy()

    def own(held_out: np.ndarray) -> Fitted:
        return Fitted(detector=None, calibration=calibrate(held_out, 0.01), held_out=held_out)  # type: ignore[arg-type]

    assert not worse_than_global(own(calm), global_scores, 10.0, fold, 0.01)  # neither flags anything
    jumpy = calm.copy()
    jumpy[fold == 4] += 10.0  # its own detector finds its last block unlike its others
    assert worse_than_global(own(jumpy), global_scores, 10.0, fold, 0.01)
    assert not worse_than_global(own(jumpy), global_scores + 20.0, 10.0, fold, 0.01)  # the global one flags all


@pytest.mark.parametrize("detector", ["iforest", "pca"])
def test_per_device_fits_in_worker_processes_give_the_same_models(detector):
    batch = readings(FLEET, 3000, seed=11)
    params = FAST_IFOREST if detector == "iforest" else {}
    here = AnomalyModel.fit(batch, detector, per_device=True, seed=2, params=params, jobs=1)
    workers = AnomalyModel.fit(batch, detector, per_device=True, seed=2, params=params, jobs=2)
    assert here.device_thresholds == workers.device_thresholds
    probe = readings(FLEET, 900, seed=12)
    first, second = here.score(probe, explain="all"), workers.score(probe, explain="all")
    assert np.array_equal(first.score, second.score) and np.array_equal(first.contributions, second.contributions)


def test_a_device_model_is_the_same_trained_with_the_fleet_or_alone():
    fleet = readings(FLEET, 3000, seed=6)
    alone = fleet.take(fleet.device_id == "pump-b")
    params = dict(FAST_IFOREST)
    with_fleet = AnomalyModel.fit(fleet, "iforest", per_device=True, seed=0, params=params)
    by_itself = AnomalyModel.fit(alone, "iforest", per_device=True, seed=0, params=params)
    probe = readings({"pump-b": 100.0}, 400, seed=7)
    first, second = with_fleet.score(probe), by_itself.score(probe)
    assert np.array_equal(first.score, second.score)
    # Its threshold shares the fleet's tail estimate; calibrated on its own, it is the same too.
    assert not np.array_equal(first.threshold, second.threshold)
    own_tail = AnomalyModel.fit(fleet, "iforest", per_device=True, seed=0, params={**params, "pooled_tail": False})
    assert np.array_equal(own_tail.score(probe).threshold, second.threshold)


def test_pooled_tails_give_each_device_the_target_rate_from_a_fleet_of_short_histories():
    # 20 devices, 1,000 held-back scores each: the same tail shape at its own location and scale. Alone, a
    # device's 0.1 % quantile is an extrapolation from one or two scores; pooled, 20,000 scores show it.
    rng = np.random.default_rng(21)
    centre, spread = rng.uniform(0, 10, 20), rng.uniform(0.5, 5, 20)
    fits = [
        (f"d{i}", Fitted(None, calibrate(h, 0.001), h))  # type: ignore[arg-type]
        for i, h in enumerate(c + s * rng.standard_gamma(2.0, 1000) for c, s in zip(centre, spread, strict=True))
    ]
    pooled = pool_tails(fits, 0.001)
    assert pooled.calibration.method == "empirical" and pooled.calibration.samples == 20_000
    fresh = [c + s * rng.standard_gamma(2.0, 200_000) for c, s in zip(centre, spread, strict=True)]
    rates = np.array([(f > pooled.thresholds[f"d{i}"]).mean() for i, f in enumerate(fresh)])
    own = np.array([(f > fitted.calibration.threshold).mean() for f, (_, fitted) in zip(fresh, fits, strict=True)])
    assert 0.0005 < rates.mean() < 0.002 and rates.max() < 0.004  # each device near the target
    assert abs(np.log(rates.mean() / 0.001)) < abs(np.log(own.mean() / 0.001))  # nearer than alone
    assert {d: c.threshold for d, c in pooled.calibrations.items()} == pooled.thresholds


def test_scores_do_not_depend_on_batch_boundaries_given_context_history(fleet_model):
    batch = readings(FLEET, 2400, seed=8)
    shifted = batch.values.copy()
    shifted[1500:1700] *= 1.3  # an episode to flag, so flags and contributions are exercised
    batch = TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, CHANNELS, shifted, batch.label)
    whole = fleet_model.score(batch, explain="all")
    assert whole.flagged.any() and not whole.flagged.all()
    rng = np.random.default_rng(9)
    cuts = np.r_[0, np.sort(rng.choice(np.arange(1, len(batch)), 40, replace=False)), len(batch)]
    history: TelemetryBatch | None = None
    scores, flags, shares = [], [], []
    for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
        new = batch.take(slice(start, stop))
        full = new if history is None else TelemetryBatch.concat([history, new])
        result = fleet_model.score(full, explain="all")
        keep = slice(len(full) - len(new), None)
        scores.append(result.score[keep])
        flags.append(result.flagged[keep])
        shares.append(result.contributions[keep])
        position, count = device_positions(full.device_id)
        history = full.take(position >= count - fleet_model.context)
    assert np.array_equal(np.concatenate(scores), whole.score)
    assert np.array_equal(np.concatenate(flags), whole.flagged)
    assert np.allclose(np.concatenate(shares), whole.contributions)


def test_contributions_are_channel_shares_of_flagged_rows(fleet_model):
    batch = readings(FLEET, 1500, seed=10)
    values = batch.values.copy()
    values[1000:, 2] *= 3.0  # vibration rises
    batch = TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, CHANNELS, values, batch.label)
    result = fleet_model.score(batch)
    flagged = result.flagged
    assert flagged[1000:].mean() > 0.5
    assert np.allclose(result.contributions[flagged].sum(axis=1), 1.0)
    assert (result.contributions[~flagged] == 0).all()
    late = flagged & (np.arange(len(batch)) >= 1100)
    assert (result.contributions[late].argmax(axis=1) == 2).mean() > 0.9


def test_threshold_is_calibrated_for_the_target_rate_on_held_back_rows():
    batch = readings({"pump-a": 10.0}, 1000, seed=11)
    tail = AnomalyModel.fit(batch, "pca", params={"calibration_folds": 1, "target_far": 0.01})
    # One fold: fitted on the first 80 %, calibrated on the last 20 % of the training rows, nothing else.
    scores = tail.score(batch).score
    assert tail.global_threshold == pytest.approx(calibrate(scores[800:], 0.01).threshold)
    assert tail.global_threshold != pytest.approx(calibrate(scores[:800], 0.01).threshold)
    assert tail.calibration["target_far"] == 0.01 and tail.calibration["global"]["samples"] == 200
    stricter = AnomalyModel.fit(batch, "pca", params={"calibration_folds": 1, "target_far": 0.001})
    assert stricter.global_threshold > tail.global_threshold


def test_out_of_fold_calibration_scores_every_block_with_a_detector_that_did_not_see_it():
    batch = readings({"pump-a": 10.0}, 1000, seed=11)
    model = AnomalyModel.fit(batch, "pca", params={"calibration_folds": 5})
    # Every training row past the warm-up was held out once; the served detector saw all of them.
    assert model.calibration["global"]["samples"] == 1000 - model.warm_up
    in_sample = model.score(batch).score[model.warm_up :]
    assert model.global_threshold > calibrate(in_sample, model.config.target_far).threshold


def test_a_new_device_raises_no_alarm_while_its_windows_fill(fleet_model):
    wild = readings({"pump-new": 1e6}, 200, seed=3)  # far outside anything seen, from its first reading
    result = fleet_model.score(wild)
    context = fleet_model.warm_up
    assert result.warming_up[:context].all() and not result.warming_up[context:].any()
    assert not result.flagged[:context].any() and result.flagged[context:].all()
    assert (result.score[1:context] > result.threshold[1:context]).all()  # scored, just not flagged
    assert not result.own_model.any()  # no model of its own: the global one scored it
    known = fleet_model.score(readings(FLEET, 600, seed=1))
    assert known.own_model.all()


def test_save_load_gives_identical_scores_without_pickle(fleet_model, tmp_path, monkeypatch):
    written = fleet_model.save(tmp_path)
    assert MANIFEST in written and all((tmp_path / name).is_file() for name in written)
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in written)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded = AnomalyModel.load(tmp_path)
    batch = TelemetryBatch.concat([readings(FLEET, 800, seed=12), readings({"pump-new": 10.0}, 100, seed=13)])
    first, second = fleet_model.score(batch, explain="all"), loaded.score(batch, explain="all")
    assert np.array_equal(first.score, second.score)
    assert np.array_equal(first.threshold, second.threshold)
    assert np.allclose(first.contributions, second.contributions)
    assert loaded.context == fleet_model.context


def test_iforest_model_round_trips_and_same_seed_gives_same_scores(tmp_path):
    batch = readings(FLEET, 2000, seed=14)
    probe = readings(FLEET, 500, seed=15)
    model = AnomalyModel.fit(batch, "iforest", per_device=True, seed=4, params=FAST_IFOREST)
    again = AnomalyModel.fit(batch, "iforest", per_device=True, seed=4, params=FAST_IFOREST)
    other = AnomalyModel.fit(batch, "iforest", per_device=True, seed=5, params=FAST_IFOREST)
    assert np.array_equal(model.score(probe).score, again.score(probe).score)
    assert not np.array_equal(model.score(probe).score, other.score(probe).score)
    model.save(tmp_path)
    loaded = AnomalyModel.load(tmp_path)
    assert np.array_equal(loaded.score(probe).flagged, model.score(probe).flagged)
    assert np.array_equal(loaded.score(probe).score, model.score(probe).score)


def test_single_device_per_device_model_shares_the_global_detector(tmp_path):
    model = AnomalyModel.fit(readings({"pump-a": 10.0}, 600, seed=16), "pca", per_device=True)
    assert model.device_detectors["pump-a"] is model.global_detector
    model.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["devices"]["pump-a"]["folder"] == "global"
    assert AnomalyModel.load(tmp_path).device_detectors["pump-a"] is not None


def test_context_counts_features_smoothing_and_hold():
    config = DEFAULT_CONFIGS["pca"]
    model = AnomalyModel.fit(readings({"pump-a": 10.0}, 600, seed=17), "pca")
    warm_up = (config.rolling - 1) + config.rolling + (config.smoothing - 1) + (config.hold - 1)
    assert model.warm_up == warm_up
    # history also holds the slow baseline before the rolling window
    step = config.baseline // BASELINE_SAMPLES
    oldest = (config.rolling - 1) + (step - 1) + BASELINE_SAMPLES * step
    assert model.context == oldest + (config.smoothing - 1) + (config.hold - 1)


def test_bad_requests_fail_with_model_errors(tmp_path):
    batch = readings({"pump-a": 10.0}, 600, seed=18)
    with pytest.raises(ModelError):
        AnomalyModel.fit(batch, "no-such-detector")
    with pytest.raises(ModelError):
        AnomalyModel.fit(batch, "pca", params={"not_a_parameter": 1})
    with pytest.raises(ModelError):
        AnomalyModel.fit(batch.take(slice(0, 5)), "pca")
    with pytest.raises(ModelError):
        ModelConfig(smoothing=0)
    with pytest.raises(ModelIntegrityError):
        AnomalyModel.load(tmp_path)


def test_flagged_readings_say_what_was_expected_and_which_way_they_went():
    # pump-a's levels are 10, 5 and 1; a 200-reading fault pushes the first channel up by 30 %.
    batch = readings({"pump-a": 10.0}, 3000, seed=21)
    model = AnomalyModel.fit(batch.take(slice(0, 1500)), "pca")
    values = batch.values.copy()
    values[2000:2200, 0] *= 1.3
    faulty = TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, CHANNELS, values, batch.label)
    result = model.score(faulty, explain="flagged")
    flagged = np.flatnonzero(result.flagged)
    in_fault = flagged[(flagged >= 2010) & (flagged < 2200)]
    assert len(in_fault) > 100
    expected = result.expected[in_fault]
    # judged against the slow baseline of the readings before the fault: each channel's normal level
    assert np.allclose(expected.mean(axis=0), [10.0, 5.0, 1.0], rtol=0.02)
    assert (values[in_fault, 0] > expected[:, 0]).mean() > 0.95  # the faulty channel is above it
    assert model.score(faulty, explain="none").expected.shape == (0, 3)


def test_a_format_1_model_with_a_folder_per_device_still_loads(fleet_model, tmp_path):
    fleet_model.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    # the layout before banks: format 1, one folder per device
    for i, (device, detector) in enumerate(fleet_model.device_detectors.items()):
        detector.save(tmp_path / f"old/{i:06d}")
        manifest["devices"][device] = {"folder": f"old/{i:06d}", "threshold": fleet_model.device_thresholds[device]}
    manifest["format_version"] = 1
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    old = AnomalyModel.load(tmp_path)
    assert set(old.device_detectors) == set(fleet_model.device_detectors)
    batch = readings(FLEET, 300, seed=21)
    assert np.array_equal(old.score(batch).score, fleet_model.score(batch).score)
