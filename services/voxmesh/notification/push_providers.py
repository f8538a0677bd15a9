"""Push providers behind one interface: a webhook (a real HTTP POST), FCM HTTP v1 and APNs.

Each provider turns one ``PushContent`` into its wire request and sends it with the same
retry policy: timeouts per try, exponential backoff with full jitter between tries (a
provider's Retry-After is honoured, capped), and a ``PushFailed`` after the last try that
says whether the device's token is dead (unregister it). The caller dead-letters failures.

Every request carries the push id (``<message id>:<user>/<device>``) as an idempotency key
(webhook ``Idempotency-Key``, APNs ``apns-id``/``apns-collapse-id``, FCM data): delivery is
at-least-once, and a receiver that keys on it sees each push once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import prometheus_client
import tenacity

from voxmesh.common.v1 import device_pb2
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.settings import NotificationSenderSettings
from voxmesh.notification.webhook_targets import GuardedTransport, WebhookTargets, refusal_of

PUSH_ATTEMPTS = prometheus_client.Counter(
    "voxmesh_notification_push_attempts_total",
    "Push requests made to providers, by platform and outcome.",
    ["platform", "outcome"],
)

_PUSH_NAMESPACE = uuid.UUID("6f1d3c52-8d0e-4a3b-9b44-0c9f1f6a2e71")


@dataclass(frozen=True)
class PushContent:
    """What one push says, whatever the provider."""

    push_id: str  # idempotency key: one per message per device
    user_id: str
    device_id: str
    thread_id: str
    message_id: str
    seq: int
    sender_user_id: str
    kind: str  # "voice", "text", ...
    state: str  # "live", "complete"
    title: str
    body: str
    badge: int  # the user's unread messages across all threads
    thread_unread: int
    locale: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class PushFailed(Exception):
    """A push that did not go through; ``retryable`` tells the retry policy what to do."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        status: int | None = None,
        unregister: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status
        self.unregister = unregister  # the token is dead: drop the registration
        self.retry_after_s = retry_after_s
        self.attempts = 0


class PushProvider(Protocol):
    platform: str

    async def send(self, device: device_pb2.Device, content: PushContent) -> int:
        """Deliver, retrying as configured; returns the tries used or raises PushFailed."""
        ...

    async def close(self) -> None: ...


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare for push endpoints, fall back to backoff
        return None


def _http_failure(response: httpx.Response, what: str) -> PushFailed:
    status = response.status_code
    retryable = status in (408, 425, 429) or status >= 500
    return PushFailed(
        f"{what} answered HTTP {status}: {response.text[:200]}",
        retryable=retryable,
        status=status,
        retry_after_s=_retry_after(response.headers) if retryable else None,
    )


class RetryPolicy:
    """Tries with exponential backoff and full jitter; Retry-After wins when longer."""

    def __init__(self, attempts: int, initial_s: float, max_s: float) -> None:
        self.attempts = attempts
        self._jitter = tenacity.wait_random_exponential(multiplier=initial_s, max=max_s)
        self._max_s = max_s

    def _wait(self, state: tenacity.RetryCallState) -> float:
        backoff = self._jitter(state)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, PushFailed) and failure.retry_after_s is not None:
            return min(max(backoff, failure.retry_after_s), self._max_s)
        return backoff

    async def run(self, platform: str, attempt: Callable[[], Awaitable[None]]) -> int:
        tries = 0
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, PushFailed) and exc.retryable
            ),
            reraise=True,
        )
        try:
            async for try_ in retrying:
                with try_:
                    tries += 1
                    try:
                        await attempt()
                    except PushFailed:
                        PUSH_ATTEMPTS.labels(platform, "failed").inc()
                        raise
                    PUSH_ATTEMPTS.labels(platform, "delivered").inc()
        except PushFailed as exc:
            exc.attempts = tries
            raise
        return tries


# -- webhook ---------------------------------------------------------------------------------


