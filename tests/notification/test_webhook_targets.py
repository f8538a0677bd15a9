"""Where webhook pushes may go: the URL rule in both modes, at registration and at delivery
(after resolution, so a name that re-binds to a private address is caught), with a real HTTP
receiver on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from voxmesh.common.v1 import device_pb2
from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.settings import load_settings
from voxmesh.notification.device_registry import DeviceRegistry
from voxmesh.notification.push_providers import (
    PushContent,
    PushFailed,
    RetryPolicy,
    WebhookProvider,
)
from voxmesh.notification.webhook_receiver import WebhookReceiver
from voxmesh.notification.webhook_targets import (
    Refusal,
    WebhookRefused,
    WebhookTargets,
    address_refusal,
)

STRICT = WebhookTargets(require_https=True, allow_private=False)
LOCAL = WebhookTargets(require_https=False, allow_private=True)
PUBLIC = "93.184.216.34"

CONTENT = PushContent(
    push_id="m-1:bob/phone",
    user_id="bob",
    device_id="phone",
    thread_id="t-1",
    message_id="m-1",
    seq=1,
    sender_user_id="alice",
    kind="voice",
    state="live",
    title="walkie",
    body="alice: is talking now",
    badge=1,
    thread_unread=1,
    locale="en",
)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = await WebhookReceiver().start()
    yield server
    await server.close()


def test_the_rule_follows_the_environment() -> None:
    local = WebhookTargets.from_settings(load_settings(environ={}))
    assert (local.require_https, local.allow_private) == (False, True)  # config/local.toml
    prod = WebhookTargets.from_settings(
        load_settings(
            environ={
                "VOXMESH__ENVIRONMENT": "prod",
                "VOXMESH__AUTH__PROVIDER": "oidc",
                "VOXMESH__AUTH__ISSUER": "https://securetoken.google.com/p",
            }
        )
    )
    assert (prod.require_https, prod.allow_private) == (True, False)


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://hooks.example.com/x", Refusal.NOT_HTTPS),
        ("ftp://hooks.example.com/x", Refusal.NOT_A_URL),
        ("https:///x", Refusal.NOT_A_URL),
        ("https://hooks.example.com:99999/x", Refusal.NOT_A_URL),
        ("https://user:secret@hooks.example.com/x", Refusal.CREDENTIALS),
        ("https://127.0.0.1/x", Refusal.PRIVATE_ADDRESS),
        ("https://10.1.2.3/x", Refusal.PRIVATE_ADDRESS),
        ("https://192.168.0.10/x", Refusal.PRIVATE_ADDRESS),
        ("https://172.16.5.4/x", Refusal.PRIVATE_ADDRESS),
        ("https://100.64.0.1/x", Refusal.PRIVATE_ADDRESS),
        ("https://169.254.169.254/computeMetadata/v1/", Refusal.PRIVATE_ADDRESS),
        ("https://0.0.0.0/x", Refusal.PRIVATE_ADDRESS),
        ("https://[::1]/x", Refusal.PRIVATE_ADDRESS),
        ("https://[fe80::1]/x", Refusal.PRIVATE_ADDRESS),
        ("https://[fd00:ec2::254]/x", Refusal.PRIVATE_ADDRESS),
        ("https://[::ffff:127.0.0.1]/x", Refusal.PRIVATE_ADDRESS),
        ("https://metadata.google.internal/computeMetadata/v1/", Refusal.METADATA_HOST),
        ("https://METADATA.google.internal./x", Refusal.METADATA_HOST),
    ],
)
def test_strict_mode_refuses(url: str, refusal: Refusal) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(refusal.value)):
        STRICT.check_url(url)


def test_what_each_mode_accepts() -> None:
    assert STRICT.check_url(f"https://{PUBLIC}/hook") == (PUBLIC, 443)
    assert STRICT.check_url("https://hooks.example.com:8443/x") == ("hooks.example.com", 8443)
    assert LOCAL.check_url("http://127.0.0.1:8080/hook") == ("127.0.0.1", 8080)
    with pytest.raises(InvalidArgument):
        LOCAL.check_url("ftp://127.0.0.1/")
    assert not address_refusal(PUBLIC) and not address_refusal("2606:4700::1111")
    assert address_refusal("::ffff:10.0.0.1") and address_refusal("2002:7f00:1::1")  # 6to4


def _resolving(*answers: list[str]) -> WebhookTargets:
    """A resolver that answers in turn (the DNS seam: a name that re-binds between calls)."""
    replies = list(answers)

    async def resolve(host: str, port: int) -> list[str]:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return WebhookTargets(require_https=False, allow_private=False, resolver=resolve)


async def test_names_are_checked_by_every_address_they_resolve_to() -> None:
    assert await _resolving([PUBLIC]).allowed_addresses("hooks.example.com", 443) == [PUBLIC]
    with pytest.raises(WebhookRefused, match=r"10\.0\.0\.7"):
        await _resolving([PUBLIC, "10.0.0.7"]).allowed_addresses("hooks.example.com", 443)
    with pytest.raises(WebhookRefused) as empty:
        await _resolving([]).allowed_addresses("hooks.example.com", 443)
    assert empty.value.refusal is Refusal.UNRESOLVABLE
    # The real resolver: localhost is loopback.
    strict_http = WebhookTargets(require_https=False, allow_private=False)
    with pytest.raises(WebhookRefused) as loopback:
        await strict_http.allowed_addresses("localhost", 80)
    assert loopback.value.refusal is Refusal.PRIVATE_ADDRESS
    assert await LOCAL.allowed_addresses("localhost", 80)


async def test_registration_refuses_before_anything_is_stored() -> None:
    unreachable = aioredis.Redis(port=1)  # never reached: the refusal comes first
    device = device_pb2.Device(
        user_id="bob",
        device_id="phone",
        platform=device_pb2.PLATFORM_WEBHOOK,
        push_token="https://169.254.169.254/latest/meta-data/",
    )
    with pytest.raises(InvalidArgument, match="loopback, private, link-local"):
        await DeviceRegistry(unreachable, STRICT).register(device)
    device.push_token = "http://localhost/hook"
    rebinding_off = WebhookTargets(require_https=False, allow_private=False)
    with pytest.raises(InvalidArgument, match=r"localhost \(127.0.0.1"):
        await DeviceRegistry(unreachable, rebinding_off).register(device)
    await unreachable.aclose()


def _provider(targets: WebhookTargets) -> WebhookProvider:
    settings = dataclasses.replace(
        load_settings(environ={}).notification_sender,
        push_attempts=3,
        retry_initial_backoff_s=0.01,
        retry_max_backoff_s=0.02,
    )
    policy = RetryPolicy(
        settings.push_attempts, settings.retry_initial_backoff_s, settings.retry_max_backoff_s
    )
    return WebhookProvider(settings, policy, targets)


async def test_delivery_checks_again_after_resolving_dns_rebinding(
    receiver: WebhookReceiver,
) -> None:
    url = f"http://hooks.example.test:{receiver.port}/bob"
    device = device_pb2.Device(
        user_id="bob", device_id="phone", platform=device_pb2.PLATFORM_WEBHOOK, push_token=url
    )
    # Registration saw a public address; at delivery the name resolves to loopback.
    rebinding = _resolving([PUBLIC], ["127.0.0.1"])
    await rebinding.check_registration(url)
    provider = _provider(rebinding)
    try:
        with pytest.raises(PushFailed) as refused:
            await provider.send(device, CONTENT)
        assert "webhook refused" in str(refused.value)
        assert "127.0.0.1" in str(refused.value)
        assert not refused.value.retryable
        assert receiver.requests == []  # nothing reached it, not even once
    finally:
        await provider.close()
    # The same name with private addresses allowed (local mode): delivered to the address the
    # rule resolved, with the URL's host name in the request.
    local_resolved = dataclasses.replace(LOCAL, resolver=_resolving(["127.0.0.1"]).resolver)
    provider = _provider(local_resolved)
    try:
        await provider.send(device, CONTENT)
        assert [r.path for r in receiver.delivered()] == ["/bob"]
    finally:
        await provider.close()


async def test_a_url_registered_under_the_local_rule_is_refused_by_a_strict_node(
    receiver: WebhookReceiver,
) -> None:
    device = device_pb2.Device(
        user_id="bob",
        device_id="phone",
        platform=device_pb2.PLATFORM_WEBHOOK,
        push_token=receiver.url("bob"),
    )
    await LOCAL.check_registration(device.push_token)
    provider = _provider(WebhookTargets(require_https=False, allow_private=False))
    try:
        with pytest.raises(PushFailed, match="webhook refused") as refused:
            await provider.send(device, CONTENT)
        assert not refused.value.retryable
        assert receiver.requests == []
    finally:
        await provider.close()
