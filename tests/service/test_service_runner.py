"""Each service on a real grpc.aio server (port 0, in this process), over a real channel."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.mesh_pki import client_port_channel, mesh_channel, tls_overrides
from voxmesh.core.client_auth import issue_token
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.service_runner import Exposure, Registration, ServiceRunner
from voxmesh.core.settings import SERVICE_KINDS, ServiceKind, Settings, load_settings
from voxmesh.core.unbuilt_rpcs import fill_unbuilt_rpcs
from voxmesh.notification.v1 import notification_service_pb2 as n_pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as n_grpc
from voxmesh.router.v1 import router_service_pb2 as router_pb
from voxmesh.router.v1 import router_service_pb2_grpc as router_grpc
from voxmesh.service_registry import build_runner
from voxmesh.stack.components import SERVICE_PROTO_NAMES


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(environ={}, overrides=tls_overrides())


async def _start(kind: ServiceKind, settings: Settings) -> ServiceRunner:
    runner = build_runner(kind, settings, port=0, metrics_port=0)
    await runner.start()
    return runner


@pytest.fixture
async def router(settings: Settings) -> AsyncIterator[ServiceRunner]:
    runner = await _start("router", settings)
    yield runner
    await runner.drain(grace_s=0)


@pytest.mark.parametrize("kind", SERVICE_KINDS)
async def test_each_service_answers_health_and_reflection(
    kind: ServiceKind, settings: Settings
) -> None:
    runner = await _start(kind, settings)
    internal = {
        "router": "voxmesh.router.v1.RouterPeerService",
        "header": "voxmesh.header.v1.HeaderService",
        "body": "voxmesh.body.v1.BodyService",
        "notification": "voxmesh.notification.v1.NotificationService",
    }[kind]
    client = {"voxmesh.router.v1.RouterService"} if kind == "router" else set()
    try:
        # Health on both ports (the client port's for probes without a mesh certificate);
        # each port lists in reflection what it serves, and nothing else.
        for channel, served in (
            (client_port_channel(settings, runner.address), client),
            (mesh_channel(settings, runner.internal_address, kind, "router"), {internal}),
        ):
            async with channel:
                health = health_pb2_grpc.HealthStub(channel)
                for service in ("", SERVICE_PROTO_NAMES[kind]):
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                with pytest.raises(grpc.aio.AioRpcError) as unknown:
                    await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
                assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

                reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
                call = reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                )
                listed = {s.name async for r in call for s in r.list_services_response.service}
                assert {n for n in listed if n.startswith("voxmesh.")} == served
                assert "grpc.health.v1.Health" in listed
    finally:
        await runner.drain(grace_s=0)


def _auth(settings: Settings, user: str = "alice") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {issue_token(settings.auth, user)}"),)


async def test_unbuilt_rpc_answers_unimplemented_with_a_message(settings: Settings) -> None:
    # Every v1 RPC is built now: a servicer defining none of them shows the mechanism.
    class Unbuilt(n_grpc.NotificationServiceServicer):
        pass

    fill_unbuilt_rpcs(
        Unbuilt, n_pb.DESCRIPTOR.services_by_name["NotificationService"], "a later piece of work"
    )
    runner = ServiceRunner(
        "notification",
        settings,
        [
            Registration(
                "voxmesh.notification.v1.NotificationService",
                Unbuilt(),  # type: ignore[abstract]
                n_grpc.add_NotificationServiceServicer_to_server,
            )
        ],
        port=0,
        metrics_port=0,
    )
    await runner.start()
    try:
        async with mesh_channel(
            settings, runner.internal_address, "notification", "router"
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await n_grpc.NotificationServiceStub(channel).ListDevices(n_pb.ListDevicesRequest())
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        details = other.value.details() or ""
        assert "NotificationService/ListDevices is not built yet" in details
        assert "a later piece of work" in details
    finally:
        await runner.drain(grace_s=0)


async def test_router_and_notification_rpcs_validate_their_input(
    router: ServiceRunner, settings: Settings
) -> None:
    async with client_port_channel(settings, router.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as typing:
            await stub.SetTyping(router_pb.SetTypingRequest(), metadata=_auth(settings))
        assert typing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "thread_id is required" in (typing.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as presence:
            await stub.SetPresence(
                router_pb.SetPresenceRequest(device_id="phone"), metadata=_auth(settings)
            )
        assert presence.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PRESENCE_STATE_ONLINE or PRESENCE_STATE_AWAY" in (presence.value.details() or "")

    notifier = await _start("notification", settings)
    try:
        async with mesh_channel(
            settings, notifier.internal_address, "notification", "router"
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                await n_grpc.NotificationServiceStub(channel).ListDevices(n_pb.ListDevicesRequest())
        assert listing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_id is required" in (listing.value.details() or "")
    finally:
        await notifier.drain(grace_s=0)


async def test_client_calls_need_a_valid_token(router: ServiceRunner, settings: Settings) -> None:
    async with client_port_channel(settings, router.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        request = router_pb.DiscoverRequest(user_id="alice")
        forged = jwt.encode(
            {"sub": "alice", "exp": 2**33, "iat": 0}, "not-the-secret-but-long-enough-for-hs256"
        )
        expired = issue_token(settings.auth, "alice", ttl_s=-3600)
        for metadata, fragment in [
            ((), "missing 'authorization: Bearer <token>'"),
            ((("authorization", "Basic abc"),), "missing 'authorization: Bearer <token>'"),
            ((("authorization", f"Bearer {forged}"),), "invalid token"),
            ((("authorization", f"Bearer {expired}"),), "token expired"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Discover(request, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert fragment in (refused.value.details() or "")
        # Health is for the mesh and load balancers: no token.
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


async def test_discover_validates_and_answers_this_router(
    router: ServiceRunner, settings: Settings
) -> None:
    async with client_port_channel(settings, router.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        reply = await stub.Discover(
            router_pb.DiscoverRequest(user_id="alice"), metadata=_auth(settings)
        )
        assert [(r.node_id, r.address) for r in reply.routers] == [(router.node_id, router.address)]
        for bad in ("", "a b", "x" * 200, "../etc"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Discover(
                    router_pb.DiscoverRequest(user_id=bad), metadata=_auth(settings)
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "user_id" in (refused.value.details() or "")


async def test_request_id_is_echoed_and_metrics_count_status_codes(
    router: ServiceRunner, settings: Settings
) -> None:
    async with client_port_channel(settings, router.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        call = stub.Discover(
            router_pb.DiscoverRequest(user_id="bob"),
            metadata=(("x-request-id", "req-123"), *_auth(settings)),
        )
        await call
        trailers = await call.trailing_metadata()
        assert ("x-request-id", "req-123") in [(k, v) for k, v in trailers or ()]
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Discover(router_pb.DiscoverRequest(user_id=""), metadata=_auth(settings))
    url = f"http://127.0.0.1:{router.bound_metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'voxmesh_rpc_handled_total{code="OK",method="Discover",service="router"}' in text
    assert (
        'voxmesh_rpc_handled_total{code="INVALID_ARGUMENT",method="Discover",service="router"}'
        in text
    )


class _Exploding(router_grpc.RouterServiceServicer):
    async def Discover(self, request: Any, context: Any) -> Any:
        if request.user_id == "domain":
            raise InvalidArgument("domain says no")
        raise RuntimeError("secret internal detail")


async def test_unexpected_errors_become_internal_without_leaking(settings: Settings) -> None:
    exploding = _Exploding()  # type: ignore[abstract]
    runner = ServiceRunner(
        "router",
        settings,
        [
            Registration(
                "voxmesh.router.v1.RouterService",
                exploding,
                router_grpc.add_RouterServiceServicer_to_server,
                exposure=Exposure.CLIENT,
            )
        ],
        port=0,
        metrics_port=0,
    )
    await runner.start()
    try:
        async with client_port_channel(settings, runner.address) as channel:
            stub = router_grpc.RouterServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as internal:
                await stub.Discover(
                    router_pb.DiscoverRequest(user_id="x"), metadata=(("x-request-id", "r-9"),)
                )
            assert internal.value.code() == grpc.StatusCode.INTERNAL
            assert internal.value.details() == "internal error (request id r-9)"
            with pytest.raises(grpc.aio.AioRpcError) as domain:
                await stub.Discover(router_pb.DiscoverRequest(user_id="domain"))
            assert domain.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert domain.value.details() == "domain says no"
            # The server survived both.
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await stub.Discover(router_pb.DiscoverRequest(user_id="y"))
            assert again.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await runner.drain(grace_s=0)


class _SlowRouter(router_grpc.RouterServiceServicer):
    """Holds Discover open until released, to watch a drain finish a call in flight."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def Discover(self, request: Any, context: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return router_pb.DiscoverResponse(routers=[router_pb.RouterNode(node_id="slow")])