def webhook_request(content: PushContent, attempt: int) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and JSON body of a webhook push."""
    headers = {
        "Idempotency-Key": content.push_id,
        "X-Voxmesh-Push-Id": content.push_id,
        "X-Voxmesh-Attempt": str(attempt),
        "User-Agent": "voxmesh-notification-sender/1",
    }
    body = content.as_json()
    body["sent_at_ms"] = int(time.time() * 1000)
    return headers, body


class WebhookProvider:
    """A generic HTTPS webhook: the device's push token is the URL to POST to."""

    platform = "webhook"

    def __init__(
        self, settings: NotificationSenderSettings, policy: RetryPolicy, targets: WebhookTargets
    ) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.webhook_timeout_s, connect=settings.webhook_connect_timeout_s
            ),
            follow_redirects=False,  # a push target that moved must re-register
            # Connects only where the webhook rule allows, after resolving (DNS rebinding).
            transport=GuardedTransport(targets, limits),
            trust_env=False,  # no proxy from the environment: it would resolve for us
        )
        self._targets = targets
        self._policy = policy

    async def send(self, device: device_pb2.Device, content: PushContent) -> int:
        tries = 0

        async def attempt() -> None:
            nonlocal tries
            tries += 1
            headers, body = webhook_request(content, tries)
            try:
                self._targets.check_url(device.push_token)  # registered under another rule?
                response = await self._client.post(device.push_token, json=body, headers=headers)
            except InvalidArgument as exc:
                raise PushFailed(f"webhook refused: {exc}", retryable=False) from exc
            except httpx.TimeoutException as exc:
                raise PushFailed(f"webhook timed out: {exc!r}", retryable=True) from exc
            except httpx.HTTPError as exc:
                refused = refusal_of(exc)
                if refused is not None:
                    raise PushFailed(f"webhook refused: {refused}", retryable=False) from exc
                raise PushFailed(f"webhook unreachable: {exc!r}", retryable=True) from exc
            if response.is_success:
                return
            failure = _http_failure(response, "webhook")
            failure.unregister = response.status_code == 410  # Gone: the target was removed
            raise failure

        return await self._policy.run(self.platform, attempt)

    async def close(self) -> None:
        await self._client.aclose()


# -- FCM (HTTP v1) ---------------------------------------------------------------------------


def fcm_message(device: device_pb2.Device, content: PushContent) -> dict[str, Any]:
    """The HTTP v1 ``messages:send`` body for one Android/web device."""
    data = {
        "push_id": content.push_id,
        "thread_id": content.thread_id,
        "message_id": content.message_id,
        "seq": str(content.seq),
        "sender_user_id": content.sender_user_id,
        "kind": content.kind,
        "state": content.state,
        "badge": str(content.badge),
        "locale": content.locale,
    }
    return {
        "message": {
            "token": device.push_token,
            "notification": {"title": content.title, "body": content.body},
            "data": data,  # FCM data values must be strings
            "android": {
                "priority": "HIGH",  # a live voice message is worth waking the device for
                "ttl": "86400s",
                "notification": {
                    "tag": content.thread_id,  # one tray entry per thread, newest wins
                    "notification_count": content.badge,
                    "channel_id": "voxmesh_messages",
                },
            },
            "fcm_options": {"analytics_label": "voxmesh_message"},
        }
    }


class FcmProvider:
    """Firebase Cloud Messaging over HTTP/2, authorised by a service account (OAuth 2)."""

    platform = "fcm"
    _SCOPE = "https://www.googleapis.com/auth/firebase.messaging"

    def __init__(self, settings: NotificationSenderSettings, policy: RetryPolicy) -> None:
        self._settings = settings
        self._policy = policy
        self._client = httpx.AsyncClient(http2=True, timeout=settings.webhook_timeout_s)
        self._credentials: Any = None

    @property
    def configured(self) -> bool:
        return bool(self._settings.fcm_project and self._settings.fcm_credentials_file)

    async def _token(self) -> str:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        if self._credentials is None:
            self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                self._settings.fcm_credentials_file, scopes=[self._SCOPE]
            )
        if not self._credentials.valid:
            await asyncio.to_thread(self._credentials.refresh, Request())
        return str(self._credentials.token)

    async def send(self, device: device_pb2.Device, content: PushContent) -> int:
        if not self.configured:
            raise PushFailed(
                "FCM is not configured: set notification_sender.fcm_project and "
                "fcm_credentials_file",
                retryable=False,
            )
        url = self._settings.fcm_endpoint.format(project=self._settings.fcm_project)

        async def attempt() -> None:
            try:
                response = await self._client.post(
                    url,
                    json=fcm_message(device, content),
                    headers={"Authorization": f"Bearer {await self._token()}"},
                )
            except httpx.HTTPError as exc:
                raise PushFailed(f"FCM unreachable: {exc!r}", retryable=True) from exc
            if response.is_success:
                return
            failure = _http_failure(response, "FCM")
            # UNREGISTERED (404) and a malformed token (400 INVALID_ARGUMENT): the token is dead.
            failure.unregister = response.status_code == 404 or (
                response.status_code == 400 and "registration token" in response.text.lower()
            )
            raise failure

        return await self._policy.run(self.platform, attempt)

    async def close(self) -> None:
        await self._client.aclose()


