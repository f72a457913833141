"""Sources: SKAB, NAB and generic CSV readers, bad-row handling, folder iteration (no Kafka needed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from anomstream.errors import BadRowError, SourceError
from anomstream.sources import (
    SKAB_CHANNELS,
    BadRows,
    CsvColumns,
    csv_files,
    iter_source,
    read_csv_file,
    read_nab_file,
    read_skab_file,
)
from anomstream.synthetic import FleetSpec
from anomstream.telemetry import NO_LABEL

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SKAB_FILE = DATA / "skab" / "data" / "valve1" / "3.csv"
NAB_FILE = DATA / "nab" / "data" / "realAWSCloudwatch" / "ec2_cpu_utilization_24ae8d.csv"
needs_data = pytest.mark.skipif(not SKAB_FILE.exists(), reason="shared data sets not present")


def skab_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as stream:
        return list(csv.reader(stream, delimiter=";"))


def epoch_ms(text: str) -> int:
    return int(np.datetime64(text, "ms").astype(np.int64))


@needs_data
def test_skab_file_matches_the_csv_row_for_row() -> None:
    rows = skab_rows(SKAB_FILE)
    header, body = rows[0], rows[1:]
    batch = read_skab_file(SKAB_FILE)

    assert len(batch) == len(body) == 1148
    assert batch.channels == SKAB_CHANNELS == tuple(header[1:9])
    assert set(batch.device_id) == {"skab-valve1-3"}
    assert batch.seq.tolist() == list(range(len(body)))
    assert batch.event_time_ms.tolist() == [epoch_ms(r[0]) for r in body]
    assert np.array_equal(batch.values, np.array([[float(v) for v in r[1:9]] for r in body]))
    assert batch.label.tolist() == [int(float(r[9])) for r in body]
    assert batch.label.sum() == 404  # the file's one collective anomaly
    assert batch.event_time_ms[0] == 1583752474000  # 2020-03-09 11:14:34 read as UTC


@needs_data
def test_skab_file_without_anomaly_column_is_unlabelled() -> None:
    batch = read_skab_file(DATA / "skab" / "data" / "anomaly-free" / "anomaly-free.csv")
    assert len(batch) == 9405
    assert set(batch.label.tolist()) == {NO_LABEL}
    assert batch.device_id[0] == "skab-anomaly-free-anomaly-free"


def write_skab_copy(tmp_path: Path, replace: dict[int, str]) -> Path:
    """A copy of the SKAB file (CRLF kept) with some lines (1-based) replaced."""
    lines = SKAB_FILE.read_bytes().decode().split("\r\n")
    for number, text in replace.items():
        lines[number - 1] = text
    target = tmp_path / "valve9" / "1.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes("\r\n".join(lines).encode())
    return target


@needs_data
def test_bad_row_names_file_and_line(tmp_path: Path) -> None:
    path = write_skab_copy(tmp_path, {7: "2020-03-09 11:14:39;0.02;oops;1;1;1;1;1;1;0.0;0.0"})
    with pytest.raises(BadRowError) as caught:
        read_skab_file(path)
    assert caught.value.path == str(path)
    assert caught.value.line == 7
    assert "'oops' is not a number" in caught.value.reason
    assert f"{path}:7:" in str(caught.value)


@needs_data
def test_bad_rows_are_counted_when_skipped(tmp_path: Path) -> None:
    path = write_skab_copy(
        tmp_path,
        {
            3: "2020-03-09 11:14:35;1;2",  # too few fields
            10: "not a time;0.02;0.04;1;1;1;1;1;1;0.0;0.0",
            12: "2020-03-09 11:14:44;0.02;0.04;1;1;1;1;1;1;7;0.0",  # label neither 0 nor 1
            20: "2020-03-09 11:14:52;0.02;0.04;inf;1;1;1;1;1;0.0;0.0",
        },
    )
    tally = BadRows()
    batch = read_skab_file(path, on_bad_row="skip", bad_rows=tally)

    assert tally.count == 4
    assert [e.line for e in tally.examples] == [3, 10, 12, 20]
    assert len(batch) == 1148 - 4
    assert batch.seq.tolist() == list(range(1144))  # seq stays dense over the kept rows
    assert "4 bad rows skipped" in tally.summary()


def test_generic_csv_with_device_and_label_columns(tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text(
        "ts,machine,temp,status,pressure,anomalous\n"
        "2024-05-01T10:00:00Z,m1,20.5,ok,1.0,0\n"
        "2024-05-01T10:00:00Z,m2,21.5,ok,,1\n"
        "2024-05-01T10:00:01+01:00,m1,20.7,ok,1.2,\n"
    )
    batch = read_csv_file(path, CsvColumns(time="ts", device="machine", label="anomalous"))

    assert batch.channels == ("temp", "pressure")  # the text column is not a channel
    assert batch.device_id.tolist() == ["m1", "m2", "m1"]
    assert batch.seq.tolist() == [0, 0, 1]
    assert batch.event_time_ms.tolist() == [
        epoch_ms("2024-05-01T10:00:00"),
        epoch_ms("2024-05-01T10:00:00"),
        epoch_ms("2024-05-01T09:00:01"),  # the offset is honoured
    ]
    assert np.isnan(batch.values[1, 1])  # an empty cell is a missing reading
    assert batch.label.tolist() == [0, 1, NO_LABEL]


def test_generic_csv_epoch_seconds_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "sensor.csv"
    path.write_text("time,value\n1700000000,1.5\n1700000001,2.5\n")
    batch = read_csv_file(path)
    assert batch.event_time_ms.tolist() == [1_700_000_000_000, 1_700_000_001_000]
    assert batch.device_id.tolist() == ["csv-sensor", "csv-sensor"]
    with pytest.raises(SourceError, match="missing"):
        read_csv_file(path, CsvColumns(label="nope"))


@needs_data
def test_nab_labels_come_from_combined_windows() -> None:
    batch = read_nab_file(NAB_FILE)
    windows = json.loads((DATA / "nab" / "labels" / "combined_windows.json").read_text())[
        "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"
    ]
    expected = np.zeros(len(batch), dtype=np.int8)
    for start, end in windows:
        expected[(batch.event_time_ms >= epoch_ms(start)) & (batch.event_time_ms <= epoch_ms(end))] = 1
    assert len(batch) == 4032
    assert batch.channels == ("value",)
    assert np.array_equal(batch.label, expected)
    assert 0 < batch.label.sum() < len(batch)


def test_nab_without_windows_file_is_unlabelled(tmp_path: Path) -> None:
    path = tmp_path / "data" / "mine" / "series.csv"
    path.parent.mkdir(parents=True)
    path.write_text("timestamp,value\n2014-04-10 00:00:00,1\n2014-04-10 00:05:00,2\n")
    assert read_nab_file(path).label.tolist() == [NO_LABEL, NO_LABEL]


@needs_data
def test_skab_folder_in_natural_order_and_chunked() -> None:
    folder = DATA / "skab" / "data" / "valve1"
    names = [p.name for p in csv_files(str(folder))]
    assert names[:3] == ["0.csv", "1.csv", "2.csv"] and names[-1] == "15.csv"

    batches = list(iter_source(f"skab:{folder}", chunk_rows=500))
    assert max(len(b) for b in batches) == 500
    devices = list(dict.fromkeys(d for b in batches for d in b.device_id))
    assert devices == [f"skab-valve1-{n}" for n in range(16)]
    total = sum(len(read_skab_file(folder / name)) for name in names)
    assert sum(len(b) for b in batches) == total


def test_synthetic_spec_and_unknown_kind() -> None:
    batches = list(iter_source("synthetic", fleet=FleetSpec(devices=3, records=1000, channels=2)))
    assert sum(len(b) for b in batches) == 1000
    with pytest.raises(SourceError, match="unknown source"):
        list(iter_source("parquet:/tmp/x"))
    with pytest.raises(SourceError, match="does not exist"):
        list(iter_source("csv:/nonexistent/folder"))
