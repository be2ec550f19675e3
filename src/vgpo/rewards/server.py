"""A reward served over HTTP (`vgpo serve-reward`): ``POST /score``, ``GET /health``, on starlette + uvicorn.

Requests from several trainer processes are queued; one worker thread takes what has arrived within
``max_wait`` seconds of the first and scores images of one size in a single reward call of at most
``max_batch`` images and ``max_batch_pixels`` pixels, so a GPU reward model sees large batches. A request larger
than that budget is scored in pieces, and between its pieces the requests that arrived meanwhile go first: one
large request does not hold small ones for longer than one reward call. The reward runs on that one thread
only, so rewards need not be thread-safe. If a merged call fails, each request is re-scored alone so that one
bad request cannot fail its neighbours.

Limits, all checked before an image is decoded: body bytes (413), pixels per request from the image headers
(413), decoded pixels held at once (a request waits for room), open connections (uvicorn's
``limit_concurrency``: 503 beyond it), seconds to send a body (408). Security defaults: the Host header must
name the bound address (localhost names for a loopback bind: no DNS rebinding), a request carrying a browser
``Origin`` is refused unless that origin is allowed, and a bearer token (required to bind a non-loopback
address) guards every endpoint. Bodies are PNG / safetensors / JSON (`vgpo.rewards.wire`), never pickle.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import anyio
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from vgpo.errors import ConfigError, RewardError
from vgpo.rewards import RewardFn, checked_call
from vgpo.rewards.wire import DEFAULT_MAX_REQUEST_PIXELS, PayloadError, ScoreRequest, parse_request

LOG = logging.getLogger("vgpo.serve_reward")
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_BATCH_PIXELS = 1 << 22
"""Pixels per reward call: 4.2M, 16 images of 512 x 512; a small request waits at most one such call."""
DEFAULT_MAX_CONNECTIONS = 64
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "VGPO_REWARD_TOKEN"
DATA_ERRORS = (RewardError, ValueError, TypeError, KeyError, IndexError, AttributeError)
"""Exceptions a reward raises on data it cannot score (bad metadata types, say): the request's fault, 422, and
not worth a retry (scoring is deterministic). Anything else (out of memory, a device error) answers 500."""


# ---------------------------------------------------------------------------------------------------------
# Batching: one thread calls the reward on merged, pixel-budgeted pieces of the queued requests.


@dataclass(eq=False)  # jobs are compared by identity (a deque's remove), never by their tensors
class _Job:
    request: ScoreRequest
    future: Future = field(default_factory=Future)
    done: int = 0  # images scored so far
    scores: list[torch.Tensor] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.request.images.shape[0])

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.request.images.shape[1:])  # (3, H, W): images of one call share it


@dataclass(eq=False)
class _Piece:
    job: _Job
    start: int
    stop: int


def _resolve(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless its client gave up (cancelled it) meanwhile."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


class RequestBatcher:
    """Merges concurrent score requests into reward calls of at most ``max_batch`` images and ``max_batch_pixels``
    pixels (height x width summed over the call's images), waiting at most ``max_wait`` seconds after the first
    request of a batch for others to arrive. A request larger than one call is scored in pieces, round robin
    with the requests that arrive meanwhile."""

    def __init__(
        self,
        reward: RewardFn,
        name: str,
        max_batch: int = 256,
        max_wait: float = 0.01,
        max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
    ) -> None:
        self.reward = reward
        self.name = name
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_batch_pixels = max_batch_pixels
        self.calls = 0  # reward calls made (fewer than requests when batching merges them)
        self.requests = 0
        self.images = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vgpo-reward-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ScoreRequest) -> Future:
        """Queue a request; the future resolves to its scores [N] float32 (cancelling it drops what is unscored)."""
        job = _Job(request)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        pending: collections.deque[_Job] = collections.deque()
        served: list[_Job] = []  # jobs part-scored by the last call: they go behind the newcomers
        while True:
            if not pending and self._gather(pending, block=True):
                return
            if self._gather(pending, block=False):
                return
            for job in served:
                if job in pending:
                    pending.remove(job)
                    pending.append(job)
            pieces = self._plan(pending)
            if not pieces:
                continue
            self._score(pieces)
            served = []
            for piece in pieces:
                job = piece.job
                if job.future.done():
                    pending.remove(job)
                elif job.done == job.count:
                    self.requests += 1
                    self.images += job.count
                    _resolve(job.future, torch.cat(job.scores))
                    pending.remove(job)
                else:
                    served.append(job)

    def _gather(self, pending: collections.deque[_Job], block: bool) -> bool:
        """Move queued jobs into ``pending``: blocking, wait for a first one and then up to ``max_wait`` seconds
        for others (until one call's worth has arrived); else take what is queued now. True on close."""
        deadline = time.monotonic() + self.max_wait if block else 0.0
        images = pixels = 0
        first = block
        while True:
            try:
                if first:
                    job = self._queue.get()
                    first = False
                elif block and images < self.max_batch and pixels < self.max_batch_pixels:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                for waiting in pending:  # the server is closing: no job is left waiting forever
                    _resolve(waiting.future, error=RewardError(f"reward server for {self.name!r} closed"))
                return True
            pending.append(job)
            images += job.count
            pixels += job.count * job.size[1] * job.size[2]

    def _plan(self, pending: collections.deque[_Job]) -> list[_Piece]:
        """The next call: images of the first pending job's size, taken in queue order while the budget lasts
        (a single image over the pixel budget is scored alone)."""
        for job in [job for job in pending if job.future.done()]:
            pending.remove(job)  # a client that gave up (timeout) is not scored
        if not pending:
            return []
        size = pending[0].size
        per_image = size[1] * size[2]
        room_images, room_pixels = self.max_batch, self.max_batch_pixels
        pieces: list[_Piece] = []
        for job in pending:
            if job.size != size:
                continue
            take = min(job.count - job.done, room_images, room_pixels // per_image)
            if take <= 0:
                if pieces:
                    break
                take = 1
            pieces.append(_Piece(job, job.done, job.done + take))
            room_images -= take
            room_pixels -= take * per_image
            if room_images <= 0 or room_pixels < per_image:
                break
        return pieces

    def _score(self, pieces: list[_Piece]) -> None:
        try:
            scores = self._call(pieces)
        except Exception as error:
            if len(pieces) == 1:
                _resolve(pieces[0].job.future, error=error)
                return
            for piece in pieces:  # one bad request must not fail its neighbours
                self._score([piece])
            return
        start = 0
        for piece in pieces:
            count = piece.stop - piece.start
            piece.job.scores.append(scores[start : start + count])
            piece.job.done = piece.stop
            start += count

    def _call(self, pieces: list[_Piece]) -> torch.Tensor:
        images = torch.cat([p.job.request.images[p.start : p.stop] for p in pieces])  # [sum of pieces, 3, H, W]
        prompts = [text for p in pieces for text in p.job.request.prompts[p.start : p.stop]]
        metadata = [meta for p in pieces for meta in p.job.request.metadata[p.start : p.stop]]
        self.calls += 1
        return checked_call(self.reward, images, prompts, metadata, name=self.name)


class _PixelGate:
    """Admits decoded pixels up to ``capacity`` at once (a request waits for room), so that many concurrent
    requests cannot together hold more decoded images than that in memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._condition = asyncio.Condition()

    async def acquire(self, pixels: int) -> None:
        async with self._condition:
            await self._condition.wait_for(lambda: self.used == 0 or self.used + pixels <= self.capacity)
            self.used += pixels

    async def release(self, pixels: int) -> None:
        async with self._condition:
            self.used -= pixels
            self._condition.notify_all()


# ---------------------------------------------------------------------------------------------------------
# The ASGI application.


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _OriginCheck:
    """Refuses (403) a request whose ``Origin`` header is not allowed: browsers send one with every cross-site
    POST, including the HTML form posts that CORS does not stop; trainers (urllib) send none."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = set(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if scope["type"] == "http" else None
        if origin is not None and origin not in self.allowed and "*" not in self.allowed:
            response = _error(
                403,
                f"requests from the browser origin {origin!r} are refused (a web page must not reach this server); "
                "restart it with --allow-origin ORIGIN to allow one",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BearerCheck:
    """Refuses (401) a request without ``Authorization: Bearer TOKEN`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") != "OPTIONS":
            given = Headers(scope=scope).get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, self.expected):
                response = _error(
                    401,
                    "this reward server needs 'Authorization: Bearer TOKEN'; set the same token in the trainer's "
                    f"environment variable {TOKEN_ENV}",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or the name localhost (only this machine reaches it)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(host: str) -> list[str]:
    """Host header values a server bound to ``host`` accepts: the localhost names for a loopback bind, the
    address itself otherwise, any for a wildcard bind (0.0.0.0, ::), where the required token guards instead."""
    if is_loopback(host):
        return ["127.0.0.1", "localhost", "[::1]"]
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return [f"[{host}]" if ":" in host else host]


class RewardServer:
    """An HTTP server scoring images with one reward; ``serve_forever`` runs it (or ``start`` in a thread),
    ``shutdown`` stops it, ``server_close`` frees its socket and batcher. The socket is bound on construction,
    so ``url`` is known (``port=0`` picks a free port)."""

    def __init__(
        self,
        reward: RewardFn,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
        max_batch: int = 256,
        max_wait: float = 0.01,
        request_timeout: float = 600.0,
        read_timeout: float = 60.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        token: str | None = None,
        allowed_hosts: Sequence[str] = (),
        allowed_origins: Sequence[str] = (),
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be an integer from 0 to 65535 (0 picks a free port), got {port!r}")
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"serving on the non-loopback address {host!r} needs a bearer token, or anyone who reaches it can "
                f"use it: set {TOKEN_ENV} (or --token) for the server and {TOKEN_ENV} for the trainer"
            )
        for label, value in (
            ("max_request_bytes", max_request_bytes),
            ("max_request_pixels", max_request_pixels),
            ("max_batch_pixels", max_batch_pixels),
            ("max_batch", max_batch),
            ("max_connections", max_connections),
        ):
            if value < 1:
                raise ConfigError(f"{label} must be >= 1, got {value}")
        self.reward_name = name
        self.max_request_bytes = max_request_bytes
        self.max_request_pixels = max_request_pixels
        self.max_pending_pixels = 2 * max_request_pixels + max_batch_pixels
        self.request_timeout = request_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.allowed_hosts = [*default_allowed_hosts(host), *allowed_hosts]
        self.allowed_origins = list(allowed_origins)
        self.batcher = RequestBatcher(
            reward, name, max_batch=max_batch, max_wait=max_wait, max_batch_pixels=max_batch_pixels
        )
        self.started = time.time()
        self.socket = _bind(host, port)
        self.server_address = self.socket.getsockname()[:2]
        self.app = self._build_app(token)
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.app,
                limit_concurrency=max_connections,
                timeout_keep_alive=5,
                proxy_headers=False,  # no proxy in front: X-Forwarded-* from a client is not believed
                server_header=False,
                log_config=None,  # leave the process's logging as it is
                access_log=False,
                lifespan="off",
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host}:{port}"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "reward": self.reward_name,
            "max_request_bytes": self.max_request_bytes,
            "max_request_pixels": self.max_request_pixels,
            "max_batch_pixels": self.batcher.max_batch_pixels,
            "max_batch": self.batcher.max_batch,
            "max_connections": self.max_connections,
            "requests": self.batcher.requests,
            "images": self.batcher.images,
            "reward_calls": self.batcher.calls,
            "uptime_s": round(time.time() - self.started, 1),
        }

    # -- running ---------------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until ``shutdown`` (or SIGINT / SIGTERM when run on the main thread)."""
        self._uvicorn.run(sockets=[self.socket])

    def start(self) -> RewardServer:
        """Serve on a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="vgpo-reward-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RewardError(f"reward server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def server_close(self) -> None:
        self.socket.close()
        self.batcher.close()

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    # -- the application -------------------------------------------------------------------------------------

    def _build_app(self, token: str | None) -> Starlette:
        middleware = [
            Middleware(TrustedHostMiddleware, allowed_hosts=self.allowed_hosts, www_redirect=False),
            Middleware(_OriginCheck, allowed=self.allowed_origins),
        ]
        if self.allowed_origins:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=self.allowed_origins,
                    allow_methods=["GET", "POST"],
                    allow_headers=["Authorization", "Content-Type"],
                )
            )
        if token:
            middleware.append(Middleware(_BearerCheck, token=token))

        async def http_error(request: Request, error: Exception) -> Response:
            assert isinstance(error, HTTPException)
            hint = "; use GET /health or POST /score"
            return _error(error.status_code, f"{error.detail}: {request.method} {request.url.path}{hint}")

        self._gate = _PixelGate(self.max_pending_pixels)
        return Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/score", self._score, methods=["POST"]),
            ],
            middleware=middleware,
            exception_handlers={HTTPException: http_error},
        )

    async def _health(self, request: Request) -> Response:
        return JSONResponse(self.health())

    async def _score(self, request: Request) -> Response:
        body_or_error = await self._read_body(request)
        if isinstance(body_or_error, Response):
            return body_or_error
        try:
            parsed = await run_in_threadpool(
                parse_request, body_or_error, request.headers.get("content-type", ""), self.max_request_pixels
            )
        except PayloadError as error:
            return _error(error.status, str(error))
        except Exception as error:  # parsing is a function of the body alone: whatever fails, the body caused it
            LOG.warning("unparsable request body: %s: %s", type(error).__name__, error)
            return _error(400, f"bad request body: {type(error).__name__}: {error}")
        del body_or_error
        await self._gate.acquire(parsed.pixels)  # decoded images held at once stay under max_pending_pixels
        future: Future | None = None
        try:
            try:
                decoded = await run_in_threadpool(parsed.decode)
            except PayloadError as error:
                return _error(error.status, str(error))
            except Exception as error:  # e.g. an image codec failure the wire module does not name
                LOG.warning("undecodable images: %s: %s", type(error).__name__, error)
                return _error(400, f"bad image: {type(error).__name__}: {error}")
            future = self.batcher.submit(decoded)
            del decoded
            scores = await asyncio.wait_for(asyncio.wrap_future(future), self.request_timeout)
        except asyncio.TimeoutError:
            return _error(503, f"reward {self.reward_name!r} did not finish within {self.request_timeout:g} s")
        except RewardError as error:  # already names the reward and the fix
            return _error(422, str(error))
        except DATA_ERRORS as error:
            return _error(
                422, f"reward {self.reward_name!r} could not score this request: {type(error).__name__}: {error}"
            )
        except Exception as error:
            LOG.exception("reward %s failed", self.reward_name)
            return _error(500, f"reward {self.reward_name!r} failed: {type(error).__name__}: {error}")
        finally:
            if future is not None and not future.done():
                future.cancel()
            await self._gate.release(parsed.pixels)
        return JSONResponse({"scores": [float(s) for s in scores], "reward": self.reward_name})

    async def _read_body(self, request: Request) -> bytes | Response:
        """The body, or the error answer: 413 over ``max_request_bytes`` (from Content-Length when given, else
        while streaming), 408 when it takes longer than ``read_timeout`` seconds."""
        limit = self.max_request_bytes
        too_large = (
            "oversized request: {} bytes exceeds this server's limit of {} bytes; send fewer images per request "
            "(the remote reward splits its batches by the limit /health reports) or restart the server with a "
            "larger --max-request-mb"
        )
        declared = request.headers.get("content-length")  # h11 has checked it is ASCII digits
        close = {"Connection": "close"}
        if declared is not None and int(declared) > limit:
            # read and drop the body (nothing kept, up to 256 MiB) so that the client reads the 413, not a reset
            await self._drain(request, min(int(declared), 256 * 1024 * 1024))
            return _error(413, too_large.format(declared, limit), headers=close)
        chunks: list[bytes] = []
        size = 0
        try:
            with anyio.fail_after(self.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        return _error(413, too_large.format(f"more than {limit}", limit), headers=close)
                    chunks.append(chunk)
        except TimeoutError:
            return _error(408, f"the request body took longer than {self.read_timeout:g} s to arrive", headers=close)
        except ClientDisconnect:
            return _error(400, "the client disconnected before sending its whole body", headers=close)
        return b"".join(chunks)

    async def _drain(self, request: Request, cap: int) -> None:
        size = 0
        try:
            with anyio.fail_after(self.read_timeout):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size >= cap:
                        return
        except (TimeoutError, ClientDisconnect):
            return


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); OSError when the address is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4] if host else ("", port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)  # several trainer processes connect at once
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def reward_label(spec: Any) -> str:
    """A short name for a reward spec: ``"ocr"`` or ``"1 * ocr + 0.5 * compositional"``."""
    if isinstance(spec, str):
        return spec
    return " + ".join(f"{weight:g} * {name}" for name, weight in dict(spec).items())
