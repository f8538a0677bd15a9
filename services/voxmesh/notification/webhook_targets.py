"""Where a webhook push may go: the one rule, applied at registration and again at delivery.

A webhook URL is https outside ``environment = "local"``, and its host must not be (or resolve
to) a loopback, private, link-local (the cloud metadata server at 169.254.169.254 among them),
carrier-grade NAT, multicast, reserved or unspecified address, nor a metadata host name:
otherwise a push is a request from inside the cluster to wherever a client chose. Every address
a name resolves to must be allowed (a name with one public and one private address is refused),
and delivery connects to the addresses it just checked (``GuardedNetworkBackend``), never
resolving again, so a name that re-binds to a private address after registration is caught.
``notification_sender.allow_private_webhooks`` (true only in config/local.toml, for the loopback
receivers of local runs and tests) lifts the address rule; the https rule follows the
environment.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

from voxmesh.core.domain_errors import InvalidArgument
from voxmesh.core.settings import Settings

Resolver = Callable[[str, int], Awaitable[list[str]]]
_METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class Refusal(enum.Enum):
    NOT_A_URL = "not an http(s) URL with a host"
    NOT_HTTPS = "not https (required outside environment local)"
    CREDENTIALS = "carries credentials"
    METADATA_HOST = "names a metadata server"
    PRIVATE_ADDRESS = "is a loopback, private, link-local or reserved address"
    UNRESOLVABLE = "does not resolve"


class WebhookRefused(httpcore.ConnectError):
    """A webhook target the rule refuses (raised inside httpx's connect: not retryable)."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(f"webhook target {detail} {refusal.value}")
        self.refusal = refusal


def address_refusal(address: str) -> bool:
    """True if ``address`` (an IP literal) is one a push must never reach."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            ip = mapped
    return bool(
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
        or not ip.is_global
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the event loop's getaddrinfo: off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class WebhookTargets:
    require_https: bool
    allow_private: bool
    resolver: Resolver = system_resolver

    @staticmethod
    def from_settings(settings: Settings, resolver: Resolver = system_resolver) -> WebhookTargets:
        return WebhookTargets(
            require_https=settings.environment != "local",
            allow_private=settings.notification_sender.allow_private_webhooks,
            resolver=resolver,
        )

    def check_url(self, url: str) -> tuple[str, int]:
        """The URL's (host, port), or raise InvalidArgument naming what is wrong."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise _invalid(Refusal.NOT_A_URL, url) from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _invalid(Refusal.NOT_A_URL, url)
        if self.require_https and parts.scheme != "https":
            raise _invalid(Refusal.NOT_HTTPS, url)
        if parts.username is not None or parts.password is not None:
            raise _invalid(Refusal.CREDENTIALS, url)
        host = parts.hostname.rstrip(".").lower()
        if not self.allow_private:
            if host in _METADATA_HOSTS:
                raise _invalid(Refusal.METADATA_HOST, url)
            if _is_ip(host) and address_refusal(host):
                raise _invalid(Refusal.PRIVATE_ADDRESS, url)
        return host, port or (443 if parts.scheme == "https" else 80)

    async def allowed_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``; raises WebhookRefused."""
        host = host.rstrip(".").lower()
        if not self.allow_private and host in _METADATA_HOSTS:
            raise WebhookRefused(Refusal.METADATA_HOST, host)
        if _is_ip(host):
            addresses = [host]
        else:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise WebhookRefused(Refusal.UNRESOLVABLE, host) from exc
            if not addresses:
                raise WebhookRefused(Refusal.UNRESOLVABLE, host)
        if not self.allow_private:
            refused = [a for a in addresses if address_refusal(a)]
            if refused:
                raise WebhookRefused(Refusal.PRIVATE_ADDRESS, f"{host} ({', '.join(refused)})")
        return addresses

    async def check_registration(self, url: str) -> None:
        """The whole rule at registration: the URL, then what its host resolves to now."""
        host, port = self.check_url(url)
        try:
            await self.allowed_addresses(host, port)
        except WebhookRefused as exc:
            raise InvalidArgument(f"device.push_token: {exc}") from exc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _invalid(refusal: Refusal, url: str) -> InvalidArgument:
    return InvalidArgument(f"device.push_token: webhook URL {url[:80]!r} {refusal.value}")


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the rule allows (TLS still
    verifies the certificate for the URL's host name, which httpcore passes as SNI)."""

    def __init__(self, targets: WebhookTargets) -> None:
        self._targets = targets
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._targets.allowed_addresses(host, port)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise WebhookRefused(Refusal.NOT_A_URL, path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through the rule."""

    def __init__(self, targets: WebhookTargets, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedNetworkBackend(targets),
        )


def refusal_of(error: BaseException) -> WebhookRefused | None:
    """The rule's refusal behind an httpx error, if that is what it was."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, WebhookRefused):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
