"""CLI commands for people that talk to a running server over its API.

``opstwin status``, ``opstwin proposals list|show|approve|reject`` and ``opstwin sim run FILE``.
They take ``--url`` (``OPSTWIN_URL``) and ``--key`` (``OPSTWIN_KEY``); without a key they use the
demo's key for the role the command needs (``<data dir>/demo-keys.json``, written by
``opstwin demo``), so on the demo machine ``opstwin proposals approve ID`` just works.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeElapsedColumn
from rich.table import Table

from opstwin.config import Settings

DEMO_KEYS_FILE = "demo-keys.json"

proposals_app = typer.Typer(help="Proposals: list, inspect, approve, reject.", no_args_is_help=True)
sim_app = typer.Typer(help="Simulations.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

UrlOption = Annotated[str, typer.Option(envvar="OPSTWIN_URL", help="Base URL of the server.")]
KeyOption = Annotated[
    str | None,
    typer.Option(
        envvar="OPSTWIN_KEY",
        help="API key; default: the demo's key for the role the command needs.",
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"


def _key(key: str | None, role: str) -> str:
    if key:
        return key
    path = Settings().data_dir / DEMO_KEYS_FILE
    if path.exists():
        tokens: dict[str, str] = json.loads(path.read_text())
        if role in tokens:
            return tokens[role]
    err.print(
        f"[red]error:[/red] give --key (or OPSTWIN_KEY): a key of role {role} or above "
        f"(no demo keys at {path})"
    )
    raise typer.Exit(2)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60.0)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or response.text
        except ValueError:
            detail = response.text
        err.print(f"[red]error {response.status_code}:[/red] {detail}")
        raise typer.Exit(1)
    return response.json()


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    try:
        return _check(client.get(path, params={k: v for k, v in params.items() if v is not None}))
    except httpx.TransportError as exc:
        err.print(f"[red]error:[/red] cannot reach {client.base_url}: {exc}")
        raise typer.Exit(2) from exc


def _short(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _proposal_row(p: dict[str, Any]) -> list[str]:
    confidence = (p.get("confidence") or {}).get("total")
    return [
        p["proposal_id"],
        p["state"],
        p["asset_id"],
        p["setpoint"],
        _short(p["value"]),
        _short(confidence),
        ((p.get("decision") or {}).get("outcome")) or "—",
        p["created_at"][11:19],
    ]


def _proposals_table(items: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("proposal", no_wrap=True)  # the id people type: never cut
    for column in (
        "state",
        "asset",
        "setpoint",
        "value",
        "confidence",
        "decision",
        "created",
    ):
        table.add_column(column)
    for p in items:
        table.add_row(*_proposal_row(p))
    return table


def status(url: UrlOption = DEFAULT_URL, key: KeyOption = None) -> None:
    """Twins and assets, open anomalies, proposals waiting for people, recent actions."""
    with _client(url, _key(key, "viewer")) as client:
        twins = _get(client, "/twins")["twins"]
        table = Table(title="Twins", title_justify="left")
        for column in ("twin", "name", "version", "assets"):
            table.add_column(column)
        for t in twins:
            table.add_row(t["twin_id"], t.get("name") or "", str(t["version"]), str(t["assets"]))
        out.print(table)

        anomalies = _get(client, "/anomalies", status="open", limit=20)["items"]
        table = Table(title=f"Open anomalies ({len(anomalies)})", title_justify="left")
        table.add_column("anomaly", no_wrap=True)
        for column in ("asset", "metric", "kind", "severity", "score", "since"):
            table.add_column(column)
        for a in anomalies:
            r = a["record"]
            table.add_row(
                a["anomaly_id"],
                r["asset_id"],
                r["metric"],
                r["kind"],
                r["severity"],
                _short(r["score"]),
                r["ts"][11:19],
            )
        out.print(table)

        waiting = _get(client, "/proposals", state="awaiting_approval,needs_analysis")
        out.print(_proposals_table(waiting["proposals"], "Waiting for people"))
        recent = _get(client, "/proposals", limit=5)
        out.print(_proposals_table(recent["proposals"], "Latest proposals"))


@proposals_app.command("list")
def proposals_list(
    state: Annotated[
        str | None, typer.Option(help="Comma-separated states, e.g. awaiting_approval.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many (newest first).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Proposals, newest first."""
    with _client(url, _key(key, "viewer")) as client:
        page = _get(client, "/proposals", state=state, limit=limit)
    if as_json:
        out.print_json(data=page)
        return
    out.print(_proposals_table(page["proposals"], "Proposals"))


