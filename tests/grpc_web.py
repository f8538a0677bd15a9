"""A minimal gRPC-web client (the wire format a browser's grpc-web / connect-web sends)."""

from __future__ import annotations

import ssl
import struct
import urllib.request
from dataclasses import dataclass

from google.protobuf.message import Message

from voxmesh.core.mesh_tls import client_ca_file
from voxmesh.core.settings import Settings


def gateway_url(settings: Settings) -> str:
    """Envoy's listener: https unless the client ports are plaintext (local only)."""
    scheme = "http" if settings.tls.client_plaintext else "https"
    return f"{scheme}://{settings.host}:{settings.envoy.port}"


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """What a browser would need to trust the gateway: the stack's CA (None: plaintext)."""
    if settings.tls.client_plaintext:
        return None
    return ssl.create_default_context(cafile=str(client_ca_file(settings)))


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
    context: ssl.SSLContext | None = None,
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
    with urllib.request.urlopen(http_request, timeout=timeout_s, context=context) as response:
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
