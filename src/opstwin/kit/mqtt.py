"""MQTT plumbing shared by the telemetry source, the MQTT actuator and the plant's bridge.

A broker address (``mqtt://[user:password@]host[:port]``), a client for it, and
:func:`keep_connected`: one connection kept up for as long as its owner runs — on losing the
broker (or failing to reach it) the pause before the next attempt doubles from a minimum up to a
maximum, and starts over once a connection is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog

log = structlog.get_logger(__name__)

DEFAULT_PORT = 1883


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:password@]host[:port]``."""
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"not an mqtt://host[:port] URL: {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORT,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @classmethod
    def of(
        cls,
        url: str | None,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
    ) -> BrokerAddress:
        """The broker of ``url`` when given, else of the separate parts."""
        if url is not None:
            return cls.parse(url)
        return cls(host=host, port=port, username=username, password=password)

    def client(
        self,
        identifier: str,
        *,
        clean_session: bool,
        socket_options: Sequence[tuple[int, int, int]] = (),
    ) -> aiomqtt.Client:
        """A client (MQTT 3.1.1) for this broker; it connects when entered."""
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=clean_session,
            socket_options=tuple(socket_options),
        )


async def keep_connected(
    connect: Callable[[], aiomqtt.Client],
    session: Callable[[aiomqtt.Client], Awaitable[None]],
    *,
    backoff: tuple[float, float],
    disconnected: str,
    on_lost: Callable[[], None] | None = None,
    **log_fields: Any,
) -> NoReturn:
    """Run ``session`` on each new connection, for ever (until cancelled).

    ``connect`` makes a fresh client; once it has connected, ``session`` runs with it until the
    connection ends (it raises ``aiomqtt.MqttError``, or returns). Each loss, and each failed
    attempt, is logged as ``disconnected`` (with the error, the pause and ``log_fields``); the
    pause doubles from ``backoff[0]`` up to ``backoff[1]`` and starts over after a connection.
    ``on_lost`` runs whenever a connection (or an attempt) ends, cancellation included.
    """
    first, most = backoff
    pause = first
    while True:
        try:
            async with connect() as client:
                pause = first
                await session(client)
        except aiomqtt.MqttError as exc:
            log.warning(disconnected, error=str(exc), retry_in_s=pause, **log_fields)
        finally:
            if on_lost is not None:
                on_lost()
        await asyncio.sleep(pause)
        pause = min(pause * 2, most)
