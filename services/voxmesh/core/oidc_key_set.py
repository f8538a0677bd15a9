"""An OIDC issuer's signing keys: discovered, fetched asynchronously, cached and refreshed.

``<issuer>/.well-known/openid-configuration`` names the ``jwks_uri`` (or ``auth.jwks_uri``
names it directly); the key set is fetched with httpx on the event loop (never blocking it),
cached, and refreshed when older than ``auth.jwks_refresh_s`` (or the response's
``Cache-Control: max-age``, whichever is sooner) while the cached keys keep verifying. A token
whose ``kid`` is not in the cache triggers a refetch (the issuer rotated its keys), at most one
per ``auth.jwks_min_refetch_s`` however many such tokens arrive, so forged kids cannot turn
the router into a load generator against the issuer. Concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from voxmesh.core.settings import AuthSettings
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)
_MAX_AGE = re.compile(r"max-age=(\d+)")


class KeysUnavailable(Exception):
    """The issuer's keys cannot be fetched right now (and none are cached)."""


@dataclass(frozen=True)
class _Fetched:
    keys: tuple[jwt.PyJWK, ...]
    fresh_until: float  # monotonic


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def parse_key_set(document: Any, algorithms: tuple[str, ...]) -> tuple[jwt.PyJWK, ...]:
    """The signing keys of a JWKS document usable with ``algorithms`` (others are skipped)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set: no 'keys' list")
    keys: list[jwt.PyJWK] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue  # an algorithm or key type we do not verify with
        if key.algorithm_name in algorithms:
            keys.append(key)
    if not keys:
        raise ValueError(f"the JWK set has no signing key for {', '.join(algorithms)}")
    return tuple(keys)


class OidcKeySet:
    def __init__(
        self,
        settings: AuthSettings,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._algorithms = tuple(settings.oidc_algorithms)
        self._client = client or httpx.AsyncClient(
            timeout=settings.jwks_fetch_timeout_s, follow_redirects=False
        )
        self._clock = clock
        self._jwks_uri = settings.jwks_uri
        self._fetched: _Fetched | None = None
        self._last_attempt = -float("inf")
        self._last_error = ""
        self._inflight: asyncio.Task[None] | None = None
        self.fetches = 0  # completed key-set fetches (metrics and tests)

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        await self._client.aclose()

    async def prefetch(self) -> None:
        """Fetch the keys once at start-up; a failure is logged, not fatal (retried on use)."""
        try:
            await self._refresh()
        except KeysUnavailable as exc:
            _log.warning("identity provider keys not fetched yet", error=str(exc))

    async def candidates(self, kid: str | None, algorithm: str) -> tuple[jwt.PyJWK, ...]:
        """Keys that may have signed a token with this header (raises KeysUnavailable).

        With a ``kid``, the key with that id (refetching once, rate-limited, if unknown); without
        one (some issuers omit it), every key of the token's algorithm.
        """
        fetched = self._fetched
        if fetched is None:
            await self._refresh()
            fetched = self._fetched
            assert fetched is not None
        elif self._clock() >= fetched.fresh_until:
            self._refresh_in_background()
        found = _matching(fetched.keys, kid, algorithm)
        if found or kid is None:
            return found
        if await self.refetch():
            assert self._fetched is not None
            return _matching(self._fetched.keys, kid, algorithm)
        return ()

    async def refetch(self) -> bool:
        """Fetch again now unless one was attempted within ``jwks_min_refetch_s``."""
        if self._inflight is None and (
            self._clock() - self._last_attempt < self._settings.jwks_min_refetch_s
        ):
            return False
        try:
            await self._refresh()
        except KeysUnavailable:
            return False
        return True

    def _refresh_in_background(self) -> None:
        if self._inflight is None and (
            self._clock() - self._last_attempt >= self._settings.jwks_min_refetch_s
        ):
            self._start_fetch()

    def _start_fetch(self) -> asyncio.Task[None]:
        if self._inflight is None:
            self._last_attempt = self._clock()
            task = asyncio.create_task(self._fetch())
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled() and task.exception() is not None:
            self._last_error = str(task.exception())
            _log.warning("identity provider key fetch failed", error=self._last_error)

    async def _refresh(self) -> None:
        """Wait for a fetch (the running one, or a new one unless rate-limited)."""
        if self._inflight is None:
            if self._clock() - self._last_attempt < self._settings.jwks_min_refetch_s:
                if self._fetched is None:
                    raise KeysUnavailable(self._last_error or "key fetch rate-limited")
                return
            self._start_fetch()
        assert self._inflight is not None
        try:
            await asyncio.shield(self._inflight)
        except Exception as exc:
            raise KeysUnavailable(str(exc)) from exc

    async def _get_json(self, url: str) -> tuple[Any, str]:
        try:
            response = await self._client.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise KeysUnavailable(f"GET {url}: {exc!r}") from exc
        if response.status_code != 200:
            raise KeysUnavailable(f"GET {url}: HTTP {response.status_code}")
        try:
            return response.json(), response.headers.get("cache-control", "")
        except ValueError as exc:
            raise KeysUnavailable(f"GET {url}: not JSON") from exc

    async def _fetch(self) -> None:
        if not self._jwks_uri:
            url = discovery_url(self._settings.issuer)
            document, _ = await self._get_json(url)
            if not isinstance(document, dict) or document.get("issuer") != self._settings.issuer:
                raise KeysUnavailable(
                    f"{url} names issuer {document.get('issuer')!r}, "
                    f"not the configured {self._settings.issuer!r}"
                    if isinstance(document, dict)
                    else f"{url}: not a discovery document"
                )
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise KeysUnavailable(f"{url} has no jwks_uri")
            self._jwks_uri = jwks_uri
        document, cache_control = await self._get_json(self._jwks_uri)
        try:
            keys = parse_key_set(document, self._algorithms)
        except ValueError as exc:
            raise KeysUnavailable(f"{self._jwks_uri}: {exc}") from exc
        lifetime = self._settings.jwks_refresh_s
        match = _MAX_AGE.search(cache_control)
        if match:
            lifetime = max(self._settings.jwks_min_refetch_s, min(lifetime, float(match.group(1))))
        self._fetched = _Fetched(keys, self._clock() + lifetime)
        self.fetches += 1
        _log.info(
            "identity provider keys fetched",
            jwks_uri=self._jwks_uri,
            kids=[k.key_id for k in keys],
        )
        if not self._settings.jwks_uri:
            self._jwks_uri = ""  # discover again next time: the issuer may move its key set


def _matching(
    keys: tuple[jwt.PyJWK, ...], kid: str | None, algorithm: str
) -> tuple[jwt.PyJWK, ...]:
    return tuple(
        key
        for key in keys
        if key.algorithm_name == algorithm and (kid is None or key.key_id == kid)
    )
