"""``opstwin anomalies detect``: a recorded CSV replayed through the detector offline — parsing,
the records (the same as the streaming detector's), scoring against labels, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from opstwin.cli import app
from opstwin.kit.clock import to_micros
from opstwin.kit.ids import SequentialIds
from opstwin.telemetry.anomaly import AnomalyDetector, DetectorConfig, SeriesConfig, SeriesKey
from opstwin.telemetry.backtest import BacktestInputError, read_csv, run

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def labelled_series(n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Noise around 60 with a spike at 1500 and a stuck sensor from 2200 to 2260, labelled."""
    rng = np.random.default_rng(11)
    x = 60.0 + rng.normal(0.0, 0.5, n)
    labels = np.zeros(n, dtype=int)
    x[1500] += 8.0
    labels[1500] = 1
    x[2200:2260] = x[2200]
    labels[2200:2260] = 1
    return x, labels


def test_times_in_every_accepted_spelling_and_the_rows_in_time_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.csv",
        "timestamp,value",
        [
            "2026-01-01T00:00:02+01:00,3",  # 23:00:02 UTC the day before: first
            "2026-01-01 00:00:01,1",  # no offset: UTC
            "1767225600.5,2",  # seconds since the epoch: 2026-01-01T00:00:00.5Z
        ],
    )
    recording = read_csv(path)
    (series,) = recording.series
    assert recording.time_column == "timestamp"
    assert list(series.values) == [3.0, 2.0, 1.0]
    assert list(series.ts_us) == [
        1_767_222_002_000_000,
        1_767_225_600_500_000,
        1_767_225_601_000_000,
    ]
    assert recording.labels is None


def test_value_columns_missing_cells_and_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path / "b.csv",
        "ts,temp,site,pressure,is_anomaly",
        ["1,60.0,A,3.0,0", "2,,A,nan,1", "3,61.0,B,3.1,0"],
    )
    recording = read_csv(path)
    assert [s.name for s in recording.series] == ["temp", "pressure"]  # `site` is not numeric
    temp, pressure = recording.series
    assert list(temp.values) == [60.0, 61.0]
    assert list(temp.rows) == [0, 2]
    assert list(pressure.values) == [3.0, 3.1]
    assert recording.labels is not None
    assert list(recording.labels) == [False, True, False]
    assert [s.name for s in read_csv(path, columns=["pressure"]).series] == ["pressure"]


@pytest.mark.parametrize(
    ("header", "rows", "kwargs", "message"),
    [
        ("timestamp,value", ["yesterday,1"], {}, "b.csv:2: time 'yesterday'"),
        ("timestamp,value", ["1,2,3"], {}, "b.csv:2: 3 cells, the header has 2"),
        ("timestamp,value", ["1,2"], {"columns": ["temp"]}, "no column 'temp'"),
        ("timestamp,value", ["1,2"], {"time_column": "when"}, "no column 'when'"),
        ("timestamp,site", ["1,A"], {}, "no numeric value column"),
        ("timestamp,value,is_anomaly", ["1,2,maybe"], {}, "use 0 or 1"),
        ("timestamp,value", [], {}, "no data rows"),
    ],
)
def test_unreadable_files_say_where(
    tmp_path: Path, header: str, rows: list[str], kwargs: dict[str, object], message: str
) -> None:
    path = write(tmp_path / "b.csv", header, rows)
    with pytest.raises(BacktestInputError, match=message.replace("(", r"\(")):
        read_csv(path, **kwargs)  # type: ignore[arg-type]


def test_the_replay_gives_the_streaming_detectors_records_and_scores_them(tmp_path: Path) -> None:
    x, labels = labelled_series()
    start = 1_767_225_600
    path = write(
        tmp_path / "tool.csv",
        "timestamp,value,is_anomaly",
        [f"{start + i},{v:.6f},{lab}" for i, (v, lab) in enumerate(zip(x, labels, strict=True))],
    )
    recording = read_csv(path)
    (result,) = run(recording, SeriesConfig(), SequentialIds(), asset_id="tool")

    live = AnomalyDetector(SequentialIds(), DetectorConfig()).process_series(
        SeriesKey("backtest", "tool", "value"),
        (start + np.arange(len(x))) * 1_000_000,
        np.round(x, 6),
    )
    assert result.records == live
    # The stuck sensor drives the CUSUM first; the flatline supersedes that drift.
    assert result.kinds == {"spike": 1, "drift": 1, "flatline": 1}
    assert result.score is not None
    assert (result.score.windows, result.score.windows_found) == (2, 2)
    assert (result.score.anomalies, result.score.false_alarms) == (3, 0)
    assert (result.score.recall, result.score.precision) == (1.0, 1.0)
    opened = [r for r in result.records if r["status"] == "open"]
    assert to_micros_of(opened[0]["ts"]) == (start + 1500) * 1_000_000


def test_an_alarm_outside_every_window_is_false_and_a_missed_window_lowers_recall(
    tmp_path: Path,
) -> None:
    x, labels = labelled_series()
    labels[:] = 0
    labels[800:820] = 1  # nothing happens there
    path = write(
        tmp_path / "c.csv",
        "timestamp,value,label",
        [f"{i},{v:.6f},{lab}" for i, (v, lab) in enumerate(zip(x, labels, strict=True))],
    )
    (result,) = run(read_csv(path), SeriesConfig(), SequentialIds(), tolerance_rows=0)
    assert result.score is not None
    assert (result.score.windows, result.score.windows_found) == (1, 0)
    assert (result.score.anomalies, result.score.false_alarms) == (3, 3)
    assert (result.score.recall, result.score.precision) == (0.0, 0.0)


