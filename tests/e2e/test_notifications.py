"""Notify, presence and multi-device, end to end over the real local stack.

A local HTTP receiver (voxmesh.notification.webhook_receiver, on 127.0.0.1) stands in for
the webhook push target; Redis is the stack's own.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.mesh_pki import mesh_channel
from tests.voxmesh_client import Device, collect_updates, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import device_pb2, message_pb2, presence_pb2, thread_pb2, update_pb2
from voxmesh.core.settings import Settings
from voxmesh.notification.push_queue import claim_key, dead_letter_key, push_id
from voxmesh.notification.v1 import notification_service_pb2 as n_pb
from voxmesh.notification.v1 import notification_service_pb2_grpc as n_grpc
from voxmesh.notification.webhook_receiver import ReceivedPush, WebhookReceiver
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack

MakeDevice = Callable[[str], Awaitable[Device]]
Event = update_pb2.UpdateEvent


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = await WebhookReceiver().start()
    yield server
    await server.close()


@pytest.fixture
async def notifier(local_stack: LocalStack) -> AsyncIterator[Any]:
    settings = local_stack.settings
    async with mesh_channel(
        settings, f"{settings.host}:{settings.notification.internal_port}", "notification", "router"
    ) as channel:
        yield n_grpc.NotificationServiceStub(channel)


@pytest.fixture
async def redis_client(local_stack: LocalStack) -> AsyncIterator[aioredis.Redis]:
    settings: Settings = local_stack.settings
    client = aioredis.Redis(host=settings.host, port=settings.redis.port)
    yield client
    await client.aclose()


async def _group(owner: Device, *members: Device, title: str = "walkie") -> str:
    reply = await owner.call(
        "CreateThread",
        pb.CreateThreadRequest(
            kind=thread_pb2.THREAD_KIND_GROUP,
            title=title,
            member_user_ids=[m.user_id for m in members],
        ),
    )
    return str(reply.thread.thread_id)


async def _register(device: Device, receiver: WebhookReceiver, path: str) -> device_pb2.Device:
    reply = await device.call(
        "RegisterDevice",
        pb.RegisterDeviceRequest(
            device=device_pb2.Device(
                device_id=device.device_id,
                platform=device_pb2.PLATFORM_WEBHOOK,
                push_token=receiver.url(path),
                locale="en-US",
            )
        ),
    )
    return reply.device  # type: ignore[no-any-return]


async def _text(device: Device, thread: str, text: str) -> message_pb2.MessageHeader:
    reply = await device.call(
        "SendText",
        pb.SendTextRequest(
            message_id=uuid7(), thread_id=thread, device_id=device.device_id, text=text
        ),
    )
    return reply.header  # type: ignore[no-any-return]


async def _online(device: Device) -> Any:
    """Open the device's updates stream and wait until it is live (replay done)."""
    updates = device.updates()
    await asyncio.wait_for(collect_updates(updates, lambda e: e.HasField("caught_up")), 15)
    return updates


async def _see(updates: Any, until: Callable[[Event], bool], timeout_s: float = 10) -> list[Event]:
    seen: list[Event] = []
    try:
        return await asyncio.wait_for(collect_updates(updates, until, sink=seen), timeout_s)
    except TimeoutError:
        kinds = [e.WhichOneof("event") for e in seen]
        raise AssertionError(f"not seen in {timeout_s} s; got {kinds}: {seen[-3:]}") from None


