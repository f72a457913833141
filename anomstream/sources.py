"""Telemetry sources: labelled data sets (SKAB, NAB, any CSV) and the synthetic fleet as TelemetryBatch chunks.

Pure: no Kafka here. A source spec is ``skab:PATH``, ``nab:PATH``, ``csv:PATH`` (PATH a file or a folder,
searched recursively) or ``synthetic``. A row that cannot be parsed raises :class:`BadRowError` naming the
file and line, or, with ``on_bad_row="skip"``, is left out and recorded in a :class:`BadRows` tally; it is
never dropped silently. Event times keep their original values (naive times are taken as UTC).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from anomstream.errors import BadRowError, SourceError
from anomstream.synthetic import FleetSpec, iter_fleet
from anomstream.telemetry import NO_LABEL, TelemetryBatch

log = logging.getLogger(__name__)

OnBadRow = Literal["fail", "skip"]
SKAB_CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
DEFAULT_CHUNK_ROWS = 65_536
_TIME_COLUMN_GUESSES = ("timestamp", "datetime", "event_time", "time", "date")


@dataclass
class BadRows:
    """Tally of rows skipped with ``on_bad_row="skip"``: a count and the first few for the report."""

    count: int = 0
    examples: list[BadRowError] = field(default_factory=list)
    max_examples: int = 20

    def add(self, error: BadRowError) -> None:
        """Record one skipped row (and log the first few, so a skip is never silent)."""
        self.count += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(error)
            log.warning("skipped bad row %s:%d: %s", error.path, error.line, error.reason)

    def summary(self) -> str:
        """One line for the run summary, e.g. ``2 bad rows skipped (first: data.csv:7: ...)``."""
        if not self.count:
            return "0 bad rows"
        first = self.examples[0]
        return f"{self.count} bad rows skipped (first: {first.path}:{first.line}: {first.reason})"


@dataclass(frozen=True)
class CsvColumns:
    """Which columns of a generic CSV mean what; every other numeric column becomes a channel.

    Attributes:
        time: the event-time column (ISO 8601 text, naive = UTC, or epoch seconds/milliseconds);
            ``None`` picks the first of timestamp, datetime, event_time, time, date.
        device: the device-id column; ``None`` means one device per file, named ``csv-<file stem>``.
        label: the 0/1 ground-truth column (empty cell = unknown); ``None`` means unlabelled.
        delimiter: the field separator.
    """

    time: str | None = None
    device: str | None = None
    label: str | None = None
    delimiter: str = ","


def read_skab_file(
    path: str | Path, *, on_bad_row: OnBadRow = "fail", bad_rows: BadRows | None = None
) -> TelemetryBatch:
    """Read one SKAB CSV file (``;``-separated, CRLF) into a batch of one device.

    The device id comes from the folder and file name (``valve1/3.csv`` -> ``skab-valve1-3``), the eight
    sensor columns are the channels, ``datetime`` (local naive time, taken as UTC) is the event time and the
    ``anomaly`` column, when present, the label (otherwise every label is ``NO_LABEL``).

    Args:
        path: the CSV file.
        on_bad_row: ``"fail"`` raises on the first unparseable row, ``"skip"`` leaves it out.
        bad_rows: where skipped rows are tallied (a fresh tally when omitted).

    Returns:
        The file's rows in file order, ``seq`` from 0.

    Raises:
        SourceError: the file is missing or lacks a SKAB column.
        BadRowError: a row cannot be parsed and ``on_bad_row`` is ``"fail"``.
    """
    path = Path(path)
    table = read_table(path, delimiter=";")
    _require_columns(table, ("datetime", *SKAB_CHANNELS), "a SKAB file")
    label_column = "anomaly" if "anomaly" in table.header else None
    device_id = f"skab-{path.parent.name}-{path.stem}" if path.parent.name else f"skab-{path.stem}"
    return _table_to_batch(
        table, "datetime", SKAB_CHANNELS, label_column, device_id, None, on_bad_row, bad_rows or BadRows()
    )


def read_nab_file(
    path: str | Path, *, on_bad_row: OnBadRow = "fail", bad_rows: BadRows | None = None
) -> TelemetryBatch:
    """Read one NAB ``timestamp,value`` file; labels from NAB's ``labels/combined_windows.json`` when found.

    The windows file is looked for by walking up from the file (``<root>/labels/combined_windows.json``
    beside ``<root>/data/<dir>/<file>.csv``). A row inside a window (ends included) is labelled 1, others 0;
    without the windows file, or when it does not list the file, labels are ``NO_LABEL``. The device id is
    ``nab-<dir>-<file stem>`` and the single channel is ``value``.

    Args:
        path: the CSV file.
        on_bad_row: ``"fail"`` or ``"skip"``, as for :func:`read_skab_file`.
        bad_rows: where skipped rows are tallied.

    Returns:
        The file's rows in file order.
    """
    path = Path(path)
    table = read_table(path, delimiter=",")
    _require_columns(table, ("timestamp", "value"), "a NAB file")
    batch = _table_to_batch(
        table, "timestamp", ("value",), None, f"nab-{path.parent.name}-{path.stem}", None,
        on_bad_row, bad_rows or BadRows(),
    )
    windows = _nab_windows(path)
    if windows is None:
        return batch
    label = np.zeros(len(batch), dtype=np.int8)
    for start_ms, end_ms in windows:
        label[(batch.event_time_ms >= start_ms) & (batch.event_time_ms <= end_ms)] = 1
    return TelemetryBatch(batch.device_id, batch.event_time_ms, batch.seq, batch.channels, batch.values, label)


def read_csv_file(
    path: str | Path,
    columns: CsvColumns | None = None,
    *,
    on_bad_row: OnBadRow = "fail",
    bad_rows: BadRows | None = None,
) -> TelemetryBatch:
    """Read any CSV with a time column; every other numeric column (judged on the first rows) is a channel.

    Args:
        path: the CSV file.
        columns: which columns hold the time, the device id and the label.
        on_bad_row: ``"fail"`` or ``"skip"``, as for :func:`read_skab_file`.
        bad_rows: where skipped rows are tallied.

    Returns:
        The file's rows in file order, ``seq`` counted per device from 0.

    Raises:
        SourceError: a named column is missing, no time column is found, or there is no numeric column.
        BadRowError: a row cannot be parsed and ``on_bad_row`` is ``"fail"``.
    """
    path, columns = Path(path), columns or CsvColumns()
    table = read_table(path, delimiter=columns.delimiter)
    time_column = columns.time or next((c for c in _TIME_COLUMN_GUESSES if c in table.header), None)
    if time_column is None:
        raise SourceError(f"{path}: no time column among {table.header}; name it with --time-column")
    named = [c for c in (time_column, columns.device, columns.label) if c is not None]
    _require_columns(table, named, "this CSV (check --time-column/--device-column/--label-column)")
    channels = tuple(c for c in table.header if c not in named and _looks_numeric(table, c))
    if not channels:
        raise SourceError(f"{path}: no numeric column besides {named}; nothing to send as channels")
    return _table_to_batch(
        table, time_column, channels, columns.label, f"csv-{path.stem}", columns.device,
        on_bad_row, bad_rows or BadRows(),
    )


def iter_source(
    spec: str,
    *,
    on_bad_row: OnBadRow = "fail",
    bad_rows: BadRows | None = None,
    csv_columns: CsvColumns | None = None,
    fleet: FleetSpec | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[TelemetryBatch]:
    """Yield a source's readings as TelemetryBatch chunks of at most ``chunk_rows`` rows.

    Files of a folder are read one at a time in natural name order (``2.csv`` before ``10.csv``); a
    device's rows keep their file order and ``seq`` continues across files naming the same device.

    Args:
        spec: ``skab:PATH``, ``nab:PATH``, ``csv:PATH`` (a file or folder) or ``synthetic``.
        on_bad_row: ``"fail"`` raises :class:`BadRowError`; ``"skip"`` tallies the row in ``bad_rows``.
        bad_rows: the tally for skipped rows (pass one to read the count afterwards).
        csv_columns: column names for ``csv:`` sources.
        fleet: the synthetic fleet's parameters for ``synthetic`` (defaults when omitted).
        chunk_rows: the largest batch yielded.

    Raises:
        SourceError: an unknown spec kind, a missing path or a folder without CSV files.
    """
    kind, _, location = spec.partition(":")
    if kind == "synthetic":
        yield from iter_fleet(fleet or FleetSpec(), chunk_rows=chunk_rows)
        return
    tally = bad_rows if bad_rows is not None else BadRows()
    if kind == "skab":
        read = lambda p: read_skab_file(p, on_bad_row=on_bad_row, bad_rows=tally)  # noqa: E731
    elif kind == "nab":
        read = lambda p: read_nab_file(p, on_bad_row=on_bad_row, bad_rows=tally)  # noqa: E731
    elif kind == "csv":
        read = lambda p: read_csv_file(p, csv_columns, on_bad_row=on_bad_row, bad_rows=tally)  # noqa: E731
    else:
        raise SourceError(f"unknown source {spec!r}: use skab:PATH, nab:PATH, csv:PATH or synthetic")
    next_seq: dict[str, int] = {}
    for path in csv_files(location):
        batch = _continue_seq(read(path), next_seq)
        for start in range(0, len(batch), chunk_rows):
            yield batch.take(slice(start, start + chunk_rows))


def csv_files(location: str) -> list[Path]:
    """The CSV files of a path: the file itself, or a folder's ``*.csv`` (recursive) in natural order."""
    if not location:
        raise SourceError("empty source path: give the file or folder after the colon, e.g. skab:data/valve1")
    root = Path(location)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise SourceError(f"source path {root} does not exist")
    files = sorted(root.rglob("*.csv"), key=_natural_key)
    if not files:
        raise SourceError(f"no .csv files under {root}")
    return files


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _require_columns(table: CsvTable, names: tuple[str, ...] | list[str], what: str) -> None:
    missing = [c for c in names if c not in table.header]
    if missing:
        raise SourceError(f"{table.path}: columns {missing} missing for {what}; header is {table.header}")