def test_the_cli_prints_a_summary_json_and_clear_errors(tmp_path: Path) -> None:
    x, labels = labelled_series()
    path = write(
        tmp_path / "tool.csv",
        "timestamp,value,is_anomaly",
        [f"{i},{v:.6f},{lab}" for i, (v, lab) in enumerate(zip(x, labels, strict=True))],
    )
    human = runner.invoke(app, ["anomalies", "detect", str(path)])
    assert human.exit_code == 0, human.output
    for shown in ("Replay", "2 of 2", "0 of 3", "flatline"):
        assert shown in human.stdout

    as_json = runner.invoke(app, ["anomalies", "detect", str(path), "--json"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.stdout)
    (series,) = document["series"]
    assert document["labelled"] is True
    assert (series["score"]["windows_found"], series["score"]["false_alarms"]) == (2, 0)
    assert len([r for r in series["records"] if r["status"] == "open"]) == 3

    # A spike threshold above that spike: no spike any more (the jump drives the CUSUM into a
    # short drift instead); the stuck sensor is unchanged.
    strict = runner.invoke(app, ["anomalies", "detect", str(path), "--json", "--z-threshold", "20"])
    kinds = json.loads(strict.stdout)["series"][0]["anomalies_by_kind"]
    assert kinds == {"drift": 2, "flatline": 1}

    missing = runner.invoke(app, ["anomalies", "detect", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2
    assert "nope.csv" in missing.output
    bad = runner.invoke(app, ["anomalies", "detect", str(path), "--drift", "fft"])
    assert bad.exit_code == 2
    assert "cusum or ewma" in bad.output
    alone = runner.invoke(app, ["anomalies", "detect", str(path), "--metric", "a/b/c"])
    assert alone.exit_code == 2
    assert "--metric needs --twin-file" in alone.output


def test_a_twin_metrics_limits_and_thresholds_apply(tmp_path: Path) -> None:
    """With the example twin's etch chuck temperature (hard limits 15–90 °C), a reading of
    120 is out_of_range — during warm-up too — where the default settings see nothing yet."""
    values = [60.0] * 5 + [120.0] + [60.0] * 20
    path = write(
        tmp_path / "chuck.csv", "timestamp,temp_c", [f"{i},{v}" for i, v in enumerate(values)]
    )
    twin = ["--twin-file", str(ROOT / "examples" / "fab-line.yaml")]
    declared = runner.invoke(
        app,
        [
            "anomalies",
            "detect",
            str(path),
            "--json",
            *twin,
            "--metric",
            "fab_line_3/etch_tool_7/temp_c",
        ],
    )
    assert declared.exit_code == 0, declared.output
    assert json.loads(declared.stdout)["series"][0]["anomalies_by_kind"] == {"out_of_range": 1}
    plain = runner.invoke(app, ["anomalies", "detect", str(path), "--json"])
    assert json.loads(plain.stdout)["series"][0]["anomalies_by_kind"] == {}
    unknown = runner.invoke(
        app, ["anomalies", "detect", str(path), *twin, "--metric", "fab_line_3/etch_tool_7/nope"]
    )
    assert unknown.exit_code == 2
    no_twin = runner.invoke(
        app, ["anomalies", "detect", str(path), "--twin-file", "/nope.yaml", "--metric", "a/b/c"]
    )
    assert no_twin.exit_code == 2
    assert "nope.yaml" in no_twin.output
    assert "declares no metric" in unknown.output


def to_micros_of(ts: str) -> int:
    from datetime import datetime

    return to_micros(datetime.fromisoformat(ts))


def test_anomaly_ids_are_unique_across_the_files_series(tmp_path: Path) -> None:
    x, _ = labelled_series()
    path = write(
        tmp_path / "two.csv", "timestamp,a,b", [f"{i},{v:.6f},{v:.6f}" for i, v in enumerate(x)]
    )
    result = runner.invoke(app, ["anomalies", "detect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    a, b = json.loads(result.stdout)["series"]
    ids = [r["anomaly_id"] for s in (a, b) for r in s["records"]]
    assert len(a["records"]) == len(b["records"]) > 0
    assert len(set(ids)) == len(ids)


def test_the_cycle_is_searched_given_or_switched_off(tmp_path: Path) -> None:
    """A daily curve in 5-minute rows: the replay finds the day and says so; --season-period
    gives it, --no-season replays with a plain baseline."""
    k = np.arange(2000)
    x = 50 + 5 * np.sin(2 * np.pi * k / 288) + np.random.default_rng(3).normal(size=len(k))
    path = write(
        tmp_path / "load.csv", "timestamp,load", [f"{i * 300},{v:.4f}" for i, v in enumerate(x)]
    )

    def period(*options: str) -> object:
        result = runner.invoke(app, ["anomalies", "detect", str(path), "--json", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["series"][0]["period_s"]

    assert period() == 86_400.0
    assert period("--season-period", "43200") == 43_200.0
    assert period("--no-season") is None
    human = runner.invoke(app, ["anomalies", "detect", str(path)])
    assert "1d" in human.stdout
    both = runner.invoke(
        app, ["anomalies", "detect", str(path), "--no-season", "--season-period", "60"]
    )
    assert both.exit_code == 2
    assert "exclude each other" in both.output
