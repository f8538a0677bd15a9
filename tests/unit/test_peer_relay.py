"""Router-to-router Relay, in process over a real grpc.aio server on 127.0.0.1: event bytes
spliced into device frames undecoded, acks and the flow-control window acted on, users that
moved re-resolved and resent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from tests.mesh_pki import tls_overrides
from voxmesh.common.v1 import body_pb2, update_pb2
from voxmesh.core.hash_ring import HashRing
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.mesh_tls import ReloadingTls, mesh_files
from voxmesh.core.settings import Settings, load_settings
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.peer_links import PeerLinks
from voxmesh.router.presence_tracker import PresenceTracker
from voxmesh.router.router_peer import RELAY_WINDOW_FRAMES, RouterPeer
from voxmesh.router.updates_stream import UpdatesStreamer, splice_frame
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc as peer_grpc
from voxmesh.router.v1 import router_service_pb2 as pb


class _Ring:
    """Rings fixed by the test: ``homes`` maps each user to its home router's node id."""

    def __init__(self, homes: dict[str, str]) -> None:
        self.homes = homes

    def ring(self, kind: str) -> Any:
        homes = self.homes

        class Fixed(HashRing):
            def home(self, key: str) -> str | None:
                return homes.get(key)

        return Fixed(set(homes.values()))

    def member(self, kind: str, node_id: str) -> None:
        return None


def _chunk_event(index: int) -> update_pb2.UpdateEvent:
    return update_pb2.UpdateEvent(
        live_chunks=update_pb2.LiveChunks(
            thread_id="t",
            message_id="m",
            chunks=[body_pb2.Chunk(index=index, offset=index * 3, payload=b"abc")],
        )
    )


def test_a_spliced_frame_is_the_frame_protobuf_would_encode() -> None:
    events = [_chunk_event(i) for i in range(3)]
    spliced = splice_frame([e.SerializeToString() for e in events], "cursor-1")
    expected = pb.UpdatesResponse(events=events, cursor="cursor-1")
    assert pb.UpdatesResponse.FromString(spliced) == expected
    assert spliced == expected.SerializeToString()
    big = update_pb2.UpdateEvent(
        live_chunks=update_pb2.LiveChunks(chunks=[body_pb2.Chunk(payload=b"x" * 70_000)])
    )  # a multi-byte length prefix
    assert pb.UpdatesResponse.FromString(splice_frame([big.SerializeToString()], "")).events == [
        big
    ]


def _settings() -> Settings:
    return load_settings(overrides=tls_overrides())


async def _server(servicer: peer_grpc.RouterPeerServiceServicer) -> tuple[grpc.aio.Server, str]:
    """A router's internal port: mutual TLS with the test certificates, as MeshClients needs."""
    server = grpc.aio.server()
    peer_grpc.add_RouterPeerServiceServicer_to_server(servicer, server)
    settings = _settings()
    tls = ReloadingTls(mesh_files(settings, "router"), settings.tls.reload_check_s)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(require_client_auth=True))
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _until(predicate: Any, what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def test_relay_splices_bytes_and_resends_users_that_moved() -> None:
    settings = _settings()
    ring = _Ring({"bob": "target", "carol": "elsewhere"})
    hub = DeviceHub(queue_max=100)
    mesh_of_peer = MeshClients(settings, ring, "router")  # type: ignore[arg-type]
    presence = PresenceTracker(settings.presence, mesh_of_peer, lambda users, event: None)
    updates = UpdatesStreamer(settings.updates, hub, mesh_of_peer)
    peer = RouterPeer(hub, ring, updates, presence)  # type: ignore[arg-type]
    peer.bind("target", "")
    server, address = await _server(peer)
    mesh = MeshClients(settings, ring, "router")  # type: ignore[arg-type]
    links = PeerLinks(mesh)
    rerouted: list[tuple[list[str], bytes, str]] = []
    links.reroute = lambda users, entry, source: rerouted.append((users, entry.event, source))
    try:
        phone = hub.connect("bob", "phone")
        watch = hub.connect("bob", "watch")
        raw = _chunk_event(0).SerializeToString()
        links.send(
            address,
            peer_pb.RelayEntry(user_ids=["bob", "carol"], event=raw, exclude_device_id="watch"),
        )
        await _until(lambda: phone.pending and rerouted, "delivery and the moved report")
        assert list(phone.pending) == [raw]  # the very bytes that came, to each device
        assert not watch.pending  # the excluded device
        assert rerouted == [(["carol"], raw, address)]  # carol is homed elsewhere: resent
    finally:
        await links.close()
        await mesh.close()
        await server.stop(None)


class _SilentTarget(peer_grpc.RouterPeerServiceServicer):
    """Takes frames and acks only when the test says so."""

    def __init__(self) -> None:
        self.frames: list[peer_pb.RelayRequest] = []
        self.acks: asyncio.Queue[peer_pb.RelayResponse] = asyncio.Queue()

    async def Relay(
        self, request_iterator: AsyncIterator[peer_pb.RelayRequest], context: Any
    ) -> AsyncIterator[peer_pb.RelayResponse]:
        async def take() -> None:
            async for frame in request_iterator:
                self.frames.append(frame)

        reader = asyncio.create_task(take())
        try:
            while True:
                yield await self.acks.get()
        finally:
            reader.cancel()

    async def DeliverEvent(
        self, request: peer_pb.DeliverEventRequest, context: Any
    ) -> peer_pb.DeliverEventResponse:
        return peer_pb.DeliverEventResponse()

    def ProxyUpdates(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    async def ProxySetPresence(self, request: Any, context: Any) -> Any:
        raise NotImplementedError


async def test_the_source_keeps_to_the_window_and_coalesces_while_it_is_full() -> None:
    settings = _settings()
    target = _SilentTarget()
    server, address = await _server(target)
    mesh = MeshClients(settings, _Ring({}), "router")  # type: ignore[arg-type]
    links = PeerLinks(mesh)
    try:
        for index in range(200):  # one entry per loop turn: one frame each while there is room
            links.send(address, peer_pb.RelayEntry(user_ids=["bob"], event=b"%d" % index))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.2)
        first_window = len(target.frames)
        assert 1 <= first_window <= 16, first_window  # no ack yet: the initial window
        target.acks.put_nowait(
            peer_pb.RelayResponse(acked_frame_seq=first_window, window_frames=RELAY_WINDOW_FRAMES)
        )
        await _until(
            lambda: sum(len(f.entries) for f in target.frames) == 200, "every entry to arrive"
        )
        # Entries that waited for the window went out coalesced, in order, none lost.
        assert len(target.frames) == first_window + 1
        events = [e.event for f in target.frames for e in f.entries]
        assert events == [b"%d" % i for i in range(200)]
        assert [f.frame_seq for f in target.frames] == list(range(1, first_window + 2))
    finally:
        await links.close()
        await mesh.close()
        await server.stop(None)
