"""Background tasks: a done callback that reports a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def log_crash(event: str) -> Callable[[asyncio.Task[Any]], None]:
    """A done callback for a task meant to run until cancelled: ending by anything but
    cancellation is a bug, logged loudly as ``event`` with the exception."""

    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error(event, task=task.get_name(), exc_info=exc)

    return done
