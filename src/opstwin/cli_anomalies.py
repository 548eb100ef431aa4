"""``opstwin anomalies detect``: replay a recorded CSV through the AnomalyDetector, offline."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress
from rich.table import Table

from opstwin.kit import jsonutil
from opstwin.kit.errors import OpsTwinError
from opstwin.kit.ids import SequentialIds
from opstwin.telemetry.anomaly import SeriesConfig
from opstwin.telemetry.backtest import (
    DEFAULT_TOLERANCE_ROWS,
    BacktestInputError,
    Recording,
    SeriesResult,
    read_csv,
    run,
)

anomalies_app = typer.Typer(
    help="The streaming anomaly detector, offline: try it on recorded series.",
    no_args_is_help=True,
)

out = Console()
err = Console(stderr=True)

#: Anomalies listed in the table (all of them with --json).
TABLE_ROWS = 50


@anomalies_app.command("detect")
def detect(
    file: Annotated[Path, typer.Argument(help="CSV with a header row: a time column, values.")],
    time_column: Annotated[
        str | None,
        typer.Option(help="Time column (default: timestamp, ts or time, else the first)."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(help="A value column to replay (repeatable; default: every numeric one)."),
    ] = None,
    twin_file: Annotated[
        Path | None,
        typer.Option(help="Twin model whose settings for --metric to use (limits, thresholds)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="With --twin-file: TWIN/ASSET/METRIC whose detector settings apply."),
    ] = None,
    z_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="|z| that opens a spike.")
    ] = None,
    warmup_samples: Annotated[
        int | None, typer.Option(min=1, help="Samples before anything statistical fires.")
    ] = None,
    halflife_samples: Annotated[
        float | None, typer.Option(min=1.0, help="Half-life of the baseline, in samples.")
    ] = None,
    drift: Annotated[str | None, typer.Option(help="Drift statistic: cusum or ewma.")] = None,
    season_period: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="The series' cycle in seconds (e.g. 86400), instead of searching."
        ),
    ] = None,
    no_season: Annotated[
        bool, typer.Option("--no-season", help="No cycle: neither searched for nor given.")
    ] = False,
    tolerance_rows: Annotated[
        int,
        typer.Option(
            min=0, help="With a label column: rows after a labelled window that still find it."
        ),
    ] = DEFAULT_TOLERANCE_ROWS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document: every record and score.")
    ] = False,
) -> None:
    """Replay FILE's series through the detector (the live model: warm-up, hysteresis, kinds)
    and list the anomaly.v1 records; with a label column (is_anomaly, label, anomaly), also how
    many labelled anomalies were found and how many alarms were false."""
    if drift not in (None, "cusum", "ewma"):
        _fail(f"--drift is cusum or ewma, not {drift!r}")
    if no_season and season_period is not None:
        _fail("--no-season and --season-period exclude each other")
    try:
        config = _config(twin_file, metric)
    except (OpsTwinError, ValueError, OSError) as exc:
        _fail(exc.detail if isinstance(exc, OpsTwinError) else str(exc))
    overrides: dict[str, Any] = {
        "z_threshold": z_threshold,
        "warmup_samples": warmup_samples,
        "baseline_halflife_samples": halflife_samples,
        "drift_method": drift,
        "season_period_s": season_period,
        "season_detect": False if no_season else None,
    }
    try:
        config = dataclasses.replace(
            config, **{k: v for k, v in overrides.items() if v is not None}
        )
        recording = read_csv(file, time_column=time_column, columns=column or ())
    except (BacktestInputError, ValueError) as exc:
        _fail(str(exc))
    results = _replay(recording, config, file.stem, tolerance_rows, quiet=as_json)
    if as_json:
        out.print_json(
            jsonutil.dumps_str(
                {
                    "file": str(file),
                    "time_column": recording.time_column,
                    "labelled": recording.labels is not None,
                    "series": [_as_dict(r) for r in results],
                }
            )
        )
        return
    _print(results, recording)


def _config(twin_file: Path | None, metric: str | None) -> SeriesConfig:
    if twin_file is None:
        if metric is not None:
            raise ValueError("--metric needs --twin-file")
        return SeriesConfig()
    if metric is None or metric.count("/") != 2:
        raise ValueError("--twin-file needs --metric TWIN/ASSET/METRIC")
    from opstwin.telemetry.anomaly import DetectorConfig, SeriesKey
    from opstwin.twins import load_twin_file

    twin_id, asset_id, metric_id = metric.split("/")
    document = load_twin_file(twin_file)
    twin = next((t for t in document.twins if t.id == twin_id), None)
    asset = twin.asset(asset_id) if twin else None
    if asset is None or metric_id not in asset.metrics:
        raise ValueError(f"{twin_file} declares no metric {metric}")
    return DetectorConfig.from_twins(document).for_series(SeriesKey(twin_id, asset_id, metric_id))


def _replay(
    recording: Recording, config: SeriesConfig, asset: str, tolerance_rows: int, *, quiet: bool
) -> list[SeriesResult]:
    results: list[SeriesResult] = []
    ids = SequentialIds()  # anomaly ids unique across the file's series
    columns = (BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=quiet) as bar:
        task = bar.add_task("series", total=len(recording.series))
        for series in recording.series:
            one = Recording(recording.time_column, [series], recording.labels, recording.row_ts_us)
            results += run(one, config, ids, asset_id=asset, tolerance_rows=tolerance_rows)
            bar.advance(task)
    return results


def _as_dict(result: SeriesResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": result.name,
        "points": result.points,
        "anomalies_by_kind": result.kinds,
        "period_s": result.period_s,
        "records": result.records,
    }
    if result.score is not None:
        s = result.score
        body["score"] = {
            "labelled_windows": s.windows,
            "windows_found": s.windows_found,
            "anomalies": s.anomalies,
            "false_alarms": s.false_alarms,
            "recall": s.recall,
            "precision": s.precision,
        }
    return body


def _print(results: list[SeriesResult], recording: Recording) -> None:
    summary = Table("series", "points", "cycle", "anomalies", "by kind", title="Replay")
    if recording.labels is not None:
        for heading in ("labelled found", "false alarms"):
            summary.add_column(heading, justify="right")
    for r in results:
        opened = sum(r.kinds.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r.kinds.items())) or "—"
        cycle = "—" if r.period_s is None else _duration(r.period_s)
        cells = [r.name, f"{r.points:,}", cycle, str(opened), kinds]
        if r.score is not None:
            cells += [
                f"{r.score.windows_found} of {r.score.windows}",
                f"{r.score.false_alarms} of {r.score.anomalies}",
            ]
        summary.add_row(*cells)
    out.print(summary)
    rows = [
        (r.name, record, _resolution(r.records, record["anomaly_id"]))
        for r in results
        for record in r.records
        if record["status"] == "open"
    ]
    if not rows:
        return
    listing = Table("series", "opened", "kind", "severity", "score", "ended", title="Anomalies")
    for name, record, ended in rows[:TABLE_ROWS]:
        listing.add_row(
            name, record["ts"], record["kind"], record["severity"], f"{record['score']:.2f}", ended
        )
    out.print(listing)
    if len(rows) > TABLE_ROWS:
        out.print(f"… and {len(rows) - TABLE_ROWS} more (--json lists every record)")


def _duration(seconds: float) -> str:
    """A cycle for people: 7d, 12h, 30min, 45s."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _resolution(records: list[dict[str, Any]], anomaly_id: str) -> str:
    for record in records:
        if record.get("resolves") == anomaly_id:
            return f"{record['ts']} ({record.get('resolution', 'resolved')})"
    return "still open"


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)
