"""How `weightflow serve` meets slow clients: deadlines for a request's head and body, on top of uvicorn.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`) but sets no deadline on a request's
headers or body: a connection that sends half its headers, or a Content-Length it never delivers, was held
open forever, and a few hundred of them held a few hundred sockets and tasks. `GuardedHttp` adds both as
deadlines that trickled bytes do not extend (slowloris), and caps the size of a request's head (the C parser
accumulates header lines without a limit). It is the one place these limits live; `server_config` hands it
to uvicorn with the keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from weightflow.serving.schemas import error

MAX_HEAD_BYTES = 64 * 1024  # request line and headers; real clients send under 2 KiB


@dataclass(frozen=True)
class ClientTimeouts:
    """Seconds a client gets: to send a request's headers (from the connection or the request's first
    byte), to send its whole body once the headers are in, and to start another request on an idle
    keep-alive connection."""

    header_s: float = 10.0
    body_s: float = 60.0
    keep_alive_s: int = 5


def _answer(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(error(message, code=code)).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n")
    return head.encode() + body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, a body deadline and a head-size cap, per request.

    The head deadline runs from the connection (or from the first byte of a later request on it) to the
    end of the headers: on expiry the connection is closed, with a 408 when part of a request came. The
    body deadline runs from the end of the headers to the end of the body: on expiry a request nobody has
    answered gets a 408 and the application sees the client leave (as if it had disconnected)."""

    timeouts: ClassVar[ClientTimeouts] = ClientTimeouts()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0

    def _arm(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        """Answer `status` and close, unless a response is under way (then close once it is sent)."""
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.transport.write(_answer(status, reason, message, code))
        self.transport.close()

    # -- uvicorn's protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.timeouts.header_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head:  # counted after parsing: the chunk may have begun this head (on_message_begin)
            self._head_bytes += len(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._disarm()
            self._refuse(431, "Request Header Fields Too Large",
                         f"request line and headers over {MAX_HEAD_BYTES // 1024} KiB", "headers_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        if self._deadline is None:  # a new connection's deadline already runs: trickling does not renew it
            self._arm(self.timeouts.header_s, self._head_late)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()
        self._arm(self.timeouts.body_s, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------
    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not (self._in_head and self._head_bytes) and (self.cycle is None or self.cycle.response_complete):
            self.logger.debug("closed a connection from %s that sent no request within %g s", self.client,
                              self.timeouts.header_s)
            self.transport.close()
            return
        self.logger.info("408 to %s: its request's headers did not arrive within %g s", self.client,
                         self.timeouts.header_s)
        self._refuse(408, "Request Timeout", f"the request's headers did not arrive within "
                     f"{self.timeouts.header_s:g} s", "request_timeout")

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None:
            return
        if cycle.response_started:  # answered without the body: close once the answer is out
            cycle.keep_alive = False
            if cycle.response_complete:
                self.transport.close()
            return
        self.logger.info("408 to %s: its request's body did not arrive within %g s", self.client,
                         self.timeouts.body_s)
        self.transport.write(_answer(408, "Request Timeout", f"the request's body did not arrive within "
                                     f"{self.timeouts.body_s:g} s", "request_timeout"))
        cycle.disconnected = True  # the application reads a disconnect; its answer, if any, goes nowhere
        cycle.message_event.set()
        self.transport.close()


def server_config(app: Any, *, host: str, port: int, timeouts: ClientTimeouts, **options: Any) -> uvicorn.Config:
    """uvicorn's config for `app` with the slow-client deadlines (and no websocket upgrades: none is served)."""
    protocol = type("GuardedHttp", (GuardedHttp,), {"timeouts": timeouts})
    return uvicorn.Config(app, host=host, port=port, http=protocol, ws="none",
                          timeout_keep_alive=timeouts.keep_alive_s, **options)
