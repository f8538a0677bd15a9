"""Who can be pushed to, in Redis: push registrations, live devices, do-not-disturb, mutes.

Keys carry the user id in braces (``vx:devices:{alice}``) so one user's keys share a Redis
Cluster slot. Live devices are leases the routers renew: a router that dies stops renewing,
and its users fall back to pushes when the leases run out.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from google.protobuf import timestamp_pb2

from voxmesh.common.v1 import device_pb2
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.ids import require_id
from voxmesh.notification.redis_values import as_bytes, as_str
from voxmesh.notification.webhook_targets import WebhookTargets

_MAX_TOKEN_CHARS = 4096
_MAX_SHORT_FIELD = 64
_PLATFORMS = (device_pb2.PLATFORM_WEBHOOK, device_pb2.PLATFORM_FCM, device_pb2.PLATFORM_APNS)


# A finished do-not-disturb period is remembered this long: longer than any notice waits.
_DND_PERIOD_KEPT_MS = 24 * 3600 * 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def devices_key(user_id: str) -> str:
    return f"vx:devices:{{{user_id}}}"


def live_key(user_id: str) -> str:
    return f"vx:live:{{{user_id}}}"


def seen_key(user_id: str) -> str:
    return f"vx:seen:{{{user_id}}}"


def dnd_key(user_id: str) -> str:
    """Set while do-not-disturb is on; the value is when it began (ms)."""
    return f"vx:dnd-since:{{{user_id}}}"


def dnd_period_key(user_id: str) -> str:
    return f"vx:dnd-period:{{{user_id}}}"


def mutes_key(user_id: str) -> str:
    return f"vx:mutes:{{{user_id}}}"


def validate_device(device: device_pb2.Device) -> None:
    require_id(device.user_id, "device.user_id")
    require_id(device.device_id, "device.device_id")
    if device.platform not in _PLATFORMS:
        raise InvalidArgument("device.platform must be WEBHOOK, FCM or APNS")
    token = device.push_token
    if not token:
        raise InvalidArgument("device.push_token is required")
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument(f"device.push_token is over {_MAX_TOKEN_CHARS} characters")
    if device.platform == device_pb2.PLATFORM_WEBHOOK:
        parts = urlsplit(token)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument("a webhook device's push_token must be an http(s) URL")
    for name in ("locale", "app_version"):
        if len(getattr(device, name)) > _MAX_SHORT_FIELD:
            raise InvalidArgument(f"device.{name} is over {_MAX_SHORT_FIELD} characters")


class DeviceRegistry:
    def __init__(self, redis: aioredis.Redis, webhooks: WebhookTargets) -> None:
        self._redis = redis
        self._webhooks = webhooks

    # -- registrations ---------------------------------------------------------------------

    async def register(self, device: device_pb2.Device) -> device_pb2.Device:
        validate_device(device)
        if device.platform == device_pb2.PLATFORM_WEBHOOK:
            await self._webhooks.check_registration(device.push_token)
        stored = device_pb2.Device()
        stored.CopyFrom(device)
        stored.registered_at.CopyFrom(_timestamp(_now_ms()))
        stored.ClearField("last_seen_at")  # kept apart, refreshed by live reports
        await self._redis.hset(
            devices_key(device.user_id), device.device_id, stored.SerializeToString()
        )
        return stored

    async def unregister(self, user_id: str, device_id: str) -> bool:
        require_id(user_id, "user_id")
        require_id(device_id, "device_id")
        removed = await self._redis.hdel(devices_key(user_id), device_id)
        return bool(removed)

    async def devices(self, user_id: str) -> list[device_pb2.Device]:
        raw = await self._redis.hgetall(devices_key(user_id))
        seen = await self._redis.hgetall(seen_key(user_id)) if raw else {}
        devices = []
        for device_id, blob in sorted(raw.items()):
            device = device_pb2.Device.FromString(as_bytes(blob))
            last_seen = seen.get(device_id)
            if last_seen:
                device.last_seen_at.CopyFrom(_timestamp(int(last_seen)))
            devices.append(device)
        return devices

    async def get(self, user_id: str, device_id: str) -> device_pb2.Device | None:
        blob = await self._redis.hget(devices_key(user_id), device_id)
        return device_pb2.Device.FromString(as_bytes(blob)) if blob else None

    # -- live devices (leases renewed by the routers) --------------------------------------

    async def report_live(
        self, user_id: str, device_id: str, live: bool, ttl_s: float, observed_ms: int = 0
    ) -> int:
        """Record a live device's lease, or its going offline at ``observed_ms`` (or now)."""
        now = _now_ms()
        async with self._redis.pipeline(transaction=True) as pipe:
            if live:
                pipe.hset(live_key(user_id), device_id, now + int(ttl_s * 1000))
                # The hash lives as long as its longest lease (each field is checked on read).
                pipe.pexpire(live_key(user_id), int(ttl_s * 1000), gt=True)
                pipe.pexpire(live_key(user_id), int(ttl_s * 1000), nx=True)
            else:
                pipe.hdel(live_key(user_id), device_id)
            # A router clock ahead of ours must not make a device look live for later messages.
            gone_at = min(observed_ms, now) if observed_ms else now
            pipe.hset(seen_key(user_id), device_id, now if live else gone_at)
            await pipe.execute()
        return len(await self.live_devices(user_id))

    async def live_since(self, user_id: str, since_ms: int) -> bool:
        """Whether one of the user's devices was live at ``since_ms`` or later."""
        seen = await self._redis.hvals(seen_key(user_id))
        return any(int(at) >= since_ms for at in seen)

    async def live_devices(self, user_id: str) -> list[str]:
        leases = await self._redis.hgetall(live_key(user_id))
        now = _now_ms()
        live = [as_str(d) for d, until in leases.items() if int(until) > now]
        expired = [d for d, until in leases.items() if int(until) <= now]
        if expired:
            await self._redis.hdel(live_key(user_id), *expired)
        return live

    # -- do-not-disturb and mutes ----------------------------------------------------------

    async def set_dnd(self, user_id: str, enabled: bool, until_ms: int) -> tuple[bool, int]:
        """Turn do-not-disturb on (until ``until_ms``, 0 = until turned off) or off.

        The last finished period is kept too, so a notice that arrives late is judged by
        whether do-not-disturb was on when its message happened, not when it arrived.
        """
        key, period = dnd_key(user_id), dnd_period_key(user_id)
        now = _now_ms()
        if not enabled or (until_ms and until_ms <= now):
            began = await self._redis.get(key)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if began is not None:
                    pipe.set(period, f"{int(began)}:{now}", px=_DND_PERIOD_KEPT_MS)
                await pipe.execute()
            return False, 0
        # Already on (extended, or the same call retried): it began when it first began.
        began = await self._redis.get(key)
        since = int(began) if began is not None else now
        async with self._redis.pipeline(transaction=True) as pipe:
            if until_ms:
                pipe.set(key, since, pxat=until_ms)  # lapses by itself: record its period now
                pipe.set(period, f"{since}:{until_ms}", pxat=until_ms + _DND_PERIOD_KEPT_MS)
            else:
                pipe.set(key, since)
            await pipe.execute()
        return True, until_ms

    async def dnd(self, user_id: str, at_ms: int) -> bool:
        """Whether do-not-disturb was on at ``at_ms`` (on now since then, or a period that
        covered it)."""
        began, period = await self._redis.mget(dnd_key(user_id), dnd_period_key(user_id))
        if began is not None and int(began) <= at_ms:
            return True
        if period is not None:
            start, _, end = as_str(period).partition(":")
            return int(start) <= at_ms <= int(end)
        return False

    async def set_mute(self, user_id: str, thread_id: str, muted: bool, until_ms: int) -> bool:
        if not muted or (until_ms and until_ms <= _now_ms()):
            await self._redis.hdel(mutes_key(user_id), thread_id)
            return False
        await self._redis.hset(mutes_key(user_id), thread_id, until_ms)
        return True

    async def muted(self, user_id: str, thread_id: str) -> bool:
        until = await self._redis.hget(mutes_key(user_id), thread_id)
        if until is None:
            return False
        if int(until) and int(until) <= _now_ms():
            await self._redis.hdel(mutes_key(user_id), thread_id)
            return False
        return True