async def test_drain_reports_not_serving_refuses_new_calls_and_finishes_in_flight(
    settings: Settings,
) -> None:
    slow = _SlowRouter()  # type: ignore[abstract]
    left_ring: list[bool] = []

    async def leave_ring() -> None:
        left_ring.append(True)

    runner = ServiceRunner(
        "router",
        settings,
        [
            Registration(
                "voxmesh.router.v1.RouterService",
                slow,
                router_grpc.add_RouterServiceServicer_to_server,
                exposure=Exposure.CLIENT,
            )
        ],
        port=0,
        metrics_port=0,
        drain_hooks=[leave_ring],
    )
    await runner.start()
    async with client_port_channel(settings, runner.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(
            health_pb2.HealthCheckRequest(service="voxmesh.router.v1.RouterService")
        )
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.ensure_future(stub.Discover(router_pb.DiscoverRequest(user_id="a")))
        await asyncio.wait_for(slow.entered.wait(), 5)

        drain = asyncio.ensure_future(runner.drain(grace_s=10))
        assert (await asyncio.wait_for(watch.read(), 5)).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
        assert left_ring == [True]  # hooks run before the server stops accepting
        watch.cancel()  # an open stream is in flight too: the drain would wait for it
        await asyncio.sleep(0.2)
        assert not drain.done()  # still waiting for the call in flight

        slow.release.set()
        reply = await asyncio.wait_for(in_flight, 5)
        assert reply.routers[0].node_id == "slow"
        await asyncio.wait_for(drain, 5)

    async with client_port_channel(settings, runner.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router_grpc.RouterServiceStub(channel).Discover(
                router_pb.DiscoverRequest(user_id="a"), timeout=2
            )
        assert refused.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


class _QuickRouter(router_grpc.RouterServiceServicer):
    async def Discover(self, request: Any, context: Any) -> Any:
        return router_pb.DiscoverResponse(routers=[router_pb.RouterNode(node_id="quick")])


async def test_drain_keeps_serving_until_new_calls_stop_arriving() -> None:
    """Past the drain delay, a server still receiving calls (a proxy that has not seen the
    NOT_SERVING yet) keeps serving them, for at most another delay, instead of stopping
    under them; once they stop it stops."""
    settings = load_settings(
        environ={"VOXMESH__ROUTER__DRAIN_DELAY_S": "0.4"}, overrides=tls_overrides()
    )
    runner = ServiceRunner(
        "router",
        settings,
        [
            Registration(
                "voxmesh.router.v1.RouterService",
                _QuickRouter(),  # type: ignore[abstract]
                router_grpc.add_RouterServiceServicer_to_server,
                exposure=Exposure.CLIENT,
            )
        ],
        port=0,
        metrics_port=0,
    )
    await runner.start()
    calling = asyncio.Event()
    calling.set()
    answered: list[str] = []
    async with client_port_channel(settings, runner.address) as channel:
        stub = router_grpc.RouterServiceStub(channel)

        async def keep_calling() -> None:
            while calling.is_set():
                reply = await stub.Discover(router_pb.DiscoverRequest(user_id="a"), timeout=5)
                answered.append(reply.routers[0].node_id)
                await asyncio.sleep(0.02)

        caller = asyncio.ensure_future(keep_calling())
        drain = asyncio.ensure_future(runner.drain())
        await asyncio.sleep(0.6)  # past the delay: calls still arrive, so still serving
        assert not drain.done()
        calling.clear()
        await asyncio.wait_for(caller, 5)  # every call answered, none cancelled
        await asyncio.wait_for(drain, 5)
    assert len(answered) > 10 and set(answered) == {"quick"}


async def test_healthz_on_the_metrics_port_follows_serving_and_draining() -> None:
    """Kubernetes' probes hold no mesh certificate: plain HTTP health on the metrics port."""
    settings = load_settings(
        environ={"VOXMESH__HEADER__DRAIN_DELAY_S": "1.0"}, overrides=tls_overrides()
    )
    runner = await _start("header", settings)
    url = f"http://127.0.0.1:{runner.bound_metrics_port}/healthz"

    def status() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode().strip()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode().strip()

    assert await asyncio.to_thread(status) == (200, "SERVING")
    drain = asyncio.ensure_future(runner.drain())
    await asyncio.sleep(0.3)  # within the drain delay: still listening, no longer serving
    assert await asyncio.to_thread(status) == (503, "NOT_SERVING")
    await asyncio.wait_for(drain, 10)
