"""The web app in real Chromium, through Envoy, on a real stack with three routers.

Alice, Bob and Carol each have a browser context (Chromium's fake microphone plays a 440 Hz
tone). Alice and Bob are homed on different routers, so every updates stream that Envoy
sends to a router other than the user's home is proxied there. What is checked is what a user
hears and sees: Bob's page plays Alice's voice while she is still holding the talk button (the
page's own Web Audio analyser hears 440 Hz), the stored body decodes to 440 Hz, Carol catches
up at 2x, text and a photo go both ways, presence and "talking now" show, a recall removes the
message, a router added while the pages are open joins Envoy without a restart, and a native
client's Ogg/Opus message (the demo's encoder, streamed page by page) plays live in the page.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import grpc_web
from tests.conftest import require_spanner_emulator
from tests.ports import free_port, stack_overrides
from tests.voxmesh_client import uuid7
from tests.web.media_files import dominant_hz, png, tone_pcm
from voxmesh.common.v1 import body_pb2, message_pb2, thread_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.mesh_tls import client_channel
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.settings import Settings, load_settings
from voxmesh.demo.speech_audio import Speech, encode_ogg_opus
from voxmesh.gateway.router_endpoints import read_endpoints
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.router.v1 import router_service_pb2_grpc as pb_grpc
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = os.environ.get("VOXMESH_WEB_SCREENSHOT")  # a path: store a screenshot there


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_spanner_emulator()
    overrides: dict[str, Any] = stack_overrides(str(tmp_path_factory.mktemp("web")))
    overrides["router"]["instances"] = 3
    overrides["rings"] = {"lease_ttl_s": 3}
    overrides["supervisor"] = {**overrides["supervisor"], "ready_timeout_s": 120.0}
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


@pytest.fixture(scope="module")
async def homes(web_stack: LocalStack) -> AsyncIterator[RingMembership]:
    membership = RingMembership(web_stack.settings, ("router",))
    await membership.start(None)
    await membership.wait_loaded()
    yield membership
    await membership.close()


def _users(membership: RingMembership) -> dict[str, str]:
    """alice, bob and carol with a fresh suffix, Alice and Bob homed on different routers."""
    stamp = f"{int(time.time() * 1000) % 10_000_000}"
    for attempt in range(100):
        names = {n: f"{n}-{stamp}-{attempt}" for n in ("alice", "bob", "carol")}
        home = {n: membership.preference_list("router", u, 1)[0].node_id for n, u in names.items()}
        if home["alice"] != home["bob"]:
            return names
    raise AssertionError("no user names with different home routers")


def _url(settings: Settings) -> str:
    return grpc_web.gateway_url(settings)  # https: Envoy's listener speaks TLS


async def _sign_in(
    browser: Any, settings: Settings, user: str, transport: str | None = "grpc-web"
) -> Any:
    """A signed-in page. This file's walkthrough is the gRPC-web path (MediaRecorder talks,
    chunk playback), so its pages keep to it; ``transport=None`` lets the app choose WebRTC."""
    # The gateway's certificate comes from the stack's own local CA.
    context = await browser.new_context(
        viewport={"width": 1180, "height": 760}, ignore_https_errors=True
    )
    page = await context.new_page()
    page.set_default_timeout(45_000)  # generous: the machine may be loaded
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type != "log" else None,
    )
    page.problems = problems
    await page.goto(_url(settings) + "/" + (f"?transport={transport}" if transport else ""))
    await page.get_by_label("User name").fill(user)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("[data-connection=live]").wait_for()
    return page


async def _open_thread(page: Any, thread_id: str) -> None:
    await page.locator(f"button[data-thread-id='{thread_id}']").click()
    await page.locator(".thread-pane").wait_for()


async def _completed(page: Any, message_id: str, stack: LocalStack) -> None:
    """The sender's page shows the message complete; else fail with what the page said, how
    each of its uplink calls went, and what the mesh warned about meanwhile."""
    try:
        await page.locator(f"[data-message-id='{message_id}'][data-state=COMPLETE]").wait_for()
    except Exception as exc:
        said = await page.locator(".errors").inner_text()
        calls = _events(await _diagnostics(page), "uplink", message_id)
        warned = [
            f"{log.name}: {line}"
            for log in sorted(stack.paths.logs.glob("*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if '"severity": "WARNING"' in line or '"severity": "ERROR"' in line
        ]
        raise AssertionError(
            f"{message_id} not complete: {said!r} {page.problems}\nuplink calls: {calls}\n"
            "mesh warnings:\n" + "\n".join(warned[-40:])
        ) from exc


async def _diagnostics(page: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = await page.evaluate("() => window.voxmeshDiagnostics.events")
    return events


def _events(events: list[dict[str, Any]], kind: str, message_id: str = "") -> list[dict[str, Any]]:
    return [
        e for e in events if e["type"] == kind and (not message_id or e["messageId"] == message_id)
    ]


async def _wait_for(predicate: Any, timeout_s: float, what: str, page: Any = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = (await _diagnostics(page))[-12:] if page is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what} {seen}")
        await asyncio.sleep(0.1)


async def _talk(page: Any, seconds: float, during: Any = None) -> tuple[str, float]:
    """Hold the talk button for ``seconds``; returns (message id, wall-clock ms of release)."""
    button = page.get_by_role("button", name="Hold to talk")
    await button.hover()
    earlier = len(_events(await _diagnostics(page), "recordStart"))
    await page.mouse.down()
    started = time.monotonic()
    message_id = ""
    try:

        async def recording() -> str:
            found = _events(await _diagnostics(page), "recordStart")
            return str(found[-1]["messageId"]) if len(found) > earlier else ""

        message_id = await _wait_for(recording, 10, "the recorder to start")
        if during is not None:
            await during(message_id)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    finally:
        released: float = await page.evaluate("() => performance.timeOrigin + performance.now()")
        await page.mouse.up()
    return message_id, released


def _stub(settings: Settings, user: str) -> tuple[grpc.aio.Channel, Any, Any]:
    channel = client_channel(settings, f"{settings.host}:{settings.router.port}")
    metadata = (("authorization", f"Bearer {issue_token(settings.auth, user)}"),)
    return channel, pb_grpc.RouterServiceStub(channel), metadata


async def _stored_body(settings: Settings, user: str, thread_id: str, message_id: str) -> bytes:
    channel, stub, metadata = _stub(settings, user)
    async with channel:
        data: bytes = b""
        while True:
            reply = await stub.ReadBodyRange(
                pb.ReadBodyRangeRequest(
                    thread_id=thread_id, message_id=message_id, offset=len(data)
                ),
                metadata=metadata,
            )
            data += bytes(reply.data)
            if not reply.data or len(data) >= reply.total_size_bytes:
                return data


async def _message_state(page: Any, message_id: str) -> str:
    state: str | None = await page.locator(f"[data-message-id='{message_id}']").get_attribute(
        "data-state"
    )
    return state or ""


async def _stream_ogg_tone(
    settings: Settings, user: str, thread_id: str, hz: float, seconds: float
) -> str:
    """Send Ogg/Opus the way `voxmesh demo` does: its encoder, one page per chunk, real time."""
    pages = encode_ogg_opus(Speech(pcm=tone_pcm(hz, seconds), sample_rate=24_000))
    channel, stub, metadata = _stub(settings, user)
    message_id = uuid7()
    async with channel:
        call = stub.Send(metadata=metadata)
        start = message_pb2.MessageStart(
            message_id=message_id,
            thread_id=thread_id,
            kind=message_pb2.MESSAGE_KIND_VOICE,
            content_type="audio/ogg;codecs=opus",
        )
        await call.write(pb.SendRequest(start=start, device_id="phone"))
        offset, began = 0, time.monotonic()
        for index, page in enumerate(pages):
            delay = began + page.media_time_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = body_pb2.Chunk(
                index=index, offset=offset, media_time_ms=page.media_time_ms, payload=page.data
            )
            await call.write(pb.SendRequest(chunks=[chunk]))
            offset += len(page.data)
        end = message_pb2.MessageEnd(chunk_count=len(pages), size_bytes=offset)
        await call.write(pb.SendRequest(end=end))
        await call.done_writing()
        async for _ in call:
            pass
    return message_id


def _start_extra_router(stack: LocalStack) -> tuple[subprocess.Popen[bytes], int]:
    port, metrics = free_port(), free_port()
    log = open(stack.paths.logs / "router-extra.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voxmesh",
            "--config",
            str(stack.paths.settings_file),
            "serve",
            "router",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    log.close()
    return process, port


def _envoy_router_ports(settings: Settings) -> dict[int, str]:
    """Envoy's view of its routers cluster: port -> health flags."""
    url = f"http://{settings.host}:{settings.envoy.admin_port}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        clusters = json.load(response)["cluster_statuses"]
    routers = next(c for c in clusters if c["name"] == "routers")
    return {
        int(h["address"]["socket_address"]["port_value"]): json.dumps(h.get("health_status", {}))
        for h in routers.get("host_statuses", [])
    }


