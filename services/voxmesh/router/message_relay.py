"""Talk: a message from its sender to every target's devices (live) and to the stores (durable).

The source router asks the thread's header node for the seq and the members, relays each
chunk frame at once to the targets' home router (with one router per ring: this router's
device hub), and streams the chunks to the message's body node, which acknowledges only what
is durable (group commits). Nothing on the live path waits for storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from voxmesh.body.v1 import body_service_pb2 as body_pb
from voxmesh.common.v1 import body_pb2, message_pb2, update_pb2
from voxmesh.core import field_rules
from voxmesh.core.chunk_frames import (
    BodyEdge,
    FrameLimits,
    check_chunk_frame,
    first_frame_edge,
)
from voxmesh.core.domain_errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from voxmesh.core.ids import require_id
from voxmesh.core.mesh_clients import MeshClients
from voxmesh.core.rpc_interceptors import client_status
from voxmesh.core.settings import Settings
from voxmesh.core.structured_logging import get_logger
from voxmesh.core.telemetry import current_traceparent
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.router.body_links import BodyLinks, MessageWriter
from voxmesh.router.device_hub import DeviceHub
from voxmesh.router.message_observers import MessageObservers
from voxmesh.router.peer_links import PeerLinks
from voxmesh.router.v1 import router_peer_service_pb2 as peer_pb
from voxmesh.router.v1 import router_service_pb2 as pb

_log = get_logger(__name__)

LIVE = message_pb2.MESSAGE_STATE_LIVE
COMPLETE = message_pb2.MESSAGE_STATE_COMPLETE
ABANDONED = message_pb2.MESSAGE_STATE_ABANDONED
RECALLED = message_pb2.MESSAGE_STATE_RECALLED
DELETED = message_pb2.MESSAGE_STATE_DELETED


@dataclass(eq=False)
class LiveMessage:
    """A message being recorded through this router."""

    header: message_pb2.MessageHeader
    targets: list[str]
    sender_device: str
    edge: BodyEdge = field(default_factory=BodyEdge)  # the body once what was relayed is stored
    ended_reason: str | None = None  # set when recalled/deleted: stop relaying
    last_activity: float = field(default_factory=time.monotonic)  # start or chunks, for abandoning
    cut_off: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def thread_id(self) -> str:
        return self.header.thread_id

    @property
    def message_id(self) -> str:
        return self.header.message_id


def update_event(**kwargs: object) -> update_pb2.UpdateEvent:
    event = update_pb2.UpdateEvent(**kwargs)  # type: ignore[arg-type]
    # Not Timestamp.GetCurrentTime: it goes through datetime, on every live chunk.
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    occurred_at = event.occurred_at
    occurred_at.seconds = seconds
    occurred_at.nanos = nanos
    return event


class MessageRelay:
    def __init__(
        self,
        settings: Settings,
        hub: DeviceHub,
        mesh: MeshClients,
        links: PeerLinks,
    ) -> None:
        self._settings = settings
        self._frame_limits = FrameLimits.from_settings(settings)
        self._hub = hub
        self._mesh = mesh
        self._links = links
        self._body_links = BodyLinks(settings, mesh)
        links.reroute = self._reroute_moved
        self.node_id = ""  # this router's ring id, once bound
        self._live: dict[str, LiveMessage] = {}
        self._abandon_watch: dict[str, asyncio.Task[None]] = {}
        # Pushes and unread counts, "talking now": told of starts and ends, never awaited.
        self.observers = MessageObservers()

    def reconfigure(self, settings: Settings) -> None:
        self._settings = settings
        self._frame_limits = FrameLimits.from_settings(settings)
        self._body_links.reconfigure(settings)

    # -- fan-out ---------------------------------------------------------------------------

    def fan_out(
        self,
        user_ids: Sequence[str],
        event: update_pb2.UpdateEvent,
        skip_device: tuple[str, str] | None = None,
        ephemeral: bool = False,
    ) -> None:
        """Hand ``event`` to each user's home router: this one directly, others by link.

        Serialized once, whatever the number of peers; never awaits.
        """
        remote: dict[str, list[str]] = {}
        local: list[str] = []
        for user in user_ids:
            # The first healthy router of the user's preference list: where its devices are.
            member = self._mesh.home("router", user)
            if member is None or member.node_id == self.node_id:
                local.append(user)
            else:
                remote.setdefault(member.mesh_address, []).append(user)
        if local:
            self._hub.deliver(local, event, skip_device)
        if not remote:
            return
        payload = event.SerializeToString()
        # Durable events (a start, a state change) carry the trace on to the peer router;
        # live chunks never do, so the chunk path costs nothing with tracing on or off.
        traceparent = "" if ephemeral else current_traceparent()
        for address, users in remote.items():
            exclude = skip_device[1] if skip_device and skip_device[0] in users else ""
            self._links.send(
                address,
                peer_pb.RelayEntry(
                    user_ids=users,
                    event=payload,
                    exclude_device_id=exclude,
                    ephemeral=ephemeral,
                    traceparent=traceparent,
                ),
            )

    def _reroute_moved(
        self, users: list[str], entry: peer_pb.RelayEntry, from_address: str
    ) -> None:
        """A peer said these users are not homed there (any more): resend to their home now."""
        exclude = entry.exclude_device_id
        remote: dict[str, list[str]] = {}
        for user in users:
            member = self._mesh.home("router", user)  # the first healthy router
            if member is None or member.node_id == self.node_id:
                self._hub.deliver_raw([user], entry.event, (user, exclude) if exclude else None)
            else:
                remote.setdefault(member.mesh_address, []).append(user)
        for address, moved in remote.items():
            if address == from_address:
                continue  # this router's ring has not caught up yet: the event stays lost
            self._links.send(
                address,
                peer_pb.RelayEntry(
                    user_ids=moved,
                    event=entry.event,
                    exclude_device_id=exclude,
                    ephemeral=entry.ephemeral,
                ),
            )

    # -- start -----------------------------------------------------------------------------

    def _validate_start(self, start: message_pb2.MessageStart, device_id: str) -> None:
        require_id(start.message_id, "start.message_id")
        require_id(start.thread_id, "start.thread_id")
        require_id(device_id, "device_id")
        if start.kind == message_pb2.MESSAGE_KIND_UNSPECIFIED:
            raise InvalidArgument("start.kind is required")
        if (
            start.kind
            in (
                message_pb2.MESSAGE_KIND_VOICE,
                message_pb2.MESSAGE_KIND_IMAGE,
                message_pb2.MESSAGE_KIND_FILE,
            )
            and not start.content_type
        ):
            raise InvalidArgument("start.content_type is required for a message with a body")

    async def start(
        self,
        user_id: str,
        device_id: str,
        start: message_pb2.MessageStart,
        first_chunks: Sequence[body_pb2.Chunk] = (),
        resume_from_index: int = 0,
    ) -> tuple[LiveMessage, int]:
        """Header first (seq, members); returns the live message and its durable chunk count.

        The chunks that come with the start are judged first: a refused frame writes nothing
        (no seq taken, no member told)."""
        self._validate_start(start, device_id)
        check_chunk_frame(
            start.message_id,
            first_chunks,
            first_frame_edge(resume_from_index, first_chunks),
            self._frame_limits,
        )
        reply = await self._mesh.header(start.thread_id).StartMessage(
            header_pb.StartMessageRequest(
                start=start, sender_user_id=user_id, sender_device_id=device_id
            )
        )
        header = reply.header
        if not reply.created and header.sender_user_id != user_id:
            raise PermissionDenied(f"message {header.message_id} belongs to another sender")
        live = self._live.get(header.message_id)
        if live is None:
            live = LiveMessage(header, list(reply.member_user_ids), device_id)
        durable = 0
        if not reply.created:
            # A resume (or a retry): continue after what the body store already holds.
            stat = await self._stat(header)
            durable = stat.chunk_count
            if durable > live.edge.next_index:
                live.edge = BodyEdge(durable, stat.size_bytes, live.edge.last_media_ms)
        live.last_activity = time.monotonic()
        if header.state == LIVE:
            self._live[header.message_id] = live
            watch = self._abandon_watch.pop(header.message_id, None)
            if watch is not None:
                watch.cancel()
        if reply.created:
            self.fan_out(
                live.targets,
                update_event(header_added=header),
                skip_device=(user_id, device_id),
            )
            self.observers.message_started(header, live.targets)
        return live, durable

    async def _stat(self, header: message_pb2.MessageHeader) -> body_pb2.BodyStat:
        try:
            reply = await self._mesh.body_unary(header.message_id).StatBody(
                body_pb.StatBodyRequest(thread_id=header.thread_id, message_id=header.message_id)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return body_pb2.BodyStat()
            raise
        return reply.stat

    # -- chunks ----------------------------------------------------------------------------

    def relay_chunks(
        self, live: LiveMessage, chunks: Sequence[body_pb2.Chunk]
    ) -> list[body_pb2.Chunk]:
        """Check chunks and relay the new ones live at once; returns the chunks to store."""
        if live.ended_reason is not None:
            raise FailedPrecondition(live.ended_reason)
        live.last_activity = time.monotonic()
        # The frame rule the body store applies too: nothing it would refuse is played live.
        check = check_chunk_frame(live.message_id, chunks, live.edge, self._frame_limits)
        fresh = chunks[check.new_from :] if check.has_new else ()
        live.edge = check.edge
        if fresh:
            self.fan_out(
                live.targets,
                update_event(
                    live_chunks=update_pb2.LiveChunks(
                        thread_id=live.thread_id, message_id=live.message_id, chunks=fresh
                    )
                ),
                skip_device=(live.header.sender_user_id, live.sender_device),
                ephemeral=True,
            )
        return list(chunks)  # the body store drops duplicates itself, checking their bytes

    # -- end -------------------------------------------------------------------------------

    async def complete(
        self, live: LiveMessage, end: message_pb2.MessageEnd
    ) -> message_pb2.MessageHeader:
        """Body final (one object), then header complete, then tell every target."""
        field_rules.check_fields(end, "end")  # before the body is finished
        await self._mesh.body_unary(live.message_id).FinishBody(
            body_pb.FinishBodyRequest(
                thread_id=live.thread_id,
                message_id=live.message_id,
                final_state=COMPLETE,
                end=end,
            )
        )
        reply = await self._mesh.header(live.thread_id).CompleteMessage(
            header_pb.CompleteMessageRequest(
                thread_id=live.thread_id, message_id=live.message_id, end=end
            )
        )
        self._live.pop(live.message_id, None)
        watch = self._abandon_watch.pop(live.message_id, None)
        if watch is not None:
            watch.cancel()
        self.fan_out(
            list(reply.member_user_ids) or live.targets,
            update_event(
                message_state_changed=update_pb2.MessageStateChanged(
                    header=reply.header,
                    previous_state=LIVE,
                    actor_user_id=live.header.sender_user_id,
                )
            ),
        )
        self.observers.message_ended(reply.header, list(reply.member_user_ids) or live.targets)
        return reply.header

    # -- Send (bidirectional) --------------------------------------------------------------

    async def send(
        self, user_id: str, frames: AsyncIterator[pb.SendRequest], resumable: bool = True
    ) -> AsyncIterator[pb.SendResponse]:
        """A talk. ``resumable=False`` (a WebRTC talk: live audio is never resent) abandons
        the message as soon as it stops without ``end``, once what was sent is durable,
        instead of waiting ``abandon_after_s`` for a resume that cannot come."""
        try:
            first = await anext(frames)
        except StopAsyncIteration:
            raise InvalidArgument("Send needs a first frame carrying `start`") from None
        if not first.HasField("start"):
            raise InvalidArgument("the first Send frame must carry `start`")
        inbox = _SendInbox(frames)
        try:
            try:
                field_rules.check_fields(first)  # its chunks: the chunk-frame rule, in start
                live, durable = await self.start(
                    user_id, first.device_id, first.start, first.chunks, first.resume_from_index
                )
            except DomainError as refused_start:
                # Nothing written; say why, let the client half-close, end with the status.
                async for frame in self._stop(refused_start, inbox):
                    yield frame
                raise
            yield pb.SendResponse(
                accepted=pb.SendAccepted(header=live.header, durable_chunk_count=durable)
            )
            refused: DomainError | None = None
            if live.header.state == COMPLETE:
                yield pb.SendResponse(completed=pb.SendCompleted(header=live.header))
                return
            if live.header.state != LIVE:
                state = message_pb2.MessageState.Name(live.header.state)
                refused = FailedPrecondition(f"message {live.message_id} is {state}")
            elif first.resume_from_index > durable:
                refused = InvalidArgument(
                    f"resume_from_index {first.resume_from_index} is past the durable chunk "
                    f"count {durable}: resend from {durable}"
                )
            if refused is not None:
                async for frame in self._stop(refused, inbox):
                    yield frame
            async for frame in self._stream(live, first, inbox, resumable):
                yield frame
        finally:
            inbox.close()

    async def _stop(
        self, error: BaseException, inbox: _SendInbox
    ) -> AsyncIterator[pb.SendResponse]:
        """End a Send early, and the client still writing: say why in a frame, let the client
        half-close, then end with that status (see SendStopped)."""
        status = client_status(error)
        if status is not None:
            code, details = status
            yield pb.SendResponse(stopped=pb.SendStopped(code=code.value[0], message=details))
            await inbox.drain(self._settings.body_store.send_stop_grace_s)
        raise error

    async def _stream(
        self, live: LiveMessage, first: pb.SendRequest, inbox: _SendInbox, resumable: bool
    ) -> AsyncIterator[pb.SendResponse]:
        """The chunks of a started message to its body node, acks and completion back."""
        # What goes back to the sender, in order: acks, completion, an error, None (done),
        # or _CUT (recalled or deleted meanwhile). One wake event, no task per item.
        out: deque[pb.SendResponse | BaseException | object | None] = deque()
        wake = asyncio.Event()

        def put(item: pb.SendResponse | BaseException | object | None) -> None:
            out.append(item)
            wake.set()

        def on_ack(ack: body_pb2.DurableAck) -> None:
            put(pb.SendResponse(ack=ack))

        writer = self._body_links.writer(
            live.thread_id, live.message_id, live.header.content_type, on_ack
        )

        async def pump_frames() -> None:
            try:
                frame: pb.SendRequest | None = first
                while frame is not None:
                    if frame.chunks:
                        await writer.write(self.relay_chunks(live, frame.chunks))
                    if frame.HasField("end"):
                        await writer.finish(frame.end.chunk_count)
                        header = await self.complete(live, frame.end)
                        put(pb.SendResponse(completed=pb.SendCompleted(header=header)))
                        break
                    frame = await inbox.next()
                put(None)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    put(exc)
                raise

        async def watch_cut_off() -> None:
            await live.cut_off.wait()
            put(_CUT)

        completed = False
        pump = asyncio.create_task(pump_frames())
        cut_off = asyncio.create_task(watch_cut_off())
        try:
            while True:
                while not out:
                    wake.clear()
                    await wake.wait()
                item = out.popleft()
                if item is _CUT:
                    stop: BaseException = FailedPrecondition(live.ended_reason or "message ended")
                    break
                if item is None:
                    return
                if isinstance(item, BaseException):
                    stop = item
                    break
                assert isinstance(item, pb.SendResponse)
                response = item
                if response.HasField("ack"):
                    # Acks are cumulative: one already queued behind this one supersedes it.
                    while out:
                        newer = out[0]
                        if not isinstance(newer, pb.SendResponse) or not newer.HasField("ack"):
                            break
                        response = newer
                        out.popleft()
                completed = response.HasField("completed")
                yield response
            pump.cancel()
            async for frame in self._stop(stop, inbox):
                yield frame
        finally:
            cut_off.cancel()
            pump.cancel()
            if pump.done() and not pump.cancelled():
                pump.exception()  # retrieved: it was passed on through `out`
            if completed:
                writer.close()
            elif resumable:
                # The sender vanished or failed mid-message: it may resume; if it does not,
                # the message is abandoned with what arrived.
                writer.close()
                self.watch_for_abandonment(live)
            elif live.message_id not in self._abandon_watch:
                self._abandon_watch[live.message_id] = asyncio.create_task(
                    self._abandon_when_stored(live, writer)
                )

    # -- abandonment -----------------------------------------------------------------------

    def watch_for_abandonment(self, live: LiveMessage) -> None:
        if live.message_id in self._abandon_watch:
            return
        self._abandon_watch[live.message_id] = asyncio.create_task(self._abandon_later(live))

    async def _abandon_when_stored(self, live: LiveMessage, writer: MessageWriter) -> None:
        """A talk that cannot resume stopped without ``end``: the chunks it sent are stored
        (resent on failover, for at most ``failover_wait_s``), then it is abandoned now."""
        try:
            async with asyncio.timeout(self._settings.body_store.failover_wait_s):
                await writer.finish(live.edge.next_index)
        except Exception as exc:  # stored or not, abandon with what the body store has
            _log.info(
                "abandoning with what was stored", message_id=live.message_id, error=repr(exc)
            )
        finally:
            writer.close()
        await self._abandon_later(live, idle_first=False)

    async def _abandon_later(self, live: LiveMessage, idle_first: bool = True) -> None:
        """After the abandon timeout with no resume, keep what arrived and mark it abandoned.

        The header's state decides: a message completed, recalled or deleted meanwhile (or
        resumed, which cancels this watch) is left alone.
        """
        try:
            while idle_first:  # until the message was idle for abandon_after_s (dynamic)
                idle = time.monotonic() - live.last_activity
                wait = self._settings.body_store.abandon_after_s - idle
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._live.pop(live.message_id, None)
            current = await self._mesh.header(live.thread_id).GetMessage(
                header_pb.GetMessageRequest(thread_id=live.thread_id, message_id=live.message_id)
            )
            if current.header.state == ABANDONED:
                # The body node got there first (its idle timer starts at the last chunk);
                # the header is set, but members and observers still need to hear of it.
                await self.set_state(
                    live.thread_id, live.message_id, ABANDONED, live.header.sender_user_id
                )
                return
            if current.header.state != LIVE:
                return
            kept = message_pb2.MessageEnd()  # no chunk ever arrived: no body
            try:
                finished = await self._mesh.body_unary(live.message_id).FinishBody(
                    body_pb.FinishBodyRequest(
                        thread_id=live.thread_id, message_id=live.message_id, final_state=ABANDONED
                    )
                )
                kept = message_pb2.MessageEnd(
                    chunk_count=finished.stat.chunk_count, size_bytes=finished.stat.size_bytes
                )
                if finished.stat.HasField("duration"):
                    kept.duration.CopyFrom(finished.stat.duration)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            await self.set_state(
                live.thread_id, live.message_id, ABANDONED, live.header.sender_user_id, kept
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("abandoning failed", message_id=live.message_id)
        finally:
            self._abandon_watch.pop(live.message_id, None)

    # -- state changes ---------------------------------------------------------------------

    async def set_state(
        self,
        thread_id: str,
        message_id: str,
        state: message_pb2.MessageState.ValueType,
        actor: str,
        kept: message_pb2.MessageEnd | None = None,
    ) -> message_pb2.MessageHeader:
        """Header state change (recall, delete, abandon with what the body ``kept``), body
        side effects, and fan-out."""
        reply = await self._mesh.header(thread_id).SetMessageState(
            header_pb.SetMessageStateRequest(
                thread_id=thread_id,
                message_id=message_id,
                state=state,
                actor_user_id=actor,
                kept=kept,
            )
        )
        header = reply.header
        if state in (RECALLED, DELETED):
            live = self._live.pop(message_id, None)
            if live is not None:
                live.ended_reason = (
                    f"message {message_id} was {message_pb2.MessageState.Name(state)}"
                )
                live.cut_off.set()
            body = header.body if header.HasField("body") else None
            # A forward shares its source's body: only the original's own body is deleted.
            if body is None or not body.message_id or body.message_id == message_id:
                with contextlib.suppress(grpc.aio.AioRpcError, Unavailable):
                    await self._mesh.body_unary(message_id).DeleteBody(
                        body_pb.DeleteBodyRequest(
                            thread_id=thread_id, message_id=message_id, reason=state
                        )
                    )
        self.fan_out(
            list(reply.member_user_ids),
            update_event(
                message_state_changed=update_pb2.MessageStateChanged(
                    header=header, previous_state=reply.previous_state, actor_user_id=actor
                )
            ),
        )
        self.observers.message_ended(header, list(reply.member_user_ids))
        return header

    def live_message(self, message_id: str) -> LiveMessage | None:
        return self._live.get(message_id)

    async def close(self) -> None:
        for task in list(self._abandon_watch.values()):
            task.cancel()
        await self._body_links.close()
        await self._links.close()


_CUT = object()  # a Send's outbox: the message was recalled or deleted meanwhile


class _SendInbox:
    """A Send's client frames, read by one task.

    The frame pump is cancelled when a stream stops early, and cancelling a pending read of
    grpc's request iterator would close it; reading in a task of its own keeps the stream
    readable, so a stop can drain what the client still sends until it half-closes. The
    small queue keeps HTTP/2 flow control as the back-pressure on the sender.
    """

    def __init__(self, frames: AsyncIterator[pb.SendRequest], depth: int = 4) -> None:
        self._queue: asyncio.Queue[pb.SendRequest | BaseException | None] = asyncio.Queue(depth)
        self._half_closed = False
        self._failed: BaseException | None = None
        self._task = asyncio.create_task(self._read(frames))

    async def _read(self, frames: AsyncIterator[pb.SendRequest]) -> None:
        try:
            async for frame in frames:
                await self._queue.put(frame)
        except Exception as exc:  # the client went away: the pump sees it as its error
            await self._queue.put(exc)
            return
        await self._queue.put(None)

    async def next(self) -> pb.SendRequest | None:
        """The next frame, or None once the client half-closed."""
        if self._failed is not None:
            raise self._failed
        if self._half_closed:
            return None
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._failed = item
            raise item
        self._half_closed = item is None
        return item

    async def drain(self, grace_s: float) -> None:
        """Discard frames until the client half-closes or goes away, for at most ``grace_s``."""
        with contextlib.suppress(Exception):  # timed out, or the client went away
            async with asyncio.timeout(grace_s):
                while await self.next() is not None:
                    pass

    def close(self) -> None:
        self._task.cancel()
