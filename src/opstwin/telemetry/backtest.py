"""Recorded series replayed through the AnomalyDetector, offline (``opstwin anomalies detect``).

What it is for: trying the detector — and thresholds for a twin's metric — on history before
it runs live, and measuring it against labelled data. Input is a CSV file with a header row:

* a **time** column (``--time-column``; by default the first of ``timestamp``, ``ts``,
  ``time`` present, else the first column): RFC 3339 / ISO 8601 (a time without an offset is
  UTC) or a number of seconds since the epoch — a bare row number works too, as one second
  per row from 1970;
* **value** columns: every other column whose cells are all numbers or empty (an empty cell,
  ``nan`` or ``null`` is a missing reading: no sample), or those named with ``--column``;
* an optional **label** column (``is_anomaly``, ``label``, ``anomaly``; 1 = anomalous): the
  run then says which labelled anomalies it found and which of its anomalies were false alarms.
  The labels are the file's, one per row: every value column is scored against them.

Rows are taken in time order (a stable sort), each value column is one series, and the
detector sees exactly what it would have seen live: the same per-sample model, warm-up,
hysteresis and records (``anomaly.v1``) as the streaming detector.

Scoring against labels is event-wise, the way an operator experiences alarms: a labelled
**window** is a run of consecutive labelled rows; it counts as found when an anomaly of the
series is open at any of its rows (or opens within ``tolerance`` rows after its end — a drift is
only visible once it has lasted), and an anomaly is a **false alarm** when it opened in no
window (nor within the tolerance after one).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from opstwin.kit.clock import to_micros
from opstwin.kit.ids import IdSource
from opstwin.telemetry.anomaly import AnomalyDetector, DetectorConfig, SeriesConfig, SeriesKey

TIME_COLUMNS = ("timestamp", "ts", "time")
LABEL_COLUMNS = ("is_anomaly", "label", "anomaly")
_MISSING = frozenset({"", "nan", "NaN", "null", "NULL", "None"})
#: Rows after a labelled window in which an anomaly still counts as finding it.
DEFAULT_TOLERANCE_ROWS = 10


class BacktestInputError(ValueError):
    """The file cannot be read as described in the module docstring (the message says where)."""


@dataclass(slots=True)
class Series:
    """One value column: its readings in time order (missing ones dropped)."""

    name: str
    ts_us: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    #: Row numbers (0-based, after sorting) of the readings, to match labels.
    rows: npt.NDArray[np.int64]


@dataclass(slots=True)
class Recording:
    """A parsed file: its series, and the label of every row when the file has labels."""

    time_column: str
    series: list[Series]
    labels: npt.NDArray[np.bool_] | None
    row_ts_us: npt.NDArray[np.int64]


@dataclass(slots=True)
class SeriesScore:
    """How one series' anomalies compare with the labels."""

    windows: int = 0
    windows_found: int = 0
    anomalies: int = 0
    false_alarms: int = 0

    @property
    def recall(self) -> float | None:
        return self.windows_found / self.windows if self.windows else None

    @property
    def precision(self) -> float | None:
        return (self.anomalies - self.false_alarms) / self.anomalies if self.anomalies else None


@dataclass(slots=True)
class SeriesResult:
    name: str
    points: int
    records: list[dict[str, Any]]
    score: SeriesScore | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    #: The cycle the detector found (or was given) and followed, in seconds.
    period_s: float | None = None


