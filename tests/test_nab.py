"""NAB scoring reproduces NAB's published Numenta HTM scores; `anomstream eval nab` follows NAB's protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomstream import nab
from anomstream.errors import ModelError, SourceError
from anomstream.nab_eval import alarm_starts, evaluate_file, evaluate_nab, find_labels

NAB_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"
NAB_DATA = NAB_ROOT / "data"
ARTIFICIAL = NAB_DATA / "artificialWithAnomaly"
NUMENTA_RESULTS = NAB_ROOT / "results" / "numenta"
# NAB's normalised scores of Numenta HTM on realAWSCloudwatch + artificialWithAnomaly (data README: 72.9).
NUMENTA_NORMALISED = {"standard": 72.9, "reward_low_FP_rate": 66.2, "reward_low_FN_rate": 76.4}


@pytest.fixture(scope="module")
def windows() -> dict[str, list[nab.Window]]:
    labels = NAB_ROOT / "labels" / "combined_windows.json"
    if not labels.is_file():
        pytest.fail(f"NAB data not found: {labels} is missing (see ../shared/data/README.md)")
    return nab.load_windows(labels)


def published_scores(profile: str) -> pd.DataFrame:
    """NAB's per-file score rows of Numenta HTM for a profile, without a totals row if there is one."""
    table = pd.read_csv(NUMENTA_RESULTS / f"numenta_{profile}_scores.csv")
    return table[table["File"].notna() & (table["Detector"] != "Totals")]


def numenta_file_scores(profile: str, windows: dict[str, list[nab.Window]]) -> list[tuple[pd.Series, nab.FileScore]]:
    """Each published row with our score of Numenta's outputs thresholded at the published threshold."""
    scored = []
    for _, row in published_scores(profile).iterrows():
        category, name = row["File"].split("/")
        outputs = pd.read_csv(NUMENTA_RESULTS / category / f"numenta_{name}")
        detections = nab.detections_at(outputs["anomaly_score"].to_numpy(), float(row["Threshold"]))
        times = pd.to_datetime(outputs["timestamp"]).to_numpy()
        scored.append((row, nab.score_file(times, detections, windows[row["File"]], nab.PROFILES[profile])))
    return scored


def test_profiles_match_nab_config():
    assert nab.load_profiles(NAB_ROOT / "config" / "profiles.json") == nab.PROFILES
    assert tuple(nab.PROFILES) == nab.PROFILE_NAMES


@pytest.mark.parametrize("profile", nab.PROFILE_NAMES)
def test_published_numenta_scores_and_counts_are_reproduced(profile, windows):
    scored = numenta_file_scores(profile, windows)
    assert len(scored) == 23  # realAWSCloudwatch (17) + artificialWithAnomaly (6)
    for row, score in scored:
        assert score.raw == pytest.approx(float(row["Score"]), rel=1e-6, abs=1e-9), row["File"]
        counts = (score.tp, score.tn, score.fp, score.fn, score.total)
        assert counts == tuple(int(row[k]) for k in ("TP", "TN", "FP", "FN", "Total_Count")), row["File"]
        assert score.tp + score.tn + score.fp + score.fn == score.total - nab.probation_rows(score.total)


@pytest.mark.parametrize("profile", nab.PROFILE_NAMES)
def test_numenta_normalised_scores_on_the_two_categories(profile, windows):
    file_scores = [score for _, score in numenta_file_scores(profile, windows)]
    assert sum(s.windows for s in file_scores) == 36
    assert round(nab.normalised_score(file_scores), 1) == NUMENTA_NORMALISED[profile]


# Synthetic files: 1,000 five-minute rows, probation 150 rows.
TIMES = np.datetime64("2020-01-01T00:00") + np.arange(1000) * np.timedelta64(5, "m")
STANDARD = nab.PROFILES["standard"]


def window(first: int, last: int) -> nab.Window:
    return TIMES[first], TIMES[last]


def detected_at(*rows: int) -> np.ndarray:
    detections = np.zeros(len(TIMES), dtype=bool)
    detections[list(rows)] = True
    return detections


def test_probation_rows_follow_nab():
    assert nab.probation_rows(4032) == 604
    assert nab.probation_rows(1243) == 186
    assert nab.probation_rows(1000) == 150
    assert nab.probation_rows(22695) == 750  # capped at 15 % of 5,000 rows


def test_detection_at_a_window_start_earns_the_tp_weight():
    windows = [window(400, 499), window(700, 799)]
    score = nab.score_file(TIMES, detected_at(400, 700), windows, STANDARD)
    assert score.raw == pytest.approx(2 * STANDARD.tp_weight)
    assert (score.detected, score.windows, score.tp, score.fp) == (2, 2, 2, 0)


def test_only_the_earliest_detection_in_a_window_counts():
    windows = [window(400, 499)]
    early = nab.score_file(TIMES, detected_at(450), windows, STANDARD).raw
    both = nab.score_file(TIMES, detected_at(450, 490), windows, STANDARD).raw
    late = nab.score_file(TIMES, detected_at(490), windows, STANDARD).raw
    assert both == early
    assert 0 < late < early < STANDARD.tp_weight


def test_no_detection_costs_the_fn_weight_per_window():
    windows = [window(400, 499), window(700, 799)]
    low_fn = nab.PROFILES["reward_low_FN_rate"]
    assert nab.score_file(TIMES, detected_at(), windows, STANDARD).raw == -2 * STANDARD.fn_weight
    assert nab.score_file(TIMES, detected_at(), windows, low_fn).raw == -2 * low_fn.fn_weight
    null = nab.score_file(TIMES, detected_at(), windows, STANDARD)
    assert nab.normalised_score([null]) == 0.0


