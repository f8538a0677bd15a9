"""Shorthands for the header contract tests."""

from __future__ import annotations

from voxmesh.header.header_records import (
    Header,
    Location,
    MessageKind,
    MessageTotals,
    NewMessage,
    Thread,
    ThreadKind,
)
from voxmesh.header.header_store import HeaderStore


async def group(store: HeaderStore, thread_id: str, admin: str, *members: str) -> Thread:
    created = await store.threads.create_thread(
        thread_id, ThreadKind.GROUP, f"group {thread_id}", admin, list(members)
    )
    assert created.created
    return created.thread


async def direct(store: HeaderStore, thread_id: str, creator: str, other: str) -> Thread:
    created = await store.threads.create_thread(thread_id, ThreadKind.DIRECT, "", creator, [other])
    return created.thread


async def voice(
    store: HeaderStore, thread_id: str, message_id: str, sender: str, *, complete: bool = False
) -> Header:
    started = await store.messages.start_message(
        NewMessage(message_id, thread_id, MessageKind.VOICE, "audio/ogg;codecs=opus"),
        sender,
        f"{sender}-phone",
    )
    if not complete:
        return started.header
    done = await store.messages.complete_message(
        thread_id,
        message_id,
        MessageTotals(chunk_count=3, size_bytes=480, duration_nanos=60_000_000),
    )
    return done.header


async def text(
    store: HeaderStore, thread_id: str, message_id: str, sender: str, body: str
) -> Header:
    started = await store.messages.start_message(
        NewMessage(message_id, thread_id, MessageKind.TEXT, text=body), sender, f"{sender}-phone"
    )
    return started.header


def place(latitude: float = 52.37, longitude: float = 4.89) -> Location:
    return Location(latitude=latitude, longitude=longitude, accuracy_meters=5.0, label="Dam")