def _looks_numeric(table: CsvTable, column: str, sample: int = 100) -> bool:
    index = table.header.index(column)
    for row in table.rows[:sample]:
        if index < len(row) and row[index].strip():
            try:
                float(row[index])
            except ValueError:
                return False
            return True
    return False


def _table_to_batch(
    table: CsvTable,
    time_column: str,
    channels: tuple[str, ...],
    label_column: str | None,
    device_id: str,
    device_column: str | None,
    on_bad_row: OnBadRow,
    bad_rows: BadRows,
) -> TelemetryBatch:
    """Parse the columns, collect per-row problems, then raise on or drop the bad rows."""
    problems: dict[int, str] = table.width_problems()
    event_time_ms = parse_times(table, time_column, problems)
    values = parse_values(table, channels, problems)
    label = (
        parse_labels(table, label_column, problems)
        if label_column
        else np.full(len(table.rows), NO_LABEL, dtype=np.int8)
    )
    if device_column:
        devices = np.array([_cell(row, table.header.index(device_column)) for row in table.rows], dtype=object)
        for i in np.flatnonzero(devices == ""):
            problems.setdefault(int(i), f"column {device_column!r}: empty device id")
    else:
        devices = np.full(len(table.rows), device_id, dtype=object)
    keep = np.ones(len(table.rows), dtype=bool)
    for row in sorted(problems):
        error = BadRowError(str(table.path), table.lines[row], problems[row])
        if on_bad_row == "fail":
            raise error
        bad_rows.add(error)
        keep[row] = False
    devices = devices[keep]
    return TelemetryBatch(
        device_id=devices,
        event_time_ms=event_time_ms[keep],
        seq=_seq_per_device(devices),
        channels=channels,
        values=values[keep],
        label=label[keep],
    )


