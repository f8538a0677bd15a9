"""Durable push jobs: one claim per message per device, a Redis stream, a consumer group.

Delivery guarantee: **at-least-once**, de-duplicated to one push per message per device
except in one narrow window. Why not exactly-once: a push is an HTTP request to a provider
that cannot take part in a transaction with Redis, so a node can always die after the
provider accepted a push and before it recorded that (the two-generals gap). What is done:

- Enqueueing is one Lua script: ``SET claim NX EX`` plus ``XADD`` job, atomically. A second
  announcement of the same message (start, then completion, a router retry, another node)
  finds the claim and adds nothing; the claim outlives restarts (it is in Redis).
- Nodes read jobs through one consumer group. A job stays pending in Redis until the node
  that took it acknowledges it, after recording the outcome on the claim (sent, dead,
  skipped). A node that dies leaves its jobs pending: when it restarts under the same node
  id it resumes its own pending jobs first, and any other node takes them over
  (XAUTOCLAIM) once they have been idle longer than ``claim_idle_s``.
- A redelivered job whose claim already says ``sent`` is acknowledged without sending.

So nothing acknowledged to the router is lost, and a push repeats only if its node died
between the provider's answer and the claim update: at most the pushes that node had in
flight (``max_in_flight_pushes``). Every push carries its push id as an idempotency key, so
a receiver that keys on it shows it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import prometheus_client
import redis.asyncio as aioredis
import redis.exceptions

from voxmesh.core.settings import NotificationSenderSettings
from voxmesh.core.structured_logging import get_logger
from voxmesh.notification.redis_values import as_str, entries, read_entries

_log = get_logger(__name__)

JOBS_STREAM = "vx:push-jobs"
GROUP = "push-senders"
DEAD_LETTER_STREAM = "vx:push-dead-letters"

PUSH_OUTCOMES = prometheus_client.Counter(
    "voxmesh_notification_push_outcomes_total",
    "Push jobs finished, by outcome (sent, dead, skipped, duplicate).",
    ["outcome"],
)
PUSHES_IN_FLIGHT = prometheus_client.Gauge(
    "voxmesh_notification_pushes_in_flight", "Push jobs being delivered by this node."
)
PUSH_JOBS_RECLAIMED = prometheus_client.Counter(
    "voxmesh_notification_push_jobs_reclaimed_total",
    "Pending jobs of a stopped node taken over (its own after a restart, or another's).",
)

# KEYS: claim, jobs stream. ARGV: claim ttl (s), job json. 1 = enqueued, 0 = already claimed.
_ENQUEUE = """
if redis.call('SET', KEYS[1], 'queued', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
  return 1
end
return 0
"""

DONE_STATES = ("sent", "dead", "skipped")


@dataclass(frozen=True)
class PushJob:
    push_id: str
    user_id: str
    device_id: str
    thread_id: str
    message_id: str
    seq: int
    sender_user_id: str
    kind: str
    state: str
    title: str
    body: str
    enqueued_at_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> PushJob:
        return cls(**json.loads(raw))


def push_id(message_id: str, user_id: str, device_id: str) -> str:
    return f"{message_id}:{user_id}/{device_id}"


def claim_key(push: str) -> str:
    return f"vx:push:{push}"


def dead_letter_key(push: str) -> str:
    return f"vx:push-dead:{push}"


Deliver = Callable[[PushJob], Awaitable[str]]  # returns the outcome: sent, dead or skipped


class PushQueue:
    def __init__(self, redis: aioredis.Redis, settings: NotificationSenderSettings) -> None:
        self._redis = redis
        self._settings = settings
        self._enqueue = redis.register_script(_ENQUEUE)

    async def enqueue(self, job: PushJob) -> bool:
        """Queue the job unless this message was already queued for this device."""
        added = await self._enqueue(
            keys=[claim_key(job.push_id), JOBS_STREAM],
            args=[self._settings.dedup_ttl_s, job.to_json()],
        )
        return bool(added)

    async def outcome(self, push: str) -> str | None:
        value = await self._redis.get(claim_key(push))
        return as_str(value) if value is not None else None

    async def dead_letter(self, job: PushJob, platform: str, failure: dict[str, Any]) -> None:
        record = json.dumps(
            {
                **asdict(job),
                "platform": platform,
                "failed_at_ms": int(time.time() * 1000),
                **failure,
            }
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(dead_letter_key(job.push_id), record, ex=self._settings.dead_letter_ttl_s)
            pipe.xadd(
                DEAD_LETTER_STREAM,
                {"record": record},
                maxlen=self._settings.dead_letter_stream_max,
                approximate=True,
            )
            await pipe.execute()


class PushWorker:
    """Takes jobs from the stream through the consumer group and delivers them, bounded."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: NotificationSenderSettings,
        deliver: Deliver,
        consumer: str,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._deliver = deliver
        self._consumer = consumer
        self._slots = asyncio.Semaphore(settings.max_in_flight_pushes)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    async def _ensure_group(self) -> None:
        try:
            # From the stream's start: jobs queued before the group existed are delivered too.
            await self._redis.xgroup_create(JOBS_STREAM, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Until stopped: own pending jobs first (a restart), then new ones, then orphans."""
        failing = False
        own_pending_done = False
        last_reclaim = 0.0
        while not self._stopping.is_set():
            try:
                await self._ensure_group()
                if not own_pending_done:
                    await self._read("0")  # what this node id took before a restart
                    own_pending_done = True
                now = time.monotonic()
                if now - last_reclaim >= self._settings.claim_idle_s / 2:
                    await self._reclaim()
                    last_reclaim = now
                await self._read(">")
                failing = False
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if not failing:  # log a failure streak once
                    _log.warning("push queue unavailable; retrying", error=repr(exc))
                failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _free_slots(self) -> int:
        await self._slots.acquire()  # wait for at least one
        self._slots.release()
        return self._settings.max_in_flight_pushes - len(self._tasks)

    async def _read(self, start: str) -> None:
        free = await self._free_slots()
        if free <= 0:
            return
        # Own pending entries come back in full each time: read them all at once.
        count = 10_000 if start == "0" else free
        reply = await self._redis.xreadgroup(
            GROUP, self._consumer, {JOBS_STREAM: start}, count=count, block=500
        )
        for entry_id, fields in read_entries(reply):
            if start == "0":
                PUSH_JOBS_RECLAIMED.inc()
            await self._spawn(entry_id, fields)

    async def _reclaim(self) -> None:
        free = await self._free_slots()
        if free <= 0:
            return
        reply = await self._redis.xautoclaim(
            JOBS_STREAM,
            GROUP,
            self._consumer,
            min_idle_time=int(self._settings.claim_idle_s * 1000),
            start_id="0-0",
            count=free,
        )
        for entry_id, fields in entries(reply[1]):
            PUSH_JOBS_RECLAIMED.inc()
            await self._spawn(entry_id, fields)

    async def _spawn(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(entry_id, fields))
        self._tasks.add(task)
        PUSHES_IN_FLIGHT.set(len(self._tasks))

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._slots.release()
            PUSHES_IN_FLIGHT.set(len(self._tasks))

        task.add_done_callback(done)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if not fields or b"job" not in fields:  # deleted meanwhile: nothing to send
            await self._finish(entry_id, None, None)
            return
        job = PushJob.from_json(fields[b"job"])
        try:
            current = await self._redis.get(claim_key(job.push_id))
            if current is not None and as_str(current) in DONE_STATES:
                PUSH_OUTCOMES.labels("duplicate").inc()  # done before a crash: do not resend
                await self._finish(entry_id, None, None)
                return
            outcome = await self._deliver(job)
            PUSH_OUTCOMES.labels(outcome).inc()
            await self._finish(entry_id, job, outcome)
        except asyncio.CancelledError:
            raise  # left pending: this node (restarted) or another delivers it
        except Exception:
            _log.exception("push job failed; it stays pending", push_id=job.push_id)

    async def _finish(self, entry_id: bytes, job: PushJob | None, outcome: str | None) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            if job is not None and outcome is not None:
                pipe.set(claim_key(job.push_id), outcome, keepttl=True, xx=True)
            pipe.xack(JOBS_STREAM, GROUP, entry_id)
            pipe.xdel(JOBS_STREAM, entry_id)
            await pipe.execute()

    async def stop(self, grace_s: float) -> None:
        """Stop taking jobs; let the ones in flight finish within ``grace_s``."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
