"""A network namespace for a test: a host that reaches the stack only where the test lets it.

``BlockedHost`` is a namespace with nothing but its own loopback. A program run in it
(``command``) sees no interface of this machine; the test forwards chosen TCP ports into it
(``forward_tcp``), so e.g. a browser there reaches the gateway over https while UDP to the
routers cannot get through (WebRTC blocked, as on a network that drops UDP).

Linux only, as root (iproute2's ``ip netns``); ``available()`` says whether it can run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000


def available() -> str:
    """Empty if namespaces can be made here, else why not."""
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


class BlockedHost:
    def __init__(self, name: str) -> None:
        self.name = name
        self._servers: list[asyncio.Server] = []
        self._pipes: set[asyncio.Task[None]] = set()

    def __enter__(self) -> BlockedHost:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        try:
            self._ip("link", "set", "lo", "up")
        except BaseException:
            self._delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.close()
        for task in self._pipes:
            task.cancel()
        self._delete()

    def _ip(self, *args: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", self.name, "ip", *args], check=True, capture_output=True
        )

    def _delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def wrapper(self, directory: Path, program: str) -> Path:
        """An executable that runs ``program`` (with its arguments) inside the namespace, for
        launchers that take a path (Playwright's ``executable_path``)."""
        path = directory / f"{Path(program).name}-in-{self.name}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {program} "$@"\n')
        path.chmod(0o755)
        return path

    def _listen_inside(self) -> socket.socket:
        """A TCP socket listening on the namespace's 127.0.0.1 (made by a thread that joins
        the namespace for the moment: a socket keeps the namespace it was made in)."""
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            try:
                with open(f"/var/run/netns/{self.name}") as target:
                    if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into the test namespace")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                sock.setblocking(False)
                made.append(sock)
            except BaseException as exc:  # handed to the caller
                made.append(exc)

        # The thread ends in the namespace; threads are not reused, so nothing else runs there.
        thread = threading.Thread(target=make, name=f"netns-{self.name}")
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    async def forward_tcp(self, host: str, port: int) -> int:
        """Connections to the namespace's 127.0.0.1:<returned port> go to ``host:port`` here."""

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            for task in (
                asyncio.create_task(pipe(reader, up_writer)),
                asyncio.create_task(pipe(up_reader, writer)),
            ):
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)

        sock = self._listen_inside()
        server = await asyncio.start_server(serve, sock=sock)
        self._servers.append(server)
        return int(sock.getsockname()[1])
