"""Structured logs: one JSON object per line on stderr, with the request id bound per RPC."""

from __future__ import annotations

import logging
import sys
import uuid
from typing import Any

import structlog

from voxmesh.core.settings import LogSettings


def configure_logging(settings: LogSettings, service: str) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer() if settings.json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (grpc, google-cloud) log through stdlib logging: keep them at warning.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)


def new_request_id() -> str:
    return uuid.uuid4().hex


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
