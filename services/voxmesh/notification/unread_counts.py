"""Unread counts per user and per thread, in Redis, recoverable from the header store.

A thread's unread messages are a sorted set of message ids scored by seq, so counting a
message twice (start and completion, a retry, a redelivery) changes nothing, and a read or
listened mark removes everything at or below its seq in one step. The user's marks are kept
beside it, so a message announced after the mark that covers it is never counted.

Redis is a cache here, not the record: the header store holds every message and mark. Each
user's counts carry a "ready" key; when it is missing (a new user, or Redis lost its data)
the counts are rebuilt from the header store before they are used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis

from voxmesh.common.v1 import message_pb2, thread_pb2
from voxmesh.core.structured_logging import get_logger
from voxmesh.header.v1 import header_service_pb2 as header_pb
from voxmesh.header.v1 import header_service_pb2_grpc as header_grpc
from voxmesh.notification.redis_values import as_str

_log = get_logger(__name__)

HeaderFor = Callable[[str], "header_grpc.HeaderServiceAsyncStub"]  # stubs-only type

# KEYS: unread zset, marks hash, threads-with-unread set. ARGV: thread, seq, message id.
# Returns 1 if the message is unread for the user (counted), 0 if a mark already covers it.
_COUNT = """
local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= mark then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS: as above. ARGV: thread, up_to_seq. Marks never move backwards. Returns what is left.
_CLEAR = """
local mark = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > mark then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return left
"""

_COUNTED_STATES = (
    message_pb2.MESSAGE_STATE_LIVE,
    message_pb2.MESSAGE_STATE_COMPLETE,
    message_pb2.MESSAGE_STATE_ABANDONED,
)
_PAGE = 200


def unread_key(user_id: str, thread_id: str) -> str:
    return f"vx:unread:{{{user_id}}}:{thread_id}"


def marks_key(user_id: str) -> str:
    return f"vx:marks:{{{user_id}}}"


def threads_key(user_id: str) -> str:
    return f"vx:unread-threads:{{{user_id}}}"


def ready_key(user_id: str) -> str:
    return f"vx:unread-ready:{{{user_id}}}"


class UnreadCounts:
    def __init__(
        self,
        redis: aioredis.Redis,
        header_for: HeaderFor,
        rebuild_max_per_thread: int,
        on_thread_state: Callable[[str, thread_pb2.Thread], object] | None = None,
    ) -> None:
        self._redis = redis
        self._header_for = header_for
        self._max_per_thread = rebuild_max_per_thread
        self._count = redis.register_script(_COUNT)
        self._clear = redis.register_script(_CLEAR)
        self._rebuilding: dict[str, asyncio.Task[None]] = {}
        # Called with each thread met while rebuilding (restores mutes from the header store).
        self._on_thread_state = on_thread_state

    def _keys(self, user_id: str, thread_id: str) -> list[str]:
        return [unread_key(user_id, thread_id), marks_key(user_id), threads_key(user_id)]

    # -- recovery --------------------------------------------------------------------------

    async def ensure(self, user_id: str) -> None:
        """Rebuild the user's counts from the header store if Redis does not hold them."""
        if await self._redis.exists(ready_key(user_id)):
            return
        task = self._rebuilding.get(user_id)
        if task is None:  # one rebuild per user at a time; concurrent callers share it
            task = asyncio.ensure_future(self._rebuild(user_id))
            self._rebuilding[user_id] = task
            task.add_done_callback(lambda _: self._rebuilding.pop(user_id, None))
        await asyncio.shield(task)

    async def _rebuild(self, user_id: str) -> None:
        header = self._header_for(user_id)
        token = ""
        threads = 0
        while True:
            page = await header.ListThreadsForUser(
                header_pb.ListThreadsForUserRequest(
                    user_id=user_id, page_size=_PAGE, page_token=token
                )
            )
            for thread in page.threads:
                threads += 1
                await self._rebuild_thread(user_id, thread)
            token = page.next_page_token
            if not token:
                break
        await self._redis.set(ready_key(user_id), 1)
        _log.info("unread counts rebuilt from the header store", user_id=user_id, threads=threads)

    async def _rebuild_thread(self, user_id: str, thread: thread_pb2.Thread) -> None:
        state = thread.user_state
        mark = max(state.read_seq, state.listened_seq)
        if self._on_thread_state is not None:
            result = self._on_thread_state(user_id, thread)
            if asyncio.iscoroutine(result):
                await result
        keys = self._keys(user_id, thread.thread_id)
        await self._clear(keys=keys, args=[thread.thread_id, mark])
        if thread.last_seq <= mark:
            return
        token = ""
        seen = 0
        stub = self._header_for(thread.thread_id)
        while seen < self._max_per_thread:
            listing = header_pb.ListMessagesRequest(
                thread_id=thread.thread_id,
                viewer_user_id=user_id,
                page_size=_PAGE,
                page_token=token,
            )
            if not token:
                listing.after_seq = mark
            page = await stub.ListMessages(listing)
            for message in page.headers:
                seen += 1
                if message.sender_user_id != user_id and message.state in _COUNTED_STATES:
                    await self._count(
                        keys=keys, args=[thread.thread_id, message.seq, message.message_id]
                    )
            token = page.next_page_token
            if not token:
                break

    # -- counting --------------------------------------------------------------------------

    async def add(self, user_id: str, thread_id: str, seq: int, message_id: str) -> bool:
        """Count a message unread; False if the user's mark already covers it."""
        counted = await self._count(
            keys=self._keys(user_id, thread_id), args=[thread_id, seq, message_id]
        )
        return bool(counted)

    async def remove(self, user_id: str, thread_id: str, message_id: str) -> None:
        """A recalled or deleted message stops counting."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(unread_key(user_id, thread_id), message_id)
            pipe.zcard(unread_key(user_id, thread_id))
            _, left = await pipe.execute()
        if not left:
            await self._redis.srem(threads_key(user_id), thread_id)

    async def clear(self, user_id: str, thread_id: str, up_to_seq: int) -> int:
        """Apply a read/listened mark; returns the thread's unread messages left."""
        left = await self._clear(keys=self._keys(user_id, thread_id), args=[thread_id, up_to_seq])
        return int(left)

    async def is_read(self, user_id: str, thread_id: str, seq: int) -> bool:
        mark = await self._redis.hget(marks_key(user_id), thread_id)
        return mark is not None and int(mark) >= seq

    async def counts(
        self, user_id: str, thread_ids: Iterable[str] = ()
    ) -> tuple[int, dict[str, int]]:
        """(unread across all threads, unread per thread) for the given or all threads."""
        members = await self._redis.smembers(threads_key(user_id))
        every = sorted(as_str(m) for m in members)
        async with self._redis.pipeline(transaction=False) as pipe:
            for thread_id in every:
                pipe.zcard(unread_key(user_id, thread_id))
            sizes = await pipe.execute() if every else []
        per_thread = {t: int(n) for t, n in zip(every, sizes, strict=True) if n}
        total = sum(per_thread.values())
        wanted = list(thread_ids)
        if wanted:
            per_thread = {t: per_thread.get(t, 0) for t in wanted}
        return total, per_thread