@pytest.mark.timeout(600)  # a three-router stack starts first; the conversation takes ~1.5 min
async def test_walkie_talkie_in_chromium_through_the_gateway(
    web_stack: LocalStack, homes: RingMembership, browser: Any
) -> None:
    settings = web_stack.settings
    users = _users(homes)
    alice = await _sign_in(browser, settings, users["alice"])
    bob = await _sign_in(browser, settings, users["bob"])

    # Alice creates a group; it appears on Bob's page live (no reload).
    await alice.get_by_role("button", name="New conversation").click()
    await alice.get_by_label("Group").check()
    await alice.get_by_label("Group name").fill("Walkie")
    await alice.get_by_label("Members (user names, comma separated)").fill(
        f"{users['bob']}, {users['carol']}"
    )
    await alice.get_by_role("button", name="Create").click()
    thread_button = bob.locator("button.thread", has_text="Walkie")
    await thread_button.wait_for()
    thread_id = await thread_button.get_attribute("data-thread-id")
    assert thread_id
    await _open_thread(bob, thread_id)
    await alice.locator(".thread-pane").wait_for()

    # Presence: Bob sees Alice online.
    await bob.get_by_role("button", name="Members (3)").click()
    await bob.locator(f"[data-member='{users['alice']}'] [data-presence=online]").wait_for()

    # Alice holds talk for 3 s; while she still talks Bob's page shows her talking and plays her.
    async def while_talking(message_id: str) -> None:
        await bob.locator(".activity .talking-now", has_text=users["alice"]).wait_for()

        async def heard() -> list[dict[str, Any]]:
            tones = _events(await _diagnostics(bob), "tone", message_id)
            return [t for t in tones if abs(t["hz"] - 440) < 25]

        await _wait_for(heard, 2.5, "Bob's page to play 440 Hz while Alice talks")

    first_id, released = await _talk(alice, 3.0, while_talking)
    bob_events = await _diagnostics(bob)
    heard_live = [t for t in _events(bob_events, "tone", first_id) if abs(t["hz"] - 440) < 25]
    assert heard_live and heard_live[0]["at"] < released, "Bob heard Alice only after she stopped"
    await _completed(alice, first_id, web_stack)
    stored = await _stored_body(settings, users["bob"], thread_id, first_id)
    assert abs(dominant_hz(stored) - 440) < 10, "the stored body is not Alice's 440 Hz tone"

    # Two more messages, for the mouth-to-ear numbers over several messages.
    voice_ids = [first_id]
    for _ in range(2):
        await _wait_for(
            lambda: _no_playback(bob), 10, "Bob's page to finish playing the previous message", bob
        )
        message_id, _ = await _talk(alice, 1.5)
        voice_ids.append(message_id)
        await _completed(alice, message_id, web_stack)
    await _wait_for(lambda: _no_playback(bob), 10, "Bob's page to finish playing", bob)
    alice_events, bob_events = await _diagnostics(alice), await _diagnostics(bob)
    from_record, from_chunk = [], []
    for message_id in voice_ids:
        heard_at = _events(bob_events, "firstAudio", message_id)
        assert heard_at, f"Bob's page never played {message_id}"
        record = _events(alice_events, "recordStart", message_id)[0]["at"]
        chunk = _events(alice_events, "firstChunk", message_id)[0]["at"]
        from_record.append(heard_at[0]["at"] - record)
        from_chunk.append(heard_at[0]["at"] - chunk)
    print(
        "\nmouth-to-ear (ms, talker's recorder start -> first sound on the listener's page):"
        f" p50 {statistics.median(from_record):.0f}, max {max(from_record):.0f};"
        f" from the first 100 ms chunk: p50 {statistics.median(from_chunk):.0f},"
        f" max {max(from_chunk):.0f}; n={len(voice_ids)}"
    )

    # Text both ways, and a photo with its preview.
    await alice.get_by_label("Message", exact=True).fill("hello bob")
    await alice.get_by_role("button", name="Send", exact=True).click()
    text_on_bob = bob.locator(".message .text", has_text="hello bob")
    await text_on_bob.wait_for()
    photo = REPO / ".voxmesh" / "test-photo.png"
    photo.parent.mkdir(exist_ok=True)
    photo.write_bytes(png())
    await bob.get_by_label("Send a photo or file").set_input_files(str(photo))
    preview = alice.locator("img.photo")
    await preview.wait_for()
    await _wait_for(
        lambda: preview.evaluate("img => img.complete && img.naturalWidth === 24"),
        10,
        "the photo preview to load on Alice's page",
    )

    # A recall removes the message on Bob's page.
    text_id = await alice.locator(".message", has_text="hello bob").get_attribute("data-message-id")
    await (
        alice.locator(f"[data-message-id='{text_id}']").get_by_role("button", name="Recall").click()
    )
    await bob.locator(f"[data-message-id='{text_id}'][data-state=RECALLED]").wait_for()
    assert await text_on_bob.count() == 0

    # Carol opens the thread afterwards and catches up at 2x.
    carol = await _sign_in(browser, settings, users["carol"])
    await _open_thread(carol, thread_id)
    first = carol.locator(f"[data-message-id='{first_id}']")
    await first.get_by_label("Playback speed").select_option("2")
    await first.get_by_role("button", name="Play voice message").click()

    async def carol_done() -> list[dict[str, Any]]:
        return _events(await _diagnostics(carol), "playEnd", first_id)

    await _wait_for(carol_done, 10, "Carol's playback to end")
    carol_events = await _diagnostics(carol)
    start = _events(carol_events, "playStart", first_id)[0]
    assert start["rate"] == 2
    played_s = (_events(carol_events, "playEnd", first_id)[0]["at"] - start["at"]) / 1000
    assert played_s < 2.6, f"a 3 s message took {played_s:.1f} s at 2x"
    assert any(abs(t["hz"] - 440) < 25 for t in _events(carol_events, "tone", first_id))

    # A router joins while the pages are open: Envoy routes to it without a restart.
    endpoints = settings.router_endpoints_file
    before = {port for _, port in read_endpoints(endpoints)}
    process, port = _start_extra_router(web_stack)
    try:

        async def in_eds() -> bool:
            return port in {p for _, p in read_endpoints(endpoints)}

        # A new process on a loaded machine may take a while to import and register.
        await _wait_for(in_eds, 60, "the web gateway to write the new router into the EDS file")

        async def in_envoy() -> bool:
            hosts = await asyncio.to_thread(_envoy_router_ports, settings)
            return port in hosts and "failed" not in hosts[port].lower()

        await _wait_for(in_envoy, 30, "Envoy to route to the new router")
        assert before < {p for _, p in read_endpoints(endpoints)}
        # Streams whose home moved reconnect by themselves; messages still flow both ways.
        for page in (alice, bob):
            await page.locator("[data-connection=live]").wait_for(timeout=20_000)
        await bob.get_by_label("Message", exact=True).fill("after the new router")
        await bob.get_by_role("button", name="Send", exact=True).click()
        await alice.locator(".message .text", has_text="after the new router").wait_for()

        # Health checks reach a router through the gateway.
        from grpc_health.v1 import health_pb2

        reply = grpc_web.call(
            _url(settings),
            "grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest(service="voxmesh.router.v1.RouterService"),
            origin=_url(settings),
            context=grpc_web.tls_context(settings),
        )
        assert reply.grpc_status == 0, reply
        assert health_pb2.HealthCheckResponse.FromString(reply.messages[0]).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        if SCREENSHOT:
            await bob.screenshot(path=SCREENSHOT)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


