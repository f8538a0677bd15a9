"""Who hears about a message's start and end besides its targets' updates streams.

Pushes and unread counts (push_notices.py) and "talking now" (presence_tracker.py) follow
every message. Observers only record and queue: they never await, so the relay's live path
is never held up by them, and one that fails is logged, never raised into the relay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from voxmesh.common.v1 import message_pb2
from voxmesh.core.structured_logging import get_logger

_log = get_logger(__name__)


class MessageObserver(Protocol):
    def message_started(
        self, header: message_pb2.MessageHeader, member_ids: Sequence[str]
    ) -> None: ...

    def message_ended(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        """Completed, abandoned, recalled or deleted (``header.state`` says which)."""
        ...


class MessageObservers(list[MessageObserver]):
    def message_started(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        for observer in self:
            try:
                observer.message_started(header, member_ids)
            except Exception:
                _log.exception("message observer failed", message_id=header.message_id)

    def message_ended(self, header: message_pb2.MessageHeader, member_ids: Sequence[str]) -> None:
        for observer in self:
            try:
                observer.message_ended(header, member_ids)
            except Exception:
                _log.exception("message observer failed", message_id=header.message_id)
