"""Dynamic settings in etcd: ``<prefix>/config/<section.key>`` = a JSON value, watched.

A key is a dotted settings path (``limits.max_chunk_bytes``). Only settings a running
process can adopt are dynamic: the limits, the body store's timings, the updates stream's
knobs and the rings' vnodes, preference list and suspect time. Everything else (ports,
hosts, stores, auth) needs a restart and is refused with that reason. Every change is
validated against the whole settings schema; a bad value is logged and ignored, and the
process keeps its last good settings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

import aetcd
import pydantic

from voxmesh.core.settings import Settings, SettingsError
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)
_RETRY_S = 0.5

DYNAMIC_SECTIONS = ("limits", "rate_limits", "body_store", "updates")
DYNAMIC_KEYS = (
    "rings.vnodes",
    "rings.preference_list_size",
    "rings.probe_interval_s",
    "rings.probe_timeout_s",
    "rings.probe_misses_to_suspect",
    "rings.max_attempts",
    "rings.retry_budget_tokens",
    "rings.retry_budget_ratio",
)

SettingsListener = Callable[[Settings], None]


def config_prefix(settings: Settings) -> bytes:
    return f"{settings.etcd.prefix}/config/".encode()


def check_key(key: str) -> None:
    """Raise SettingsError unless ``key`` names a dynamic setting."""
    section, _, name = key.partition(".")
    section_type = typing.get_type_hints(Settings).get(section)
    if section_type is None or not dataclasses.is_dataclass(section_type) or not name:
        raise SettingsError(
            f"unknown setting {key!r}: use section.key, e.g. limits.max_chunk_bytes"
        )
    fields = sorted(f.name for f in dataclasses.fields(section_type))
    if name not in fields:
        raise SettingsError(f"unknown setting {key!r}: {section} has {', '.join(fields)}")
    if section not in DYNAMIC_SECTIONS and key not in DYNAMIC_KEYS:
        raise SettingsError(
            f"{key} needs a restart: set it in config/<environment>.toml or the environment "
            f"(dynamic: {', '.join(DYNAMIC_SECTIONS)} and {', '.join(DYNAMIC_KEYS)})"
        )


def apply_overrides(base: Settings, overrides: Mapping[str, Any]) -> Settings:
    """``base`` with dotted-key overrides, validated as a whole (raises SettingsError)."""
    data = pydantic.TypeAdapter(Settings).dump_python(base, mode="json")
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    try:
        return pydantic.TypeAdapter(Settings).validate_python(data)
    except pydantic.ValidationError as exc:
        raise SettingsError(f"invalid dynamic settings: {exc}") from exc


class DynamicSettings:
    """The process's current settings: the start-up ones plus the overrides in etcd."""

    def __init__(self, base: Settings) -> None:
        self.base = base
        self.current = base
        self.overrides: dict[str, Any] = {}
        self._listeners: list[SettingsListener] = []
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    def on_change(self, listener: SettingsListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: closing the etcd client inside the task can block (see ring_membership).
            await asyncio.wait({self._task}, timeout=3.0)

    def _apply(self, overrides: dict[str, Any]) -> None:
        try:
            for key in overrides:
                check_key(key)
            settings = apply_overrides(self.base, overrides)
        except SettingsError as exc:
            _log.warning("ignoring dynamic settings; keeping the last good ones", error=str(exc))
            return
        changed = sorted(
            k
            for k in overrides.keys() | self.overrides.keys()
            if overrides.get(k) != self.overrides.get(k)
        )
        self.overrides = overrides
        if settings == self.current:
            return
        self.current = settings
        _log.info("dynamic settings changed", keys=changed)
        for listener in self._listeners:
            listener(settings)

    async def _watch(self) -> None:
        prefix = config_prefix(self.base)
        host, port = self.base.etcd_host, self.base.etcd.client_port
        while True:
            try:
                async with aetcd.Client(host=host, port=port, timeout=5) as client:
                    listing = await client.get_prefix(prefix)
                    values = {
                        kv.key[len(prefix) :].decode(): json.loads(kv.value) for kv in listing
                    }
                    self._apply(values)
                    self.loaded.set()
                    watch = await client.watch_prefix(
                        prefix, start_revision=listing.header.revision + 1
                    )
                    async for event in watch:
                        key = event.kv.key[len(prefix) :].decode()
                        if event.kind == "DELETE":
                            values.pop(key, None)
                        else:
                            try:
                                values[key] = json.loads(event.kv.value)
                            except ValueError:
                                _log.warning("ignoring non-JSON config value", key=key)
                                continue
                        self._apply(dict(values))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd down or restarted: reload when it is back
                _log.warning("config watch interrupted; reloading", error=repr(exc))
                await asyncio.sleep(_RETRY_S)
