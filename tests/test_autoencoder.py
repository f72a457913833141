"""Tests for the PyTorch autoencoder detectors (tiny networks, CPU, a few seconds each)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.metrics import roc_auc_score

from anomstream.detectors.autoencoder import (
    DEFAULT_MAX_TRAIN_ROWS,
    ConvAutoencoder,
    DenseAutoencoder,
    _training_sample,
    resolve_device,
)
from anomstream.errors import ConfigError, ModelError
from anomstream.features import Windows

N_FEATURES = 6
WINDOW = 16
TINY_DENSE: dict[str, Any] = {
    "hidden": (16,), "max_epochs": 30, "batch_size": 128, "learning_rate": 1e-2, "device": "cpu",
}
TINY_CONV: dict[str, Any] = {
    "channels": (8, 8), "kernel_size": 5, "max_epochs": 25, "batch_size": 64, "learning_rate": 5e-3,
    "device": "cpu",
}


def correlated_rows(n: int, seed: int) -> np.ndarray:
    """Normal rows: six standardised features driven by two latent factors plus a little noise."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(123).normal(size=(2, N_FEATURES))
    rows = rng.normal(size=(n, 2)) @ mixing + 0.1 * rng.normal(size=(n, N_FEATURES))
    return (rows - rows.mean(axis=0)) / rows.std(axis=0)


def sine_series(n: int, seed: int) -> np.ndarray:
    """Normal readings: phase-locked sines on six channels with noise, ``(n, F)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] + rng.uniform(0, 1000)
    phases = np.linspace(0, np.pi, N_FEATURES)[None, :]
    return np.sin(2 * np.pi * t / 20 + phases) + 0.05 * rng.normal(size=(n, N_FEATURES))


def trailing_windows(series: np.ndarray) -> np.ndarray:
    """Trailing windows ``(n - W + 1, W, F)`` as the feature pipeline builds them (newest reading last)."""
    return sliding_window_view(series, WINDOW, axis=0).transpose(0, 2, 1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny networks gain nothing from threads, and on a shared machine extra threads only contend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def dense_train() -> np.ndarray:
    return correlated_rows(2000, seed=1)


@pytest.fixture(scope="module")
def dense_fitted(dense_train: np.ndarray) -> DenseAutoencoder:
    return DenseAutoencoder(**TINY_DENSE).fit(dense_train, seed=7)


@pytest.fixture(scope="module")
def conv_train() -> np.ndarray:
    return trailing_windows(sine_series(1500, seed=1))


@pytest.fixture(scope="module")
def conv_fitted(conv_train: np.ndarray) -> ConvAutoencoder:
    return ConvAutoencoder(**TINY_CONV).fit(conv_train, seed=7)


def test_dense_scores_injected_anomalies_higher(dense_fitted: DenseAutoencoder) -> None:
    normal = correlated_rows(1000, seed=2)
    anomalous = correlated_rows(100, seed=3)
    # Break the correlation structure: each anomalous row has one feature pushed 4 sd off its factors.
    rng = np.random.default_rng(4)
    anomalous[np.arange(100), rng.integers(0, N_FEATURES, 100)] += rng.choice([-4.0, 4.0], 100)
    scores = dense_fitted.score(np.concatenate([normal, anomalous]))
    labels = np.r_[np.zeros(1000), np.ones(100)]
    assert roc_auc_score(labels, scores) > 0.95
    # The threshold from the validation split keeps false alarms rare and catches most anomalies.
    assert (dense_fitted.score(normal) > dense_fitted.threshold_).mean() < 0.05
    assert (dense_fitted.score(anomalous) > dense_fitted.threshold_).mean() > 0.8


def test_dense_contributions_point_at_the_broken_feature(dense_fitted: DenseAutoencoder) -> None:
    rows = correlated_rows(200, seed=5)
    rows[:, 2] += 5.0
    assert np.bincount(dense_fitted.contributions(rows).argmax(axis=1), minlength=N_FEATURES).argmax() == 2


def test_conv_scores_injected_anomalies_higher(conv_fitted: ConvAutoencoder) -> None:
    series = sine_series(1200, seed=2)
    labels = np.zeros(len(series))
    rng = np.random.default_rng(3)
    for start in rng.choice(np.arange(50, 1150, 60), size=8, replace=False):
        channel = rng.integers(0, N_FEATURES)
        series[start : start + 10, channel] += 3.0  # a level shift on one channel for ten readings
        labels[start : start + 10] = 1
    scores = conv_fitted.score(trailing_windows(series))
    # A window's label is that of its newest reading, as the scorer reports it.
    assert roc_auc_score(labels[WINDOW - 1 :], scores) > 0.9


@pytest.mark.parametrize("score_on", ["last", "mean"])
def test_conv_score_on_modes_shapes(conv_train: np.ndarray, score_on: str) -> None:
    detector = ConvAutoencoder(**{**TINY_CONV, "max_epochs": 2}, score_on=score_on).fit(conv_train[:300])
    windows = conv_train[:50]
    scores, contributions = detector.score(windows), detector.contributions(windows)
    assert scores.shape == (50,) and scores.dtype == np.float64
    assert contributions.shape == (50, N_FEATURES) and contributions.dtype == np.float64
    assert (contributions >= 0).all()
    np.testing.assert_allclose(contributions.mean(axis=1), scores, rtol=1e-12)


def test_dense_shapes_and_score_is_mean_of_contributions(dense_fitted: DenseAutoencoder) -> None:
    rows = correlated_rows(300, seed=6)
    scores, contributions = dense_fitted.score(rows), dense_fitted.contributions(rows)
    assert scores.shape == (300,) and scores.dtype == np.float64
    assert contributions.shape == (300, N_FEATURES) and (contributions >= 0).all()
    np.testing.assert_allclose(contributions.mean(axis=1), scores, rtol=1e-12)
    assert dense_fitted.score(rows[:0]).shape == (0,)
    assert dense_fitted.contributions(rows[:0]).shape == (0, N_FEATURES)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_conv_scores_windows_given_as_rows_and_index_exactly_as_materialised(
    conv_fitted: ConvAutoencoder, device: str, tmp_path: Path
) -> None:
    """What the feature pipeline hands the scorer (float32 rows + an index, gathered chunk by chunk on the
    scoring device) scores bit for bit as the materialised ``(n, W, F)`` windows do."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    conv_fitted.save(tmp_path)
    detector = ConvAutoencoder.load(tmp_path, device=device)
    series = sine_series(700, seed=9).astype(np.float32)
    series[400:410, 2] += 4.0  # something to reconstruct badly
    pos = np.arange(len(series))  # one device: its rows in order
    index = np.arange(len(series))[:, None] - np.minimum(np.arange(WINDOW - 1, -1, -1)[None, :], pos[:, None])
    windows = Windows(series, index)
    materialised = np.asarray(windows)
    assert materialised.shape == windows.shape == (700, WINDOW, N_FEATURES)
    previous = detector.score_batch_size
    detector.score_batch_size = 97  # ragged chunks: each gathers its own windows
    try:
        assert np.array_equal(detector.score(windows), detector.score(materialised))
        assert np.array_equal(detector.contributions(windows[50:300]), detector.contributions(materialised[50:300]))
    finally:
        detector.score_batch_size = previous


