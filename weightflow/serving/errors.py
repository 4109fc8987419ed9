"""How `weightflow serve` says no: every error a JSON body in OpenAI's shape with a 4xx status that says what to
change; only a fault of the server is a 500, and it never carries a traceback. Also the body-size limit, which
answers in the same shape."""

from __future__ import annotations

import logging
from uuid import uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weightflow.serving import schemas as s
from weightflow.serving.problems import problems

log = logging.getLogger("weightflow.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type_


def too_large() -> JSONResponse:
    # connection: close, or the server would go on reading (and dropping) the rest of the body
    return JSONResponse(s.error(f"request body over {MAX_BODY_BYTES // 2**20} MiB; send fewer or shorter inputs",
                                code="request_too_large"), status_code=413, headers={"connection": "close"})


class BodyLimit:
    """413 for a body over `limit`, in our JSON error shape: a declared Content-Length before anything
    reads it, every body as its bytes arrive (a chunked one before it is held in full). Not FastAPI's
    `max_body_size`: its responder replaces any answer to a declared oversize body with plain text.
    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware costs a task group
    and a streamed response per request (profiled)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await too_large()(scope, receive, send)
            return
        seen = 0  # counted whatever was declared: a server that frames the body otherwise is not trusted

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(413)  # answered by the app's handler, as JSON
            return message

        await self.app(scope, counted, send)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(s.error(str(exc), exc.type, code=exc.code, param=exc.param), status_code=exc.status)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = problems(exc.errors())  # each field named as the client wrote it, and what it must be
    message = "; ".join(f"{where}: {what}" for where, what in found[:5]) or "invalid request"
    param = found[0][0] if found and found[0][0] != "body" else None
    return JSONResponse(s.error(message, param=param, code="invalid_request"), status_code=400)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 413:  # a chunked body went past the limit (BodyLimit)
        return too_large()
    return JSONResponse(s.error(str(exc.detail), code="not_found" if exc.status_code == 404 else None),
                        status_code=exc.status_code, headers=exc.headers)


async def _fault(request: Request, exc: Exception) -> JSONResponse:
    ref = uuid4().hex[:12]
    log.exception("request %s failed (ref %s)", request.url.path, ref)
    return JSONResponse(s.error(f"internal error (ref {ref}); the server log has the details", "server_error"),
                        status_code=500)


def install(app: FastAPI) -> None:
    """Every error of `app` answered in OpenAI's shape, and bodies over MAX_BODY_BYTES refused."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _fault)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
