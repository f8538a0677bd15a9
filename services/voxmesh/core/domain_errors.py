"""Domain errors: raised by plain domain classes, mapped to gRPC status codes in one place.

Domain code never imports grpc; the error-mapping interceptor turns these into statuses.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error a client may see. The message is sent to the client as is."""


class InvalidArgument(DomainError):
    """The request itself is wrong (malformed id, oversize chunk, index gap)."""


class NotFound(DomainError):
    """The thread, message, chunk or device does not exist (or is not visible to the caller)."""


class AlreadyExists(DomainError):
    """A create would overwrite something different (message id reused in another thread)."""


class FailedPrecondition(DomainError):
    """The request is valid but the state does not allow it (append to a complete body)."""


class OutOfRange(DomainError):
    """A read past the end of a body, or a cursor beyond what exists."""


class Unauthenticated(DomainError):
    """No or invalid credentials."""


class PermissionDenied(DomainError):
    """Authenticated, but not allowed (not a member of the thread)."""


class ResourceExhausted(DomainError):
    """A configured limit on in-flight work or a rate was reached; the client should back off
    (for ``retry_after_s`` if given: sent as a ``google.rpc.RetryInfo`` status detail)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Aborted(DomainError):
    """The call was superseded (a device opened a newer updates stream); retry if needed."""


class Unavailable(DomainError):
    """A dependency (store, peer node) cannot be reached right now; retrying may succeed."""


class NotBuiltYet(DomainError):
    """The RPC is part of the v1 API but its logic has not been built yet."""
