"""WebhookActuator: setpoint writes as HTTP calls to a service that fronts the asset.

The contract the service implements:

* **write** — ``POST <url>`` with header ``Idempotency-Key: <key>`` and JSON body
  ``{"twin_id", "asset_id", "setpoint", "value", "idempotency_key"}``; it answers 200 or 201
  with ``{"value": <number>}``, the value read back after the write. The same key twice must
  have the effect of one write.
* **read** — ``GET <url>?twin_id=…&asset_id=…&setpoint=…``; it answers 200 with
  ``{"value": <number or null>}``.

How failures map onto the actuator errors (the distinction decides whether the executor may
assume nothing happened):

=====================================================  =========================================
connection refused, DNS failure, connect timeout,      :class:`ActuatorUnavailable` (the request
no free connection in the pool                         never left: nothing was written)
4xx                                                    :class:`ActuatorRejected`, with the body's
                                                       ``detail`` (problem+json) or its text
timeout or broken connection after sending, 5xx,       :class:`OutcomeUnknown` (reconcile by
a 2xx without a numeric ``value``                      reading back)
=====================================================  =========================================

Reads raise :class:`ActuatorUnavailable` for every failure (there is nothing to reconcile).
One :class:`httpx.AsyncClient` per actuator, closed by :meth:`WebhookActuator.stop`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from opstwin.actions.actuators.base import (
    ActuatorRejected,
    ActuatorUnavailable,
    OutcomeUnknown,
    SetpointRef,
)

MAX_DETAIL_CHARS = 500
"""Longest part of a refusal's body quoted in the error (it goes into the audit trail)."""

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
"""Transport failures that happen before any byte of the request was sent."""


class WebhookActuator:
    """Writes and reads setpoints through an HTTP endpoint (see the module docstring)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport`` replaces the network (tests, or a custom TLS setup)."""
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._name = name
        self._url = url
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            headers=dict(headers or {}),
            transport=transport,
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        """Nothing to open: connections are made on first use and pooled."""

    async def stop(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def write(self, ref: SetpointRef, value: float, *, idempotency_key: str) -> float:
        """POST the absolute ``value``; return the value the service reads back."""
        body = {
            "twin_id": ref.twin_id,
            "asset_id": ref.asset_id,
            "setpoint": ref.setpoint,
            "value": value,
            "idempotency_key": idempotency_key,
        }
        try:
            response = await self._client.post(
                self._url, json=body, headers={"Idempotency-Key": idempotency_key}
            )
        except _NOT_SENT as exc:
            raise ActuatorUnavailable(
                f"webhook {self._name!r} unreachable ({_describe(exc)}); {ref.path} not written"
            ) from exc
        except httpx.TransportError as exc:
            raise OutcomeUnknown(
                f"webhook {self._name!r}: {_describe(exc)} after sending the write of "
                f"{ref.path}; reconcile by reading back"
            ) from exc
        if 400 <= response.status_code < 500:
            raise ActuatorRejected(
                f"webhook {self._name!r} refused {ref.path} = {value:g} "
                f"(HTTP {response.status_code}): {_detail(response)}"
            )
        if response.status_code not in (200, 201):
            raise OutcomeUnknown(
                f"webhook {self._name!r} answered HTTP {response.status_code} to the write of "
                f"{ref.path}: {_detail(response)}; reconcile by reading back"
            )
        read_back = _value(response)
        if not isinstance(read_back, float):
            raise OutcomeUnknown(
                f"webhook {self._name!r} accepted the write of {ref.path} but sent no numeric "
                f"read-back ({read_back}); reconcile by reading back"
            )
        return read_back

    async def read(self, ref: SetpointRef) -> float | None:
        """GET the setpoint's current value (None: the service reports none)."""
        params = {"twin_id": ref.twin_id, "asset_id": ref.asset_id, "setpoint": ref.setpoint}
        try:
            response = await self._client.get(self._url, params=params)
        except httpx.TransportError as exc:
            raise ActuatorUnavailable(
                f"webhook {self._name!r}: cannot read {ref.path} ({_describe(exc)})"
            ) from exc
        if response.status_code != 200:
            raise ActuatorUnavailable(
                f"webhook {self._name!r} answered HTTP {response.status_code} to reading "
                f"{ref.path}: {_detail(response)}"
            )
        value = _value(response, allow_null=True)
        if isinstance(value, str):
            raise ActuatorUnavailable(
                f"webhook {self._name!r}: unreadable value for {ref.path} ({value})"
            )
        return value


def _value(response: httpx.Response, *, allow_null: bool = False) -> float | str | None:
    """The body's ``value`` as a float (None for null when allowed), else why not (a str)."""
    try:
        body: Any = response.json()
    except ValueError:
        return "the body is not JSON"
    if not isinstance(body, dict) or "value" not in body:
        return 'the body has no "value"'
    value = body["value"]
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f'"value" is {value!r}, not a finite number'
    return float(value)


def _detail(response: httpx.Response) -> str:
    """A refusal's reason: problem+json ``detail`` (or ``title``), else the body's text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("detail", "title", "error", "message"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])[:MAX_DETAIL_CHARS]
    text = response.text.strip()
    return text[:MAX_DETAIL_CHARS] if text else "(no body)"


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
