"""Rings on the real stack, with processes killed for real: 2 routers, 2 header nodes, 2 body
nodes, etcd.

Leases are 2 s here (5 s by default) so the tests are quick; supervisord does not restart
killed services, so what recovers is the ring, not a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from tests import grpc_web
from tests.conftest import require_spanner_emulator
from tests.ports import stack_overrides
from tests.voxmesh_client import Device, collect_updates, send_voice, uuid7, voice_chunks
from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.core.client_auth import issue_token
from voxmesh.core.ring_membership import RingMembership
from voxmesh.core.settings import Settings, load_settings
from voxmesh.router.v1 import router_service_pb2 as pb
from voxmesh.stack.local_stack import LocalStack

pytestmark = pytest.mark.stack
# 2 s keeps the tests quick; VOXMESH_RING_TEST_LEASE_S=5 measures with the default lease.
LEASE_TTL_S = int(os.environ.get("VOXMESH_RING_TEST_LEASE_S", "2"))
# Below the lease, to show that a dead member is dropped by the probe, not by its lease.
PROBE_INTERVAL_S = 0.5
# How long the client load runs after `voxmesh down` + `up` (the issue asks for 20 s:
# VOXMESH_RING_TEST_RESTART_LOAD_S=20).
RESTART_LOAD_S = float(os.environ.get("VOXMESH_RING_TEST_RESTART_LOAD_S", "6"))


@pytest.fixture(scope="module")
def ring_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    require_spanner_emulator()
    overrides: dict[str, Any] = stack_overrides(str(tmp_path_factory.mktemp("rings")))
    overrides["rings"] = {"lease_ttl_s": LEASE_TTL_S, "probe_interval_s": PROBE_INTERVAL_S}
    overrides["router"]["instances"] = 2
    overrides["header"]["instances"] = 2
    # Seven service processes importing at once: give a loaded machine time to start them.
    overrides["supervisor"] = {**overrides["supervisor"], "ready_timeout_s": 150.0}
    overrides["body"]["instances"] = 2
    overrides["body_store"] = {"abandon_after_s": 30.0}
    with LocalStack(load_settings(overrides=overrides)) as stack:
        yield stack


@pytest.fixture
async def rings(ring_stack: LocalStack) -> AsyncIterator[RingMembership]:
    membership = RingMembership(ring_stack.settings, ("router", "header", "body", "notification"))
    await membership.start(None)
    await membership.wait_loaded()
    yield membership
    await membership.close()


def _component_for(stack: LocalStack, address: str) -> str:
    port = int(address.rsplit(":", 1)[1])
    for component in stack.components:
        if ("grpc", port) in component.ports:
            return component.name
    raise AssertionError(f"no component listens on {address}")


def _pid(stack: LocalStack, name: str) -> int:
    """The component's current pid (it changes when a test restarts it)."""
    return int(stack._rpc().supervisor.getProcessInfo(name)["pid"])


def _restart(stack: LocalStack, name: str) -> None:
    """Start a stopped or killed component again and wait until it serves."""
    rpc = stack._rpc()
    if rpc.supervisor.getProcessInfo(name)["statename"] != "RUNNING":
        rpc.supervisor.startProcess(name, True)
    component = next(c for c in stack.components if c.name == name)
    deadline = time.monotonic() + 30
    while not component.probe().ready:
        assert time.monotonic() < deadline, f"{name} did not come back"
        time.sleep(0.05)


