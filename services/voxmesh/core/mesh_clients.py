"""Channels and calls to the other nodes of the mesh, chosen by the rings.

A call keyed by a thread goes to the thread's header node, by a message to its body node,
by a user to the user's home router or notification node: the first healthy member of the
key's preference list. Every unary call runs through ``MeshClients.call``, the one place
the retry policy (``voxmesh.core.retry_policy``) is applied: a member that fails with a
connection failure or UNAVAILABLE is suspect at once, and a call that is safe to repeat goes
to the next member within the same client call, bounded by a retry budget per ring.

``MemberHealth`` holds the suspicion; a background probe (grpc.health.v1 ``Check`` on every
member of the watched rings, every ``rings.probe_interval_s``) suspects a member that stops
answering SERVING and clears one that answers again, so callers, ``Discover`` and the updates
redirect stop naming a dead member within one probe interval instead of one lease TTL.
With no ring known yet (etcd unreachable), the configured single addresses are used, so
one node per kind still works.

Every mesh channel is made here, to the other process's internal port, over mutual TLS:
this process presents its own certificate and checks that the server's names the kind it
meant to call (``mesh_identity.server_name``). When the certificate files rotate, new
channels are made with the new ones; calls already open finish on the old channels.
Suspicion, probes and calls use members' internal (mesh) addresses; ``Discover`` and
redirects name their client addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, cast

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voxmesh.body.v1 import body_service_pb2_grpc as body_grpc
from voxmesh.core.domain_errors import Unavailable
from voxmesh.core.mesh_tls import ReloadingTls, mesh_files, mesh_target_options
from voxmesh.core.retry_policy import (
    CallSafety,
    Decision,
    Failure,
    RetryBudget,
    call_safety,
    classify,
    decide,
)
from voxmesh.core.ring_membership import Member, RingMembership
from voxmesh.core.settings import SERVICE_KINDS, ServiceKind, Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.core.telemetry import client_interceptors
from voxmesh.header.v1 import header_service_pb2_grpc as header_grpc
from voxmesh.notification.v1 import notification_service_pb2_grpc as notification_grpc
from voxmesh.router.v1 import router_peer_service_pb2_grpc as peer_grpc

RING_KINDS = ("router", "header", "body", "notification")
_log = get_logger(__name__)

# What each ring serves to the mesh (the router ring: the peer service).
_STUBS: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "router": peer_grpc.RouterPeerServiceStub,
    "header": header_grpc.HeaderServiceStub,
    "body": body_grpc.BodyServiceStub,
    "notification": notification_grpc.NotificationServiceStub,
}

RETRIES = prometheus_client.Counter(
    "voxmesh_mesh_retries_total",
    "Calls sent again to the next ring member after a member failed.",
    ["kind"],
)
SUSPECTED = prometheus_client.Counter(
    "voxmesh_mesh_members_suspected_total",
    "Ring members marked suspect (a failed call or probe).",
    ["kind"],
)
GAVE_UP = prometheus_client.Counter(
    "voxmesh_mesh_calls_unavailable_total",
    "Calls answered UNAVAILABLE because the ring could not serve them.",
    ["kind", "reason"],
)


class MemberHealth:
    """Which ring members are suspect, and who wants to know when that changes."""

    def __init__(self) -> None:
        self._suspects: dict[str, str] = {}  # address -> kind
        self._misses: dict[str, int] = {}
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(kind)`` when a member of that kind becomes suspect or healthy."""
        self._listeners.append(listener)

    def is_suspect(self, address: str) -> bool:
        return address in self._suspects

    def suspects(self, kind: str) -> int:
        return sum(1 for k in self._suspects.values() if k == kind) if self._suspects else 0

    def suspect(self, kind: str, address: str) -> None:
        self._misses.pop(address, None)
        if address in self._suspects:
            return
        self._suspects[address] = kind
        SUSPECTED.labels(kind).inc()
        _log.info("ring member suspect", kind=kind, address=address)
        self._changed(kind)

    def missed(self, kind: str, address: str, misses_to_suspect: int) -> None:
        """A probe timed out: a busy member is not dead, so only repeated misses count."""
        self._misses[address] = self._misses.get(address, 0) + 1
        if self._misses[address] >= misses_to_suspect:
            self.suspect(kind, address)

    def clear(self, address: str) -> None:
        self._misses.pop(address, None)
        kind = self._suspects.pop(address, None)
        if kind is not None:
            _log.info("ring member healthy again", kind=kind, address=address)
            self._changed(kind)

    def forget_except(self, addresses: set[str]) -> None:
        """Drop what is known of members that left every ring."""
        for address in [a for a in self._suspects if a not in addresses]:
            self.clear(address)
        for address in [a for a in self._misses if a not in addresses]:
            del self._misses[address]

    def _changed(self, kind: str) -> None:
        for listener in self._listeners:
            listener(kind)


