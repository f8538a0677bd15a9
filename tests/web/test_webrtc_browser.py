"""The web app's live audio over WebRTC, in real Chromium, through Envoy, on a real stack.

Alice's page talks over WebRTC (Chromium's fake microphone plays a 440 Hz tone into a peer
connection to a router), Bob's page listens over WebRTC at the live edge, Carol is a native
client on the gRPC updates stream: both hear the tone while Alice still talks, and both pages
say "live via WebRTC". Then the fallback: a page without RTCPeerConnection talks over the
gRPC-web MediaRecorder path and says so, and Bob's page plays that WebM message over the chunk
path. Last, a browser on a network that drops UDP (its own network namespace, the gateway
forwarded in over TCP) tries WebRTC, finds that ICE cannot connect, and talks the same press
over gRPC-web, saying why.
Mouth-to-ear over WebRTC (Alice's first frame -> first sound on Bob's page) is printed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import grpc_web, netns
from tests.conftest import require_spanner_emulator
from tests.ports import stack_overrides
from tests.voxmesh_client import Device, collect_updates, uuid7
from tests.web.conftest import CHROMIUM_FLAGS, require_browser
from tests.web.media_files import dominant_hz
from tests.web.test_browser_client import (
    _diagnostics,
    _events,
    _no_playback,
    _open_thread,
    _sign_in,
    _stored_body,
    _talk,
    _users,
    _wait_for,
)
from voxmesh.common.v1 import update_pb2
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.settings import load_settings
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def rtc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_spanner_emulator()
    overrides: dict[str, Any] = stack_overrides(str(tmp_path_factory.mktemp("webrtc-web")))
    overrides["router"]["instances"] = 2
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


@pytest.fixture(scope="module")
async def rtc_homes(rtc_stack: LocalStack) -> AsyncIterator[RingMembership]:
    membership = RingMembership(rtc_stack.settings, ("router",))
    await membership.start(None)
    await membership.wait_loaded()
    yield membership
    await membership.close()


@pytest.fixture(scope="module")
async def rtc_browser(tone_file: Path) -> AsyncIterator[Any]:
    chromium = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--disable-features=")]
        features = [f for f in CHROMIUM_FLAGS if f.startswith("--disable-features=")]
        disabled = ",".join([*(f.split("=", 1)[1] for f in features), "WebRtcHideLocalIpsWithMdns"])
        launched = await p.chromium.launch(
            executable_path=chromium,
            args=[
                *flags,
                "--allow-loopback-in-peer-connection",
                f"--disable-features={disabled}",
                f"--use-file-for-fake-audio-capture={tone_file}",
            ],
        )
        try:
            yield launched
        finally:
            await launched.close()


def _transport(events: list[dict[str, Any]], role: str, message_id: str) -> str:
    found = [e for e in _events(events, "transport", message_id) if e["role"] == role]
    return str(found[-1]["transport"]) if found else ""


async def _group(page: Any, name: str, members: list[str]) -> None:
    await page.get_by_role("button", name="New conversation").click()
    await page.get_by_label("Group").check()
    await page.get_by_label("Group name").fill(name)
    await page.get_by_label("Members (user names, comma separated)").fill(", ".join(members))
    await page.get_by_role("button", name="Create").click()


async def test_talk_and_listen_over_webrtc_in_chromium_with_fallbacks(
    rtc_stack: LocalStack,
    rtc_homes: RingMembership,
    rtc_browser: Any,
    tone_file: Path,
    tmp_path: Path,
) -> None:
    settings = rtc_stack.settings
    users = _users(rtc_homes)
    alice = await _sign_in(rtc_browser, settings, users["alice"], transport=None)
    bob = await _sign_in(rtc_browser, settings, users["bob"], transport=None)
    await _group(alice, "Live", [users["bob"], users["carol"]])
    thread_button = bob.locator("button.thread", has_text="Live")
    await thread_button.wait_for()
    thread_id = await thread_button.get_attribute("data-thread-id")
    assert thread_id
    await _open_thread(bob, thread_id)
    await alice.locator(".thread-pane").wait_for()

    carol_home = rtc_homes.preference_list("router", users["carol"], 1)[0].address
    carol = Device(settings, users["carol"], uuid7(), carol_home)
    updates = carol.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    carol_events: list[update_pb2.UpdateEvent] = []
    carol_at: dict[tuple[str, int], float] = {}
    carol_task = asyncio.create_task(
        collect_updates(updates, lambda e: False, received_at=carol_at, sink=carol_events)
    )
    try:
        # Alice talks 3 s over WebRTC; Bob (WebRTC track) and Carol (updates) hear it live.
        async def while_talking(message_id: str) -> None:
            await alice.locator(".talk .transport[data-transport=webrtc]").wait_for()
            assert (
                await alice.locator(".talk .transport").inner_text()
            ).strip() == "live via WebRTC"

            async def meter_moves() -> bool:  # the level meter follows the WebRTC microphone
                style = await alice.locator(".talk .meter").get_attribute("style") or ""
                return "width" in style and "width: 0%" not in style

            await _wait_for(meter_moves, 3, "Alice's level meter to show her voice", alice)

            async def bob_heard() -> list[dict[str, Any]]:
                tones = _events(await _diagnostics(bob), "tone", message_id)
                return [t for t in tones if abs(t["hz"] - 440) < 25]

            await _wait_for(bob_heard, 4, "Bob's page to play 440 Hz while Alice talks", bob)
            badge = bob.locator(f"[data-message-id='{message_id}'] .transport")
            assert (await badge.inner_text()).strip() == "live via WebRTC"

            async def carol_heard() -> bool:
                return any(m == message_id for m, _ in carol_at)

            await _wait_for(carol_heard, 4, "Carol's updates stream to carry Alice's chunks")

        first_id, released = await _talk(alice, 3.0, while_talking)
        released_mono = time.perf_counter()
        alice_events, bob_events = await _diagnostics(alice), await _diagnostics(bob)
        assert _transport(alice_events, "talk", first_id) == "webrtc"
        assert _transport(bob_events, "listen", first_id) == "webrtc"
        heard = [t for t in _events(bob_events, "tone", first_id) if abs(t["hz"] - 440) < 25]
        assert heard and heard[0]["at"] < released, "Bob heard Alice only after she stopped"
        carol_first = min(at for (m, _), at in carol_at.items() if m == first_id)
        assert carol_first < released_mono, "Carol heard Alice only after she stopped"
        await alice.locator(f"[data-message-id='{first_id}'][data-state=COMPLETE]").wait_for()
        stored = await _stored_body(settings, users["bob"], thread_id, first_id)
        assert stored.startswith(b"OggS"), "a WebRTC talk is stored as Ogg/Opus"
        assert abs(dominant_hz(stored) - 440) < 10, "the stored body is not Alice's tone"
        carol_payload = b"".join(
            c.payload
            for e in carol_events
            if e.HasField("live_chunks") and e.live_chunks.message_id == first_id
            for c in sorted(e.live_chunks.chunks, key=lambda c: c.index)
        )
        assert abs(dominant_hz(carol_payload) - 440) < 10, "Carol's live chunks are not the tone"

        # Two more, for mouth-to-ear over several messages.
        voice_ids = [first_id]
        for _ in range(2):
            await _wait_for(lambda: _no_playback(bob), 10, "Bob's page to finish playing", bob)
            message_id, _ = await _talk(alice, 1.5)
            voice_ids.append(message_id)
            await alice.locator(f"[data-message-id='{message_id}'][data-state=COMPLETE]").wait_for()
        await _wait_for(lambda: _no_playback(bob), 10, "Bob's page to finish playing", bob)
        alice_events, bob_events = await _diagnostics(alice), await _diagnostics(bob)
        latencies = []
        for message_id in voice_ids:
            assert _transport(bob_events, "listen", message_id) == "webrtc"
            heard_at = _events(bob_events, "firstAudio", message_id)
            assert heard_at, f"Bob's page never played {message_id}"
            talked = _events(alice_events, "recordStart", message_id)[0]["at"]
            latencies.append(heard_at[0]["at"] - talked)
        print(
            "\nWebRTC mouth-to-ear in Chromium (ms, Alice's first frame -> first sound on Bob's"
            f" page): p50 {statistics.median(latencies):.0f}, max {max(latencies):.0f};"
            f" n={len(latencies)}"
        )
    finally:
        carol_task.cancel()
        await carol.close()

    # Fallback 1: a page without RTCPeerConnection talks over gRPC-web (WebM chunks), and
    # Bob's page plays that WebM message over the chunk path.
    context = await rtc_browser.new_context(ignore_https_errors=True)  # the stack's local CA
    await context.add_init_script("delete window.RTCPeerConnection")
    plain = await _sign_in_in(context, settings, users["alice"])
    await _open_thread(plain, thread_id)

    async def plain_talking(message_id: str) -> None:
        await plain.locator(".talk .transport[data-transport=grpc-web]").wait_for()
        assert (await plain.locator(".talk .transport").inner_text()).strip() == "live via gRPC-web"

        async def bob_heard() -> bool:
            return bool(_events(await _diagnostics(bob), "tone", message_id))

        await _wait_for(bob_heard, 4, "Bob's page to play the gRPC-web message", bob)
        badge = bob.locator(f"[data-message-id='{message_id}'] .transport")
        assert await badge.get_attribute("data-transport") == "grpc-web"

    plain_id, _ = await _talk(plain, 1.5, plain_talking)
    assert _transport(await _diagnostics(plain), "talk", plain_id) == ""  # never tried
    await plain.locator(f"[data-message-id='{plain_id}'][data-state=COMPLETE]").wait_for()
    assert (await _stored_body(settings, users["bob"], thread_id, plain_id))[:4] == (
        b"\x1a\x45\xdf\xa3"  # WebM (EBML)
    )
    await context.close()

    # Fallback 2: a browser on a network that drops UDP. Chromium runs in a network
    # namespace of its own that reaches the gateway over TCP only (a forwarded port): it has
    # RTCPeerConnection, tries WebRTC, ICE cannot connect to the router, and the same press
    # talks over gRPC-web, saying why.
    why_not = netns.available()
    if why_not:
        pytest.fail(f"the UDP-blocked fallback needs a network namespace: {why_not}")
    with netns.BlockedHost(f"vxblk{os.getpid() % 100000}") as host:
        port = await host.forward_tcp(settings.host, settings.envoy.port)
        chromium = host.wrapper(tmp_path, require_browser())
        launched = await rtc_browser.browser_type.launch(
            executable_path=str(chromium),
            args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={tone_file}"],
        )
        try:
            context = await launched.new_context(ignore_https_errors=True)
            blocked = await _sign_in_in(
                context, settings, users["alice"], f"https://127.0.0.1:{port}"
            )
            await _talk_blocked(blocked, bob, settings, users["bob"], thread_id)
        finally:
            await launched.close()


async def _talk_blocked(blocked: Any, bob: Any, settings: Any, reader: str, thread_id: str) -> None:
    await _open_thread(blocked, thread_id)

    async def blocked_talking(message_id: str) -> None:
        badge = blocked.locator(".talk .transport")
        await badge.wait_for()
        said = await badge.get_attribute("data-transport")
        assert said == "grpc-web", (
            f"talking via {said}: {_events(await _diagnostics(blocked), 'transport')}"
        )

        async def bob_heard() -> bool:
            return bool(_events(await _diagnostics(bob), "tone", message_id))

        await _wait_for(bob_heard, 6, "Bob's page to play the fallen-back message", bob)

    blocked_id, _ = await _talk(blocked, 2.0, blocked_talking)
    tried = _events(await _diagnostics(blocked), "transport")
    print(f"\nUDP blocked: the page's transport choices: {tried}")
    assert any(e["transport"] == "grpc-web" and "ICE" in e["reason"] for e in tried), (
        f"the page did not say it fell back because ICE failed: {tried}"
    )
    await blocked.locator(f"[data-message-id='{blocked_id}'][data-state=COMPLETE]").wait_for()
    assert (await _stored_body(settings, reader, thread_id, blocked_id))[:4] == (
        b"\x1a\x45\xdf\xa3"  # WebM: the gRPC-web MediaRecorder path
    )
    # A blocked path costs its timeout once: the next press goes straight to gRPC-web.
    await _wait_for(lambda: _no_playback(bob), 10, "Bob's page to finish playing", bob)
    again_id, _ = await _talk(blocked, 1.0, blocked_talking)
    assert _transport(await _diagnostics(blocked), "talk", again_id) == ""  # not tried
    await blocked.locator(f"[data-message-id='{again_id}'][data-state=COMPLETE]").wait_for()


async def _sign_in_in(context: Any, settings: Any, user: str, url: str = "") -> Any:
    page = await context.new_page()
    page.set_default_timeout(15_000)
    await page.goto((url or grpc_web.gateway_url(settings)) + "/")
    await page.get_by_label("User name").fill(user)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("[data-connection=live]").wait_for()
    return page
