"""`anomstream eval skab` on one SKAB file: stable figures, sane bounds, the CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomstream.skab_eval import TRAIN_ROWS, evaluate_skab
from anomstream.sources import read_skab_file

SKAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "skab" / "data"
VALVE_FILE = SKAB / "valve1" / "1.csv"

pytestmark = pytest.mark.skipif(not VALVE_FILE.is_file(), reason=f"SKAB data not found at {SKAB}")


def eval_json(*args: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "anomstream", "eval", "skab", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_eval_skab_on_one_file_is_stable_and_sane():
    first = eval_json("--data", str(VALVE_FILE), "--model", "pca")
    second = eval_json("--data", str(VALVE_FILE), "--model", "pca")
    assert first == {**second, "seconds": first["seconds"]}
    assert {"f1", "far", "mar", "tp", "fp", "fn", "tn", "files"} <= set(first)
    batch = read_skab_file(VALVE_FILE)
    test_labels = batch.label[TRAIN_ROWS:]
    assert first["files"] == 1
    assert first["tp"] + first["fn"] == int((test_labels == 1).sum())
    assert first["fp"] + first["tn"] == int((test_labels == 0).sum())
    # This file's valve anomaly is plain in the flow: any working detector finds most of it.
    assert first["f1"] > 0.7
    assert first["far"] < 30.0
    assert first["f1"] == pytest.approx(first["tp"] / (first["tp"] + (first["fp"] + first["fn"]) / 2))


def test_iforest_default_seed_is_reproducible_and_seed_matters():
    default = evaluate_skab(VALVE_FILE, "iforest")
    again = evaluate_skab(VALVE_FILE, "iforest", seed=0)
    other = evaluate_skab(VALVE_FILE, "iforest", seed=1)
    assert np.array_equal(default.files[0].score, again.files[0].score)
    assert default.total == again.total
    assert not np.array_equal(default.files[0].score, other.files[0].score)


def test_unlabelled_files_are_skipped_and_the_report_is_written(tmp_path):
    folder = tmp_path / "data"
    (folder / "valve1").mkdir(parents=True)
    (folder / "anomaly-free").mkdir()
    (folder / "valve1" / "1.csv").write_bytes(VALVE_FILE.read_bytes())
    free = SKAB / "anomaly-free" / "anomaly-free.csv"
    if free.is_file():
        (folder / "anomaly-free" / "anomaly-free.csv").write_bytes(free.read_bytes())
    outcome = evaluate_skab(folder, "pca", report_dir=tmp_path / "report")
    assert len(outcome.files) == 1
    assert [p.name for p in outcome.skipped] == (["anomaly-free.csv"] if free.is_file() else [])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["files"] == 1 and report["per_file"][0]["device_id"] == "skab-valve1-1"
    assert (tmp_path / "report" / "report.png").stat().st_size > 1000