class MeshClients:
    def __init__(
        self, settings: Settings, membership: RingMembership, own_kind: ServiceKind
    ) -> None:
        self._settings = settings
        self.membership = membership
        self._own_kind = own_kind
        self._tls: ReloadingTls | None = None
        self._tls_generation = 0
        self.health = MemberHealth()
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Channels made with certificates since rotated: calls open on them finish there.
        self._retired: list[grpc.aio.Channel] = []
        self._stubs: dict[tuple[str, str], Any] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._prober: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a live connection to a member dropped: probe now
        self._watchers: dict[str, asyncio.Task[None]] = {}
        limit = settings.limits.max_grpc_message_bytes
        self._options = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 10_000),
            # A node that restarts is reachable again within moments: do not back off for
            # minutes (gRPC's default) before trying it again.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings
        self._budgets.clear()
        self.membership.reconfigure(settings)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background health probe (needs a running event loop)."""
        if self._prober is None:
            self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def close(self) -> None:
        tasks = [*self._watchers.values(), *([self._prober] if self._prober else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prober = None
        self._watchers.clear()
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close(None)
        self._channels.clear()
        self._retired.clear()
        self._stubs.clear()

    # -- channels --------------------------------------------------------------------------

    def _identity(self) -> ReloadingTls:
        """This process's certificate (read at first use, then followed on disk)."""
        if self._tls is None:
            files = mesh_files(self._settings, self._own_kind)
            self._tls = ReloadingTls(files, self._settings.tls.reload_check_s)
            self._tls_generation = self._tls.generation
        self._tls.current()
        if self._tls.generation != self._tls_generation:
            self._tls_generation = self._tls.generation
            self._retired.extend(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        return self._tls

    def _kind_of(self, address: str) -> str:
        for kind in self.membership.kinds:
            if any(m.mesh_address == address for m in self.membership.members(kind)):
                return kind
        for kind in SERVICE_KINDS:
            if address == self._configured(kind):
                return kind
        raise Unavailable(f"{address} is not a known mesh member")

    def _configured(self, kind: str) -> str:
        return f"{self._settings.host}:{self._settings.service(kind).internal_port}"  # type: ignore[arg-type]

    def channel(self, address: str, kind: str | None = None) -> grpc.aio.Channel:
        """The mutual-TLS channel to the internal ``address`` of a process of ``kind``
        (looked up in the rings when not given)."""
        tls = self._identity()
        channel = self._channels.get(address)
        if channel is None:
            options = [
                *self._options,
                *mesh_target_options(self._settings, kind or self._kind_of(address)),
            ]
            channel = grpc.aio.secure_channel(
                address, tls.channel_credentials(), options, interceptors=client_interceptors()
            )
            self._channels[address] = channel
        return channel

    def stub(self, kind: str, address: str) -> Any:
        channel = self.channel(address, kind)  # first: a rotation drops the cached stubs
        stub = self._stubs.get((kind, address))
        if stub is None:
            stub = self._stubs[(kind, address)] = _STUBS[kind](channel)
        return stub

    # -- who serves a key ------------------------------------------------------------------

    def suspect(self, address: str) -> None:
        """``address`` failed a call (a stream the caller manages itself): skip it until a
        health probe finds it serving again."""
        kind = next(
            (k for k in getattr(self.membership, "kinds", ()) if address in self._addresses(k)),
            "unknown",
        )
        self.health.suspect(kind, address)

    def preference_list(self, kind: str, key: str) -> list[Member]:
        """The key's members, healthy ones first (as many as the preference list holds),
        then the suspects, which are tried last."""
        size = self._settings.rings.preference_list_size
        suspects = self.health.suspects(kind)
        members = self.membership.preference_list(kind, key, size + suspects)
        if not suspects:
            return members
        healthy = [m for m in members if not self.is_suspect(m)]
        return healthy[:size] + [m for m in members if self.is_suspect(m)]

    def healthy_preference_list(self, kind: str, key: str) -> list[Member]:
        """What ``Discover`` and redirects name: never a member whose probe fails."""
        return [m for m in self.preference_list(kind, key) if not self.is_suspect(m)]

    def healthy_members(self, kind: str) -> list[Member]:
        """Every member of the ring whose health probe answers (e.g. for a gateway's
        endpoints)."""
        return [m for m in self.membership.members(kind) if not self.is_suspect(m)]

    def is_suspect(self, member: Member) -> bool:
        return self.health.is_suspect(member.mesh_address)

    def home(self, kind: str, key: str) -> Member | None:
        """The first healthy member for ``key`` (a suspect one if every member is)."""
        if not self.health.suspects(kind):
            node_id = self.membership.ring(kind).home(key)
            return None if node_id is None else self.membership.member(kind, node_id)
        members = self.preference_list(kind, key)
        return members[0] if members else None

    def candidates(self, kind: str, key: str) -> list[str]:
        """Internal addresses for ``key``, home first, suspects last; the configured one if
        no ring."""
        members = self.preference_list(kind, key)
        if not members:
            return [self._configured(kind)]
        return [m.mesh_address for m in members]

    def routers_for(self, user_id: str) -> list[Member]:
        return self.healthy_preference_list("router", user_id)

    # -- calls -----------------------------------------------------------------------------

    def _budget(self, kind: str) -> RetryBudget:
        budget = self._budgets.get(kind)
        if budget is None:
            rings = self._settings.rings
            budget = self._budgets[kind] = RetryBudget(
                rings.retry_budget_tokens, rings.retry_budget_ratio
            )
        return budget

    def _next_suspect(self, addresses: list[str], tried: int) -> bool:
        return tried < len(addresses) and self.health.is_suspect(addresses[tried])

    def _failed(
        self,
        kind: str,
        method: str,
        safety: CallSafety,
        budget: RetryBudget,
        addresses: list[str],
        attempt: int,
        exc: grpc.aio.AioRpcError,
        started: bool = False,
    ) -> None:
        """Attempt ``attempt`` (on ``addresses[attempt - 1]``) failed: note what it says of
        the member, then return to try the next member, or raise as the policy decides (a
        stream that already yielded frames is never repeated)."""
        address = addresses[attempt - 1]
        failure = classify(exc.code())
        if failure is Failure.MEMBER:
            self.health.suspect(kind, address)
            budget.failed()
        if started:
            raise exc
        verdict = decide(
            safety,
            failure,
            attempts=attempt,
            max_attempts=self._settings.rings.max_attempts,
            member_left=attempt < len(addresses),
            next_suspect=self._next_suspect(addresses, attempt),
            budget_allows=budget.allows_retry(),
        )
        if verdict.decision is Decision.RAISE:
            raise exc
        if verdict.decision is Decision.GIVE_UP:
            assert verdict.reason is not None
            GAVE_UP.labels(kind, verdict.reason.name).inc()
            raise Unavailable(
                f"the {kind} ring cannot serve {method} now: {verdict.reason.value} "
                f"(tried {', '.join(addresses[:attempt])}); retry shortly"
            ) from exc
        RETRIES.labels(kind).inc()
        _log.info(
            "retrying on the next ring member",
            kind=kind,
            method=method,
            failed=address,
            status=exc.code().name,
        )

    async def call(
        self,
        kind: str,
        key: str,
        method: str,
        request: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - each attempt's gRPC deadline
    ) -> Any:
        """A unary call for ``key``, over the key's preference list as the policy allows."""
        safety = call_safety(kind, method)
        budget = self._budget(kind)
        addresses = self.candidates(kind, key)
        for attempt, address in enumerate(addresses, start=1):
            try:
                reply = await getattr(self.stub(kind, address), method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                self._failed(kind, method, safety, budget, addresses, attempt, exc)
                continue
            budget.succeeded()
            return reply
        raise AssertionError("unreachable: the last attempt either returns or gives up")

    async def stream(self, kind: str, key: str, method: str, request: Any) -> AsyncIterator[Any]:
        """A server-streaming call: the same policy until the first frame arrives; after
        that a failure ends the stream (the caller resumes from what it has)."""
        safety = call_safety(kind, method)
        budget = self._budget(kind)
        addresses = self.candidates(kind, key)
        for attempt, address in enumerate(addresses, start=1):
            started = False
            try:
                async for frame in getattr(self.stub(kind, address), method)(request):
                    started = True
                    yield frame
                budget.succeeded()
                return
            except grpc.aio.AioRpcError as exc:
                self._failed(kind, method, safety, budget, addresses, attempt, exc, started)

    def over_ring(self, kind: str, key: str) -> Any:
        """A stub-like object whose unary methods run through ``call`` for ``key``."""
        return _RingStub(self, kind, key)

    def header(self, key: str) -> header_grpc.HeaderServiceAsyncStub:
        """The header ring for ``key`` (unary calls, with the retry policy)."""
        return cast("header_grpc.HeaderServiceAsyncStub", _RingStub(self, "header", key))

    def body_unary(self, message_id: str) -> body_grpc.BodyServiceAsyncStub:
        """The body ring for ``message_id`` (unary calls, with the retry policy)."""
        return cast("body_grpc.BodyServiceAsyncStub", _RingStub(self, "body", message_id))

    def body(self, message_id: str) -> tuple[str, body_grpc.BodyServiceAsyncStub]:
        """The message's body node and a stub to it, for a stream the caller manages."""
        address = self.candidates("body", message_id)[0]
        return address, cast("body_grpc.BodyServiceAsyncStub", self.stub("body", address))

    def peer(self, address: str) -> peer_grpc.RouterPeerServiceAsyncStub:
        """RouterPeerService of the router whose internal address is ``address``."""
        return cast("peer_grpc.RouterPeerServiceAsyncStub", self.stub("router", address))

    # -- the health probe ------------------------------------------------------------------

    def _addresses(self, kind: str) -> set[str]:
        return {m.mesh_address for m in self.membership.members(kind)}

    def _probed(self) -> Iterable[tuple[str, str]]:
        me = self.membership.me
        for kind in self.membership.kinds:
            for member in self.membership.members(kind):
                if me is None or member.mesh_address != me.mesh_address:
                    yield kind, member.mesh_address

    async def probe_once(self) -> None:
        """Ask every member once; suspect those not SERVING, clear those that are."""
        targets = list(self._probed())
        addresses = {address for _, address in targets}
        self.health.forget_except(addresses)
        for address in [a for a in self._watchers if a not in addresses]:
            self._watchers.pop(address).cancel()
        for kind, address in targets:
            if address not in self._watchers and self._prober is not None:
                self._watchers[address] = asyncio.create_task(self._watch_connection(kind, address))
        await asyncio.gather(*(self._probe(kind, address) for kind, address in targets))

    async def verify(self, members: list[Member]) -> None:
        """Probe now the members whose connection is not up (about to be named to a client:
        a member killed a moment ago must not be)."""
        me = self.membership.me
        doubtful = [
            m
            for m in members
            if (me is None or m.mesh_address != me.mesh_address)
            and self.channel(m.mesh_address, m.kind).get_state() != grpc.ChannelConnectivity.READY
        ]
        if doubtful:
            await asyncio.gather(*(self._probe(m.kind, m.mesh_address) for m in doubtful))

    async def _watch_connection(self, kind: str, address: str) -> None:
        """Wake the probe as soon as an established connection to ``address`` drops: a
        process killed with SIGKILL closes its sockets, so it is suspect within moments."""
        while True:
            channel = self.channel(address, kind)  # a new one after a certificate rotation
            state = channel.get_state()
            if state == grpc.ChannelConnectivity.READY:
                await channel.wait_for_state_change(state)
                self._wake.set()
            else:
                await asyncio.sleep(self._settings.rings.probe_interval_s)

    async def _probe(self, kind: str, address: str) -> None:
        rings = self._settings.rings
        stub = health_pb2_grpc.HealthStub(self.channel(address, kind))
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=rings.probe_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self.health.missed(kind, address, rings.probe_misses_to_suspect)
            else:
                self.health.suspect(kind, address)
            return
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            self.health.clear(address)
        else:
            self.health.suspect(kind, address)

    async def _probe_forever(self) -> None:
        while True:
            began = time.monotonic()
            try:
                await self.probe_once()
            except Exception as exc:  # never let the probe die: log and go on
                _log.warning("health probe failed", error=repr(exc))
            interval = self._settings.rings.probe_interval_s
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), max(0.0, interval - (time.monotonic() - began))
                )


class _RingStub:
    """``stub.Method(request, timeout=...)`` for a ring: every method goes through
    ``MeshClients.call`` with the kind and key it was made for."""

    def __init__(self, mesh: MeshClients, kind: str, key: str) -> None:
        self._mesh, self._kind, self._key = mesh, kind, key

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return functools.partial(self._mesh.call, self._kind, self._key, method)
