"""A small HTTP/1.1 webhook receiver on loopback: the push target of the demo and the tests.

It records every POST (with its arrival time), answers 200 unless told to fail a path a
number of times or always, and lets a caller wait for the pushes it expects. Keep-alive is
supported (the sender reuses connections); bodies must carry Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_REASONS = {200: "OK", 400: "Bad Request", 410: "Gone", 411: "Length Required", 500: "Error"}


@dataclass(frozen=True)
class ReceivedPush:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int  # what the receiver answered
    received_at: float  # time.perf_counter() on arrival

    @property
    def push_id(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    delay_s: float = 0.0  # answer this late, like a slow endpoint
    requests: list[ReceivedPush] = field(default_factory=list)
    _fail: dict[str, list[int]] = field(default_factory=dict)
    _always: dict[str, int] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _connections: dict[asyncio.Task[None], asyncio.StreamWriter] = field(default_factory=dict)
    port: int = 0

    async def start(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}/{path.lstrip('/')}"

    def fail_next(self, path: str, times: int, status: int = 503) -> None:
        self._fail.setdefault("/" + path.lstrip("/"), []).extend([status] * times)

    def always_fail(self, path: str, status: int = 500) -> None:
        self._always["/" + path.lstrip("/")] = status

    def delivered(self, path: str | None = None) -> list[ReceivedPush]:
        """Pushes answered with 2xx (to ``path`` if given)."""
        wanted = None if path is None else "/" + path.lstrip("/")
        return [
            r
            for r in self.requests
            if 200 <= r.status < 300 and (wanted is None or r.path == wanted)
        ]

    async def wait_for(
        self, condition: Callable[[list[ReceivedPush]], bool], timeout_s: float = 10.0
    ) -> list[ReceivedPush]:
        """Wait until ``condition(requests)`` holds; returns the requests so far."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: condition(self.requests)), timeout_s
            )
        return list(self.requests)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # End kept-alive connections by closing them (each handler then sees EOF and
            # returns); cancelling handlers instead makes asyncio log their cancellation.
            for writer in self._connections.values():
                writer.close()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=1.0)
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                if "content-length" not in headers:
                    await self._answer(writer, 411, close=True)
                    return
                raw = await reader.readexactly(int(headers["content-length"]))
                arrived = time.perf_counter()
                status = self._status_for(path)
                try:
                    body = json.loads(raw) if raw else {}
                except json.JSONDecodeError:
                    body, status = {}, 400
                async with self._changed:
                    self.requests.append(ReceivedPush(path, headers, body, status, arrived))
                    self._changed.notify_all()
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                close = headers.get("connection", "").lower() == "close"
                await self._answer(writer, status, close)
                if close:
                    return
        finally:
            if task is not None:
                self._connections.pop(task, None)
            writer.close()

    def _status_for(self, path: str) -> int:
        if path in self._always:
            return self._always[path]
        queued = self._fail.get(path)
        if queued:
            return queued.pop(0)
        return 200

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, close: bool) -> None:
        reason = _REASONS.get(status, "Status")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