def _presence_of(user: str, state: int) -> Callable[[Event], bool]:
    return lambda e: (
        e.HasField("presence") and e.presence.user_id == user and e.presence.state == state
    )


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10) -> None:
    """Re-check until true: for effects of fire-and-forget notices (no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _pushes_for(pushes: list[ReceivedPush], message_id: str) -> list[ReceivedPush]:
    return [p for p in pushes if p.body.get("message_id") == message_id]


async def test_offline_user_gets_one_push_per_message_and_none_while_online(
    devices: MakeDevice, receiver: WebhookReceiver
) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    registered = await _register(bob, receiver, "/bob")
    assert registered.user_id == bob.user_id and registered.HasField("registered_at")

    # Bob is online: he hears Alice live, and gets no push.
    alice_updates = await _online(alice)
    bob_updates = await _online(bob)
    heard_live = uuid7()
    await send_voice(alice, thread, heard_live, voice_chunks(20))
    seen_live = await _text(alice, thread, "while you are here")
    await _see(  # a text is complete when it starts
        bob_updates,
        lambda e: e.HasField("header_added") and e.header_added.message_id == seen_live.message_id,
    )

    # Bob goes offline (Alice sees it); the next messages are pushed, once each.
    bob_updates.cancel()
    await _see(alice_updates, _presence_of(bob.user_id, presence_pb2.PRESENCE_STATE_OFFLINE))
    offline_voice = uuid7()
    await send_voice(alice, thread, offline_voice, voice_chunks(20))  # start, then completion
    offline_text = await _text(alice, thread, "call me back")
    pushes = await receiver.wait_for(
        lambda got: (
            bool(_pushes_for(got, offline_voice))
            and bool(_pushes_for(got, offline_text.message_id))
        )
    )
    alice_updates.cancel()

    assert _pushes_for(pushes, heard_live) == [] and _pushes_for(pushes, seen_live.message_id) == []
    (voice_push,) = _pushes_for(pushes, offline_voice)
    (text_push,) = _pushes_for(pushes, offline_text.message_id)
    assert voice_push.push_id == push_id(offline_voice, bob.user_id, "phone")
    assert voice_push.body["title"] == "walkie"
    assert voice_push.body["body"] == f"{alice.user_id}: is talking now"  # pushed at start
    assert voice_push.body["state"] == "live" and voice_push.body["kind"] == "voice"
    assert text_push.body["body"] == f"{alice.user_id}: call me back"
    assert text_push.body["badge"] == 4  # all four messages are unread
    assert len({p.push_id for p in pushes}) == len(pushes) == 2


async def test_webhook_retries_then_delivers_once_or_dead_letters(
    devices: MakeDevice,
    receiver: WebhookReceiver,
    redis_client: aioredis.Redis,
    local_stack: LocalStack,
) -> None:
    alice, bob_phone, bob_tablet = (
        await devices("alice"),
        await devices("bob/phone"),
        await devices("bob/tablet"),
    )
    thread = await _group(alice, bob_phone)
    receiver.fail_next("/flaky", 2, status=503)
    receiver.always_fail("/down", status=500)
    await _register(bob_phone, receiver, "/flaky")
    await _register(bob_tablet, receiver, "/down")
    attempts = local_stack.settings.notification_sender.push_attempts

    header = await _text(alice, thread, "are you there?")
    await receiver.wait_for(
        lambda got: (
            sum(r.path == "/down" for r in got) == attempts
            and any(r.path == "/flaky" and r.status == 200 for r in got)
        )
    )
    dead_push = push_id(header.message_id, bob_phone.user_id, "tablet")
    flaky_push = push_id(header.message_id, bob_phone.user_id, "phone")

    async def outcomes_recorded() -> bool:
        sent = await redis_client.get(claim_key(flaky_push))
        dead = await redis_client.get(claim_key(dead_push))
        return (sent, dead) == (b"sent", b"dead")

    await _eventually(outcomes_recorded)
    flaky = [r for r in receiver.requests if r.path == "/flaky"]
    assert [r.status for r in flaky] == [503, 503, 200]  # two failures, then once
    assert {r.push_id for r in flaky} == {flaky_push}
    assert len(receiver.delivered("/flaky")) == 1
    record = await redis_client.get(dead_letter_key(dead_push))
    assert record is not None
    dead = json.loads(record)
    assert dead["attempts"] == attempts and dead["status"] == 500
    assert dead["platform"] == "webhook" and dead["message_id"] == header.message_id
    assert await redis_client.ttl(dead_letter_key(dead_push)) > 0


async def test_unread_counts_rise_clear_across_devices_and_survive_a_redis_loss(
    devices: MakeDevice,
    receiver: WebhookReceiver,
    notifier: Any,
    redis_client: aioredis.Redis,
) -> None:
    alice, phone, tablet = (
        await devices("alice"),
        await devices("bob/phone"),
        await devices("bob/tablet"),
    )
    bob = phone.user_id
    thread = await _group(alice, phone)
    await _register(phone, receiver, "/bob-phone")
    sent = [await _text(alice, thread, f"message {i}") for i in range(3)]
    pushes = await receiver.wait_for(lambda got: len(got) >= 3)
    assert sorted(p.body["seq"] for p in pushes) == [h.seq for h in sent]
    assert max(p.body["badge"] for p in pushes) == 3  # badge numbers in the payloads

    async def unread(total: int, in_thread: int) -> bool:
        counts = await notifier.GetUnreadCounts(n_pb.GetUnreadCountsRequest(user_id=bob))
        return bool(counts.total == total and counts.thread_counts.get(thread, 0) == in_thread)

    await _eventually(lambda: unread(3, 3))

    # The tablet reads up to the second message: the phone sees the mark, the count drops.
    phone_updates = await _online(phone)
    await tablet.call(
        "MarkRead",
        pb.MarkReadRequest(
            thread_id=thread, message_id=sent[1].message_id, device_id=tablet.device_id
        ),
    )
    marks = await _see(phone_updates, lambda e: e.HasField("mark"))
    assert marks[-1].mark.seq == sent[1].seq and marks[-1].mark.device_id == "tablet"
    await _eventually(lambda: unread(1, 1))

    # Redis loses Bob's keys: the counts come back from the header store.
    lost = [key async for key in redis_client.scan_iter(match=f"*{{{bob}}}*")]
    assert lost
    await redis_client.delete(*lost)
    assert await unread(1, 1)

    # The phone listens to the last one: nothing is unread any more, on any device.
    await phone.call(
        "MarkListened",
        pb.MarkListenedRequest(
            thread_id=thread, message_id=sent[2].message_id, device_id=phone.device_id
        ),
    )
    await _eventually(lambda: unread(0, 0))
    phone_updates.cancel()


async def test_muted_threads_and_do_not_disturb_hold_pushes_but_count_unread(
    devices: MakeDevice, receiver: WebhookReceiver, notifier: Any
) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    muted = await _group(alice, bob, title="noisy")
    quiet = await _group(alice, bob, title="quiet")
    await _register(bob, receiver, "/bob")
    await bob.call("MuteThread", pb.MuteThreadRequest(thread_id=muted, muted=True))

    async def unread(expected: dict[str, int]) -> bool:
        counts = await notifier.GetUnreadCounts(n_pb.GetUnreadCountsRequest(user_id=bob.user_id))
        return dict(counts.thread_counts) == expected

    held = await _text(alice, muted, "shh")
    marker = await _text(alice, quiet, "marker")
    pushes = await receiver.wait_for(lambda got: bool(_pushes_for(got, marker.message_id)))
    await _eventually(lambda: unread({muted: 1, quiet: 1}))  # held, but counted
    assert _pushes_for(receiver.requests, held.message_id) == []

    await notifier.SetDoNotDisturb(n_pb.SetDoNotDisturbRequest(user_id=bob.user_id, enabled=True))
    during_dnd = await _text(alice, quiet, "at night")
    await _eventually(lambda: unread({muted: 1, quiet: 2}))  # announced while in DND
    await notifier.SetDoNotDisturb(n_pb.SetDoNotDisturbRequest(user_id=bob.user_id, enabled=False))
    after = await _text(alice, quiet, "morning")
    pushes = await receiver.wait_for(lambda got: bool(_pushes_for(got, after.message_id)))
    assert _pushes_for(pushes, during_dnd.message_id) == []
    assert len(pushes) == 2  # the marker and the morning text


async def test_presence_typing_and_talking_reach_another_member(devices: MakeDevice) -> None:
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    bob_updates = await _online(bob)
    alice_updates = await _online(alice)
    # Bob sees Alice come online; Alice, connecting later, is told Bob is online.
    await _see(bob_updates, _presence_of(alice.user_id, presence_pb2.PRESENCE_STATE_ONLINE))
    await _see(alice_updates, _presence_of(bob.user_id, presence_pb2.PRESENCE_STATE_ONLINE))

    typing = await alice.call("SetTyping", pb.SetTypingRequest(thread_id=thread, typing=True))
    seen = await _see(bob_updates, lambda e: e.HasField("typing") and e.typing.typing)
    assert seen[-1].typing.user_id == alice.user_id and seen[-1].typing.thread_id == thread
    assert seen[-1].typing.expires_at == typing.expires_at

    # "Talking now" while Alice's voice message is live, stopped when it completes.
    message_id = uuid7()
    talk = asyncio.create_task(send_voice(alice, thread, message_id, voice_chunks(50), 0.01))
    started = await _see(bob_updates, lambda e: e.HasField("talking_now") and e.talking_now.talking)
    assert not talk.done()  # heard while she is still talking
    assert started[-1].talking_now.message_id == message_id
    assert any(e.HasField("typing") and not e.typing.typing for e in started)  # she stopped
    await talk
    await _see(bob_updates, lambda e: e.HasField("talking_now") and not e.talking_now.talking)

    reply = await alice.call(
        "SetPresence",
        pb.SetPresenceRequest(device_id=alice.device_id, state=presence_pb2.PRESENCE_STATE_AWAY),
    )
    assert reply.presence.state == presence_pb2.PRESENCE_STATE_AWAY
    await _see(bob_updates, _presence_of(alice.user_id, presence_pb2.PRESENCE_STATE_AWAY))
    alice_updates.cancel()
    await _see(bob_updates, _presence_of(alice.user_id, presence_pb2.PRESENCE_STATE_OFFLINE))
    bob_updates.cancel()


async def test_marks_likes_deletes_and_mutes_reach_the_users_other_devices(
    devices: MakeDevice,
) -> None:
    alice, phone, tablet = (
        await devices("alice"),
        await devices("bob/phone"),
        await devices("bob/tablet"),
    )
    thread = await _group(alice, phone)
    header = await _text(alice, thread, "hello both devices")
    ref = {"thread_id": thread, "message_id": header.message_id}
    tablet_updates = await _online(tablet)
    phone_updates = await _online(phone)

    await phone.call("MarkRead", pb.MarkReadRequest(**ref, device_id="phone"))
    mark = (await _see(tablet_updates, lambda e: e.HasField("mark")))[-1].mark
    assert (mark.seq, mark.device_id) == (header.seq, "phone")
    await phone.call("LikeMessage", pb.LikeMessageRequest(**ref))
    like = (await _see(tablet_updates, lambda e: e.HasField("like_changed")))[-1].like_changed
    assert like.liked and like.like.user_id == phone.user_id and like.like_count == 1
    await phone.call(
        "DeleteMessage", pb.DeleteMessageRequest(**ref, scope=message_pb2.DELETE_SCOPE_FOR_ME)
    )
    hidden = await _see(
        tablet_updates,
        lambda e: e.HasField("message_state_changed") and e.message_state_changed.for_me_only,
    )
    assert hidden[-1].message_state_changed.header.message_id == header.message_id
    await phone.call("MuteThread", pb.MuteThreadRequest(thread_id=thread, muted=True))
    muted = await _see(
        tablet_updates,
        lambda e: (
            e.HasField("thread_changed")
            and e.thread_changed.change == update_pb2.THREAD_CHANGE_KIND_MUTE_CHANGED
        ),
    )
    assert muted[-1].thread_changed.thread.user_state.muted
    # The phone made the mark: its own stream skipped the echo.
    phone_events = await _see(
        phone_updates,
        lambda e: (
            e.HasField("thread_changed")
            and e.thread_changed.change == update_pb2.THREAD_CHANGE_KIND_MUTE_CHANGED
        ),
    )
    assert not any(e.HasField("mark") for e in phone_events)
    tablet_updates.cancel()
    phone_updates.cancel()


async def test_push_delivery_latency(devices: MakeDevice, receiver: WebhookReceiver) -> None:
    """Message start (Send opened) -> webhook received, for an offline user's device."""
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    await _register(bob, receiver, "/bob")
    started: dict[str, float] = {}
    for _ in range(30):
        message_id = uuid7()
        started[message_id] = time.perf_counter()
        await send_voice(alice, thread, message_id, voice_chunks(5))
    pushes = await receiver.wait_for(lambda got: len(got) >= len(started))
    assert len(pushes) == len(started)  # one each
    latencies = sorted((p.received_at - started[p.body["message_id"]]) * 1000 for p in pushes)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"\npush latency (message start -> webhook received) ms p50={p50:.1f} p99={p99:.1f}")
    assert p99 < 2000