@proposals_app.command("show")
def proposals_show(
    proposal_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole proposal.v1.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """One proposal: evidence, confidence, guards, decision, transitions."""
    with _client(url, _key(key, "viewer")) as client:
        p = _get(client, f"/proposals/{proposal_id}")
    if as_json:
        out.print_json(data=p)
        return
    _show(p)


def _show(p: dict[str, Any]) -> None:
    out.print(
        f"[bold]{p['proposal_id']}[/bold]  {p['state']}  "
        f"{p['twin_id']}/{p['asset_id']} {p['setpoint']} → {p['value']:g}"
    )
    out.print(f"rationale     {p['rationale']}", highlight=False)
    out.print(f"content hash  {p['content_hash']}", highlight=False)
    confidence = p.get("confidence") or {}
    if confidence:
        table = Table(title=f"Confidence {confidence['total']:.3f}", title_justify="left")
        for column in ("component", "value", "weight", "missing"):
            table.add_column(column)
        for name, c in confidence["components"].items():
            table.add_row(name, f"{c['value']:.3f}", f"{c['weight']:.2f}", str(c["missing"]))
        out.print(table)
    decision = p.get("decision") or {}
    if decision:
        table = Table(
            title=f"Decision {decision['outcome']} (band {decision['band_outcome']})",
            title_justify="left",
        )
        table.add_column("guard")
        table.add_column("verdict")
        table.add_column("detail")
        for g in decision["guards"]:
            table.add_row(g["guard"], g["verdict"], g["detail"])
        out.print(table)
    table = Table(title="Transitions", title_justify="left")
    for column in ("#", "event", "to", "by", "at", "reason"):
        table.add_column(column)
    for t in p["transitions"]:
        actor = t["actor"]
        table.add_row(
            str(t["seq"]),
            t["event"],
            t["to"],
            f"{actor['principal_id']} ({actor['role']})",
            t["at"][:23],
            t.get("reason") or "",
        )
    out.print(table)


@proposals_app.command("approve")
def proposals_approve(
    proposal_id: str,
    execute: Annotated[
        bool, typer.Option(help="Let the platform execute it (else an executor must).")
    ] = True,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Approve what you see: the approval is bound to the proposal's current content hash."""
    with _client(url, _key(key, "supervisor")) as client:
        p = _get(client, f"/proposals/{proposal_id}")
        response = client.post(
            f"/proposals/{proposal_id}/approve",
            json={"content_hash": p["content_hash"], "execute": execute},
        )
        result = _check(response)
    out.print(
        f"approved {proposal_id}: {result['twin_id']}/{result['asset_id']} "
        f"{result['setpoint']} → {result['value']:g} ({result['state']})"
    )


@proposals_app.command("reject")
def proposals_reject(
    proposal_id: str,
    reason: Annotated[str, typer.Option(help="Why (required).")],
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Reject a proposal waiting for approval (or veto an approved one)."""
    with _client(url, _key(key, "supervisor")) as client:
        result = _check(client.post(f"/proposals/{proposal_id}/reject", json={"reason": reason}))
    out.print(f"rejected {proposal_id} ({result['state']})")


@sim_app.command("run")
def sim_run(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A /sim/run body.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the sim.v1 record.")] = False,
    url: UrlOption = DEFAULT_URL,
    key: KeyOption = None,
) -> None:
    """Run a simulation (a POST /sim/run body in JSON or YAML); follows a background run with a
    progress bar and prints its outputs."""
    body = (
        yaml.safe_load(file.read_text())
        if file.suffix in (".yaml", ".yml")
        else json.loads(file.read_text())
    )
    with _client(url, _key(key, "agent")) as client:
        record = _check(client.post("/sim/run", json=body))
        if record["status"] in ("queued", "running"):
            columns = ("{task.description}", BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err, transient=True) as bar:
                task = bar.add_task(record["sim_id"], total=1.0)
                while record["status"] in ("queued", "running"):
                    time.sleep(0.25)  # the server's progress is polled; no streaming endpoint
                    record = _get(client, f"/sim/runs/{record['sim_id']}")
                    bar.update(task, completed=float(record.get("progress") or 0.0))
    if as_json:
        out.print_json(data=record)
        return
    if record["status"] != "succeeded":
        err.print(f"[red]{record['sim_id']} {record['status']}:[/red] {record.get('error')}")
        raise typer.Exit(1)
    table = Table(
        title=f"{record['sim_id']}: {record['samples_used']} samples, "
        f"{record['engine_used']}, converged {record['converged']}",
        title_justify="left",
    )
    for column in ("output", "mean", "std", "p5", "p50", "p95"):
        table.add_column(column)
    for name, s in (record.get("outputs") or {}).items():
        table.add_row(name, *(_short(s.get(k)) for k in ("mean", "std", "p5", "p50", "p95")))
    out.print(table)
