"""Structured logging (structlog over the standard library), configured by the CLI, not on import."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from opstwin.config import Settings


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr when a logger is made, not once at configuration time.
    return structlog.PrintLogger(sys.stderr)


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        # Not cached: reconfiguring (a test runner swapping stderr) must take effect everywhere.
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    # Alembic narrates every migration step at INFO; our own "database.migrated" line says it.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