# -- APNs -------------------------------------------------------------------------------------


def apns_request(
    device: device_pb2.Device, content: PushContent, topic: str, now_s: float | None = None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Path, headers (without authorization) and JSON payload of an APNs alert push."""
    now_s = time.time() if now_s is None else now_s
    headers = {
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-topic": topic,
        # A stable id per push: APNs and the app see a redelivery as the same notification.
        "apns-id": str(uuid.uuid5(_PUSH_NAMESPACE, content.push_id)),
        "apns-collapse-id": content.message_id[:64],
        "apns-expiration": str(int(now_s) + 86400),
    }
    payload = {
        "aps": {
            "alert": {"title": content.title, "body": content.body},
            "badge": content.badge,
            "sound": "default",
            "thread-id": content.thread_id,  # groups a thread's notifications
            "mutable-content": 1,  # lets the app's extension localise or enrich it
            "category": "VOXMESH_MESSAGE",
        },
        "voxmesh": {
            "push_id": content.push_id,
            "thread_id": content.thread_id,
            "message_id": content.message_id,
            "seq": content.seq,
            "sender_user_id": content.sender_user_id,
            "kind": content.kind,
            "state": content.state,
            "locale": content.locale,
        },
    }
    return f"/3/device/{device.push_token}", headers, payload


class ApnsProvider:
    """Apple Push Notification service over HTTP/2 with a token-based (ES256 JWT) key."""

    platform = "apns"
    _TOKEN_LIFETIME_S = 50 * 60  # Apple refuses provider tokens older than an hour

    def __init__(self, settings: NotificationSenderSettings, policy: RetryPolicy) -> None:
        self._settings = settings
        self._policy = policy
        self._client = httpx.AsyncClient(
            http2=True, base_url=settings.apns_endpoint, timeout=settings.webhook_timeout_s
        )
        self._token: tuple[str, float] | None = None

    @property
    def configured(self) -> bool:
        s = self._settings
        return bool(s.apns_topic and s.apns_key_file and s.apns_key_id and s.apns_team_id)

    def _provider_token(self) -> str:
        now = time.time()
        if self._token is None or now - self._token[1] > self._TOKEN_LIFETIME_S:
            key = Path(self._settings.apns_key_file).read_text()
            token = jwt.encode(
                {"iss": self._settings.apns_team_id, "iat": int(now)},
                key,
                algorithm="ES256",
                headers={"kid": self._settings.apns_key_id},
            )
            self._token = (token, now)
        return self._token[0]

    async def send(self, device: device_pb2.Device, content: PushContent) -> int:
        if not self.configured:
            raise PushFailed(
                "APNs is not configured: set notification_sender.apns_topic, apns_key_file, "
                "apns_key_id and apns_team_id",
                retryable=False,
            )

        async def attempt() -> None:
            path, headers, payload = apns_request(device, content, self._settings.apns_topic)
            headers["authorization"] = f"bearer {self._provider_token()}"
            try:
                response = await self._client.post(path, json=payload, headers=headers)
            except httpx.HTTPError as exc:
                raise PushFailed(f"APNs unreachable: {exc!r}", retryable=True) from exc
            if response.is_success:
                return
            failure = _http_failure(response, "APNs")
            failure.unregister = response.status_code == 410 or "BadDeviceToken" in response.text
            raise failure

        return await self._policy.run(self.platform, attempt)

    async def close(self) -> None:
        await self._client.aclose()


def create_providers(
    settings: NotificationSenderSettings, webhooks: WebhookTargets
) -> dict[int, PushProvider]:
    """One provider per platform, sharing the retry policy."""
    policy = RetryPolicy(
        settings.push_attempts, settings.retry_initial_backoff_s, settings.retry_max_backoff_s
    )
    return {
        device_pb2.PLATFORM_WEBHOOK: WebhookProvider(settings, policy, webhooks),
        device_pb2.PLATFORM_FCM: FcmProvider(settings, policy),
        device_pb2.PLATFORM_APNS: ApnsProvider(settings, policy),
    }
