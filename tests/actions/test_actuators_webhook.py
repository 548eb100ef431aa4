"""WebhookActuator against a real HTTP service (a Starlette app under uvicorn on a free port)
that implements the contract: success with read-back, idempotent repeats, 4xx refusals, 5xx
and timeouts as unknown outcomes, and a refused connection as unavailable."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from opstwin.actions.actuators import (
    ActuatorRejected,
    ActuatorUnavailable,
    OutcomeUnknown,
    SetpointRef,
    WebhookActuator,
)
from tests.plant.helpers import cell_twin

SPEC = cell_twin().assets[0].setpoints["temp_sp"]


def ref(setpoint: str = "temp_sp", asset: str = "heater") -> SetpointRef:
    return SetpointRef("default", "cell", asset, setpoint, SPEC)


@dataclass
class Device:
    """The service behind the webhook: setpoint values, applied keys, and misbehaviours."""

    values: dict[tuple[str, str, str], float] = field(default_factory=dict)
    keys: dict[str, float] = field(default_factory=dict)
    requests: list[dict[str, object]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer s3cret":
            return JSONResponse({"detail": "missing or wrong token"}, status_code=401)
        if request.method == "GET":
            q = request.query_params
            asked = (q["twin_id"], q["asset_id"], q["setpoint"])
            return JSONResponse({"value": self.values.get(asked)})
        body = await request.json()
        self.requests.append({"body": body, "key": request.headers.get("idempotency-key")})
        where = (body["twin_id"], body["asset_id"], body["setpoint"])
        if body["asset_id"] == "slow":
            await self.release.wait()  # answers only when the test ends
        if body["asset_id"] == "broken":
            return PlainTextResponse("controller fault", status_code=500)
        if body["asset_id"] == "mute":
            return JSONResponse({"ok": True})
        key = request.headers["idempotency-key"]
        if key in self.keys:
            return JSONResponse({"value": self.values[where]})
        if not 40.0 <= body["value"] <= 80.0:
            return JSONResponse(
                {
                    "type": "about:blank",
                    "title": "Unprocessable",
                    "detail": f"{body['value']} is out of range",
                },
                status_code=422,
                media_type="application/problem+json",
            )
        self.values[where] = float(body["value"])
        self.keys[key] = float(body["value"])
        return JSONResponse({"value": self.values[where]}, status_code=201)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def device() -> AsyncIterator[tuple[Device, str]]:
    state = Device()
    app = Starlette(routes=[Route("/setpoints", state.endpoint, methods=["GET", "POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    yield state, f"http://127.0.0.1:{port}/setpoints"
    state.release.set()
    server.should_exit = True
    async with asyncio.timeout(10):
        await task
    sock.close()


@pytest.fixture
async def webhook(device: tuple[Device, str]) -> AsyncIterator[WebhookActuator]:
    _, url = device
    async with WebhookActuator(
        "plc_gateway", url, timeout_s=0.5, headers={"Authorization": "Bearer s3cret"}
    ) as actuator:
        yield actuator


async def test_write_posts_the_contract_and_returns_the_read_back(
    device: tuple[Device, str], webhook: WebhookActuator
) -> None:
    state, _ = device
    assert webhook.name == "plc_gateway"
    assert await webhook.read(ref()) is None
    assert await webhook.write(ref(), 63.0, idempotency_key="act_1:w") == 63.0
    assert state.requests == [
        {
            "body": {
                "twin_id": "cell",
                "asset_id": "heater",
                "setpoint": "temp_sp",
                "value": 63.0,
                "idempotency_key": "act_1:w",
            },
            "key": "act_1:w",
        }
    ]
    assert await webhook.read(ref()) == 63.0
    # the same key again: the service applies it once and reads back the current value
    assert await webhook.write(ref(), 70.0, idempotency_key="act_1:w") == 63.0
    assert state.values[("cell", "heater", "temp_sp")] == 63.0


async def test_a_4xx_is_a_rejection_with_the_services_detail(webhook: WebhookActuator) -> None:
    with pytest.raises(
        ActuatorRejected,
        match=r"refused cell/heater/temp_sp = 95 \(HTTP 422\): 95.0 is out of range",
    ):
        await webhook.write(ref(), 95.0, idempotency_key="k")


async def test_wrong_credentials_are_a_rejection(device: tuple[Device, str]) -> None:
    _, url = device
    async with WebhookActuator("hook", url, timeout_s=0.5) as anonymous:
        with pytest.raises(ActuatorRejected, match=r"HTTP 401\): missing or wrong token"):
            await anonymous.write(ref(), 60.0, idempotency_key="k")
        with pytest.raises(ActuatorUnavailable, match="HTTP 401"):
            await anonymous.read(ref())


async def test_no_answer_in_time_is_an_unknown_outcome(webhook: WebhookActuator) -> None:
    started = time.monotonic()
    with pytest.raises(
        OutcomeUnknown, match="ReadTimeout after sending the write of cell/slow/temp_sp"
    ):
        await webhook.write(ref(asset="slow"), 60.0, idempotency_key="k")
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("asset", "message"),
    [
        ("broken", r"answered HTTP 500 to the write of cell/broken/temp_sp: controller fault"),
        ("mute", r'no numeric read-back \(the body has no "value"\)'),
    ],
)
async def test_server_errors_and_missing_read_backs_are_unknown_outcomes(
    webhook: WebhookActuator, asset: str, message: str
) -> None:
    with pytest.raises(OutcomeUnknown, match=message):
        await webhook.write(ref(asset=asset), 60.0, idempotency_key="k")


async def test_a_refused_connection_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/setpoints"  # bound then closed: nobody listens
    async with WebhookActuator("hook", url, timeout_s=0.5) as nobody:
        with pytest.raises(ActuatorUnavailable, match=r"unreachable \(ConnectError.*not written"):
            await nobody.write(ref(), 60.0, idempotency_key="k")
        with pytest.raises(ActuatorUnavailable, match="cannot read cell/heater/temp_sp"):
            await nobody.read(ref())