async def test_a_notice_arriving_after_the_device_went_offline_is_judged_by_message_time(
    devices: MakeDevice, receiver: WebhookReceiver, notifier: Any
) -> None:
    """Notices are queued: one can reach the notification node after the target's device
    reported going offline. A device that was live when the message happened hears it live
    (no push); one that was gone before it gets the push."""
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    await _register(bob, receiver, "/bob")
    ttl = n_pb.ReportPresenceRequest().ttl
    ttl.FromSeconds(30)
    await notifier.ReportPresence(
        n_pb.ReportPresenceRequest(user_id=bob.user_id, device_id=bob.device_id, live=True, ttl=ttl)
    )
    gone_ms = int(time.time() * 1000)
    gone = n_pb.ReportPresenceRequest(user_id=bob.user_id, device_id=bob.device_id, live=False)
    gone.observed_at.FromMilliseconds(gone_ms)
    assert (await notifier.ReportPresence(gone)).live_device_count == 0

    def header(seq: int, at_ms: int) -> message_pb2.MessageHeader:
        return _text_header(thread, alice.user_id, seq, at_ms)

    heard = header(1, gone_ms - 1000)  # happened while Bob was still connected
    late = await notifier.NotifyMessage(
        n_pb.NotifyMessageRequest(user_ids=[bob.user_id], header=heard)
    )
    assert (late.pushes_sent, late.pushes_skipped) == (0, 1)
    missed = header(2, gone_ms + 1000)  # happened after Bob left
    due = await notifier.NotifyMessage(
        n_pb.NotifyMessageRequest(user_ids=[bob.user_id], header=missed)
    )
    assert (due.pushes_sent, due.pushes_skipped) == (1, 0)
    pushes = await receiver.wait_for(lambda got: bool(_pushes_for(got, missed.message_id)))
    assert _pushes_for(pushes, heard.message_id) == []


