"""The internal ports on the real local stack: mutual TLS and the caller table, for real.

Every internal service refuses plaintext, a missing client certificate, another CA's
certificate, an expired one (all at the TLS handshake: UNAVAILABLE, no handler runs), a
certificate naming no mesh identity (UNAUTHENTICATED) and a valid certificate of a kind the
service does not accept (PERMISSION_DENIED); a caller of an accepted kind gets through.
The forged ``DeliverEvent`` of issue 10 delivers nothing, on either port.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.mesh_pki import client_port_channel, mesh_channel, mesh_credentials
from tests.voxmesh_client import Device, uuid7
from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.body.v1 import body_service_pb2_grpc as body_grpc
from voxmesh.common.v1 import message_pb2, update_pb2
from voxmesh.core.local_pki import IssuedFiles, LocalCA
from voxmesh.core.mesh_tls import cert_dir
from voxmesh.core.settings import Settings
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.header.v1 import header_service_pb2_grpc as header_grpc
from voxmesh.notification.v1 import notification_service_pb2 as n_pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as n_grpc
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb
from voxmesh.router.v1 import router_peer_service_pb2_grpc as peer_grpc
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

Call = Callable[[grpc.aio.Channel], Awaitable[Any]]


@dataclass(frozen=True)
class InternalService:
    kind: str  # the server's kind
    call: Call  # one cheap unary call
    wrong_kind: str  # a mesh kind it does not accept
    allowed_kind: str


def _forged_event() -> update_pb2.UpdateEvent:
    return update_pb2.UpdateEvent(
        header_added=message_pb2.MessageHeader(
            thread_id="forged-thread", message_id=uuid7(), sender_user_id="anyone"
        )
    )


SERVICES = [
    InternalService(
        "router",
        lambda ch: peer_grpc.RouterPeerServiceStub(ch).DeliverEvent(
            peer_pb.DeliverEventRequest(user_ids=["nobody"], event=_forged_event()),
            timeout=10,
        ),
        wrong_kind="header",
        allowed_kind="router",
    ),
    InternalService(
        "header",
        lambda ch: header_grpc.HeaderServiceStub(ch).CheckMembership(
            header_pb.CheckMembershipRequest(thread_id="t-mtls", user_id="u-mtls"), timeout=10
        ),
        wrong_kind="header",
        allowed_kind="body",
    ),
    InternalService(
        "body",
        lambda ch: body_grpc.BodyServiceStub(ch).StatBody(
            body_pb.StatBodyRequest(thread_id="t-mtls", message_id=uuid7()), timeout=10
        ),
        wrong_kind="notification",
        allowed_kind="router",
    ),
    InternalService(
        "notification",
        lambda ch: n_grpc.NotificationServiceStub(ch).ListDevices(
            n_pb.ListDevicesRequest(user_id="u-mtls"), timeout=10
        ),
        wrong_kind="body",
        allowed_kind="router",
    ),
]


@dataclass(frozen=True)
class BadCertificates:
    other_ca: IssuedFiles  # a router certificate from a CA the mesh does not trust
    expired: IssuedFiles  # a router certificate from the mesh CA, expired yesterday
    anonymous: IssuedFiles  # from the mesh CA, but naming no mesh identity (no SPIFFE id)


@pytest.fixture(scope="module")
def bad_certificates(
    local_stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> BadCertificates:
    settings = local_stack.settings
    out: Path = tmp_path_factory.mktemp("bad-certs")
    other = LocalCA(out / "other-ca")
    mesh_ca = LocalCA(cert_dir(settings))  # the stack's own CA (loaded, not replaced)
    now = datetime.datetime.now(datetime.UTC)
    return BadCertificates(
        other_ca=other.issue("router-other-ca", kind="router", directory=out),
        expired=mesh_ca.issue(
            "router-expired",
            kind="router",
            not_before=now - datetime.timedelta(days=3),
            days=1,
            directory=out,
        ),
        anonymous=mesh_ca.issue("anonymous", kind=None, directory=out),
    )


def _address(settings: Settings, kind: str) -> str:
    return f"{settings.host}:{getattr(settings, kind).internal_port}"


async def _code(call: Call, channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    async with channel:
        try:
            await call(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("service", SERVICES, ids=[s.kind for s in SERVICES])
async def test_every_internal_service_refuses_all_but_an_accepted_mesh_caller(
    local_stack: LocalStack, bad_certificates: BadCertificates, service: InternalService
) -> None:
    settings = local_stack.settings
    address = _address(settings, service.kind)
    ca = (cert_dir(settings) / "ca.pem").read_bytes()

    def mesh(credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
        return mesh_channel(settings, address, service.kind, "router", credentials)

    refused_at_handshake = {
        "plaintext": grpc.aio.insecure_channel(address),
        "no client certificate": mesh(grpc.ssl_channel_credentials(root_certificates=ca)),
        "another CA": mesh(mesh_credentials(settings, "router", bad_certificates.other_ca)),
        "expired": mesh(mesh_credentials(settings, "router", bad_certificates.expired)),
    }
    for name, channel in refused_at_handshake.items():
        code, details = await _code(service.call, channel)
        assert code == grpc.StatusCode.UNAVAILABLE, (name, code, details)

    code, details = await _code(
        service.call, mesh(mesh_credentials(settings, "router", bad_certificates.anonymous))
    )
    assert (code, "names no mesh identity" in details) == (
        grpc.StatusCode.UNAUTHENTICATED,
        True,
    ), details

    code, details = await _code(
        service.call, mesh_channel(settings, address, service.kind, service.wrong_kind)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert f"a {service.wrong_kind} may not call" in details

    # The control: a caller of an accepted kind reaches the handler (its answer may be a
    # domain refusal such as NOT_FOUND, never a transport or identity one).
    code, details = await _code(
        service.call, mesh_channel(settings, address, service.kind, service.allowed_kind)
    )
    assert code not in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ), (code, details)


async def test_a_server_of_the_wrong_kind_is_refused_by_its_caller(
    local_stack: LocalStack,
) -> None:
    """Callers check the server too: a header node cannot pose as the body store."""
    settings = local_stack.settings
    impostor = mesh_channel(settings, _address(settings, "header"), "body", "router")
    code, _ = await _code(SERVICES[2].call, impostor)
    assert code == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def victim(local_stack: LocalStack) -> AsyncIterator[tuple[Device, Any]]:
    settings = local_stack.settings
    device = Device(
        settings, f"victim-{uuid7()[-8:]}", "phone", f"{settings.host}:{settings.router.port}"
    )
    updates = device.updates()
    async for frame in updates:  # the stream is registered once it has caught up
        if any(e.HasField("caught_up") for e in frame.events):
            break
    yield device, updates
    updates.cancel()
    await device.close()


async def test_the_forged_deliver_event_is_refused_on_both_ports_and_delivers_nothing(
    local_stack: LocalStack,
    bad_certificates: BadCertificates,
    victim: tuple[Device, Any],
) -> None:
    settings = local_stack.settings
    device, updates = victim
    forged = peer_pb.DeliverEventRequest(user_ids=[device.user_id], event=_forged_event())

    async def deliver(channel: grpc.aio.Channel) -> Any:
        return await peer_grpc.RouterPeerServiceStub(channel).DeliverEvent(forged, timeout=10)

    client_port = f"{settings.host}:{settings.router.port}"
    internal = _address(settings, "router")
    attempts = {
        # The client port does not serve RouterPeerService at all.
        "client port, TLS, no token": (
            client_port_channel(settings, client_port),
            grpc.StatusCode.UNIMPLEMENTED,
        ),
        "client port, plaintext": (
            grpc.aio.insecure_channel(client_port),
            grpc.StatusCode.UNAVAILABLE,
        ),
        "internal port, plaintext": (
            grpc.aio.insecure_channel(internal),
            grpc.StatusCode.UNAVAILABLE,
        ),
        "internal port, no client certificate": (
            mesh_channel(
                settings,
                internal,
                "router",
                "router",
                grpc.ssl_channel_credentials(
                    root_certificates=(cert_dir(settings) / "ca.pem").read_bytes()
                ),
            ),
            grpc.StatusCode.UNAVAILABLE,
        ),
        "internal port, another CA": (
            mesh_channel(
                settings,
                internal,
                "router",
                "router",
                mesh_credentials(settings, "router", bad_certificates.other_ca),
            ),
            grpc.StatusCode.UNAVAILABLE,
        ),
        "internal port, a body node's certificate": (
            mesh_channel(settings, internal, "router", "body"),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    for name, (channel, expected) in attempts.items():
        code, details = await _code(deliver, channel)
        assert code == expected, (name, code, details)

    # A router's delivery of a marker: it arrives, and before it nothing forged did.
    marker = update_pb2.UpdateEvent(
        header_added=message_pb2.MessageHeader(
            thread_id="marker-thread", message_id=uuid7(), sender_user_id="router-marker"
        )
    )
    async with mesh_channel(settings, internal, "router", "router") as channel:
        reply = await peer_grpc.RouterPeerServiceStub(channel).DeliverEvent(
            peer_pb.DeliverEventRequest(user_ids=[device.user_id], event=marker), timeout=10
        )
    assert reply.delivered_device_count == 1
    seen: list[update_pb2.UpdateEvent] = []

    async def until_marker() -> None:
        async for frame in updates:
            seen.extend(frame.events)
            if any(e.header_added.sender_user_id == "router-marker" for e in frame.events):
                return

    await asyncio.wait_for(until_marker(), 10)
    assert [e for e in seen if e.header_added.sender_user_id == "anyone"] == []
