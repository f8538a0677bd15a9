"""Push providers against a real local HTTP receiver; FCM and APNs payloads as built."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from voxmesh.common.v1 import device_pb2
from voxmesh.core.settings import NotificationSenderSettings, load_settings
from voxmesh.notification.push_providers import (
    ApnsProvider,
    FcmProvider,
    PushContent,
    PushFailed,
    RetryPolicy,
    WebhookProvider,
    apns_request,
    fcm_message,
)
from voxmesh.notification.webhook_receiver import WebhookReceiver
from voxmesh.notification.webhook_targets import WebhookTargets

CONTENT = PushContent(
    push_id="m-1:bob/phone",
    user_id="bob",
    device_id="phone",
    thread_id="t-1",
    message_id="m-1",
    seq=7,
    sender_user_id="alice",
    kind="voice",
    state="live",
    title="walkie",
    body="alice: is talking now",
    badge=3,
    thread_unread=2,
    locale="de-DE",
)


def _settings(**changes: object) -> NotificationSenderSettings:
    base = load_settings(environ={}).notification_sender
    fast = {"retry_initial_backoff_s": 0.01, "retry_max_backoff_s": 0.05, **changes}
    return dataclasses.replace(base, **fast)  # type: ignore[arg-type]


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = await WebhookReceiver().start()
    yield server
    await server.close()


def _webhook(receiver: WebhookReceiver, path: str) -> device_pb2.Device:
    return device_pb2.Device(
        user_id="bob",
        device_id="phone",
        platform=device_pb2.PLATFORM_WEBHOOK,
        push_token=receiver.url(path),
    )


def _provider(settings: NotificationSenderSettings) -> WebhookProvider:
    policy = RetryPolicy(
        settings.push_attempts, settings.retry_initial_backoff_s, settings.retry_max_backoff_s
    )
    # The receiver is on 127.0.0.1: the local rule (webhook_targets' tests cover the strict one).
    return WebhookProvider(
        settings, policy, WebhookTargets(require_https=False, allow_private=True)
    )


async def test_webhook_posts_json_with_an_idempotency_key(receiver: WebhookReceiver) -> None:
    provider = _provider(_settings())
    try:
        assert await provider.send(_webhook(receiver, "/ok"), CONTENT) == 1
    finally:
        await provider.close()
    (push,) = receiver.delivered("/ok")
    assert push.push_id == CONTENT.push_id
    assert push.headers["content-type"] == "application/json"
    assert push.body["message_id"] == "m-1" and push.body["badge"] == 3
    assert push.body["title"] == "walkie" and push.body["locale"] == "de-DE"


async def test_webhook_retries_server_errors_then_succeeds(receiver: WebhookReceiver) -> None:
    receiver.fail_next("/flaky", 2, status=503)
    provider = _provider(_settings(push_attempts=4))
    try:
        assert await provider.send(_webhook(receiver, "/flaky"), CONTENT) == 3
    finally:
        await provider.close()
    attempts = [r for r in receiver.requests if r.path == "/flaky"]
    assert [r.status for r in attempts] == [503, 503, 200]
    assert [r.headers["x-voxmesh-attempt"] for r in attempts] == ["1", "2", "3"]
    assert {r.push_id for r in attempts} == {CONTENT.push_id}  # one push, tried three times


async def test_webhook_gives_up_after_the_last_try_and_on_client_errors(
    receiver: WebhookReceiver,
) -> None:
    receiver.always_fail("/down", status=500)
    receiver.always_fail("/gone", status=410)
    receiver.always_fail("/bad", status=400)
    provider = _provider(_settings(push_attempts=3))
    try:
        with pytest.raises(PushFailed) as down:
            await provider.send(_webhook(receiver, "/down"), CONTENT)
        assert down.value.attempts == 3 and down.value.status == 500 and down.value.retryable
        with pytest.raises(PushFailed) as gone:
            await provider.send(_webhook(receiver, "/gone"), CONTENT)
        assert gone.value.attempts == 1 and gone.value.unregister  # no retry, token dead
        with pytest.raises(PushFailed) as bad:
            await provider.send(_webhook(receiver, "/bad"), CONTENT)
        assert bad.value.attempts == 1 and not bad.value.unregister
    finally:
        await provider.close()


async def test_webhook_times_out_and_retries(receiver: WebhookReceiver) -> None:
    receiver.delay_s = 0.3
    provider = _provider(_settings(push_attempts=2, webhook_timeout_s=0.05))
    began = time.monotonic()
    try:
        with pytest.raises(PushFailed) as slow:
            await provider.send(_webhook(receiver, "/slow"), CONTENT)
    finally:
        await provider.close()
    assert "timed out" in slow.value.reason and slow.value.attempts == 2
    assert time.monotonic() - began < 1.0  # the timeout, not the endpoint, set the pace


def test_backoff_grows_with_full_jitter_and_honours_retry_after() -> None:
    import tenacity

    policy = RetryPolicy(5, initial_s=0.1, max_s=2.0)
    waits = []
    for attempt in range(1, 5):
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        state.set_exception((PushFailed, PushFailed("503", retryable=True), None))
        waits.append(policy._wait(state))
    assert all(0 <= w <= 0.1 * 2**a for a, w in enumerate(waits, start=1))
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = 1
    failure = PushFailed("429", retryable=True, retry_after_s=1.5)
    state.set_exception((PushFailed, failure, None))
    assert policy._wait(state) == 1.5  # the provider asked for more than our backoff
    failure.retry_after_s = 60
    assert policy._wait(state) == 2.0  # capped


def test_fcm_http_v1_message() -> None:
    device = device_pb2.Device(platform=device_pb2.PLATFORM_FCM, push_token="fcm-token-1")
    body = fcm_message(device, CONTENT)["message"]
    assert body["token"] == "fcm-token-1"
    assert body["notification"] == {"title": "walkie", "body": "alice: is talking now"}
    assert all(isinstance(v, str) for v in body["data"].values())  # FCM data is strings only
    assert body["data"]["push_id"] == CONTENT.push_id and body["data"]["badge"] == "3"
    assert body["android"]["priority"] == "HIGH"
    assert body["android"]["notification"]["notification_count"] == 3
    assert body["android"]["notification"]["tag"] == "t-1"


def test_apns_alert_with_badge_sound_and_thread_id() -> None:
    device = device_pb2.Device(platform=device_pb2.PLATFORM_APNS, push_token="abcd" * 16)
    path, headers, payload = apns_request(device, CONTENT, "com.example.voxmesh", now_s=1000)
    assert path == "/3/device/" + "abcd" * 16
    assert headers["apns-push-type"] == "alert" and headers["apns-priority"] == "10"
    assert headers["apns-topic"] == "com.example.voxmesh"
    assert headers["apns-collapse-id"] == "m-1" and headers["apns-expiration"] == "87400"
    assert uuid.UUID(headers["apns-id"])  # stable per push id: a redelivery is the same push
    assert apns_request(device, CONTENT, "t")[1]["apns-id"] == headers["apns-id"]
    aps = payload["aps"]
    assert aps["alert"] == {"title": "walkie", "body": "alice: is talking now"}
    assert aps["badge"] == 3 and aps["sound"] == "default" and aps["thread-id"] == "t-1"
    assert payload["voxmesh"]["message_id"] == "m-1" and payload["voxmesh"]["seq"] == 7


async def test_unconfigured_fcm_and_apns_fail_at_once_without_retrying() -> None:
    settings = _settings()
    policy = RetryPolicy(3, 0.01, 0.05)
    for provider in (FcmProvider(settings, policy), ApnsProvider(settings, policy)):
        device = device_pb2.Device(push_token="token")
        try:
            with pytest.raises(PushFailed) as failed:
                await provider.send(device, CONTENT)
        finally:
            await provider.close()
        assert not failed.value.retryable and "not configured" in failed.value.reason
