"""Structured logs: one JSON object per line on stderr, with the request id bound per RPC.

JSON lines use Cloud Logging's field names, so GKE's agent files them right: ``severity``
(DEBUG … CRITICAL), ``message``, ``time`` (RFC 3339), and, when tracing is on,
``logging.googleapis.com/trace`` and ``…/spanId`` for the span the line was logged in.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import structlog

from voxmesh.core.settings import LogSettings

_SEVERITY = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}


def add_severity(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    """Cloud Logging's ``severity`` from the logging method's name."""
    event["severity"] = _SEVERITY.get(method, "DEFAULT")
    return event


def configure_logging(
    settings: LogSettings, service: str, trace_processor: Any | None = None
) -> None:
    """``trace_processor`` (see telemetry.cloud_trace_fields) adds the span's trace fields."""
    level = getattr(logging, settings.level.upper())
    processors: list[Any] = [structlog.contextvars.merge_contextvars]
    if trace_processor is not None:
        processors.append(trace_processor)
    if settings.json:
        processors += [
            add_severity,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(),
        ]
    structlog.configure(
        processors=processors,
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


class LogRateLimit:
    """Lets at most ``burst`` lines per key through per ``interval_s``.

    For lines a client can cause (refusals): a flood of bad requests costs a few lines per
    second, not one per request. The first line of the next window says how many of the
    key's lines were left out.
    """

    def __init__(
        self,
        burst: int = 10,
        interval_s: float = 1.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._burst = burst
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._windows: dict[Hashable, list[float]] = {}  # key -> [start, lines, left out]

    def admit(self, key: Hashable) -> int | None:
        """None: leave this line out; else how many lines of ``key`` were left out before it."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self._interval_s:
            if window is None and len(self._windows) >= self._max_keys:
                self._windows.clear()
            left_out = int(window[2]) if window is not None else 0
            self._windows[key] = [now, 1, 0]
            return left_out
        if window[1] < self._burst:
            window[1] += 1
            return 0
        window[2] += 1
        return None
