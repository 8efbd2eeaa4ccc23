"""The HTTP side of `stc serve` on Starlette: a JSON API, an OpenAI-style chat completions
endpoint and the web page. Every error a client can cause is a 4xx with one line of JSON,
`{"error": "..."}`; anything else is a 500 with the same shape and no traceback.

    GET    /                                 the page (page.html)
    GET    /v1/streams                       every stream, with its figures
    POST   /v1/streams                       add one: {"source": ..., "name"?, options...}
    GET    /v1/streams/{id}                  one stream
    DELETE /v1/streams/{id}                  remove it
    GET    /v1/streams/{id}/figures          its live figures
    GET    /v1/streams/{id}/frame.jpg        its last frame with the overlay (?heatmap=1, ?height=N)
    POST   /v1/streams/{id}/ask              {"question": ..., "max_new_tokens"?, "since"?}
    GET    /v1/models                        the streams, as OpenAI models
    POST   /v1/chat/completions              OpenAI-style; `model` names the stream; "stream": true for SSE
    GET    /v1/server                        the server's memory budget, stream count, batching and ingestion counts

With a token, every path but the page needs `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from importlib.resources import files

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stc.integrations.serve.errors import BadRequest, RequestError, Unauthorized
from stc.integrations.serve.requests import checked_question, question
from stc.integrations.serve.streams import Cancelled, StreamManager

MAX_BODY_BYTES = 64 * 1024
DISCONNECT_POLL_S = 0.05
PICTURE_HEIGHTS = range(120, 1081)
PUBLIC_PATHS = ("/", "/favicon.ico")


def create_app(manager: StreamManager, token: str | None = None) -> Starlette:
    api = _Api(manager)
    routes = [
        Route("/", api.page, methods=["GET"]),
        Route("/v1/streams", api.list_streams, methods=["GET"]),
        Route("/v1/streams", api.add_stream, methods=["POST"]),
        Route("/v1/streams/{id}", api.get_stream, methods=["GET"]),
        Route("/v1/streams/{id}", api.remove_stream, methods=["DELETE"]),
        Route("/v1/streams/{id}/figures", api.figures, methods=["GET"]),
        Route("/v1/streams/{id}/frame.jpg", api.frame, methods=["GET"]),
        Route("/v1/streams/{id}/ask", api.ask, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/server", api.server, methods=["GET"]),
    ]
    handlers = {RequestError: _request_error, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    return _TokenGuard(app, token) if token else app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


async def _request_error(request, exc: RequestError):
    return _error(exc.status, str(exc))


async def _http_error(request, exc: HTTPException):
    reason = {404: "no such endpoint", 405: "method not allowed here"}.get(exc.status_code, exc.detail)
    return _error(exc.status_code, f"{reason}: {request.method} {request.url.path}")


async def _server_error(request, exc: Exception):
    return _error(500, f"internal error ({type(exc).__name__}); see the server's log")


class _TokenGuard:
    """ASGI middleware: every HTTP request but the page's needs `Authorization: Bearer TOKEN`."""

    def __init__(self, app, token: str):
        self.app, self._expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                message = "missing or wrong token: send Authorization: Bearer TOKEN"
                await _error(Unauthorized.status, message)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _json_body(request: Request):
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from exc


async def _until_answered(request: Request, work):
    """Run `work(cancelled)` on a worker thread; if the client leaves first, set `cancelled` (a
    question still waiting for the model is then never run) and return None (or, inside a
    streamed response that Starlette cancels when its client leaves, re-raise the cancellation)."""
    cancelled = threading.Event()
    task = asyncio.ensure_future(anyio.to_thread.run_sync(work, cancelled))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                break
    except asyncio.CancelledError:  # a streamed response whose client left (Starlette cancels it)
        cancelled.set()
        task.add_done_callback(_quietly)
        raise
    cancelled.set()
    task.add_done_callback(_quietly)
    return None