async def _wait_for(predicate: Any, timeout_s: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def _home_device(settings: Settings, user: str, device: str = "phone") -> Device:
    """Discover on any router, then connect to the user's home router."""
    for index in range(settings.router.instances):
        port = settings.router.instance_ports(index)[0]
        probe = Device(settings, user, device, f"{settings.host}:{port}")
        try:
            found = await probe.call("Discover", pb.DiscoverRequest(user_id=user))
        except grpc.aio.AioRpcError:
            continue
        finally:
            await probe.close()
        return Device(settings, user, device, found.routers[0].address)
    raise AssertionError("no router answered Discover")


async def _open_updates(
    settings: Settings, user: str, cursor: str, timeout_s: float
) -> tuple[Device, Any, list[Any], str]:
    """As a client does: Discover, connect to the home, follow redirects, retry until live.

    Returns the device, its open stream, the replayed events and the cursor after them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        device: Device | None = None
        try:
            device = await _home_device(settings, user)
            stream = device.updates(cursor=cursor)
            events: list[Any] = []
            async for frame in stream:
                events.extend(frame.events)
                cursor = frame.cursor or cursor
                if any(e.HasField("caught_up") for e in frame.events):
                    return device, stream, events, cursor
        except (grpc.aio.AioRpcError, AssertionError):
            if device is not None:
                await device.close()
            assert time.monotonic() < deadline, f"{user} could not get live again"
            await asyncio.sleep(0.1)


async def _group(owner: Device, *members: Device) -> str:
    reply = await owner.call(
        "CreateThread",
        pb.CreateThreadRequest(
            kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[m.user_id for m in members]
        ),
    )
    return str(reply.thread.thread_id)


async def test_every_process_is_in_its_ring_and_discover_agrees(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    assert [len(rings.members(k)) for k in ("router", "header", "body", "notification")] == [
        2,
        2,
        2,
        1,
    ]
    settings = ring_stack.settings
    answers = []
    for index in range(2):
        device = Device(
            settings,
            "ring-user",
            "d",
            f"{settings.host}:{settings.router.instance_ports(index)[0]}",
        )
        found = await device.call("Discover", pb.DiscoverRequest(user_id="ring-user"))
        answers.append([r.address for r in found.routers])
        await device.close()
    assert (
        answers[0]
        == answers[1]
        == [m.address for m in rings.preference_list("router", "ring-user")]
    )


async def test_updates_on_a_router_that_is_not_home_redirect_to_the_home(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    import subprocess
    import sys

    settings = ring_stack.settings
    home, other = rings.preference_list("router", "wanderer")
    device = Device(settings, "wanderer", "d", other.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect_updates(device.updates(), lambda e: e.HasField("caught_up"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        metadata: Any = refused.value.trailing_metadata()  # grpc.aio.Metadata: (key, value)s
        trailers = dict(metadata)
        assert trailers["voxmesh-routers"].split(",")[0] == home.address
    finally:
        await device.close()
    status = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "voxmesh",
            "--config",
            str(ring_stack.paths.settings_file),
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "ring router        2 member(s)" in status.stdout
    assert "ring body          2 member(s)" in status.stdout


async def test_senders_and_listeners_on_different_routers_hear_each_other_live(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    users = [f"cross-{i}" for i in range(40)]
    homes = {u: rings.preference_list("router", u)[0].node_id for u in users}
    alice_id = users[0]
    bob_id = next(u for u in users if homes[u] != homes[alice_id])  # homed elsewhere
    alice, bob = await _home_device(settings, alice_id), await _home_device(settings, bob_id)
    try:
        assert alice.address != bob.address
        thread = await _group(alice, bob)
        updates = bob.updates()
        await collect_updates(updates, lambda e: e.HasField("caught_up"))
        message_id = uuid7()
        chunks = voice_chunks(100, seed="cross")
        received: dict[tuple[str, int], float] = {}
        listening = asyncio.create_task(
            collect_updates(
                updates,
                lambda e: (
                    e.HasField("message_state_changed")
                    and e.message_state_changed.header.message_id == message_id
                ),
                received,
            )
        )
        await send_voice(alice, thread, message_id, chunks, pace_s=0.005)
        await asyncio.wait_for(listening, 20)
        updates.cancel()
        assert sorted(i for (m, i) in received if m == message_id) == list(range(100))
    finally:
        await alice.close()
        await bob.close()


async def test_killing_the_body_node_mid_stream_loses_and_duplicates_nothing(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    alice = await _home_device(settings, "bk-alice")
    bob = await _home_device(settings, "bk-bob")
    thread = await _group(alice, bob)
    message_id = uuid7()
    owner = rings.preference_list("body", message_id)[0]
    victim = _component_for(ring_stack, owner.address)
    pid = _pid(ring_stack, victim)
    chunks = voice_chunks(400, seed="body-kill")
    updates = bob.updates()
    await collect_updates(updates, lambda e: e.HasField("caught_up"))
    received: dict[tuple[str, int], float] = {}
    listening = asyncio.create_task(
        collect_updates(
            updates,
            lambda e: (
                e.HasField("message_state_changed")
                and e.message_state_changed.header.message_id == message_id
            ),
            received,
        )
    )

    def kill_at(index: int) -> None:
        if index == 120:
            os.kill(pid, signal.SIGKILL)

    acked: dict[int, float] = {}
    try:
        responses = await asyncio.wait_for(
            send_voice(
                alice, thread, message_id, chunks, pace_s=0.01, acked_at=acked, on_sent=kill_at
            ),
            60,
        )
        await asyncio.wait_for(listening, 20)
        ack_counts = [r.ack.durable_chunk_count for r in responses if r.HasField("ack")]
        assert ack_counts == sorted(ack_counts) and ack_counts[-1] == 400  # never backwards
        assert responses[-1].completed.header.chunk_count == 400
        assert sorted(i for (m, i) in received if m == message_id) == list(range(400))
        read, end = await bob.read_body(thread, message_id)
        assert [c.index for c in read] == list(range(400))
        assert b"".join(c.payload for c in read) == b"".join(c.payload for c in chunks)
        assert end.end.state == message_pb2.MESSAGE_STATE_COMPLETE
    finally:
        updates.cancel()
        await alice.close()
        await bob.close()
        _restart(ring_stack, victim)
        await _wait_for(lambda: len(rings.members("body")) == 2, 20, "the body node to rejoin")


async def test_a_killed_home_routers_users_are_live_again_on_the_next_router(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    recoveries = []
    for attempt in range(3):
        bob_id, alice_id = f"rk-bob-{attempt}", f"rk-alice-{attempt}"
        alice = await _home_device(settings, alice_id)
        bob, updates, _, cursor = await _open_updates(settings, bob_id, "", 10)
        thread = await _group(alice, bob)
        # Bob's device learns of the new thread: its cursor now covers it.
        async for frame in updates:
            cursor = frame.cursor or cursor
            if any(e.HasField("thread_changed") for e in frame.events):
                break
        victim = _component_for(ring_stack, bob.address)
        survivor = next(m.address for m in rings.members("router") if m.address != bob.address)
        os.kill(_pid(ring_stack, victim), signal.SIGKILL)
        killed_at = time.monotonic()
        await bob.close()
        # During the outage, Alice (through the surviving router) sends a message.
        missed = uuid7()
        text_sender = Device(settings, alice_id, "d", survivor)
        await text_sender.call(
            "SendText",
            pb.SendTextRequest(message_id=missed, thread_id=thread, device_id="d", text="still?"),
        )
        # Bob's device: back on the first router that accepts it, from its cursor.
        bob, resumed, replay, _ = await _open_updates(settings, bob_id, cursor, 4 * LEASE_TTL_S + 5)
        recoveries.append(time.monotonic() - killed_at)
        # What was sent while Bob's router was dead reaches him on resume: no gap.
        replayed = {e.header_updated.message_id for e in replay if e.HasField("header_updated")}
        assert missed in replayed
        resumed.cancel()
        for device in (bob, alice, text_sender):
            await device.close()
        _restart(ring_stack, victim)
        await _wait_for(lambda: len(rings.members("router")) == 2, 20, "the router to rejoin")
    print(
        f"\nkilled home router -> user live again: p50 {statistics.median(recoveries):.2f} s, "
        f"max {max(recoveries):.2f} s over {len(recoveries)} kills (lease {LEASE_TTL_S} s)"
    )


async def test_a_stopped_member_leaves_within_the_lease_and_rejoins(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    member = rings.members("body")[1]
    pid = _pid(ring_stack, _component_for(ring_stack, member.address))
    os.kill(pid, signal.SIGSTOP)
    try:
        left = await _wait_for(
            lambda: member.node_id not in {m.node_id for m in rings.members("body")},
            LEASE_TTL_S + 3,
            "the stopped member to leave the ring",
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    back = await _wait_for(
        lambda: member.node_id in {m.node_id for m in rings.members("body")},
        LEASE_TTL_S + 5,
        "the member to rejoin",
    )
    print(
        f"\nring converged {left:.2f} s after SIGSTOP (lease {LEASE_TTL_S} s); "
        f"rejoined {back:.2f} s after SIGCONT"
    )
    assert left <= LEASE_TTL_S + 2


async def test_a_message_whose_router_died_is_abandoned_by_its_body_node(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    """The sender's router is killed mid-message and the sender never comes back: the body
    node gives up on the idle body and marks the header ABANDONED, keeping what was durable
    (the router that would have done it is gone)."""
    settings = ring_stack.settings
    idle_s = 2.0

    def config(*args: str) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "voxmesh",
                "--config",
                str(ring_stack.paths.settings_file),
                "config",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    victim_address, survivor = (m.address for m in rings.members("router"))
    victim = _component_for(ring_stack, victim_address)
    alice = Device(settings, "ab-alice", "phone", victim_address)
    bob = Device(settings, "ab-bob", "phone", survivor)
    await asyncio.to_thread(config, "set", "body_store.abandon_after_s", str(idle_s))
    try:
        thread = await _group(alice, bob)
        message_id = uuid7()
        chunks = voice_chunks(20, seed="abandon")
        call = alice.send_call()
        start = message_pb2.MessageStart(
            message_id=message_id,
            thread_id=thread,
            kind=message_pb2.MESSAGE_KIND_VOICE,
            content_type="audio/ogg;codecs=opus",
        )
        await call.write(pb.SendRequest(start=start, device_id="phone", chunks=chunks))
        durable = 0
        while durable < len(chunks):
            reply = await asyncio.wait_for(call.read(), 10)
            if reply.HasField("ack"):
                durable = reply.ack.durable_chunk_count
        os.kill(_pid(ring_stack, victim), signal.SIGKILL)
        call.cancel()

        async def state() -> int:
            got = await bob.call(
                "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
            )
            return int(got.header.state)

        deadline = time.monotonic() + idle_s + 20
        while await state() != message_pb2.MESSAGE_STATE_ABANDONED:
            assert time.monotonic() < deadline, "the header never became ABANDONED"
            await asyncio.sleep(0.2)
        got = await bob.call(
            "GetMessage", pb.GetMessageRequest(thread_id=thread, message_id=message_id)
        )
        assert got.header.chunk_count == len(chunks)  # the header states what was kept
        assert got.header.size_bytes == sum(len(c.payload) for c in chunks)
        read, end = await bob.read_body(thread, message_id)
        assert end.end.state == message_pb2.MESSAGE_STATE_ABANDONED
        assert b"".join(c.payload for c in read) == b"".join(c.payload for c in chunks)
    finally:
        await asyncio.to_thread(config, "unset", "body_store.abandon_after_s")
        await alice.close()
        await bob.close()
        _restart(ring_stack, victim)
        await _wait_for(lambda: len(rings.members("router")) == 2, 20, "the router to rejoin")


async def test_sigterm_drains_a_router_with_zero_client_errors(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    gateway = grpc_web.gateway_url(settings)
    tls = grpc_web.tls_context(settings)
    token = issue_token(settings.auth, "drain-user")
    victim = _component_for(ring_stack, rings.members("router")[1].address)
    statuses: list[tuple[int, str, float]] = []
    stop = asyncio.Event()
    began = time.monotonic()

    async def client() -> None:
        while not stop.is_set():
            reply = await asyncio.to_thread(
                grpc_web.call,
                gateway,
                "voxmesh.router.v1.RouterService/Discover",
                pb.DiscoverRequest(user_id="drain-user"),
                token=token,
                context=tls,
            )
            statuses.append((reply.grpc_status, reply.grpc_message, time.monotonic() - began))
            await asyncio.sleep(0.01)

    load = asyncio.create_task(client())
    await asyncio.sleep(0.5)
    await asyncio.to_thread(ring_stack._rpc().supervisor.stopProcess, victim, True)
    await asyncio.sleep(0.5)
    stop.set()
    await load
    _restart(ring_stack, victim)
    await _wait_for(lambda: len(rings.members("router")) == 2, 20, "the router to rejoin")
    assert len(statuses) > 20
    assert [s for s in statuses if s[0] != 0] == []


async def test_etcd_restart_members_register_again_and_rings_recover(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    import aetcd

    settings = ring_stack.settings
    rpc = ring_stack._rpc()
    await asyncio.to_thread(rpc.supervisor.stopProcess, "etcd", True)
    await asyncio.to_thread(rpc.supervisor.startProcess, "etcd", True)
    # etcd keeps its data dir, so keys could simply survive: delete every member key once it
    # is back, to prove that the members register again by themselves.
    async with aetcd.Client(host=settings.host, port=settings.etcd.client_port) as etcd:
        deadline = time.monotonic() + 10
        while True:
            try:
                await etcd.delete_prefix(f"{settings.etcd.prefix}/members/".encode())
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    await _wait_for(
        lambda: (
            [len(rings.members(k)) for k in ("router", "header", "body", "notification")]
            == [2, 2, 2, 1]
        ),
        3 * LEASE_TTL_S + 10,
        "every member to register again",
    )
    # Every router's own ring recovers too: Discover on each sees both routers again.
    deadline = time.monotonic() + 3 * LEASE_TTL_S + 10
    for index in range(settings.router.instances):
        device = Device(
            settings,
            "etcd-alice",
            "d",
            f"{settings.host}:{settings.router.instance_ports(index)[0]}",
        )
        try:
            while True:
                found = await device.call("Discover", pb.DiscoverRequest(user_id="etcd-alice"))
                if len(found.routers) == 2:
                    break
                assert time.monotonic() < deadline, "a router's ring did not recover"
                await asyncio.sleep(0.1)
        finally:
            await device.close()


# -- membership that never points at the dead -----------------------------------------------


@dataclasses.dataclass
class _Load:
    """What clients saw: calls made, the documented failovers, and every call that failed."""

    began: float
    calls: int = 0
    failovers: int = 0
    failed: list[tuple[str, str, str, float]] = dataclasses.field(default_factory=list)

    def fail(self, what: str, exc: grpc.aio.AioRpcError) -> None:
        at = time.monotonic() - self.began
        self.failed.append((what, exc.code().name, str(exc.details())[:160], round(at, 2)))


async def _routers_of(settings: Settings, user: str) -> list[Device]:
    """A client's devices on each router of its preference list (Discover on any router)."""
    for index in range(settings.router.instances):
        port = settings.router.instance_ports(index)[0]
        probe = Device(settings, user, "d", f"{settings.host}:{port}")
        try:
            found = await probe.call("Discover", pb.DiscoverRequest(user_id=user))
        except grpc.aio.AioRpcError:
            continue
        finally:
            await probe.close()
        return [Device(settings, user, "d", r.address) for r in found.routers]
    raise AssertionError("no router answered Discover")


async def _unary(routers: list[Device], load: _Load, method: str, request: Any) -> Any:
    """A unary call as a client makes it: on its router; if that router is UNAVAILABLE, once
    more on the next router of its list (the one documented retry), which it then keeps."""
    for attempt in range(2):
        try:
            reply = await routers[0].call(method, request)
            load.calls += 1
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt == 0 and len(routers) > 1:
                load.failovers += 1
                routers.append(routers.pop(0))
                continue
            load.calls += 1
            load.fail(method, exc)
            return None
    return None


async def _metric(settings: Settings, kind: str, name: str, label: str) -> float:
    """The sum over every router of one labelled counter from its /metrics."""

    def scrape(port: int) -> float:
        try:
            with urllib.request.urlopen(f"http://{settings.host}:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0  # a killed router
        total = 0.0
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and f'{label}="{kind}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    ports = [settings.router.instance_ports(i)[1] for i in range(settings.router.instances)]
    values = await asyncio.gather(*(asyncio.to_thread(scrape, p) for p in ports))
    return sum(values)


async def _all_messages(device: Device, thread: str) -> set[str]:
    found: set[str] = set()
    token = ""
    while True:
        page = await device.call(
            "ListMessages",
            pb.ListMessagesRequest(thread_id=thread, page_size=100, page_token=token),
        )
        found.update(h.message_id for h in page.headers)
        token = page.next_page_token
        if not token:
            return found


async def test_killing_a_header_node_under_load_fails_no_call_and_loses_no_write(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    await _wait_for(lambda: len(rings.members("header")) == 2, 20, "both header nodes in the ring")
    users = [f"hk-{i}" for i in range(6)]
    routers = {u: await _routers_of(settings, u) for u in users}
    threads: list[tuple[str, str]] = []  # (thread, owner)
    while len(threads) < 30:
        owner, other = users[len(threads) % 6], users[(len(threads) + 1) % 6]
        threads.append((await _group(routers[owner][0], routers[other][0]), owner))
        nodes = [rings.preference_list("header", t)[0].address for t, _ in threads]
        if (
            len(threads) >= 6
            and min(nodes.count(n) for n in set(nodes)) >= 2
            and len(set(nodes)) == 2
        ):
            break
    victim_address = rings.preference_list("header", threads[0][0])[0].address
    victim = _component_for(ring_stack, victim_address)
    load = _Load(time.monotonic())
    acked: dict[str, list[str]] = {t: [] for t, _ in threads}
    voice_done: list[str] = []
    stop = asyncio.Event()

    async def writer(thread: str, owner: str) -> None:
        while not stop.is_set():
            message_id = uuid7()
            reply = await _unary(
                routers[owner],
                load,
                "SendText",
                pb.SendTextRequest(
                    message_id=message_id, thread_id=thread, device_id="d", text="hi"
                ),
            )
            if reply is not None:
                acked[thread].append(message_id)
            await _unary(
                routers[owner], load, "ListMessages", pb.ListMessagesRequest(thread_id=thread)
            )
            await _unary(routers[owner], load, "GetThread", pb.GetThreadRequest(thread_id=thread))
            await asyncio.sleep(0.02)

    async def reader(user: str) -> None:
        while not stop.is_set():
            await _unary(routers[user], load, "ListThreads", pb.ListThreadsRequest())
            await _unary(routers[user], load, "ListTimeline", pb.ListTimelineRequest(device_id="d"))
            await asyncio.sleep(0.05)

    async def talker(thread: str, owner: str) -> None:
        while not stop.is_set():
            message_id = uuid7()
            try:
                responses = await send_voice(
                    routers[owner][0],
                    thread,
                    message_id,
                    voice_chunks(25, seed=message_id),
                    pace_s=0.01,
                )
                load.calls += 1
                assert responses[-1].completed.header.chunk_count == 25
                voice_done.append(message_id)
            except grpc.aio.AioRpcError as exc:
                load.calls += 1
                load.fail("Send", exc)

    suspected_before = await _metric(
        settings, "header", "voxmesh_mesh_members_suspected_total", "kind"
    )
    retries_before = await _metric(settings, "header", "voxmesh_mesh_retries_total", "kind")
    tasks = [asyncio.create_task(writer(t, o)) for t, o in threads[:8]]
    tasks += [asyncio.create_task(reader(u)) for u in users]
    tasks.append(asyncio.create_task(talker(*threads[0])))
    try:
        await asyncio.sleep(1.5)
        os.kill(_pid(ring_stack, victim), signal.SIGKILL)
        killed_at = time.monotonic()
        suspected_in = None
        while time.monotonic() - killed_at < 3.0:
            if suspected_in is None and (
                await _metric(settings, "header", "voxmesh_mesh_members_suspected_total", "kind")
                > suspected_before
            ):
                suspected_in = time.monotonic() - killed_at
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        retries = (
            await _metric(settings, "header", "voxmesh_mesh_retries_total", "kind") - retries_before
        )
        # No acknowledged write lost: every SendText that answered OK is in its thread, and
        # every voice message that completed is whole.
        lost = 0
        for thread, owner in threads[:8]:
            stored = await _all_messages(routers[owner][0], thread)
            lost += len([m for m in acked[thread] if m not in stored])
        for message_id in voice_done[-3:]:
            chunks, end = await routers[threads[0][1]][0].read_body(threads[0][0], message_id)
            assert [c.index for c in chunks] == list(range(25))
            assert end.end.state == message_pb2.MESSAGE_STATE_COMPLETE
        print(
            f"\nkill -9 of header node {victim_address} under load: {load.calls} client calls, "
            f"{len(load.failed)} failed, {load.failovers} client failovers, {int(retries)} "
            f"router retries on the next header node, suspect after "
            f"{suspected_in if suspected_in is None else round(suspected_in, 3)} s "
            f"(probe {PROBE_INTERVAL_S} s, lease {LEASE_TTL_S} s); "
            f"{sum(map(len, acked.values()))} acked texts, {lost} lost; {len(voice_done)} voice "
            f"messages"
        )
        assert load.failed == []
        assert lost == 0
        assert sum(map(len, acked.values())) > 8 and voice_done
        assert suspected_in is not None and suspected_in < LEASE_TTL_S
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for devices in routers.values():
            for device in devices:
                await device.close()
        _restart(ring_stack, victim)
        await _wait_for(lambda: len(rings.members("header")) == 2, 20, "the header node to rejoin")


async def _names_the_living(settings: Settings, user: str, exc: grpc.aio.AioRpcError) -> bool:
    """A redirect is a failure only if none of the routers it names answers: while rings
    converge (a member that just joined or left), a router may name another live one, and a
    client tries the named routers in order, as it does Discover's list."""
    trailers: Any = exc.trailing_metadata() or ()  # grpc.aio.Metadata: (key, value)s
    named = next((str(v) for k, v in trailers if k == "voxmesh-routers"), "")
    for address in filter(None, named.split(",")):
        probe = Device(settings, user, "d", address)
        try:
            await probe.call("Discover", pb.DiscoverRequest(user_id=user))
            return True
        except grpc.aio.AioRpcError:
            continue
        finally:
            await probe.close()
    return False


async def _keep_updates_open(
    settings: Settings, user: str, load: _Load, stop: asyncio.Event, live: dict[str, str]
) -> None:
    """A device's updates stream as a client keeps it: Discover, connect to the first router
    (the next one if it is UNAVAILABLE), resume from the cursor whenever the stream ends. A
    refusal (a redirect naming a router that does not answer, an error) is a failure."""
    cursor = ""
    while not stop.is_set():
        try:
            routers = await _routers_of(settings, user)
        except AssertionError:
            await asyncio.sleep(0.05)
            continue
        try:
            for attempt, device in enumerate(routers[:2]):
                try:
                    async for frame in device.updates(cursor=cursor):
                        cursor = frame.cursor or cursor
                        if any(e.HasField("caught_up") for e in frame.events):
                            live[user] = device.address
                        if stop.is_set():
                            return
                    break  # the stream ended (the router moved us): reconnect
                except grpc.aio.AioRpcError as exc:
                    live.pop(user, None)
                    if stop.is_set() or exc.code() == grpc.StatusCode.CANCELLED:
                        return
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        if attempt == 0 and user not in live:
                            load.failovers += 1  # its router just died: the next one
                            continue
                        break  # the stream broke: Discover again
                    redirected = exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    if redirected and await _names_the_living(settings, user, exc):
                        break  # redirected to a router that serves: follow it (Discover again)
                    load.fail(f"Updates {user}", exc)
                    await asyncio.sleep(0.1)
                    break
        finally:
            for device in routers:
                await device.close()


async def test_killing_a_router_under_load_fails_no_call_and_discover_drops_it_at_once(
    ring_stack: LocalStack, rings: RingMembership
) -> None:
    settings = ring_stack.settings
    await _wait_for(lambda: len(rings.members("router")) == 2, 20, "both routers in the ring")
    users = [f"rkl-{i}" for i in range(8)]
    homes = {u: rings.preference_list("router", u)[0].address for u in users}
    for extra in range(8, 40):  # both routers home some of them
        if len(set(homes.values())) == 2:
            break
        users[extra % 8] = f"rkl-{extra}"
        homes = {u: rings.preference_list("router", u)[0].address for u in users}
    assert len(set(homes.values())) == 2
    victim_address = homes[users[0]]
    victim = _component_for(ring_stack, victim_address)
    survivor = next(m.address for m in rings.members("router") if m.address != victim_address)
    routers = {u: await _routers_of(settings, u) for u in users}
    thread = await _group(routers[users[0]][0], *(routers[u][0] for u in users[1:]))
    load = _Load(time.monotonic())
    stop = asyncio.Event()
    live: dict[str, str] = {}

    async def caller(user: str) -> None:
        while not stop.is_set():
            await _unary(routers[user], load, "GetThread", pb.GetThreadRequest(thread_id=thread))
            await _unary(routers[user], load, "ListThreads", pb.ListThreadsRequest())
            await asyncio.sleep(0.03)

    watchers = [
        asyncio.create_task(_keep_updates_open(settings, u, load, stop, live)) for u in users
    ]
    callers = [asyncio.create_task(caller(u)) for u in users]
    observer = Device(settings, users[0], "d", survivor)
    try:
        await _wait_for(lambda: len(live) == len(users), 20, "every device to be live")
        await asyncio.sleep(0.5)
        os.kill(_pid(ring_stack, victim), signal.SIGKILL)
        killed_at = time.monotonic()
        dropped_in = None
        while dropped_in is None and time.monotonic() - killed_at < LEASE_TTL_S + 3:
            found = await observer.call("Discover", pb.DiscoverRequest(user_id=users[0]))
            if victim_address not in [r.address for r in found.routers]:
                dropped_in = time.monotonic() - killed_at
            await asyncio.sleep(0.01)
        # Every device is live again, on the survivor, and stays so.
        recovered_in = await _wait_for(
            lambda: len(live) == len(users) and set(live.values()) == {survivor},
            LEASE_TTL_S + 5,
            "every device to be live on the surviving router",
        )
        recovered_in += time.monotonic() - killed_at - recovered_in
        await asyncio.sleep(1.0)
        stop.set()
        for task in callers:
            await asyncio.wait_for(task, 30)
        print(
            f"\nkill -9 of router {victim_address} under load: {load.calls} client calls, "
            f"{len(load.failed)} failed, {load.failovers} client failovers; Discover stopped "
            f"naming it after {dropped_in if dropped_in is None else round(dropped_in, 3)} s "
            f"(probe {PROBE_INTERVAL_S} s, lease {LEASE_TTL_S} s); all {len(users)} devices live "
            f"again {recovered_in:.2f} s after the kill"
        )
        assert load.failed == []
        assert dropped_in is not None and dropped_in <= PROBE_INTERVAL_S + 0.5 < LEASE_TTL_S
    finally:
        stop.set()
        for task in [*callers, *watchers]:
            task.cancel()
        await asyncio.gather(*callers, *watchers, return_exceptions=True)
        await observer.close()
        for devices in routers.values():
            for device in devices:
                await device.close()
        _restart(ring_stack, victim)
        await _wait_for(lambda: len(rings.members("router")) == 2, 20, "the router to rejoin")


async def _member_keys_with_etcd_alone(stack: LocalStack) -> list[str]:
    """Start etcd alone from the stack's data directory and list the member keys it kept."""
    import aetcd

    etcd = next(c for c in stack.components if c.name == "etcd")
    process = await asyncio.create_subprocess_exec(
        *etcd.command,
        env={**os.environ, **etcd.env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await _wait_for(lambda: etcd.probe().ready, 20, "etcd alone")
        settings = stack.settings
        async with aetcd.Client(host=settings.host, port=settings.etcd.client_port) as client:
            listing = await client.get_prefix(f"{settings.etcd.prefix}/members/".encode())
            return [kv.key.decode() for kv in listing]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def test_z_down_then_up_leaves_no_member_behind_and_no_call_fails(
    ring_stack: LocalStack,
) -> None:
    """Last in this module: it takes the stack down. `voxmesh down` stops stage by stage, so
    every service revokes its lease while etcd is still up; `up` again (one of each) then
    starts with rings that hold only live members."""
    began = time.monotonic()
    await asyncio.to_thread(ring_stack.down)
    down_s = time.monotonic() - began
    assert await _member_keys_with_etcd_alone(ring_stack) == []
    settings = ring_stack.settings
    single = dataclasses.replace(
        settings,
        router=dataclasses.replace(settings.router, instances=1),
        header=dataclasses.replace(settings.header, instances=1),
        body=dataclasses.replace(settings.body, instances=1),
    )
    stack = LocalStack(single)
    await asyncio.to_thread(stack.up)
    load = _Load(time.monotonic())
    stop = asyncio.Event()
    live: dict[str, str] = {}
    users = [f"fresh-{i}" for i in range(8)]
    try:

        async def caller(user: str) -> None:
            routers = await _routers_of(single, user)
            peer = users[(users.index(user) + 1) % len(users)]
            reply = await _unary(
                routers,
                load,
                "CreateThread",
                pb.CreateThreadRequest(kind=thread_pb2.THREAD_KIND_GROUP, member_user_ids=[peer]),
            )
            thread = reply.thread.thread_id if reply is not None else ""
            while not stop.is_set():
                await _unary(routers, load, "ListThreads", pb.ListThreadsRequest())
                if thread:
                    await _unary(
                        routers,
                        load,
                        "SendText",
                        pb.SendTextRequest(
                            message_id=uuid7(), thread_id=thread, device_id="d", text="up"
                        ),
                    )
                await asyncio.sleep(0.05)
            for device in routers:
                await device.close()

        tasks = [asyncio.create_task(caller(u)) for u in users]
        tasks += [
            asyncio.create_task(_keep_updates_open(single, u, load, stop, live)) for u in users
        ]
        await asyncio.sleep(RESTART_LOAD_S)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks[: len(users)]), 30)
        for task in tasks[len(users) :]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(
            f"\ndown (2 routers, 2 headers, 2 bodies) took {down_s:.1f} s and left no member key;"
            f" after up: {load.calls} client calls in {RESTART_LOAD_S:g} s, {len(load.failed)} "
            f"failed, {len(live)}/{len(users)} devices live"
        )
        assert load.failed == []
        assert load.calls >= 2 * len(users)  # every user made calls (slow on a loaded machine)
    finally:
        await asyncio.to_thread(stack.down)
