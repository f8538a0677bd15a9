"""A small world on the real stack for hostile clients: users, threads, messages, and the
raw calls and checks that the fuzz and the authorization matrix share.

Calls are sync (a blocking channel, TLS like every client) so hypothesis can drive them; every
request goes out as bytes through identity serializers, so a mutated encoding is sent exactly
as made.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message

from tests.mesh_pki import client_port_channel_sync
from tests.security.proto_strategies import IdPool
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.ids import new_uuid7
from voxmesh.core.settings import Settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"]
METHODS: list[MethodDescriptor] = list(ROUTER_SERVICE.methods)

# What a client may be told. Never INTERNAL or UNKNOWN (nor UNAVAILABLE: the stack is up).
PRECISE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # rate limits
        grpc.StatusCode.ABORTED,  # an updates stream superseded by a newer one
    }
)
STREAM_READ_S = 0.3  # how long a streaming response is followed before the client stops
_names = itertools.count()


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def request_class(method: MethodDescriptor) -> type[Message]:
    return getattr(pb, method.input_type.name)  # type: ignore[no-any-return]


def decodes(method: MethodDescriptor, payload: bytes) -> bool:
    try:
        request_class(method).FromString(payload)
    except DecodeError:
        return False
    return True


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: list[bytes] = field(default_factory=list)
    client_stopped: bool = False  # a stream still open when the client stopped following it

    @property
    def accepted_a_send(self) -> bool:
        """A Send whose header was accepted before it ended (the message exists by design)."""
        return any(pb.SendResponse.FromString(r).HasField("accepted") for r in self.responses)


def call(
    channel: grpc.Channel,
    method: MethodDescriptor,
    frames: list[bytes],
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float = 15.0,
    follow_s: float = STREAM_READ_S,
) -> Outcome:
    """One call of ``method`` with ``frames`` (one for unary requests), bytes in and out."""
    path = method_path(method)
    kw: dict[str, Any] = {"metadata": metadata, "timeout": timeout_s}
    responses: list[bytes] = []
    try:
        if method.server_streaming and method.client_streaming:
            # Send: the server ends it once the client half-closes (after the frames).
            responses.extend(channel.stream_stream(path, None, None)(iter(frames), **kw))
        elif method.server_streaming:
            stream = channel.unary_stream(path, None, None)(frames[0], **kw)
            # Follow the stream for a moment: Updates (and a live ReadBody) never end.
            timer = _cancel_at(stream, time.monotonic() + follow_s)
            try:
                for response in stream:
                    responses.append(response)
            finally:
                timer.cancel()
        elif method.client_streaming:
            responses.append(
                channel.stream_unary(path, None, None)(
                    iter(frames), metadata=metadata, timeout=timeout_s
                )
            )
        else:
            responses.append(
                channel.unary_unary(path, None, None)(
                    frames[0], metadata=metadata, timeout=timeout_s
                )
            )
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.CANCELLED and details == "Locally cancelled by application!":
            return Outcome(grpc.StatusCode.OK, "", responses, client_stopped=True)
        return Outcome(code, details, responses)
    return Outcome(grpc.StatusCode.OK, "", responses)


def _cancel_at(stream: Any, deadline: float) -> Any:
    import threading

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), stream.cancel)
    timer.daemon = True
    timer.start()
    return timer


def assert_precise(method: MethodDescriptor, outcome: Outcome, request: object) -> None:
    where = f"{method.name} answered {outcome.code.name} {outcome.details!r} to {request!r}"
    assert outcome.code in PRECISE, where
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.details.strip(), where  # a refusal says why
        assert "internal error" not in outcome.details, where
        assert "Traceback" not in outcome.details and "Exception" not in outcome.details, where


# -- the world -----------------------------------------------------------------------------


@dataclass
class World:
    """Users, their threads and messages, on the real stack, reached through the router."""

    stack: LocalStack
    owner: str = ""  # admin of the group, sender of the messages: the fuzzing client
    peer: str = ""  # a plain member
    stranger: str = ""  # in no thread
    pool: IdPool = field(default_factory=IdPool)
    group_id: str = ""
    direct_id: str = ""
    channel: grpc.Channel = field(init=False)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_snapshot: Any = None  # still true after a refused call

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def __post_init__(self) -> None:
        address = f"{self.settings.host}:{self.settings.router.port}"
        self.channel = client_port_channel_sync(self.settings, address)
        run = next(_names)
        self.owner, self.peer, self.stranger = (f"{r}-{run}" for r in ("fz", "pr", "xx"))
        self.pool.user_ids = [self.owner, self.peer, self.stranger]

    def metadata(self, user: str | None = None) -> tuple[tuple[str, str], ...]:
        token = issue_token(self.settings.auth, user or self.owner)
        return (("authorization", f"Bearer {token}"),)

    def unary(self, name: str, request: Message, user: str | None = None) -> Any:
        method = ROUTER_SERVICE.methods_by_name[name]
        outcome = call(self.channel, method, [request.SerializeToString()], self.metadata(user))
        if outcome.code != grpc.StatusCode.OK:
            raise AssertionError(f"{name}: {outcome.code.name} {outcome.details}")
        reply_cls = getattr(pb, method.output_type.name)
        return reply_cls.FromString(outcome.responses[0])

    # -- building it -----------------------------------------------------------------------

    def build(self) -> World:
        self.new_group()
        direct = self.unary(
            "CreateThread",
            pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_DIRECT, member_user_ids=[self.peer]),
        )
        self.direct_id = direct.thread.thread_id
        self.pool.thread_ids.append(self.direct_id)
        self.pool.thread_ids.append(new_uuid7())  # a thread that does not exist
        self.add_messages(self.group_id)
        self.add_messages(self.direct_id)
        listing = self.unary(
            "ListMessages", pb.ListMessagesRequest(thread_id=self.group_id, page_size=1)
        )
        self.pool.page_tokens.append(listing.next_page_token)
        timeline = self.unary(
            "ListTimeline", pb.ListTimelineRequest(device_id="phone", page_size=1)
        )
        self.pool.page_tokens.append(timeline.next_page_token)
        self.pool.cursors.append(timeline.next_cursor)
        return self

    def new_group(self) -> str:
        group = self.unary(
            "CreateThread",
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP, title="fuzz", member_user_ids=[self.peer]
            ),
        )
        self.group_id = group.thread.thread_id
        self.pool.thread_ids.append(self.group_id)
        return self.group_id

    def add_messages(self, thread_id: str) -> None:
        text = new_uuid7()
        self.unary(
            "SendText",
            pb.SendTextRequest(message_id=text, thread_id=thread_id, device_id="phone", text="hi"),
        )
        voice = new_uuid7()
        start = message_pb2.MessageStart(
            message_id=voice,
            thread_id=thread_id,
            kind=message_pb2.MESSAGE_KIND_VOICE,
            content_type="audio/ogg;codecs=opus",
        )
        chunks = [
            body_pb2.Chunk(index=i, offset=i * 8, media_time_ms=i * 20, payload=b"\x02" * 8)
            for i in range(3)
        ]
        self.unary(
            "StartMessage",
            pb.StartMessageRequest(
                start=start,
                device_id="phone",
                chunks=chunks,
                end=message_pb2.MessageEnd(chunk_count=3, size_bytes=24),
            ),
        )
        self.pool.message_ids += [text, voice]

    # -- what a refused call must leave as it was ------------------------------------------

    def snapshot(self) -> Any:
        """What the owner sees: its threads (title, members, last seq, marks, mute), and the
        messages of the group it fuzzes in (state, likes, text)."""
        threads = self.unary("ListThreads", pb.ListThreadsRequest(page_size=200)).threads
        seen: list[Any] = []
        for thread in sorted(threads, key=lambda t: t.thread_id):
            state = thread.user_state
            seen.append(
                (
                    thread.thread_id,
                    thread.title,
                    thread.last_seq,
                    tuple(sorted((m.user_id, m.role) for m in thread.members)),
                    (state.read_seq, state.listened_seq, state.muted, state.muted_until.seconds),
                )
            )
        if any(t.thread_id == self.group_id for t in threads):
            headers = self.unary(
                "ListMessages",
                pb.ListMessagesRequest(thread_id=self.group_id, page_size=200, after_seq=0),
            ).headers
            seen.append(
                sorted(
                    (
                        h.message_id,
                        h.seq,
                        # A live message may be abandoned meanwhile: its sender is gone.
                        "LIVE" if h.state == message_pb2.MESSAGE_STATE_ABANDONED else h.state,
                        h.like_count,
                        h.text,
                    )
                    for h in headers
                )
            )
        return tuple(seen)

    def still_a_member(self) -> None:
        """Keep a group to fuzz in: calls that succeed may leave or empty it."""
        threads = self.unary("ListThreads", pb.ListThreadsRequest(page_size=200)).threads
        mine = {t.thread_id: t for t in threads}
        group = mine.get(self.group_id)
        admin = group is not None and any(
            m.user_id == self.owner and m.role == thread_pb2.MEMBER_ROLE_ADMIN
            for m in group.members
        )
        if not admin:
            self.add_messages(self.new_group())

    # -- the processes ---------------------------------------------------------------------

    def service_logs(self) -> dict[str, Path]:
        return {
            c.name: self.stack.paths.logs / f"{c.name}.log"
            for c in self.stack.components
            if c.role == "service"
        }

    def log_offsets(self) -> dict[str, int]:
        return {name: path.stat().st_size for name, path in self.service_logs().items()}

    def log_since(self, offsets: dict[str, int]) -> Iterator[tuple[str, str]]:
        for name, path in self.service_logs().items():
            with path.open("rb") as fh:
                fh.seek(offsets.get(name, 0))
                yield name, fh.read().decode(errors="replace")

    def service_pids(self) -> dict[str, int]:
        """The services' processes now, as supervisord runs them (earlier tests on the shared
        stack may have killed and restarted one, so the recorded pids can be stale)."""
        return {
            s.component.name: s.pid for s in self.stack.status() if s.component.role == "service"
        }


def assert_alive(pids: dict[str, int]) -> None:
    for name, pid in pids.items():
        assert psutil.pid_exists(pid), f"{name} (pid {pid}) is gone"
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, f"{name} is a zombie"