def _quietly(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a question cancelled or answered for nobody is no error


class _Api:
    def __init__(self, manager: StreamManager):
        self.manager = manager
        self._page = files("stc.integrations.serve").joinpath("page.html").read_text()

    async def page(self, request: Request):
        return HTMLResponse(self._page)

    async def list_streams(self, request: Request):
        return JSONResponse({"streams": [s.describe() for s in self.manager.list()]})

    async def add_stream(self, request: Request):
        body = await _json_body(request)
        stream = await anyio.to_thread.run_sync(self.manager.add, body)
        return JSONResponse(stream.describe(), status_code=201)

    async def get_stream(self, request: Request):
        return JSONResponse(self.manager.get(request.path_params["id"]).describe())

    async def remove_stream(self, request: Request):
        stream_id = request.path_params["id"]
        await anyio.to_thread.run_sync(self.manager.remove, stream_id)
        return JSONResponse({"removed": stream_id})

    async def figures(self, request: Request):
        return JSONResponse(self.manager.get(request.path_params["id"]).describe()["figures"])

    async def frame(self, request: Request):
        stream = self.manager.get(request.path_params["id"])
        heatmap = request.query_params.get("heatmap", "0") not in ("0", "false", "")
        height = request.query_params.get("height", "360")
        if not height.isdigit() or int(height) not in PICTURE_HEIGHTS:
            raise BadRequest(f"height must be an integer in [{PICTURE_HEIGHTS.start}, {PICTURE_HEIGHTS.stop - 1}]")
        jpeg = await anyio.to_thread.run_sync(stream.picture, heatmap, int(height))
        if jpeg is None:
            return _error(404, f"stream {stream.id!r} has no frame yet")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def ask(self, request: Request):
        asked = question(await _json_body(request))
        stream_id = request.path_params["id"]
        self.manager.get(stream_id)
        reply = await _until_answered(request, lambda cancelled: self._ask(stream_id, asked, cancelled))
        return Response(status_code=204) if reply is None else JSONResponse(reply)

    def _ask(self, stream_id, asked, cancelled, on_text=None):
        try:
            return self.manager.ask(stream_id, asked, cancelled, on_text)
        except Cancelled:
            return None

    async def models(self, request: Request):
        streams = self.manager.list()
        return JSONResponse({"object": "list", "data": [
            {"id": s.id, "object": "model", "created": int(s.created), "owned_by": "stc serve"} for s in streams]})

    async def server(self, request: Request):
        return JSONResponse(self.manager.memory())

    async def chat(self, request: Request):
        body = await _json_body(request)
        stream_id, asked, streamed = _chat_request(body)
        self.manager.get(stream_id)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
            payload = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": stream_id,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **(extra or {})}
            return f"data: {json.dumps(payload)}\n\n"

        if streamed:
            return StreamingResponse(self._chat_events(request, stream_id, asked, chunk), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store"})
        reply = await _until_answered(request, lambda cancelled: self._ask(stream_id, asked, cancelled))
        if reply is None:
            return Response(status_code=204)
        return JSONResponse({
            "id": reply_id, "object": "chat.completion", "created": created, "model": stream_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply["answer"]},
                         "finish_reason": reply["finish_reason"]}],
            "usage": {"completion_tokens": reply["tokens"]},
            "stc": _stc_part(reply),
        })

    async def _chat_events(self, request, stream_id, asked, chunk):
        """SSE: the role at once, the answer's text in pieces as they are decoded, then the finish
        reason and [DONE]. A client that leaves cancels its question: one still waiting for the
        model is never run, one being answered stops decoding at its next piece."""
        yield chunk({"role": "assistant", "content": ""})
        loop, pieces = asyncio.get_running_loop(), asyncio.Queue()

        def on_text(piece: str) -> None:  # on the worker thread, in decoding order
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        answering = asyncio.ensure_future(
            _until_answered(request, lambda cancelled: self._ask(stream_id, asked, cancelled, on_text)))
        try:
            while not answering.done():
                next_piece = asyncio.ensure_future(pieces.get())
                await asyncio.wait({next_piece, answering}, return_when=asyncio.FIRST_COMPLETED)
                if next_piece.done():
                    yield chunk({"content": next_piece.result()})
                else:
                    next_piece.cancel()
        except BaseException:  # the client left (Starlette cancels the response): so does the question
            answering.cancel()
            raise
        while not pieces.empty():  # handed over before the answer was done
            yield chunk({"content": pieces.get_nowait()})
        try:
            reply = answering.result()
        except RequestError as exc:
            yield f"data: {json.dumps({'error': str(exc)})}\n\n"
            return
        if reply is None:
            return
        yield chunk({}, reply["finish_reason"], {"stc": _stc_part(reply)})
        yield "data: [DONE]\n\n"


def _stc_part(reply: dict) -> dict:
    return {k: reply[k] for k in ("stream_time", "frames_seen", "latency_s", "answer_s")}


def _chat_request(body) -> tuple[str, object, bool]:
    """(stream id, Question, streamed) of an OpenAI-style chat request: `model` (or `stream_id`)
    names the stream, the last user message is the question (the stream is the context)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    stream_id = body.get("stream_id", body.get("model"))
    if not isinstance(stream_id, str) or not stream_id:
        raise BadRequest("model must name a stream (GET /v1/models lists them)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest("messages has no user message")
    content = users[-1].get("content")
    if isinstance(content, list):  # content parts: the text ones
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    streamed = body.get("stream", False)
    if not isinstance(streamed, bool):
        raise BadRequest("stream must be true or false")
    return stream_id, checked_question(content, body.get(tokens_field), tokens_field=tokens_field), streamed
