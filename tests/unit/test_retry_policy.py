"""The one retry policy of the mesh clients: pure decisions, the budget, the call table."""

from __future__ import annotations

import grpc
import pytest

from voxmesh.body.v1 import body_service_pb2
from voxmesh.core.mesh_clients import MemberHealth
from voxmesh.core.retry_policy import (
    CALL_SAFETY,
    CallSafety,
    Decision,
    Failure,
    GiveUpReason,
    RetryBudget,
    call_safety,
    classify,
    decide,
)
from voxmesh.header.v1 import header_service_pb2
from voxmesh.notification.v1 import notification_service_pb2
from voxmesh.router.v1 import router_peer_service_pb2

SERVICES = {
    "header": header_service_pb2.DESCRIPTOR.services_by_name["HeaderService"],
    "body": body_service_pb2.DESCRIPTOR.services_by_name["BodyService"],
    "notification": notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"],
    "router": router_peer_service_pb2.DESCRIPTOR.services_by_name["RouterPeerService"],
}


def test_every_internal_rpc_is_classified_and_nothing_else() -> None:
    in_protos = {(kind, m.name) for kind, s in SERVICES.items() for m in s.methods}
    assert set(CALL_SAFETY) == in_protos


def test_reads_are_reads_and_unknown_calls_are_never_repeated() -> None:
    for (kind, method), safety in CALL_SAFETY.items():
        if method.startswith(("Get", "List", "Read", "Check", "Stat")):
            assert safety is CallSafety.READ, (kind, method)
    assert call_safety("header", "NoSuchMethod") is CallSafety.ONCE


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_application_errors_are_the_answer_and_never_retried(code: grpc.StatusCode) -> None:
    assert classify(code) is Failure.ANSWER
    for safety in CallSafety:
        verdict = decide(
            safety,
            Failure.ANSWER,
            attempts=1,
            max_attempts=3,
            member_left=True,
            next_suspect=False,
            budget_allows=True,
        )
        assert verdict.decision is Decision.RAISE


def test_an_unavailable_member_sends_a_repeatable_call_to_the_next() -> None:
    assert classify(grpc.StatusCode.UNAVAILABLE) is Failure.MEMBER
    for safety in (CallSafety.READ, CallSafety.IDEMPOTENT):
        verdict = decide(
            safety,
            Failure.MEMBER,
            attempts=1,
            max_attempts=3,
            member_left=True,
            next_suspect=False,
            budget_allows=True,
        )
        assert verdict.decision is Decision.TRY_NEXT


@pytest.mark.parametrize(
    ("safety", "attempts", "member_left", "budget", "reason"),
    [
        (CallSafety.ONCE, 1, True, True, GiveUpReason.NOT_REPEATABLE),
        (CallSafety.READ, 1, False, True, GiveUpReason.NO_MEMBER_LEFT),
        (CallSafety.READ, 3, True, True, GiveUpReason.NO_MEMBER_LEFT),
        (CallSafety.IDEMPOTENT, 1, True, False, GiveUpReason.BUDGET_SPENT),
    ],
)
def test_when_the_ring_gives_up(
    safety: CallSafety, attempts: int, member_left: bool, budget: bool, reason: GiveUpReason
) -> None:
    verdict = decide(
        safety,
        Failure.MEMBER,
        attempts=attempts,
        max_attempts=3,
        member_left=member_left,
        next_suspect=True,
        budget_allows=budget,
    )
    assert (verdict.decision, verdict.reason) == (Decision.GIVE_UP, reason)


def test_failover_to_a_healthy_member_needs_no_budget() -> None:
    """Many calls in flight when a member dies all move on, even with the budget spent."""
    verdict = decide(
        CallSafety.READ,
        Failure.MEMBER,
        attempts=1,
        max_attempts=3,
        member_left=True,
        next_suspect=False,
        budget_allows=False,
    )
    assert verdict.decision is Decision.TRY_NEXT


def test_the_budget_stops_retries_while_a_ring_is_sick_and_refills_with_successes() -> None:
    budget = RetryBudget(max_tokens=10, ratio=0.5)
    allowed = 0
    for _ in range(100):  # every member failing: retries stop after half the bucket
        budget.failed()
        allowed += budget.allows_retry()
    assert allowed == 4  # 9, 8, 7, 6 tokens left: > 5
    assert not budget.allows_retry()
    for _ in range(12):
        budget.succeeded()
    assert budget.allows_retry()
    assert budget.tokens == 6


def test_member_health_suspects_at_once_on_failure_and_after_repeated_timeouts() -> None:
    health = MemberHealth()
    changes: list[str] = []
    health.on_change(changes.append)
    health.suspect("header", "a:1")
    health.suspect("header", "a:1")  # already suspect: no news
    assert health.is_suspect("a:1") and health.suspects("header") == 1
    health.missed("body", "b:1", 2)
    assert not health.is_suspect("b:1")
    health.missed("body", "b:1", 2)
    assert health.is_suspect("b:1")
    health.clear("a:1")
    assert not health.is_suspect("a:1")
    health.forget_except({"x:1"})
    assert health.suspects("body") == 0
    assert changes == ["header", "body", "header", "body"]