def _text_header(thread: str, sender: str, seq: int, at_ms: int) -> message_pb2.MessageHeader:
    """A complete text message's header as the header store makes it, at server time at_ms."""
    made = message_pb2.MessageHeader(
        thread_id=thread,
        message_id=uuid7(),
        seq=seq,
        sender_user_id=sender,
        kind=message_pb2.MESSAGE_KIND_TEXT,
        state=message_pb2.MESSAGE_STATE_COMPLETE,
        text="hi",
    )
    made.started_at.FromMilliseconds(at_ms)
    made.completed_at.FromMilliseconds(at_ms)
    return made


async def test_do_not_disturb_is_judged_by_when_the_message_happened(
    devices: MakeDevice, receiver: WebhookReceiver, notifier: Any
) -> None:
    """A late notice for a message sent during do-not-disturb is held even once it is off;
    one for a message sent before it began is pushed even while it is on."""
    alice, bob = await devices("alice"), await devices("bob")
    thread = await _group(alice, bob)
    await _register(bob, receiver, "/bob")

    async def notify(seq: int, at_ms: int) -> tuple[str, int, int]:
        header = _text_header(thread, alice.user_id, seq, at_ms)
        reply = await notifier.NotifyMessage(
            n_pb.NotifyMessageRequest(user_ids=[bob.user_id], header=header)
        )
        return header.message_id, reply.pushes_sent, reply.pushes_skipped

    before_ms = int(time.time() * 1000) - 1000
    await notifier.SetDoNotDisturb(n_pb.SetDoNotDisturbRequest(user_id=bob.user_id, enabled=True))
    during_ms = int(time.time() * 1000) + 50
    await asyncio.sleep(0.1)
    early, sent, skipped = await notify(1, before_ms)  # sent before DND began: late notice
    assert (sent, skipped) == (1, 0)
    # Turned on again while on (a retry, or a new end time): it still began at the start.
    await notifier.SetDoNotDisturb(n_pb.SetDoNotDisturbRequest(user_id=bob.user_id, enabled=True))
    await notifier.SetDoNotDisturb(n_pb.SetDoNotDisturbRequest(user_id=bob.user_id, enabled=False))
    held, sent, skipped = await notify(2, during_ms)  # sent during DND, arrives after it
    assert (sent, skipped) == (0, 1)
    await asyncio.sleep(0.05)
    after, sent, skipped = await notify(3, int(time.time() * 1000))
    assert (sent, skipped) == (1, 0)
    pushes = await receiver.wait_for(
        lambda got: bool(_pushes_for(got, early)) and bool(_pushes_for(got, after))
    )
    assert _pushes_for(pushes, held) == []
