"""The one web app: an app factory with shared middleware, one base template, one stylesheet and
the static files, and a router per area. `serve` (the predict page and API) and `studio`
(projects, photos, audit, training, evaluation, export, ...) are both made by `create_app`.

    app = create_app([Area("predict", router)], title="catsdogs-classifier", max_upload_mb=20)

An Area is one part of the app: an APIRouter with its API and pages, and, for the studio's
project page, optionally a tab (a template fragment in templates/tabs/ and a script in static/;
see studio.py). Pages are Jinja2 templates that extend templates/base.html (autoescaped: a
hostile name in a template is text); everything the pages show from the server is set with
textContent by their scripts.

Middleware, outermost first:
  SecurityHeaders  every response may run only the app's own script and show only its own images
  Guard            (studio) the Host header must name this server (DNS rebinding); with a token,
                   every request must carry it (cookie set by opening the printed address, or an
                   X-Token header)
  UploadLimit      a request body over the limit is refused with 413 before it is read whole
Every error is JSON: {"error": one line}; a ClassifierError raised by a route is a 400 (or its
class's `status`: 404 for something missing, 409 for a conflict).
State-changing routes depend on `changes_state`: same origin (the page) or the token (a program).
"""

from __future__ import annotations

import hmac
import ipaddress
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlencode

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from classifier.errors import ClassifierError

STATIC = Path(__file__).with_name("static")
TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
TOKEN_COOKIE = "studio_token"
TOKEN_HEADER = "x-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
SECURITY_HEADERS = [  # the page runs only its own script and shows only its own and local images
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                 b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass
class Area:
    """One part of the app: its router and, on the studio's project page, its tab (a template
    fragment templates/tabs/NAME.html, a script static/NAME.js; `tab` is the tab's title)."""

    name: str
    router: APIRouter
    tab: str = ""
    scripts: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- middleware


class BodyTooLarge(Exception):
    """A request body over the upload limit: answered 413."""


class UploadLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413 before they are read
    whole; by the Content-Length header when there is one, else by counting as the body arrives
    (the exception stops the form parser, and the app's handler answers 413)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await error_response(413, self.message())(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.message())
            return message

        await self.app(scope, counted, send)

    def message(self) -> str:
        return f"request body over the {self.limit / 2**20:g} MB limit (--max-upload-mb); send fewer or smaller photos"


class SecurityHeaders:
    """ASGI middleware: every response carries SECURITY_HEADERS (no script but the page's own)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def is_loopback(host: str) -> bool:
    """Whether an address (or "localhost") is only reachable from this machine."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: who may ask. Without a token (a server on 127.0.0.1) the Host header
    must be a loopback name, so a web page whose domain was made to resolve to 127.0.0.1 (DNS
    rebinding) gets nothing. With a token (a server on another address) every request carries
    it: a GET with ?token=... sets it as a cookie (HttpOnly, SameSite=Strict) and redirects to
    the same address without it; programs send the X-Token header."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if self.token is None:
            host = (request.url.hostname or "")
            if not is_loopback(host):
                return await error_response(403, f"this server answers only at 127.0.0.1, not at {host!r}")(
                    scope, receive, send)
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        if request.method == "GET" and valid_token(query.get("token"), self.token):
            rest = urlencode({k: v for k, v in query.items() if k != "token"})
            response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        if not has_token(request, self.token):
            return await error_response(401, "this server needs its token: open the address it printed at "
                                             "start (…/?token=…), or send the X-Token header")(scope, receive, send)
        await self.app(scope, receive, send)


def valid_token(given: str | None, token: str | None) -> bool:
    return bool(given and token and hmac.compare_digest(given.encode(), token.encode()))


def has_token(request: Request, token: str | None) -> bool:
    return valid_token(request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE), token)


def changes_state(request: Request) -> None:
    """A route dependency: a request that changes something must come from the app's own page
    (its Origin header is this server) or carry the token; a page elsewhere cannot make the
    browser do it (cross-site request forgery)."""
    if request.method in SAFE_METHODS:
        return
    origin, host = request.headers.get("origin"), request.headers.get("host")
    if origin and host and origin.split("://", 1)[-1] == host:
        return
    if not has_token(request, request.app.state.token):
        raise HTTPException(403, "refused: a request that changes something must come from the studio's own "
                                 "page or carry the token (X-Token header)")


def error_response(status: int, message: str) -> JSONResponse:
    """Every error the API gives: {"error": one line}."""
    return JSONResponse({"error": message}, status_code=status)


# --------------------------------------------------------------------------- the app


def create_app(areas: list[Area], title: str, max_upload_mb: float = 20, token: str | None = None,
               guard: bool = False, require_token: bool = False, lifespan: Callable | None = None) -> FastAPI:
    """The ASGI app: every area's router over the shared middleware, error handling and
    static files. token: what programs send to change things (changes_state); guard: add Guard,
    which checks the Host header or, with require_token, the token on every request."""
    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.token, app.state.areas = token, areas
    app.add_middleware(UploadLimit, limit=int(max_upload_mb * 2**20))
    if guard:
        app.add_middleware(Guard, token=token if require_token else None)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(BodyTooLarge, lambda request, error: error_response(413, str(error)))
    app.add_exception_handler(ClassifierError, lambda request, error: error_response(getattr(error, "status", 400),
                                                                                      str(error)))
    app.add_exception_handler(HTTPException, lambda request, error: error_response(error.status_code, str(error.detail)))
    app.add_exception_handler(RequestValidationError, lambda request, error: error_response(
        422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for area in areas:
        app.include_router(area.router)
    return app


def page(request: Request, template: str, **context):
    """A page: templates/TEMPLATE (extending base.html) rendered with `context`, autoescaped."""
    return TEMPLATES.TemplateResponse(request, template, context)


# --------------------------------------------------------------------------- serving


class Stopped(Exception):
    """SIGTERM or Ctrl-C outside uvicorn's own handling (while loading, or re-raised by uvicorn
    after its graceful shutdown): the server has stopped cleanly."""


def _stop(signum, frame):
    raise Stopped()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so that port 0 works and the address
    printed is the real one. Its protocol is IPPROTO_TCP, not 0: asyncio turns Nagle's
    algorithm off (TCP_NODELAY) only on connections of such sockets; left on, every response
    waited 40 ms for the client's delayed acknowledgement."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        return sock
    except OSError as error:
        raise ClassifierError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


def address(sock: socket.socket) -> str:
    """http://HOST:PORT of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def run(app: FastAPI, sock: socket.socket, access_log: bool = True) -> None:
    """Serve `app` on `sock` with uvicorn until Ctrl-C or SIGTERM (graceful: 5 s for requests)."""
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def until_stopped(serve: Callable[..., int], *args) -> int:
    """serve(*args) with SIGTERM and Ctrl-C turned into a clean stop (exit status 0)."""
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return serve(*args)
    except Stopped:
        print("stopped", file=sys.stderr)
        return 0
    finally:  # a caller in the same process (a test) gets its own handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)