def test_detections_in_probation_are_ignored():
    windows = [window(100, 199)]  # starts inside the 150-row probation
    assert nab.score_file(TIMES, detected_at(10, 120, 140), windows, STANDARD).raw == -STANDARD.fn_weight
    score = nab.score_file(TIMES, detected_at(10, 160), windows, STANDARD)
    assert score.raw == pytest.approx(float(nab.scaled_sigmoid(-(199 - 160 + 1) / 100) / nab.scaled_sigmoid(-1.0)))
    assert (score.tp, score.fp, score.fn, score.tn) == (1, 0, 49, 800)


def test_window_inside_probation_is_neither_reward_nor_cost():
    score = nab.score_file(TIMES, detected_at(), [window(20, 60)], STANDARD)
    assert (score.raw, score.scorable_windows, score.windows, score.perfect, score.null) == (0.0, 0, 1, 1.0, 0.0)


def test_false_alarms_cost_less_just_after_a_window():
    windows = [window(400, 499)]
    remote = nab.score_file(TIMES, detected_at(300), windows, STANDARD).raw  # no window before it
    assert remote == pytest.approx(-STANDARD.fn_weight - STANDARD.fp_weight)
    near = nab.score_file(TIMES, detected_at(505), windows, STANDARD).raw
    far = nab.score_file(TIMES, detected_at(900), windows, STANDARD).raw  # > 3 widths after: -fpWeight
    assert far == pytest.approx(remote)
    assert remote < near < -STANDARD.fn_weight


def test_alarm_starts_are_rising_edges():
    flagged = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    assert alarm_starts(flagged).nonzero()[0].tolist() == [0, 4, 6]
    assert alarm_starts(np.zeros(0, dtype=bool)).shape == (0,)


def run_eval_nab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anomstream", "eval", "nab", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"COLUMNS": "160"},  # a table wide enough for NAB's file names on one line
    )


def test_eval_nab_json_and_results_dir(tmp_path, windows):
    out = tmp_path / "results"
    completed = run_eval_nab("--data", str(ARTIFICIAL), "--model", "pca", "--json", "--results-dir", str(out))
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    keys = {"standard", "reward_low_FP_rate", "reward_low_FN_rate", "windows", "detected", "fp", "files"}
    assert keys | {"detector", "seed", "seconds", "per_file"} <= set(summary)
    expected_windows = sum(len(w) for key, w in windows.items() if key.startswith("artificialWithAnomaly/"))
    assert (summary["files"], summary["windows"], summary["detector"]) == (6, expected_windows, "pca")
    assert 0 <= summary["detected"] <= summary["windows"]
    assert summary["fp"] >= 0
    for row in summary["per_file"]:
        assert {"file", "raw_standard", "detected", "windows", "fp"} <= set(row)
        assert 0 <= row["detected"] <= row["windows"]

    # The same run in process: the results files hold exactly its alarm starts, one row per data row.
    outcome = evaluate_nab(ARTIFICIAL, "pca")
    assert outcome.to_dict() == {**summary, "seconds": outcome.to_dict()["seconds"]}
    rescored = []
    for result in outcome.files:
        written = pd.read_csv(out / result.key)
        data = pd.read_csv(ARTIFICIAL / result.path.name)
        assert list(written.columns) == ["timestamp", "value", "anomaly_score"]
        assert written["timestamp"].tolist() == data["timestamp"].tolist()
        assert np.allclose(written["value"], data["value"])
        assert set(written["anomaly_score"].unique()) <= {0, 1}
        assert np.array_equal(written["anomaly_score"].to_numpy() == 1, result.detections)
        assert int(written["anomaly_score"].sum()) == int(result.detections.sum())
        detections = nab.detections_at(written["anomaly_score"].to_numpy(), 0.5)
        times = pd.to_datetime(written["timestamp"]).to_numpy()
        rescored.append(nab.score_file(times, detections, windows[result.key], nab.PROFILES["standard"]))
    assert round(nab.normalised_score(rescored), 6) == summary["standard"]


def test_eval_nab_table_with_iforest():
    completed = run_eval_nab("--data", str(ARTIFICIAL / "art_daily_jumpsup.csv"), "--model", "iforest")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "NAB normalised scores" in completed.stdout
    assert "art_daily_jumpsup" in completed.stdout


def test_model_errors_name_the_file(monkeypatch, windows):
    def refuse(*args, **kwargs):
        raise ModelError("too few rows")

    monkeypatch.setattr("anomstream.nab_eval.AnomalyModel.fit", refuse)
    path = ARTIFICIAL / "art_daily_nojump.csv"
    with pytest.raises(ModelError, match="art_daily_nojump.csv"):
        evaluate_file(path, "pca", windows["artificialWithAnomaly/art_daily_nojump.csv"], "x")


def test_files_outside_a_nab_tree_are_refused(tmp_path):
    (tmp_path / "data" / "cat").mkdir(parents=True)
    lone = tmp_path / "data" / "cat" / "series.csv"
    lone.write_text("timestamp,value\n2020-01-01 00:00:00,1.0\n")
    assert find_labels(lone) is None
    assert find_labels(ARTIFICIAL / "art_daily_nojump.csv") == (
        (NAB_ROOT / "labels" / "combined_windows.json").resolve(),
        "artificialWithAnomaly/art_daily_nojump.csv",
    )
    with pytest.raises(SourceError, match="no labelled NAB file"):
        evaluate_nab(tmp_path / "data", "pca")
