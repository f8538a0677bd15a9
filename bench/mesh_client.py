"""What a benchmark client needs to talk to voxmesh: ids, tokens, channels, stamped frames.

Patterns follow tests/voxmesh_client.py; the bench package does not import from tests/.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import grpc

from bench.bench_parameters import FRAME_BYTES, FRAME_MS
from voxmesh.common.v1 import body_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.ids import new_uuid7
from voxmesh.core.settings import AuthSettings
from voxmesh.router.v1 import router_service_pb2 as router_pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc

# A separate TCP connection per channel (gRPC otherwise shares one per target and process).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


def _channel(address: str, ca_pem: bytes | None) -> grpc.aio.Channel:
    """To a router's client port: TLS trusting the stack's CA, or plaintext (None)."""
    if ca_pem is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


_STAMP = struct.Struct("<qI")  # send time (CLOCK_MONOTONIC ns, shared by every process), index
# Recorder slices only: when the call carrying the slice was sent, right after _STAMP.
_SENT = struct.Struct("<q")


def uuid7() -> str:
    """A UUIDv7, as clients choose message ids."""
    return new_uuid7()


def stamped_payload(index: int, size: int = FRAME_BYTES, stamp_ns: int | None = None) -> bytes:
    """A frame's payload: its stamp (now unless given) and index, padded to ``size`` bytes."""
    stamp = time.monotonic_ns() if stamp_ns is None else stamp_ns
    head = _STAMP.pack(stamp, index)
    return head + bytes((index + i) & 0xFF for i in range(size - len(head)))


def read_stamp(payload: bytes) -> tuple[int, int]:
    """(send time ns, index) of a stamped payload."""
    stamp, index = _STAMP.unpack_from(payload)
    return int(stamp), int(index)


def stamp_sent(payload: bytearray, sent_ns: int) -> None:
    """Writes the time a recorder slice's call was sent into its payload (after the stamp)."""
    _SENT.pack_into(payload, _STAMP.size, sent_ns)


def read_sent(payload: bytes) -> int:
    """The time the call carrying a recorder slice was sent (see ``stamp_sent``)."""
    return int(_SENT.unpack_from(payload, _STAMP.size)[0])


def chunk(
    index: int, payload: bytes, frame_ms: int = FRAME_MS, frame_bytes: int = FRAME_BYTES
) -> body_pb2.Chunk:
    """Chunk ``index`` of a body of ``frame_bytes`` payloads, one every ``frame_ms``."""
    return body_pb2.Chunk(
        index=index,
        offset=index * frame_bytes,
        media_time_ms=index * frame_ms,
        payload=payload,
    )


class TokenCache:
    """One signed token per user (signing per call would load the client, not the mesh)."""

    def __init__(self, auth: AuthSettings) -> None:
        self._auth = auth
        self._tokens: dict[str, tuple[tuple[str, str], ...]] = {}

    def metadata(self, user_id: str) -> tuple[tuple[str, str], ...]:
        found = self._tokens.get(user_id)
        if found is None:
            token = issue_token(self._auth, user_id)
            found = (("authorization", f"Bearer {token}"),)
            self._tokens[user_id] = found
        return found


class RouterChannels:
    """A fixed pool of connections to each router; each user is served by its home router.

    With one router every user's home is that router. With several (the router ring), a
    user's home is the first router of its preference list, asked once with Discover on any
    router: updates streams must be opened there (the rendezvous), and talking there keeps
    the sender's path the one the design describes.
    """

    def __init__(self, addresses: list[str], per_router: int, ca_pem: bytes | None) -> None:
        self.addresses = list(addresses)
        self._channels = {
            address: [_channel(address, ca_pem) for _ in range(max(1, per_router))]
            for address in self.addresses
        }
        self._stubs = {
            address: [pb_grpc.RouterServiceStub(c) for c in channels]
            for address, channels in self._channels.items()
        }
        self._homes: dict[str, str] = {}

    def stub(self, index: int, address: str | None = None) -> Any:
        stubs = self._stubs[address or self.addresses[0]]
        return stubs[index % len(stubs)]

    async def home(self, user_id: str, metadata: tuple[tuple[str, str], ...]) -> str:
        """The user's home router address (asked once; a single router is everyone's home)."""
        if len(self.addresses) == 1:
            return self.addresses[0]
        found = self._homes.get(user_id)
        if found is None:
            reply = await self.stub(0).Discover(
                router_pb.DiscoverRequest(user_id=user_id), metadata=metadata, timeout=30
            )
            found = str(reply.routers[0].address) if reply.routers else self.addresses[0]
            if found not in self._stubs:  # a router this pool does not know: use its first
                found = self.addresses[0]
            self._homes[user_id] = found
        return found

    async def home_stub(
        self, user_id: str, metadata: tuple[tuple[str, str], ...], slot: int
    ) -> Any:
        return self.stub(slot, await self.home(user_id, metadata))

    async def close(self) -> None:
        for channels in self._channels.values():
            for channel in channels:
                await channel.close(None)
