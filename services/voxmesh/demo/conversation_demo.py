"""A scripted walkie-talkie conversation over the running mesh, with real speech.

Alice talks to a group; Bob hears her live while she is still talking and answers; Carol is
offline and catches up later from her timeline. Every message's audio is written to files a
person can play, and the demo checks that what each participant got is what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from voxmesh.common.v1 import body_pb2, device_pb2, message_pb2, thread_pb2, update_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.ids import new_uuid7
from voxmesh.core.mesh_tls import client_channel
from voxmesh.core.settings import Settings
from voxmesh.demo.speech_audio import OggPage, encode_ogg_opus, ogg_duration_s, synthesize
from voxmesh.notification.webhook_receiver import WebhookReceiver
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc

SCRIPT = (
    ("alice", "Hello Bob and Carol. This is a live voice message, streamed while I talk."),
    ("bob", "Hi Alice, I heard you live. Carol will catch up when she is back."),
)
CONTENT_TYPE = "audio/ogg;codecs=opus"


@dataclass
class Participant:
    name: str
    user_id: str
    stub: Any
    metadata: tuple[tuple[str, str], ...]
    events: list[update_pb2.UpdateEvent] = field(default_factory=list)
    arrivals: dict[tuple[str, int], float] = field(default_factory=dict)

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)


async def _listen(person: Participant, caught_up: asyncio.Event) -> None:
    call = person.stub.Updates(pb.UpdatesRequest(device_id="phone"), metadata=person.metadata)
    async for frame in call:
        now = time.perf_counter()
        for event in frame.events:
            person.events.append(event)
            if event.HasField("caught_up"):
                caught_up.set()
            if event.HasField("live_chunks"):
                for chunk in event.live_chunks.chunks:
                    person.arrivals.setdefault((event.live_chunks.message_id, chunk.index), now)


async def _talk(
    speaker: Participant, thread_id: str, pages: list[OggPage], sent_at: dict[int, float]
) -> pb.SendResponse:
    """Stream the pages at real time, as a phone would while its user speaks."""
    message_id = new_uuid7()
    call = speaker.stub.Send(metadata=speaker.metadata)
    start = message_pb2.MessageStart(
        message_id=message_id,
        thread_id=thread_id,
        kind=message_pb2.MESSAGE_KIND_VOICE,
        content_type=CONTENT_TYPE,
    )
    await call.write(pb.SendRequest(start=start, device_id="phone"))
    offset = 0
    began = time.perf_counter()
    for index, page in enumerate(pages):
        delay = began + page.media_time_ms / 1000 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at[index] = time.perf_counter()
        chunk = body_pb2.Chunk(
            index=index, offset=offset, media_time_ms=page.media_time_ms, payload=page.data
        )
        await call.write(pb.SendRequest(chunks=[chunk]))
        offset += len(page.data)
    await call.write(
        pb.SendRequest(end=message_pb2.MessageEnd(chunk_count=len(pages), size_bytes=offset))
    )
    await call.done_writing()
    last: pb.SendResponse | None = None
    async for response in call:
        last = response
    assert last is not None and last.HasField("completed"), "Send ended without completion"
    return last


async def run_demo(
    settings: Settings, out_dir: Path, say: Callable[[str], None] = print
) -> dict[str, Path]:
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    suffix = secrets.token_hex(3)
    address = f"{settings.host}:{settings.router.port}"
    files: dict[str, Path] = {}
    async with client_channel(settings, address) as channel:
        stub = pb_grpc.RouterServiceStub(channel)
        people = {
            name: Participant(
                name,
                f"{name}-{suffix}",
                stub,
                (("authorization", f"Bearer {issue_token(settings.auth, f'{name}-{suffix}')}"),),
            )
            for name in ("alice", "bob", "carol")
        }
        alice, bob, carol = people["alice"], people["bob"], people["carol"]
        homes: list[grpc.aio.Channel] = []
        for person in people.values():
            # Each user's devices connect to the user's home router (Discover on any router).
            found = await person.call("Discover", pb.DiscoverRequest(user_id=person.user_id))
            home = client_channel(settings, found.routers[0].address)
            homes.append(home)
            person.stub = pb_grpc.RouterServiceStub(home)
            say(f"{person.name}'s home router: {found.routers[0].node_id}")
        created = await alice.call(
            "CreateThread",
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_GROUP,
                title="voxmesh demo",
                member_user_ids=[bob.user_id, carol.user_id],
            ),
        )
        thread_id = created.thread.thread_id
        say(f"alice created the group 'voxmesh demo' with bob and carol ({thread_id})")
        # Carol's phone is reached by push: a webhook to a small receiver on loopback.
        pushes = await WebhookReceiver(host=settings.host).start()
        await carol.call(
            "RegisterDevice",
            pb.RegisterDeviceRequest(
                device=device_pb2.Device(
                    device_id="phone",
                    platform=device_pb2.PLATFORM_WEBHOOK,
                    push_token=pushes.url("/carol"),
                    locale="en-US",
                )
            ),
        )
        say(f"carol registered her phone for pushes (webhook {pushes.url('/carol')})")

        listeners = []
        for person in (alice, bob):  # carol is offline
            ready = asyncio.Event()
            listeners.append(asyncio.create_task(_listen(person, ready)))
            await asyncio.wait_for(ready.wait(), 10)
        say("alice and bob are online (updates streams open); carol is offline")

        sent: dict[str, bytes] = {}
        try:
            for speaker_name, line in SCRIPT:
                speaker = people[speaker_name]
                listener = bob if speaker is alice else alice
                speech = synthesize(line)
                pages = encode_ogg_opus(speech)
                sent_at: dict[int, float] = {}
                say(
                    f"{speaker_name} talks ({speech.seconds:.1f} s, "
                    f"{len(pages)} Ogg/Opus pages): {line!r}"
                )
                done = await _talk(speaker, thread_id, pages, sent_at)
                header = done.completed.header
                audio = b"".join(p.data for p in pages)
                sent[header.message_id] = audio
                heard = await _heard_live(listener, header.message_id, len(pages))
                latencies = sorted(
                    (listener.arrivals[(header.message_id, i)] - sent_at[i]) * 1000
                    for i in range(len(pages))
                )
                path = out_dir / f"{listener.name}-heard-{speaker_name}-live.ogg"
                await asyncio.to_thread(path.write_bytes, heard)
                files[path.name] = path
                same = (
                    "identical to what was sent"
                    if heard == audio
                    else "DIFFERENT from what was sent"
                )
                say(
                    f"  {listener.name} heard it live while {speaker_name} talked: "
                    f"{len(pages)} chunks, first audio {latencies[0]:.1f} ms after it was sent "
                    f"(median {latencies[len(latencies) // 2]:.1f} ms), {same} -> {path}"
                )
            await alice.call(
                "SendText",
                pb.SendTextRequest(
                    message_id=new_uuid7(),
                    thread_id=thread_id,
                    device_id="phone",
                    text="Talk later!",
                ),
            )
            say("alice texts: 'Talk later!'")
            await _show_pushes(pushes, len(SCRIPT) + 1, say)
        finally:
            await pushes.close()
            for task in listeners:
                task.cancel()

        say("carol comes online later and pages her timeline:")
        timeline = await carol.call("ListTimeline", pb.ListTimelineRequest(device_id="phone"))
        for header in sorted(timeline.headers, key=lambda h: h.seq):
            who = header.sender_user_id.rsplit("-", 1)[0]
            if header.kind == message_pb2.MESSAGE_KIND_TEXT:
                say(f"  [{header.seq}] {who}: text {header.text!r}")
                continue
            body = await carol.call(
                "ReadBodyRange",
                pb.ReadBodyRangeRequest(thread_id=thread_id, message_id=header.message_id),
            )
            path = out_dir / f"carol-later-{header.seq}-{who}.ogg"
            await asyncio.to_thread(path.write_bytes, body.data)
            files[path.name] = path
            same = sent.get(header.message_id) == body.data
            say(
                f"  [{header.seq}] {who}: voice {ogg_duration_s(body.data):.1f} s, "
                f"{body.total_size_bytes} bytes, "
                f"{'identical to what was sent' if same else 'DIFFERENT from what was sent'}"
                f" -> {path}"
            )
        await carol.call(
            "AckTimeline", pb.AckTimelineRequest(device_id="phone", cursor=timeline.next_cursor)
        )
        for home in homes:
            await home.close(None)
    say(f"play the files with any Ogg/Opus player, e.g. `ffplay {next(iter(files.values()))}`")
    return files


async def _show_pushes(
    receiver: WebhookReceiver, expected: int, say: Callable[[str], None]
) -> None:
    """What reached Carol's phone while she was offline: one push per message."""
    with contextlib.suppress(TimeoutError):
        await receiver.wait_for(lambda got: len(got) >= expected, timeout_s=10)
    got = receiver.delivered()
    say(f"carol's phone (offline) got {len(got)} push(es) by webhook:")
    for push in got:
        body = push.body
        say(
            f"  push {body['title']!r}: {body['body']!r} (badge {body['badge']}, "
            f"{body['kind']} message {body['seq']})"
        )


async def _heard_live(listener: Participant, message_id: str, count: int) -> bytes:
    """The audio the listener received on its updates stream, once all of it is there."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunks = {
            c.index: c.payload
            for e in listener.events
            if e.HasField("live_chunks") and e.live_chunks.message_id == message_id
            for c in e.live_chunks.chunks
        }
        if len(chunks) >= count:
            return b"".join(chunks[i] for i in range(count))
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{listener.name} did not hear all {count} chunks of {message_id}")
