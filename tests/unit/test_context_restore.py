"""An ``around`` interceptor's context variable is restored even when a cancelled streaming
call's generator is closed in another context (the event loop's async-generator finaliser):
that used to raise ValueError and log a traceback per cancelled stream."""

from __future__ import annotations

import contextvars

import pytest

from voxmesh.core.rpc_interceptors import restore

_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_var", default=None)


def test_a_token_from_another_context_is_not_an_error() -> None:
    token = _var.set("alice")
    other = contextvars.Context()
    with pytest.raises(ValueError):  # what plain reset does there
        other.run(_var.reset, token)
    other.run(restore, _var, token, None)
    assert other.run(_var.get) is None
    restore(_var, token, None)  # and in its own context, a plain reset
    assert _var.get() is None
