"""When a call to a ring member may go to the next member: one policy for every mesh client.

A connection failure or UNAVAILABLE from a member is news about the member (it is dead,
draining or cut off), not about the request: the member becomes suspect and, if the call is
safe to repeat, the same request goes to the next member of the key's preference list
within the same client call. Every other status is the member's answer (NOT_FOUND,
INVALID_ARGUMENT, FAILED_PRECONDITION, ...) and goes back to the caller as it is: another
member would give the same answer.

Which calls are safe to repeat is a table (``CALL_SAFETY``), one row per RPC of every
internal service, checked against the protos by a unit test. A bounded retry budget (the
token bucket of gRPC's ``retryThrottling``) keeps a sick ring from multiplying the load: a
failure costs a token, a success gives back a fraction of one, and retries stop while the
bucket is at most half full. The budget guards retries onto members already suspect (that is
what multiplies load on a sick ring); moving a call from a member that just died to a
healthy one is plain failover and always allowed, however many calls were in flight.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import grpc


class CallSafety(enum.Enum):
    """Whether a request that may already have been applied can be sent again elsewhere."""

    READ = "read"  # changes nothing
    IDEMPOTENT = "idempotent"  # a write keyed by client-chosen ids, or setting a state
    ONCE = "once"  # a repeat after a lost reply would answer differently


class Failure(enum.Enum):
    MEMBER = "member"  # the member is unreachable, draining or dead: try the next one
    ANSWER = "answer"  # the member answered with an error: that is the result


class Decision(enum.Enum):
    TRY_NEXT = "try_next"  # send the same request to the next member
    RAISE = "raise"  # the member's error is the call's result
    GIVE_UP = "give_up"  # the ring cannot serve it now: UNAVAILABLE naming the ring


class GiveUpReason(enum.Enum):
    NO_MEMBER_LEFT = "no member of the ring answered"
    BUDGET_SPENT = "the ring's retry budget is spent (too many members failing)"
    NOT_REPEATABLE = "the member failed mid-call and the call is not safe to repeat elsewhere"


_MEMBER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


def classify(code: grpc.StatusCode) -> Failure:
    """A status from a ring member: news about the member, or its answer."""
    return Failure.MEMBER if code in _MEMBER_CODES else Failure.ANSWER


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: GiveUpReason | None = None


def decide(
    safety: CallSafety,
    failure: Failure,
    *,
    attempts: int,
    max_attempts: int,
    member_left: bool,
    next_suspect: bool,
    budget_allows: bool,
) -> Verdict:
    """What to do after ``attempts`` tries of a call failed, the last with ``failure``;
    ``next_suspect``: the next member is suspect too (only then does the budget apply)."""
    if failure is Failure.ANSWER:
        return Verdict(Decision.RAISE)
    if safety is CallSafety.ONCE:
        return Verdict(Decision.GIVE_UP, GiveUpReason.NOT_REPEATABLE)
    if not member_left or attempts >= max_attempts:
        return Verdict(Decision.GIVE_UP, GiveUpReason.NO_MEMBER_LEFT)
    if next_suspect and not budget_allows:
        return Verdict(Decision.GIVE_UP, GiveUpReason.BUDGET_SPENT)
    return Verdict(Decision.TRY_NEXT)


class RetryBudget:
    """gRPC's retry throttling: ``max_tokens`` tokens, -1 per failure, +``ratio`` per success;
    a retry is allowed while more than half the tokens are left."""

    def __init__(self, max_tokens: float, ratio: float) -> None:
        self.max_tokens = max_tokens
        self.ratio = ratio
        self.tokens = max_tokens

    def failed(self) -> None:
        self.tokens = max(0.0, self.tokens - 1)

    def succeeded(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.ratio)

    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2


_R, _I, _O = CallSafety.READ, CallSafety.IDEMPOTENT, CallSafety.ONCE

# (service kind, method) -> safety. Every RPC of every internal service has a row (a test
# checks the protos), so a new RPC cannot be retried by accident.
CALL_SAFETY: Mapping[tuple[str, str], CallSafety] = {
    # header store: message writes carry the client-chosen message id; thread and mark
    # writes set a state (title, role, mute, mark high-water, like) that a repeat leaves as
    # it is. RemoveMember is the exception: a repeat after it applied finds no member.
    ("header", "StartMessage"): _I,
    ("header", "CompleteMessage"): _I,
    ("header", "SetMessageState"): _I,
    ("header", "HideMessage"): _I,
    ("header", "GetMessage"): _R,
    ("header", "ListMessages"): _R,
    ("header", "ForwardMessage"): _I,
    ("header", "CreateThread"): _I,  # the thread id is chosen before the call
    ("header", "GetThread"): _R,
    ("header", "ListThreadsForUser"): _R,
    ("header", "UpdateThread"): _I,
    ("header", "AddMembers"): _I,
    ("header", "RemoveMember"): _O,
    ("header", "SetMemberRole"): _I,
    ("header", "GetMembers"): _R,
    ("header", "CheckMembership"): _R,
    ("header", "MuteThread"): _I,
    ("header", "ListTimeline"): _R,
    ("header", "AckTimeline"): _I,
    ("header", "SetMark"): _I,
    ("header", "ListMarks"): _R,
    ("header", "LikeMessage"): _I,
    ("header", "UnlikeMessage"): _I,
    # body store: chunks carry their index (duplicates are dropped by index).
    ("body", "AppendChunks"): _I,
    ("body", "AppendChunksBatch"): _I,
    ("body", "AppendLink"): _I,
    ("body", "FinishBody"): _I,
    ("body", "ReadChunks"): _R,
    ("body", "ReadRange"): _R,
    ("body", "DeleteBody"): _I,
    ("body", "StatBody"): _R,
    # notification sender: pushes are claimed once per message and device (SET NX).
    ("notification", "RegisterDevice"): _I,
    ("notification", "UnregisterDevice"): _I,
    ("notification", "ListDevices"): _R,
    ("notification", "NotifyMessage"): _I,
    ("notification", "ReportPresence"): _I,
    ("notification", "GetUnreadCounts"): _R,
    ("notification", "ClearUnread"): _I,
    ("notification", "SetDoNotDisturb"): _I,
    ("notification", "SetThreadMute"): _I,
    # peer routers: an event belongs to its user's home router; devices apply repeats by id.
    ("router", "Relay"): _I,
    ("router", "DeliverEvent"): _I,
    # a proxied updates stream resumes from the device's cursor; presence sets a state.
    ("router", "ProxyUpdates"): _R,
    ("router", "ProxySetPresence"): _I,
}


def call_safety(kind: str, method: str) -> CallSafety:
    """The table's row; an RPC missing from it is never repeated."""
    return CALL_SAFETY.get((kind, method), CallSafety.ONCE)
