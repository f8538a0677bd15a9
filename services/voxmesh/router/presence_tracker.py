"""Presence (online / away / offline), typing and "talking now", for the users homed here.

A user's devices all keep their updates stream on the user's home router, so that router
knows the user's presence first-hand: offline with no stream open, away when every device
says so (SetPresence) or nothing was done for ``away_after_s``, online otherwise. Changes
go to the members of the user's threads (their contacts) as ephemeral events: they are not
stored, a device that reconnects gets the current state of its contacts instead of a replay.

Nobody may be flooded: every ephemeral event to one recipient goes through a per-recipient
window (``EphemeralFanout``) that sends the first at once, then coalesces (latest state per
subject wins) and sends at most ``fanout_max_events`` per window. A busy group's typing and
talking turns cost each member a bounded number of frames per second, however many type.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import prometheus_client
from google.protobuf import timestamp_pb2

from voxmesh.common.v1 import message_pb2, presence_pb2, update_pb2
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.ids import require_id
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.settings import PresenceSettings
from voxmesh.core.structured_logging import get_logger
from voxmesh.header.v1 import header_service_pb2 as header_pb

_log = get_logger(__name__)

ONLINE = presence_pb2.PRESENCE_STATE_ONLINE
AWAY = presence_pb2.PRESENCE_STATE_AWAY
OFFLINE = presence_pb2.PRESENCE_STATE_OFFLINE

EPHEMERAL_COALESCED = prometheus_client.Counter(
    "voxmesh_router_ephemeral_coalesced_total",
    "Presence/typing/talking events replaced by a newer one before they went out.",
)
EPHEMERAL_SENT = prometheus_client.Counter(
    "voxmesh_router_ephemeral_sent_total", "Presence/typing/talking events sent, per recipient."
)

Deliver = Callable[[Sequence[str], update_pb2.UpdateEvent], None]
Key = tuple[str, ...]
State: TypeAlias = presence_pb2.PresenceState.ValueType


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def update_event(**kwargs: Any) -> update_pb2.UpdateEvent:
    event = update_pb2.UpdateEvent(**kwargs)
    event.occurred_at.GetCurrentTime()
    return event


@dataclass
class _Box:
    last_sent: float = float("-inf")
    pending: dict[Key, update_pb2.UpdateEvent] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class EphemeralFanout:
    """Per-recipient throttle: first event at once, then one batch per window, newest wins."""

    def __init__(self, deliver: Deliver, interval_s: float, max_events: int) -> None:
        self._deliver = deliver
        self._interval = interval_s
        self._max = max_events
        self._boxes: dict[str, _Box] = {}

    def publish(self, recipients: Iterable[str], key: Key, event: update_pb2.UpdateEvent) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for recipient in recipients:
            box = self._boxes.setdefault(recipient, _Box())
            if box.timer is None and now - box.last_sent >= self._interval:
                box.last_sent = now
                self._send(recipient, event)
                continue
            if box.pending.pop(key, None) is not None:
                EPHEMERAL_COALESCED.inc()
            box.pending[key] = event  # re-inserted: the newest subject goes last
            if box.timer is None:
                box.timer = loop.call_at(box.last_sent + self._interval, self._flush, recipient)

    def _send(self, recipient: str, event: update_pb2.UpdateEvent) -> None:
        EPHEMERAL_SENT.inc()
        self._deliver([recipient], event)

    def _flush(self, recipient: str) -> None:
        box = self._boxes.get(recipient)
        if box is None:
            return
        box.timer = None
        box.last_sent = asyncio.get_running_loop().time()
        for key in list(box.pending)[: self._max]:
            self._send(recipient, box.pending.pop(key))
        if box.pending:  # more than one window's worth: the rest waits for the next
            box.timer = asyncio.get_running_loop().call_at(
                box.last_sent + self._interval, self._flush, recipient
            )

    def prune(self) -> None:
        """Forget recipients idle for a window (they would be sent to at once anyway)."""
        now = asyncio.get_running_loop().time()
        for recipient, box in list(self._boxes.items()):
            if box.timer is None and not box.pending and now - box.last_sent >= self._interval:
                del self._boxes[recipient]

    def close(self) -> None:
        for box in self._boxes.values():
            if box.timer is not None:
                box.timer.cancel()
        self._boxes.clear()


@dataclass
class _User:
    devices: dict[str, State] = field(default_factory=dict)  # connected device -> its own state
    manual: dict[str, State] = field(default_factory=dict)  # set before its stream opened
    last_active: float = 0.0  # wall clock
    last_active_mono: float = 0.0
    shown: State = OFFLINE  # what the contacts were last told


@dataclass
class _Typing:
    expires_at: float  # wall clock
    announced_at: float
    recipients: list[str]


class PresenceTracker:
    def __init__(self, settings: PresenceSettings, mesh: MeshClients, deliver: Deliver) -> None:
        self._settings = settings
        self._mesh = mesh
        self.fanout = EphemeralFanout(
            deliver, settings.fanout_interval_s, settings.fanout_max_events
        )
        self._users: dict[str, _User] = {}
        self._typing: dict[tuple[str, str], _Typing] = {}
        self._talking: dict[str, tuple[str, str, list[str]]] = {}
        self._contacts: dict[str, tuple[float, list[str]]] = {}
        self._members: dict[str, tuple[float, list[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(
            *self._tasks, *([self._ticker] if self._ticker else []), return_exceptions=True
        )
        self.fanout.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # presence is best effort: the next change corrects it
                _log.warning("presence fan-out failed", error=repr(exc))

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- presence --------------------------------------------------------------------------

    def _derive(self, user: _User) -> State:
        if not user.devices:
            return OFFLINE
        idle = time.monotonic() - user.last_active_mono >= self._settings.away_after_s
        if not idle and ONLINE in user.devices.values():
            return ONLINE
        return AWAY

    def presence_of(self, user_id: str) -> presence_pb2.Presence:
        user = self._users.get(user_id)
        presence = presence_pb2.Presence(
            user_id=user_id, state=self._derive(user) if user else OFFLINE
        )
        if user is not None and user.last_active:
            presence.last_active_at.CopyFrom(_timestamp(user.last_active))
        return presence

    def _touch(self, user: _User) -> None:
        user.last_active = time.time()
        user.last_active_mono = time.monotonic()

    def _changed(self, user_id: str) -> None:
        """Tell the user's contacts if what they see of the user changed."""
        user = self._users.get(user_id)
        if user is None:
            return
        state = self._derive(user)
        if state != user.shown:
            user.shown = state
            event = update_event(presence=self.presence_of(user_id))
            self._spawn(self._announce(user_id, event))
        if not user.devices and not user.manual:
            del self._users[user_id]

    async def _announce(self, user_id: str, event: update_pb2.UpdateEvent) -> None:
        contacts = await self._contacts_of(user_id)
        self.fanout.publish(contacts, ("presence", user_id), event)

    async def _snapshot(self, user_id: str) -> None:
        """A device just connected: the contacts' current presence, as far as known here."""
        for contact in await self._contacts_of(user_id):
            known = self._users.get(contact)
            if known is not None and known.shown != OFFLINE:
                event = update_event(presence=self.presence_of(contact))
                self.fanout.publish([user_id], ("presence", contact), event)

    def device_changed(self, user_id: str, device_id: str, live: bool) -> None:
        """A device opened (or replaced) or closed its updates stream (DeviceHub listener)."""
        user = self._users.setdefault(user_id, _User())
        if live:
            user.devices[device_id] = user.manual.pop(device_id, ONLINE)
            self._touch(user)
            self._spawn(self._snapshot(user_id))
        else:
            user.devices.pop(device_id, None)
            if not user.devices:
                user.manual.clear()
        self._changed(user_id)

    def set_presence(self, user_id: str, device_id: str, state: State) -> presence_pb2.Presence:
        require_id(device_id, "device_id")
        if state not in (ONLINE, AWAY):
            raise InvalidArgument(
                "state must be PRESENCE_STATE_ONLINE or PRESENCE_STATE_AWAY "
                "(offline follows from closing the updates stream)"
            )
        user = self._users.setdefault(user_id, _User())
        if device_id in user.devices:
            user.devices[device_id] = state
        else:  # its updates stream is not open (yet): applies when it opens
            user.manual[device_id] = state
        if state == ONLINE:
            self._touch(user)
        self._changed(user_id)
        return self.presence_of(user_id)

    def thread_changed(self, change: update_pb2.ThreadChanged, local_users: Sequence[str]) -> None:
        """Members joined a thread: they are new contacts of each other. Forget the cached
        contacts, and tell the new contacts the presence of those homed here (the others'
        home routers do the same for theirs), so nobody waits for a change to see it."""
        if change.change not in (
            update_pb2.THREAD_CHANGE_KIND_CREATED,
            update_pb2.THREAD_CHANGE_KIND_MEMBERS_ADDED,
        ):
            return
        members = [m.user_id for m in change.thread.members]
        for member in members:
            self._contacts.pop(member, None)
        for user_id in local_users:
            user = self._users.get(user_id)
            if user is None or user.shown == OFFLINE:
                continue
            others = [m for m in members if m != user_id]
            event = update_event(presence=self.presence_of(user_id))
            self.fanout.publish(others, ("presence", user_id), event)

    # -- contacts and members (cached) -----------------------------------------------------

    async def _contacts_of(self, user_id: str) -> list[str]:
        now = time.monotonic()
        cached = self._contacts.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        contacts: dict[str, None] = {}
        token = ""
        while True:
            page = await self._mesh.header(user_id).ListThreadsForUser(
                header_pb.ListThreadsForUserRequest(
                    user_id=user_id, page_size=200, page_token=token
                )
            )
            for thread in page.threads:
                for member in thread.members:
                    if member.user_id != user_id:
                        contacts[member.user_id] = None
            token = page.next_page_token
            if not token:
                break
        found = list(contacts)
        if len(self._contacts) > 50_000:
            self._contacts.clear()
        self._contacts[user_id] = (now + self._settings.contacts_cache_s, found)
        return found

    async def _members_of(self, thread_id: str) -> list[str]:
        now = time.monotonic()
        cached = self._members.get(thread_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        reply = await self._mesh.header(thread_id).GetMembers(
            header_pb.GetMembersRequest(thread_id=thread_id)
        )
        members = list(reply.user_ids)
        if len(self._members) > 50_000:
            self._members.clear()
        self._members[thread_id] = (now + self._settings.contacts_cache_s, members)
        return members

    # -- typing ----------------------------------------------------------------------------

    def _typing_event(
        self, thread_id: str, user_id: str, typing: bool, expires_at: float
    ) -> update_pb2.UpdateEvent:
        indicator = presence_pb2.Typing(thread_id=thread_id, user_id=user_id, typing=typing)
        if typing:
            indicator.expires_at.CopyFrom(_timestamp(expires_at))
        return update_event(typing=indicator)

    async def set_typing(
        self, user_id: str, thread_id: str, typing: bool
    ) -> timestamp_pb2.Timestamp:
        """The caller is a member (checked by the router). Returns when it lapses."""
        now = time.time()
        key = (thread_id, user_id)
        if not typing:
            stopped = self._typing.pop(key, None)
            if stopped is not None:
                self._publish_typing(thread_id, user_id, stopped.recipients, False, now)
            return _timestamp(now)
        recipients = [m for m in await self._members_of(thread_id) if m != user_id]
        user = self._users.setdefault(user_id, _User())
        self._touch(user)
        self._changed(user_id)
        expires_at = now + self._settings.typing_ttl_s
        previous = self._typing.get(key)
        entry = _Typing(expires_at, previous.announced_at if previous else 0.0, recipients)
        self._typing[key] = entry
        # Renewals go out only once half the announced time is used up: fewer frames.
        if now - entry.announced_at >= self._settings.typing_ttl_s / 2:
            entry.announced_at = now
            self._publish_typing(thread_id, user_id, recipients, True, expires_at)
        return _timestamp(expires_at)

    def _publish_typing(
        self, thread_id: str, user_id: str, recipients: list[str], typing: bool, expires: float
    ) -> None:
        self.fanout.publish(
            recipients,
            ("typing", thread_id, user_id),
            self._typing_event(thread_id, user_id, typing, expires),
        )

    # -- talking now (MessageObserver) -----------------------------------------------------

    def message_started(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        sender = header.sender_user_id
        user = self._users.get(sender)
        if user is not None:
            self._touch(user)
            self._changed(sender)
        typing = self._typing.pop((header.thread_id, sender), None)
        if typing is not None:  # the text or talk they were typing is here
            self._publish_typing(header.thread_id, sender, typing.recipients, False, 0.0)
        if header.kind != message_pb2.MESSAGE_KIND_VOICE or header.state != (
            message_pb2.MESSAGE_STATE_LIVE
        ):
            return
        recipients = [m for m in dict.fromkeys(member_ids) if m != sender]
        self._talking[header.message_id] = (header.thread_id, sender, recipients)
        self._publish_talking(header, recipients, True)

    def message_ended(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        talking = self._talking.pop(header.message_id, None)
        if talking is not None:
            self._publish_talking(header, talking[2], False)

    def _publish_talking(
        self, header: message_pb2.MessageHeader, recipients: list[str], talking: bool
    ) -> None:
        event = update_event(
            talking_now=presence_pb2.TalkingNow(
                thread_id=header.thread_id,
                user_id=header.sender_user_id,
                message_id=header.message_id,
                talking=talking,
            )
        )
        self.fanout.publish(recipients, ("talking", header.thread_id, header.sender_user_id), event)

    # -- time: typing lapses, idle users turn away -----------------------------------------

    async def _tick(self) -> None:
        every = min(1.0, self._settings.typing_ttl_s / 4)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                self._expire()

    def _expire(self) -> None:
        now = time.time()
        for key, typing in list(self._typing.items()):
            if typing.expires_at <= now:
                del self._typing[key]
                self._publish_typing(key[0], key[1], typing.recipients, False, 0.0)
        for user_id in list(self._users):
            self._changed(user_id)  # idle long enough: away
        self.fanout.prune()