def test_chunked_scoring_matches_one_chunk(dense_fitted: DenseAutoencoder) -> None:
    rows = correlated_rows(1000, seed=8)
    whole, previous = dense_fitted.score(rows), dense_fitted.score_batch_size
    dense_fitted.score_batch_size = 7  # many ragged chunks
    try:
        np.testing.assert_allclose(dense_fitted.score(rows), whole, rtol=1e-5, atol=1e-7)
    finally:
        dense_fitted.score_batch_size = previous


@pytest.mark.parametrize("detector_class", [DenseAutoencoder, ConvAutoencoder])
def test_same_seed_gives_identical_scores(
    detector_class: type[DenseAutoencoder] | type[ConvAutoencoder], dense_train: np.ndarray,
    conv_train: np.ndarray,
) -> None:
    if detector_class is DenseAutoencoder:
        train, settings = dense_train[:600], {**TINY_DENSE, "max_epochs": 5}
    else:
        train, settings = conv_train[:400], {**TINY_CONV, "max_epochs": 3}
    first = detector_class(**settings).fit(train, seed=3)
    second = detector_class(**settings).fit(train, seed=3)
    other = detector_class(**settings).fit(train, seed=4)
    assert np.array_equal(first.score(train), second.score(train))
    assert first.threshold_ == second.threshold_
    assert first.history_ == second.history_
    assert not np.array_equal(first.score(train), other.score(train))


def test_fit_leaves_global_torch_state_alone(dense_train: np.ndarray) -> None:
    rng_state = torch.get_rng_state()
    deterministic = torch.are_deterministic_algorithms_enabled()
    DenseAutoencoder(**{**TINY_DENSE, "max_epochs": 2}).fit(dense_train[:200], seed=1)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_early_stopping_stops_after_patience(dense_train: np.ndarray) -> None:
    # A vanishing learning rate never improves the first epoch's validation loss.
    settings = {**TINY_DENSE, "max_epochs": 50, "patience": 3, "learning_rate": 1e-12}
    detector = DenseAutoencoder(**settings).fit(dense_train[:300])
    assert [row["epoch"] for row in detector.history_] == [1, 2, 3, 4]


