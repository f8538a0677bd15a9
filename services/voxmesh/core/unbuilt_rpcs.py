"""Answer UNIMPLEMENTED, with a message that says when, for v1 RPCs whose logic is not built.

The generated servicer bases answer a bare "Method not implemented!"; a client deserves to
know the RPC is part of the API and which piece of work brings it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from voxmesh.core.domain_errors import NotBuiltYet


def fill_unbuilt_rpcs(servicer_cls: type, service: ServiceDescriptor, lands_with: str) -> type:
    """Give every RPC of ``service`` that ``servicer_cls`` does not define a NotBuiltYet answer."""
    for method in service.methods:
        own = servicer_cls.__dict__.get(method.name)
        if own is not None:
            continue
        message = f"{service.full_name}/{method.name} is not built yet: it lands with {lands_with}"
        if method.server_streaming:

            async def stream(
                self: Any, request: Any, context: Any, _message: str = message
            ) -> AsyncIterator[Any]:
                raise NotBuiltYet(_message)
                yield  # pragma: no cover - makes this an async generator

            setattr(servicer_cls, method.name, stream)
        else:

            async def unary(self: Any, request: Any, context: Any, _message: str = message) -> Any:
                raise NotBuiltYet(_message)

            setattr(servicer_cls, method.name, unary)
    return servicer_cls
