"""A real HTTP server that misbehaves on cue, for the API client's failure modes (429 storms, 5xx,
malformed bodies, refused keys, answers that drip, never end or never stop growing): uvicorn on a free
port, in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from weightflow.serving.testing import free_port

Behaviour = Callable[[int, dict[str, Any]], Response]  # (request number from 0, JSON body) -> response


def chat_answer(text: str, prompt_tokens: int = 10, completion_tokens: int = 2) -> Response:
    return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}})


def rate_limited(retry_after: str = "0") -> Response:
    return JSONResponse({"error": {"message": "slow down", "type": "rate_limit"}}, status_code=429,
                        headers={"retry-after": retry_after})


def not_json() -> Response:
    return PlainTextResponse("<html>gateway says hi</html>", status_code=200)


def drip(body: bytes, every_s: float, *, wait_s: float = 0.0, silence_s: float = 0.0) -> Response:
    """HTTP 200 after `wait_s`, then `silence_s` of nothing, then `body` one byte every `every_s`: a server
    that never stops answering slowly (per-read timeouts never fire)."""
    time.sleep(wait_s)

    def trickle() -> Iterator[bytes]:
        time.sleep(silence_s)
        for byte in body:
            yield bytes([byte])
            time.sleep(every_s)

    return StreamingResponse(trickle(), media_type="application/json",
                             headers={"content-length": str(len(body))})


class Scripted:
    """A raw loopback server below HTTP, for what uvicorn will not do (send a head a byte at a time): on each
    connection it reads a request, then follows `script`, (pause in seconds, bytes to send, or None: read the
    next request on this kept-alive connection) by turns, then holds the connection silent. Every pause ends at
    `__exit__`, so a test lasts as long as its client, not its script."""

    def __init__(self, script: list[tuple[float, bytes | None]]) -> None:
        self.script = script
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            answer = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            self._threads.append(answer)
            answer.start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client hung up
            conn.settimeout(5)
            conn.recv(65536)  # the request's head, at least
            for pause, data in self.script:
                if self._stop.wait(pause):
                    return
                if data is None:
                    conn.recv(65536)
                else:
                    conn.sendall(data)
            self._stop.wait()

    def __enter__(self) -> Scripted:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join(timeout=10)  # accepts no more: the list is whole
        for thread in self._threads[1:]:
            thread.join(timeout=10)
        self._listener.close()


def dripped(data: bytes, every_s: float) -> list[tuple[float, bytes | None]]:
    """`data` one byte every `every_s`, as a Scripted script."""
    return [(every_s, bytes([byte])) for byte in data]


class Huge:
    """A body of `size` bytes streamed a MiB at a time, counting what the server managed to send before the
    client hung up; or gzipped (a decompression bomb: ~50 kB on the wire for 50 MB)."""

    HEAD = b'{"choices": [{"message": {"content": "'

    def __init__(self, size: int, *, status: int = 200, declare: bool = False, gzipped: bool = False) -> None:
        self.size, self.status, self.declare = size, status, declare
        self.sent = 0
        self.packed: bytes | None = None
        if gzipped:  # packed once, a MiB at a time, before anyone measures memory
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            parts = [packer.compress(self.HEAD)] + [packer.compress(b"x" * (1 << 20)) for _ in range(size >> 20)]
            self.packed = b"".join([*parts, packer.flush()])

    def __call__(self, n: int, body: dict[str, Any]) -> Response:
        if self.packed is not None:
            return Response(self.packed, status_code=self.status, media_type="application/json",
                            headers={"content-encoding": "gzip"})

        def stream() -> Iterator[bytes]:
            yield self.HEAD
            for _ in range(self.size >> 20):
                self.sent += 1 << 20
                yield b"x" * (1 << 20)

        headers = {"content-length": str(len(self.HEAD) + (self.size >> 20 << 20))} if self.declare else {}
        return StreamingResponse(stream(), status_code=self.status, media_type="application/json", headers=headers)


class FakeApi:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"

        async def handle(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                n = len(self.requests)
                self.requests.append((request.url.path, body, dict(request.headers)))
            return await asyncio.to_thread(self.behaviour, n, body)  # handlers run concurrently, like a server

        app = Starlette(routes=[Route(p, handle, methods=["POST"]) for p in
                                ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/classify")])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> FakeApi:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the fake API did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and wait for it (again: a no-op), freeing what the server still held, a chunk it was sending."""
        self.server.should_exit = True
        self._thread.join(timeout=30)
