"""Ring membership in etcd: register under a lease, keep it alive, watch every ring.

Each process puts ``<prefix>/members/<kind>/<node>`` = {"address", "zone", "internal_address"}
(client port, zone, internal mutual-TLS port) under its own
lease and refreshes the lease; if the process dies or stops (SIGSTOP), the lease expires and
etcd deletes the key, so every watcher drops the member. Watchers keep one HashRing per kind.
On an etcd restart or a lost connection the member registers again with a new lease and
the watches resume from the last seen revision (or reload the prefix if it was compacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aetcd
import aetcd.exceptions

from voxmesh.core.hash_ring import HashRing
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)
# Longest wait for the watch tasks, then for the etcd client, when closing.
_CLOSE_WAIT_S = 3.0
_RETRY_S = 0.5


@dataclass(frozen=True)
class Member:
    kind: str
    node_id: str
    address: str  # the client port (what devices are sent to)
    zone: str
    # The internal port (mutual TLS): where other mesh processes call it.
    internal_address: str = ""

    @property
    def mesh_address(self) -> str:
        return self.internal_address or self.address


def members_prefix(settings: Settings, kind: str = "") -> bytes:
    base = f"{settings.etcd.prefix}/members/"
    return (base + (f"{kind}/" if kind else "")).encode()


class RingMembership:
    def __init__(self, settings: Settings, kinds: Sequence[str]) -> None:
        self._settings = settings
        self._kinds = tuple(kinds)
        self._members: dict[str, dict[str, Member]] = {kind: {} for kind in kinds}
        self._rings: dict[str, HashRing] = {
            kind: HashRing(vnodes=settings.rings.vnodes) for kind in kinds
        }
        self._me: Member | None = None
        self._client: aetcd.Client | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lease: object | None = None
        self._leaving = False
        self.registered = asyncio.Event()
        self._loaded = {kind: asyncio.Event() for kind in kinds}
        self._listeners: list[Callable[[str], None]] = []

    # -- reading ---------------------------------------------------------------------------

    @property
    def kinds(self) -> tuple[str, ...]:
        """The rings this process watches."""
        return self._kinds

    @property
    def me(self) -> Member | None:
        """This process, if it registers in a ring."""
        return self._me

    def ring(self, kind: str) -> HashRing:
        return self._rings[kind]

    def member(self, kind: str, node_id: str) -> Member | None:
        return self._members.get(kind, {}).get(node_id)

    def members(self, kind: str) -> list[Member]:
        return sorted(self._members.get(kind, {}).values(), key=lambda m: m.node_id)

    def preference_list(self, kind: str, key: str, count: int | None = None) -> list[Member]:
        count = count or self._settings.rings.preference_list_size
        members = self._members.get(kind, {})
        return [members[n] for n in self._rings[kind].preference_list(key, count) if n in members]

    async def wait_loaded(self, timeout_s: float = 5.0) -> None:
        """Until every watched ring has been listed once."""
        await asyncio.wait_for(
            asyncio.gather(*(event.wait() for event in self._loaded.values())), timeout_s
        )

    def reconfigure(self, settings: Settings) -> None:
        """New ring parameters (dynamic settings): rebuild the rings if vnodes changed."""
        vnodes_changed = settings.rings.vnodes != self._settings.rings.vnodes
        self._settings = settings
        if vnodes_changed:
            for kind, members in self._members.items():
                self._rings[kind] = HashRing(members, vnodes=settings.rings.vnodes)
                for listener in self._listeners:
                    listener(kind)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(kind)`` after a ring changes."""
        self._listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, me: Member | None) -> None:
        """Watch the rings; register ``me`` (in the background: etcd may not be up yet)."""
        self._me = me
        host, port = self._settings.etcd_host, self._settings.etcd.client_port
        self._client = aetcd.Client(host=host, port=port, timeout=5)
        for kind in self._kinds:
            self._tasks.append(asyncio.create_task(self._watch(kind)))
        if me is not None:
            self._tasks.append(asyncio.create_task(self._keep_registered(me)))

    async def leave(self) -> None:
        """Leave the ring now (drain): revoke the lease, so every watcher drops us at once."""
        self._leaving = True
        client, lease = self._client, self._lease
        if client is not None and lease is not None:
            with contextlib.suppress(Exception):
                await client.revoke_lease(lease.id)  # type: ignore[attr-defined]
        self._lease = None

    async def close(self) -> None:
        await self.leave()
        for task in self._tasks:
            task.cancel()
        # aetcd's watcher can block in its own teardown (a full internal queue): wait a
        # bounded time and leave stragglers cancelled, so closing never hangs a drain.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_CLOSE_WAIT_S)
        if self._client is not None:
            closing = asyncio.create_task(self._client.close())
            await asyncio.wait({closing}, timeout=_CLOSE_WAIT_S)
            if not closing.done():
                _log.warning("etcd client did not close in time; abandoning it")
                closing.cancel()
            elif not closing.cancelled() and closing.exception() is not None:
                _log.debug("etcd client close failed", error=repr(closing.exception()))

    # -- registration ----------------------------------------------------------------------

    async def _keep_registered(self, me: Member) -> None:
        assert self._client is not None
        key = members_prefix(self._settings, me.kind) + me.node_id.encode()
        value = json.dumps(
            {"address": me.address, "zone": me.zone, "internal_address": me.internal_address}
        ).encode()
        ttl = self._settings.rings.lease_ttl_s
        while not self._leaving:
            try:
                lease = await self._client.lease(ttl)
                await self._client.put(key, value, lease=lease)
                self._lease = lease
                self.registered.set()
                _log.info("joined ring", kind=me.kind, node=me.node_id, lease_ttl_s=ttl)
                while not self._leaving:
                    await asyncio.sleep(ttl / 3)
                    reply = await lease.refresh()
                    if reply.TTL <= 0:  # expired (we were stopped too long): join again
                        _log.warning("lease expired; joining again", node=me.node_id)
                        break
                    if await self._client.get(key) is None:  # deleted by hand or restored
                        await self._client.put(key, value, lease=lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd down or restarted: retry with a new lease
                _log.warning("ring registration failed; retrying", error=repr(exc))
                self.registered.clear()
                await asyncio.sleep(_RETRY_S)

    # -- watching --------------------------------------------------------------------------

    def _apply(self, kind: str, members: dict[str, Member]) -> None:
        if members.keys() == self._members[kind].keys() and members == self._members[kind]:
            return
        self._members[kind] = members
        self._rings[kind] = HashRing(members, vnodes=self._settings.rings.vnodes)
        _log.info("ring changed", kind=kind, members=sorted(members))
        for listener in self._listeners:
            listener(kind)

    def _parse(self, kind: str, key: bytes, value: bytes) -> Member | None:
        node_id = key.decode().rsplit("/", 1)[-1]
        try:
            data = json.loads(value)
            return Member(
                kind,
                node_id,
                str(data["address"]),
                str(data.get("zone", "")),
                str(data.get("internal_address", "")),
            )
        except (ValueError, KeyError, TypeError):
            _log.warning("ignoring malformed member record", key=key.decode())
            return None

    async def _watch(self, kind: str) -> None:
        assert self._client is not None
        prefix = members_prefix(self._settings, kind)
        while True:
            try:
                listing = await self._client.get_prefix(prefix)
                members = {}
                for kv in listing:
                    member = self._parse(kind, kv.key, kv.value)
                    if member is not None:
                        members[member.node_id] = member
                self._apply(kind, members)
                self._loaded[kind].set()
                revision = listing.header.revision
                watch = await self._client.watch_prefix(prefix, start_revision=revision + 1)
                async for event in watch:
                    current = dict(self._members[kind])
                    node_id = event.kv.key.decode().rsplit("/", 1)[-1]
                    if event.kind == "DELETE":
                        current.pop(node_id, None)
                    else:
                        member = self._parse(kind, event.kv.key, event.kv.value)
                        if member is not None:
                            current[node_id] = member
                    self._apply(kind, current)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, etcd restarted, revision compacted
                _log.warning("ring watch interrupted; reloading", kind=kind, error=repr(exc))
                await asyncio.sleep(_RETRY_S)