def _cell(row: list[str], index: int) -> str:
    return row[index].strip() if index < len(row) else ""


def _seq_per_device(devices: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... per device, in row order (vectorised group-wise cumulative count)."""
    if len(devices) == 0:
        return np.zeros(0, dtype=np.int64)
    _, codes = np.unique(devices, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    run_lengths = np.diff(np.r_[starts, len(codes)])
    rank = np.arange(len(codes)) - np.repeat(starts, run_lengths)
    seq = np.empty(len(codes), dtype=np.int64)
    seq[order] = rank
    return seq


def _continue_seq(batch: TelemetryBatch, next_seq: dict[str, int]) -> TelemetryBatch:
    """Shift ``seq`` so a device named again by a later file keeps counting up."""
    seq = batch.seq.copy()
    for device in np.unique(batch.device_id):
        mask = batch.device_id == device
        seq[mask] += next_seq.get(device, 0)
        next_seq[device] = int(seq[mask].max()) + 1
    return TelemetryBatch(batch.device_id, batch.event_time_ms, seq, batch.channels, batch.values, batch.label)


def _nab_windows(path: Path) -> list[tuple[int, int]] | None:
    """The file's anomaly windows in epoch ms from the nearest ``labels/combined_windows.json``, if any."""
    for root in path.resolve().parents:
        windows_file = root / "labels" / "combined_windows.json"
        if not windows_file.is_file():
            continue
        try:
            key = path.resolve().relative_to(root / "data").as_posix()
        except ValueError:
            return None
        windows = json.loads(windows_file.read_text()).get(key)
        if windows is None:
            log.info("%s does not list %s; its rows stay unlabelled", windows_file, key)
            return None
        bounds = np.array([w for pair in windows for w in pair], dtype="datetime64[ms]").astype(np.int64)
        return [(int(bounds[i]), int(bounds[i + 1])) for i in range(0, len(bounds), 2)]
    return None



@dataclass(frozen=True)
class CsvTable:
    """A CSV file's cells as text, with the line number where each data row starts (for error messages)."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def column(self, name: str) -> list[str]:
        """One column's cells, stripped; ``""`` where a short row lacks it."""
        index = self.header.index(name)
        return [_cell(row, index) for row in self.rows]

    def width_problems(self) -> dict[int, str]:
        """Rows whose field count differs from the header's, by row index."""
        width = len(self.header)
        return {
            i: f"expected {width} fields like the header, found {len(row)}"
            for i, row in enumerate(self.rows)
            if len(row) != width
        }


def read_table(path: Path, delimiter: str) -> CsvTable:
    """Read a CSV file's header and rows as text (any line ending; blank lines are not rows).

    Raises:
        SourceError: the file cannot be opened or decoded, or has no header line.
        BadRowError: the CSV syntax breaks in a way the reader cannot step over.
    """
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise SourceError(f"{path} is empty: expected a header line")
            start = reader.line_num + 1
            try:
                for row in reader:
                    if row:
                        rows.append(row)
                        lines.append(start)
                    start = reader.line_num + 1
            except csv.Error as error:
                raise BadRowError(str(path), start, f"CSV syntax: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read {path}: {error}") from error
    return CsvTable(path, header, rows, lines)


def parse_times(table: CsvTable, column: str, problems: dict[int, str]) -> np.ndarray:
    """Event times in epoch ms from ISO 8601 text (naive = UTC) or epoch seconds/ms (>= 1e11 means ms)."""
    cells = table.column(column)
    try:
        epoch = np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    else:
        finite = np.isfinite(epoch)
        scale = 1 if finite.any() and np.abs(epoch[finite]).max() >= 1e11 else 1000
        for i in np.flatnonzero(~finite):
            problems.setdefault(int(i), f"column {column!r}: {cells[i]!r} is not a time")
        return np.round(np.where(finite, epoch, 0) * scale).astype(np.int64)
    with warnings.catch_warnings():
        # numpy converts "+01:00" offsets to UTC correctly but warns that datetime64 itself has no zone.
        warnings.simplefilter("ignore", UserWarning)
        try:
            times = np.array(cells, dtype="datetime64[ms]")
        except ValueError:
            times = np.array([_parse_one_time(cell) for cell in cells], dtype="datetime64[ms]")
    for i in np.flatnonzero(np.isnat(times)):
        problems.setdefault(int(i), f"column {column!r}: {cells[i]!r} is not an ISO 8601 time")
    return np.where(np.isnat(times), np.datetime64(0, "ms"), times).astype(np.int64)


def _parse_one_time(cell: str) -> np.datetime64:
    try:
        return np.datetime64(cell, "ms")
    except ValueError:
        return np.datetime64("NaT", "ms")


def parse_values(table: CsvTable, channels: tuple[str, ...], problems: dict[int, str]) -> np.ndarray:
    """The channel cells as an ``(n, C)`` float matrix; empty or ``nan`` cells are missing (NaN)."""
    indexes = [table.header.index(name) for name in channels]
    cells = [[_cell(row, i) for i in indexes] for row in table.rows]
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(cells), len(channels))
    except ValueError:  # some cell is empty or not a number: find which, row by row
        values = np.array(
            [[_parse_reading(cell, name, i, problems) for cell, name in zip(row, channels, strict=True)]
             for i, row in enumerate(cells)],
            dtype=np.float64,
        ).reshape(len(cells), len(channels))
    for i, j in zip(*np.nonzero(np.isinf(values)), strict=True):
        problems.setdefault(int(i), f"column {channels[j]!r}: non-finite reading {cells[i][j]!r}")
    return values


def _parse_reading(cell: str, name: str, row: int, problems: dict[int, str]) -> float:
    if not cell:
        return float("nan")
    try:
        return float(cell)
    except ValueError:
        problems.setdefault(row, f"column {name!r}: {cell!r} is not a number")
        return float("nan")


def parse_labels(table: CsvTable, column: str, problems: dict[int, str]) -> np.ndarray:
    """Labels as int8: ``0``/``1`` (``0.0``/``1.0`` too); an empty cell is ``NO_LABEL``."""
    cells = table.column(column)
    label = np.full(len(cells), NO_LABEL, dtype=np.int8)
    for i, cell in enumerate(cells):
        if not cell:
            continue
        try:
            number = float(cell)
        except ValueError:
            number = -1.0
        if number in (0.0, 1.0):
            label[i] = int(number)
        else:
            problems.setdefault(i, f"column {column!r}: label {cell!r} is not 0 or 1")
    return label
