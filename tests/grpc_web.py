"""A minimal gRPC-web client (the wire format a browser's grpc-web / connect-web sends)."""

from __future__ import annotations

import struct
import urllib.request
from dataclasses import dataclass

from google.protobuf.message import Message


@dataclass
class GrpcWebReply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def grpc_status(self) -> int:
        # Trailers-only errors carry the status in the HTTP headers instead.
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


def call(
    base_url: str,
    method: str,
    request: Message,
    origin: str = "http://localhost:3000",
    timeout_s: float = 10,
    token: str | None = None,
) -> GrpcWebReply:
    payload = request.SerializeToString()
    frame = b"\x00" + struct.pack(">I", len(payload)) + payload
    http_request = urllib.request.Request(
        f"{base_url}/{method}",
        data=frame,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "x-user-agent": "grpc-web-python-test",
            "origin": origin,
            **({"authorization": f"Bearer {token}"} if token else {}),
        },
    )
    with urllib.request.urlopen(http_request, timeout=timeout_s) as response:
        body = response.read()
        headers = {k.lower(): v for k, v in response.headers.items()}
        status = response.status
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flags, length = body[offset], struct.unpack(">I", body[offset + 1 : offset + 5])[0]
        chunk = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:  # trailer frame: HTTP/1-style header lines
            for line in chunk.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(chunk)
    return GrpcWebReply(status, headers, messages, trailers)
