"""A small OpsTwin agent: it reads the manifest, follows the change feed, and proposes fixes.

    python examples/agent.py --url http://127.0.0.1:8000 --key otk_… [--once]

Everything it calls is found in ``/.well-known/aiw-manifest.json``: the subscribe path and its
resume header, and the endpoints for recommendations and proposals (matched by method and path
template). On each ``opstwin.anomaly.detected`` that asks for a simulation it ranks the twin's
playbook candidates (``POST /sim/recommend`` with the anomaly) and, when one beats doing
nothing, proposes it with the evidence (``POST /proposals`` with ``sim_id`` and ``anomaly_id``,
an ``Idempotency-Key`` so a retry never proposes twice), then reports how its proposal was
decided. The stream resumes after a disconnect from the last event id it saw.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx


def endpoint(manifest: dict, method: str, path: str) -> str:
    """The path of an endpoint the manifest lists (fails loudly when the server lacks it)."""
    for e in manifest["endpoints"]:
        if e["method"] == method and e["path"] == path:
            return str(e["path"])
    raise SystemExit(f"the server does not offer {method} {path}")


def events(client: httpx.Client, manifest: dict, types: str, since: str):
    """Change events from the live stream, for ever, resuming with the last id seen."""
    feed = manifest["change_feed"]["subscribe"]
    last_id = None
    while True:
        headers = {"Accept": "text/event-stream"}
        params = {"types": types}
        if last_id is not None:
            headers[feed["resume_header"]] = last_id
        else:
            params["since"] = since
        try:
            with client.stream(
                "GET", feed["path"], params=params, headers=headers, timeout=None
            ) as stream:
                stream.raise_for_status()
                print(f"following {feed['path']} after {last_id or since}")
                kind, data = "message", []
                for line in stream.iter_lines():
                    if line.startswith("id:"):
                        last_id = line[3:].strip()
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "":
                        if kind == "message" and data:
                            yield json.loads("\n".join(data))
                        kind, data = "message", []
        except httpx.TransportError as exc:
            print(f"stream interrupted ({exc}); resuming after {last_id}")
            time.sleep(1.0)


def recommend(client: httpx.Client, manifest: dict, anomaly: dict) -> dict | None:
    """The simulation's recommendation for an anomaly; looks again a few times while the
    evidence builds up (the first samples of an excursion barely show it)."""
    for _ in range(10):
        ranked = client.post(
            endpoint(manifest, "POST", "/sim/recommend"),
            json={
                "twin_id": anomaly["twin_id"],
                "asset_id": anomaly["asset_id"],
                "setpoint": anomaly["setpoint"],
                "anomaly": {"kind": anomaly["kind"], "metric": anomaly["metric"]},
            },
        )
        if ranked.status_code != 201:
            print(f"no recommendation for {anomaly['anomaly_id']}: {ranked.json()['detail']}")
            return None
        record = ranked.json()
        rec = record["recommendation"]
        if rec["recommended"] is not None and not rec["do_nothing"] and rec["p_improvement"] > 0.9:
            return record
        time.sleep(1.0)
    print(f"{anomaly['anomaly_id']}: nothing beats doing nothing ({rec['reason']})")
    return None


def handle(client: httpx.Client, manifest: dict, anomaly: dict) -> dict | None:
    """Rank the playbook's candidates for an anomaly and propose the best, if any."""
    record = recommend(client, manifest, anomaly)
    if record is None:
        return None
    rec = record["recommendation"]
    proposal = client.post(
        endpoint(manifest, "POST", "/proposals"),
        headers={"Idempotency-Key": f"agent-{anomaly['anomaly_id']}"},
        json={
            "twin_id": anomaly["twin_id"],
            "asset_id": anomaly["asset_id"],
            "setpoint": anomaly["setpoint"],
            "value": rec["recommended"],
            "rationale": f"agent: {anomaly['kind']} of {anomaly['metric']}, simulation agrees",
            "anomaly_id": anomaly["anomaly_id"],
            "sim_id": record["sim_id"],
        },
    ).json()
    print(
        f"proposed {proposal['proposal_id']}: {anomaly['setpoint']} → {rec['recommended']:g}, "
        f"confidence {proposal['confidence']['total']:.3f}, decision "
        f"{proposal['decision']['outcome']}, state {proposal['state']}"
    )
    return proposal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key of role agent or above")
    parser.add_argument("--once", action="store_true", help="stop after the first proposal")
    parser.add_argument(
        "--since", default="now", help="cursor to start after (default: new changes only)"
    )
    args = parser.parse_args()
    auth = {"Authorization": f"Bearer {args.key}"}
    with httpx.Client(base_url=args.url, headers=auth, timeout=60.0) as client:
        manifest = client.get("/.well-known/aiw-manifest.json").raise_for_status().json()
        print(f"connected to {manifest['service']['name']} {manifest['service']['version']}")
        for event in events(client, manifest, "opstwin.anomaly.detected", args.since):
            anomaly = event["data"]
            print(
                f"anomaly {anomaly['anomaly_id']}: {anomaly['kind']} of "
                f"{anomaly['asset_id']}/{anomaly['metric']} ({anomaly['severity']}), "
                f"next: {anomaly['recommended_next']}"
            )
            if anomaly["recommended_next"] != "sim_run":
                continue
            asset_path = endpoint(manifest, "GET", "/twins/{twin_id}/assets/{asset_id}")
            twin = client.get(asset_path.format(**anomaly)).json()
            setpoints = (twin.get("model") or {}).get("setpoints") or {}
            linked = [
                sp for sp, spec in setpoints.items() if spec.get("metric") == anomaly["metric"]
            ]
            if not linked:
                print(f"{anomaly['anomaly_id']}: no setpoint drives {anomaly['metric']}; skipped")
                continue
            if handle(client, manifest, {**anomaly, "setpoint": linked[0]}) and args.once:
                return


if __name__ == "__main__":
    main()
