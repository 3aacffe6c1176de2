"""A gRPC handler that wraps another one's unary and stream-stream behaviours (authentication, request
ids): the dispatch is the same for every wrapper, only what it wraps around a call differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import grpc

if TYPE_CHECKING:
    _Handler = grpc.GenericRpcHandler[Any, Any]
else:  # not subscriptable at run time
    _Handler = grpc.GenericRpcHandler


class WrappingHandler(_Handler):
    """Serves what `inner` serves, each behaviour passed through `_unary` or `_stream`."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any]) -> None:
        self._inner = inner

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = cast(Any, self._inner.service(details))
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._stream(handler.stream_stream))
        return handler

    def _unary(self, behaviour: Any) -> Any:
        raise NotImplementedError

    def _stream(self, behaviour: Any) -> Any:
        raise NotImplementedError


class Handlers(_Handler):
    """Several services' handlers as one: the first that serves a method serves it."""

    def __init__(self, *handlers: grpc.GenericRpcHandler[Any, Any]) -> None:
        self._handlers = handlers

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        for handler in self._handlers:
            found = handler.service(details)
            if found is not None:
                return found
        return None


def generic_handler(
    add_to_server: Callable[[Any, Any], None], servicer: Any
) -> grpc.GenericRpcHandler[Any, Any]:
    """The generic handler that the generated `add_<Service>Servicer_to_server(servicer, server)` would
    register, taken instead of registered, for the doors to wrap (authentication, request ids)."""
    captured: list[Any] = []

    class _Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            captured.extend(handlers)

        def add_registered_method_handlers(self, *_: Any) -> None:
            pass

    add_to_server(servicer, _Capture())
    handler: grpc.GenericRpcHandler[Any, Any] = captured[0]
    return handler