def read_csv(
    path: Path, *, time_column: str | None = None, columns: Sequence[str] = ()
) -> Recording:
    """Parse ``path`` (see the module docstring); raises :class:`BacktestInputError`."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header:
                raise BacktestInputError(f"{path}: empty file (a header row is needed)")
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise BacktestInputError(f"{path}: {exc}") from exc
    header = [name.strip() for name in header]
    index = {name: i for i, name in enumerate(header)}
    time_name = time_column or next((c for c in TIME_COLUMNS if c in index), header[0])
    if time_name not in index:
        raise BacktestInputError(f"{path}: no column {time_name!r} (columns: {', '.join(header)})")
    label_name = next((c for c in LABEL_COLUMNS if c in index and c != time_name), None)
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise BacktestInputError(
                f"{path}:{number}: {len(row)} cells, the header has {len(header)}"
            )
    if not rows:
        raise BacktestInputError(f"{path}: no data rows")

    stamps = [_timestamp(row[index[time_name]], path, n) for n, row in enumerate(rows, start=2)]
    order = sorted(range(len(rows)), key=stamps.__getitem__)  # stable: ties keep file order
    rows = [rows[i] for i in order]
    row_ts = np.array([stamps[i] for i in order], dtype=np.int64)

    if columns:
        missing = [c for c in columns if c not in index]
        if missing:
            raise BacktestInputError(
                f"{path}: no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})"
            )
        chosen = list(columns)
    else:
        candidates = [c for c in header if c not in (time_name, label_name)]
        chosen = [c for c in candidates if _numeric(row[index[c]] for row in rows)]
        if not chosen:
            raise BacktestInputError(
                f"{path}: no numeric value column besides {time_name!r} (columns: {', '.join(header)})"
            )

    series = []
    for name in chosen:
        column = index[name]
        values = np.empty(len(rows), dtype=np.float64)
        for i, row in enumerate(rows):
            values[i] = _number(row[column], path, name)
        keep = np.isfinite(values)
        positions = np.flatnonzero(keep).astype(np.int64)
        series.append(Series(name, row_ts[keep], values[keep], positions))

    labels = None
    if label_name is not None:
        column = index[label_name]
        labels = np.array([_label(row[column], path, label_name) for row in rows], dtype=np.bool_)
    return Recording(time_name, series, labels, row_ts)


def run(
    recording: Recording,
    config: SeriesConfig,
    ids: IdSource,
    *,
    twin_id: str = "backtest",
    asset_id: str = "recording",
    tolerance_rows: int = DEFAULT_TOLERANCE_ROWS,
) -> list[SeriesResult]:
    """Feed every series of ``recording`` to a fresh detector with ``config``; the records and,
    when the recording has labels, their score."""
    detector = AnomalyDetector(ids, DetectorConfig(default=config))
    results = []
    for s in recording.series:
        key = SeriesKey(twin_id, asset_id, s.name)
        records = detector.process_series(key, s.ts_us, s.values)
        snapshot = detector.baseline(key)
        period = snapshot.period_s if snapshot is not None else None
        result = SeriesResult(s.name, len(s.values), records, period_s=period)
        for record in records:
            if record["status"] == "open":
                result.kinds[record["kind"]] = result.kinds.get(record["kind"], 0) + 1
        if recording.labels is not None:
            result.score = score(records, recording, tolerance_rows)
        results.append(result)
    return results


def score(
    records: Iterable[dict[str, Any]], recording: Recording, tolerance_rows: int
) -> SeriesScore:
    """Event-wise comparison of one series' records with the recording's labels."""
    assert recording.labels is not None
    labels, row_ts = recording.labels, recording.row_ts_us
    windows = _runs(labels)
    # Each anomaly as the rows it was open: from the row of its opening reading to the row of
    # its resolving one (to the end of the file if it never resolved).
    spans: list[tuple[int, int]] = []
    opened: dict[str, int] = {}
    for record in records:
        row = int(np.searchsorted(row_ts, _micros(record["ts"]), side="left"))
        if record["status"] == "open":
            opened[record["anomaly_id"]] = row
        elif (start := opened.pop(record.get("resolves", ""), None)) is not None:
            spans.append((start, row))
    spans.extend((start, len(labels) - 1) for start in opened.values())
    result = SeriesScore(windows=len(windows), anomalies=len(spans))
    for first, last in windows:
        if any(s <= last + tolerance_rows and e >= first for s, e in spans):
            result.windows_found += 1
    for start, _ in spans:
        if not any(first <= start <= last + tolerance_rows for first, last in windows):
            result.false_alarms += 1
    return result


def _runs(flags: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(first, last) row of each run of True."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _timestamp(text: str, path: Path, line: int) -> int:
    cell = text.strip()
    try:
        seconds = float(cell)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise BacktestInputError(f"{path}:{line}: time {cell!r} is not a finite number")
        return round(seconds * 1_000_000)
    try:
        moment = datetime.fromisoformat(cell)
    except ValueError:
        raise BacktestInputError(
            f"{path}:{line}: time {cell!r} is neither ISO 8601 nor seconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return to_micros(moment)


def _numeric(cells: Iterable[str]) -> bool:
    """Every cell a number or missing, and at least one a number."""
    seen = False
    for cell in cells:
        text = cell.strip()
        if text in _MISSING:
            continue
        try:
            float(text)
        except ValueError:
            return False
        seen = True
    return seen


def _number(cell: str, path: Path, column: str) -> float:
    text = cell.strip()
    if text in _MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise BacktestInputError(
            f"{path}: column {column!r} holds {text!r}, not a number"
        ) from None


def _label(cell: str, path: Path, column: str) -> bool:
    text = cell.strip().lower()
    if text in {"1", "1.0", "true", "yes"}:
        return True
    if text in {"0", "0.0", "false", "no", ""}:
        return False
    raise BacktestInputError(f"{path}: label column {column!r} holds {cell!r} (use 0 or 1)")


def _micros(ts: str) -> int:
    return to_micros(datetime.fromisoformat(ts))