@pytest.mark.parametrize("fixture_name", ["dense_fitted", "conv_fitted"])
def test_save_load_round_trip(fixture_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    detector = request.getfixturevalue(fixture_name)
    if fixture_name == "dense_fitted":
        data = correlated_rows(300, seed=9)
    else:
        data = trailing_windows(sine_series(300, seed=9))
    calibrated = detector.threshold_
    detector.threshold_ = 1.2345  # as anomstream.model does after its own calibration
    try:
        written = detector.save(tmp_path)
    finally:
        detector.threshold_ = calibrated
    assert sorted(written) == sorted([f"{detector.name}.pt", f"{detector.name}.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    meta = json.loads((tmp_path / f"{detector.name}.json").read_text())
    assert meta["input_shape"] == list(data.shape[1:]) and meta["threshold"] == 1.2345
    loaded = type(detector).load(tmp_path, device="cpu")
    assert loaded.threshold_ == 1.2345
    assert loaded.params() == detector.params()
    assert np.array_equal(loaded.score(data), detector.score(data))
    assert np.array_equal(loaded.contributions(data), detector.contributions(data))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_weights_file_is_refused(
    dense_fitted: DenseAutoencoder, tmp_path: Path, damage: str
) -> None:
    dense_fitted.save(tmp_path)
    weights = tmp_path / "dense-ae.pt"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x80\x04not a state dict" * 64)
    else:
        weights.unlink()
    with pytest.raises(ModelError, match="dense-ae.pt") as raised:
        DenseAutoencoder.load(tmp_path, device="cpu")
    assert "weights_only=False" not in str(raised.value)


def test_weights_of_another_architecture_are_refused(dense_fitted: DenseAutoencoder, tmp_path: Path) -> None:
    dense_fitted.save(tmp_path)
    meta_path = tmp_path / "dense-ae.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["hidden"] = [5]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit the network"):
        DenseAutoencoder.load(tmp_path)


def test_a_description_of_a_huge_network_is_refused_before_any_memory_is_taken(
    dense_fitted: DenseAutoencoder, tmp_path: Path
) -> None:
    # 4e10 weights (160 GB) described beside a small weights file: compared on torch's meta device, refused
    dense_fitted.save(tmp_path)
    meta_path = tmp_path / "dense-ae.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["hidden"] = [200_000, 200_000]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="layer shapes differ"):
        DenseAutoencoder.load(tmp_path)


def test_garbage_metadata_is_refused(dense_fitted: DenseAutoencoder, tmp_path: Path) -> None:
    dense_fitted.save(tmp_path)
    (tmp_path / "dense-ae.json").write_text("{not json")
    with pytest.raises(ModelError, match="dense-ae.json"):
        DenseAutoencoder.load(tmp_path)


def test_cuda_requested_without_cuda_is_an_error(
    monkeypatch: pytest.MonkeyPatch, dense_fitted: DenseAutoencoder, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="CUDA is not available"):
        DenseAutoencoder(**{**TINY_DENSE, "device": "cuda"}).fit(correlated_rows(100, seed=1))
    dense_fitted.save(tmp_path)
    with pytest.raises(ModelError, match="CUDA is not available"):
        DenseAutoencoder.load(tmp_path, device="cuda")
    assert resolve_device("auto") == torch.device("cpu")  # auto falls back quietly


def test_unknown_device_and_bad_settings_are_refused() -> None:
    with pytest.raises(ModelError, match="unknown"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="kernel_size"):
        ConvAutoencoder(kernel_size=4)
    with pytest.raises(ConfigError, match="score_on"):
        ConvAutoencoder(score_on="first")
    with pytest.raises(ConfigError, match="validation_fraction"):
        DenseAutoencoder(validation_fraction=1.0)


def test_wrong_input_shapes_are_refused(dense_fitted: DenseAutoencoder, conv_fitted: ConvAutoencoder) -> None:
    with pytest.raises(ModelError, match="fitted on rows of shape"):
        dense_fitted.score(np.zeros((4, N_FEATURES + 1)))
    with pytest.raises(ModelError, match=r"\(n, W, F\)"):
        conv_fitted.score(np.zeros((4, N_FEATURES)))
    with pytest.raises(ModelError, match="not fitted"):
        DenseAutoencoder().score(np.zeros((4, N_FEATURES)))
    with pytest.raises(ModelError, match="NaN"):
        DenseAutoencoder(**TINY_DENSE).fit(np.full((50, N_FEATURES), np.nan))


def test_progress_bar_only_when_asked(dense_train: np.ndarray, capsys: pytest.CaptureFixture[str]) -> None:
    settings = {**TINY_DENSE, "max_epochs": 2}
    DenseAutoencoder(**settings).fit(dense_train[:200])
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest
    DenseAutoencoder(**settings, progress=True).fit(dense_train[:200])
    shown = capsys.readouterr().err
    assert "dense-ae" in shown and "epoch 2/2" in shown


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("detector_class", [DenseAutoencoder, ConvAutoencoder])
def test_cuda_training_is_seeded_and_agrees_with_cpu_scoring(
    detector_class: type[DenseAutoencoder] | type[ConvAutoencoder], dense_train: np.ndarray,
    conv_train: np.ndarray, tmp_path: Path,
) -> None:
    if detector_class is DenseAutoencoder:
        train, settings = dense_train[:600], {**TINY_DENSE, "max_epochs": 5, "device": "cuda"}
    else:
        train, settings = conv_train[:400], {**TINY_CONV, "max_epochs": 3, "device": "cuda"}
    first = detector_class(**settings).fit(train, seed=3)
    second = detector_class(**settings).fit(train, seed=3)
    assert np.array_equal(first.score(train), second.score(train))
    first.save(tmp_path)
    on_cpu = detector_class.load(tmp_path, device="cpu")
    # TF32 in cuDNN convolutions allows a small relative difference between devices.
    np.testing.assert_allclose(on_cpu.score(train), first.score(train), rtol=5e-3)


def test_training_sample_is_seeded_uniform_and_in_order() -> None:
    assert _training_sample(1000, 1000, seed=0) is None and _training_sample(1000, None, seed=0) is None
    sample = _training_sample(100_000, 2_000, seed=5)
    assert sample is not None and len(sample) == 2_000 and len(np.unique(sample)) == 2_000
    assert (np.diff(sample) > 0).all() and sample[0] >= 0 and sample[-1] < 100_000
    assert np.array_equal(sample, _training_sample(100_000, 2_000, seed=5))
    assert not np.array_equal(sample, _training_sample(100_000, 2_000, seed=6))
    # Uniform over the range: each tenth of the rows holds about a tenth of the sample.
    assert (np.abs(np.bincount(sample // 10_000, minlength=10) - 200) < 60).all()


def test_the_default_bound_leaves_small_fits_unchanged(dense_train: np.ndarray) -> None:
    settings = {**TINY_DENSE, "max_epochs": 3}
    default = DenseAutoencoder(**settings).fit(dense_train[:500], seed=2)
    unbounded = DenseAutoencoder(**settings, max_train_rows=None).fit(dense_train[:500], seed=2)
    exact = DenseAutoencoder(**settings, max_train_rows=500).fit(dense_train[:500], seed=2)
    assert default.max_train_rows == DEFAULT_MAX_TRAIN_ROWS and default.params()["max_train_rows"] == 200_000
    for other in (unbounded, exact):
        assert np.array_equal(default.score(dense_train), other.score(dense_train))
        assert default.threshold_ == other.threshold_ and default.history_ == other.history_


def test_more_rows_than_the_bound_train_on_a_seeded_sample(dense_train: np.ndarray) -> None:
    settings = {**TINY_DENSE, "max_epochs": 3}
    bounded = DenseAutoencoder(**settings, max_train_rows=400).fit(dense_train, seed=2)
    again = DenseAutoencoder(**settings, max_train_rows=400).fit(dense_train, seed=2)
    sample = _training_sample(len(dense_train), 400, seed=2)
    on_sample = DenseAutoencoder(**settings, max_train_rows=None).fit(dense_train[sample], seed=2)
    for other in (again, on_sample):
        assert np.array_equal(bounded.score(dense_train), other.score(dense_train))
        assert bounded.threshold_ == other.threshold_ and bounded.history_ == other.history_


def test_bounded_fit_on_windows_materialises_only_the_sampled_windows() -> None:
    series = sine_series(20_000 + WINDOW - 1, seed=11).astype(np.float32)
    index = np.arange(20_000)[:, None] + np.arange(WINDOW)[None, :]
    windows = Windows(series, index)
    materialised_bytes = 20_000 * WINDOW * N_FEATURES * 4  # what np.asarray(windows) would allocate
    detector = ConvAutoencoder(**{**TINY_CONV, "max_epochs": 1}, max_train_rows=500)
    # A process's first fit imports parts of torch lazily (tens of MB of Python objects): not what is measured.
    ConvAutoencoder(**{**TINY_CONV, "max_epochs": 1}).fit(windows[:100], seed=0)
    tracemalloc.start()
    try:
        detector.fit(windows, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < materialised_bytes / 10  # 500 windows are 1/40 of them
    sample = _training_sample(20_000, 500, seed=0)
    reference = ConvAutoencoder(**{**TINY_CONV, "max_epochs": 1}, max_train_rows=None).fit(
        np.asarray(windows[sample]), seed=0
    )
    probe = np.asarray(windows[:300])
    assert np.array_equal(detector.score(probe), reference.score(probe))
    assert detector.threshold_ == reference.threshold_


def test_max_train_rows_below_the_minimum_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_train_rows"):
        DenseAutoencoder(max_train_rows=5)
