"""Per-user and per-device token buckets on a router: calls, message starts, chunks, texts.

Every client call costs one ``calls`` token of its user (and of its device, when the request
names one); a message start (``Send``'s first frame, ``StartMessage``) a ``message_starts``
token; every chunk a ``chunks`` token; ``SendText`` a ``texts`` token. A refused call is
RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` delay: the time until the bucket holds
what was asked. The check is a few dictionary lookups and additions, on the event loop, so
a flooding client is refused before it costs a store call, a relay or a lock, and other
users' live audio never waits behind it. Limits are ``[rate_limits]``, dynamic through etcd.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import prometheus_client

from voxmesh.core.client_auth import current_caller
from voxmesh.core.domain_errors import ResourceExhausted
from voxmesh.core.rpc_interceptors import AroundInterceptor
from voxmesh.core.settings import BucketSettings, RateLimitSettings

if TYPE_CHECKING:
    from voxmesh.router.v1 import router_service_pb2 as pb


class LimitKind(enum.Enum):
    CALLS = "calls"
    MESSAGE_STARTS = "message_starts"
    CHUNKS = "chunks"
    TEXTS = "texts"


RATE_LIMITED = prometheus_client.Counter(
    "voxmesh_router_rate_limited_total",
    "Client requests refused by a router's token buckets.",
    ["kind", "scope"],
)


@dataclass
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, count: float) -> float:
        """Seconds until ``count`` tokens are there (0 if they are now)."""
        missing = min(count, self.burst) - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate


class RateLimiter:
    def __init__(
        self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._buckets: OrderedDict[tuple[LimitKind, bool, str, str], TokenBucket] = OrderedDict()

    def reconfigure(self, settings: RateLimitSettings) -> None:
        """New limits apply at once; existing buckets keep their tokens (capped at the burst)."""
        self._settings = settings
        for (kind, per_device, _, _), bucket in self._buckets.items():
            rate, burst = _limits(self._bucket_settings(kind), per_device)
            bucket.rate, bucket.burst = rate, burst
            bucket.tokens = min(bucket.tokens, burst)

    def _bucket_settings(self, kind: LimitKind) -> BucketSettings:
        value: BucketSettings = getattr(self._settings, kind.value)
        return value

    def _bucket(
        self, kind: LimitKind, per_device: bool, user_id: str, device_id: str, now: float
    ) -> TokenBucket:
        key = (kind, per_device, user_id, device_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            rate, burst = _limits(self._bucket_settings(kind), per_device)
            bucket = TokenBucket(rate, burst, burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._settings.max_tracked_buckets:
                # The least recently used: an idle client's bucket is full again anyway.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.refill(now)
        return bucket

    def check(self, kind: LimitKind, user_id: str, device_id: str = "", count: int = 1) -> None:
        """Take ``count`` tokens from the user's and the device's bucket, or raise."""
        if not self._settings.enabled or count <= 0:
            return
        now = self._clock()
        user = self._bucket(kind, False, user_id, "", now)
        device = self._bucket(kind, True, user_id, device_id, now) if device_id else None
        wait = user.wait_for(count)
        scope = "user"
        if device is not None:
            device_wait = device.wait_for(count)
            if device_wait > wait:
                wait, scope = device_wait, "device"
        if wait > 0:
            RATE_LIMITED.labels(kind.value, scope).inc()
            who = f"device {device_id} of user {user_id}" if scope == "device" else user_id
            raise ResourceExhausted(
                f"rate limit: too many {kind.value.replace('_', ' ')} from {who}; "
                f"retry in {wait:.3f} s",
                retry_after_s=wait,
            )
        user.tokens -= min(count, user.burst)
        if device is not None:
            device.tokens -= min(count, device.burst)

    async def metered_send(
        self, user_id: str, frames: AsyncIterator[pb.SendRequest]
    ) -> AsyncIterator[pb.SendRequest]:
        """A Send's frames, each charged: the start a message start, every chunk a chunk."""
        device_id = ""
        async for frame in frames:
            if frame.HasField("start"):
                device_id = frame.device_id
                self.check(LimitKind.MESSAGE_STARTS, user_id, device_id)
            if frame.chunks:
                self.check(LimitKind.CHUNKS, user_id, device_id, len(frame.chunks))
            yield frame


def _limits(settings: BucketSettings, per_device: bool) -> tuple[float, float]:
    if per_device:
        return settings.device_per_s, float(settings.device_burst)
    return settings.user_per_s, float(settings.user_burst)


class CallLimitInterceptor(AroundInterceptor):
    """One ``calls`` token per client call, of the user and of the device the request names.

    Runs inside the auth interceptor (it needs the caller) and inside the error mapping (its
    refusal becomes RESOURCE_EXHAUSTED with the retry delay).
    """

    def __init__(self, limiter: RateLimiter, services: Collection[str]) -> None:
        self._limiter = limiter
        self._prefixes = tuple(f"/{name}/" for name in services)

    def _charge(self, request: Any) -> None:
        device_id = getattr(request, "device_id", "")
        self._limiter.check(
            LimitKind.CALLS,
            current_caller().user_id,
            device_id if isinstance(device_id, str) else "",
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefixes):
            return handler
        charge = self._charge
        if handler.unary_unary:
            unary = handler.unary_unary

            async def unary_call(request: Any, context: Any) -> Any:
                charge(request)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_call, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            streaming: Callable[..., AsyncIterator[Any]] = handler.unary_stream  # type: ignore[assignment]

            async def stream_call(request: Any, context: Any) -> Any:
                charge(request)
                async for item in streaming(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream_call, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            bidi: Callable[..., AsyncIterator[Any]] = handler.stream_stream  # type: ignore[assignment]

            async def bidi_call(requests: Any, context: Any) -> Any:
                charge(None)  # the device is in the first frame: charged by the Send itself
                async for item in bidi(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                bidi_call, handler.request_deserializer, handler.response_serializer
            )
        return handler