async def _no_playback(page: Any) -> bool:
    return bool(await page.locator("[data-playing=true]").count() == 0)


async def test_a_native_clients_ogg_opus_message_plays_live_in_the_page(
    web_stack: LocalStack, homes: RingMembership, browser: Any
) -> None:
    """Ogg/Opus as `voxmesh demo` sends it (its encoder, one page per chunk, in real time):
    MSE does not take Ogg, so the page decodes Opus with WebCodecs while it arrives."""
    settings = web_stack.settings
    users = _users(homes)
    channel, stub, metadata = _stub(settings, users["alice"])
    async with channel:
        created = await stub.CreateThread(
            pb.CreateThreadRequest(
                kind=thread_pb2.THREAD_KIND_DIRECT, member_user_ids=[users["bob"]]
            ),
            metadata=metadata,
        )
    thread_id = created.thread.thread_id
    bob = await _sign_in(browser, settings, users["bob"])
    await _open_thread(bob, thread_id)
    ogg_id = await _stream_ogg_tone(settings, users["alice"], thread_id, 660.0, 2.5)
    bob_events = await _diagnostics(bob)
    assert not _events(bob_events, "error", ogg_id), _events(bob_events, "error", ogg_id)
    tones = [t for t in _events(bob_events, "tone", ogg_id) if abs(t["hz"] - 660) < 25]
    assert tones, (
        f"Ogg/Opus not heard at 660 Hz: {[e for e in bob_events if e['messageId'] == ogg_id]}; "
        f"{bob.problems}"
    )
    # Sound before a whole message's worth of time after its first chunk: played while live.
    first_chunk = _events(bob_events, "firstLiveChunk", ogg_id)[0]["at"]
    assert tones[0]["at"] - first_chunk < 2500, "the Ogg message was heard only after it ended"

    # Played again at 2x, it keeps its pitch (660 Hz, not 1320): fast catch-up of an Ogg
    # message (WebRTC talks are stored so) sounds like the same voice, faster.
    await _wait_for(lambda: _no_playback(bob), 10, "Bob's page to finish playing", bob)
    message = bob.locator(f"[data-message-id='{ogg_id}']")
    await message.get_by_label("Playback speed").select_option("2")
    began = len(_events(await _diagnostics(bob), "tone", ogg_id))
    await message.get_by_role("button", name="Play voice message").click()

    async def replayed() -> list[dict[str, Any]]:
        return _events(await _diagnostics(bob), "playEnd", ogg_id)[1:]

    await _wait_for(replayed, 10, "Bob's 2x replay to end", bob)
    again = _events(await _diagnostics(bob), "tone", ogg_id)[began:]
    heard = [round(t["hz"]) for t in again]
    at_pitch = [hz for hz in heard if abs(hz - 660) < 25]
    octave_up = [hz for hz in heard if abs(hz - 1320) < 50]
    assert heard and len(at_pitch) >= 0.8 * len(heard) and not octave_up, (
        f"at 2x the Ogg message was heard at {heard} Hz"
    )
