"""``create_app(store)``: the FastAPI application serving the Moreh REST API from one state store."""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moreh_tools import __version__
from moreh_tools.api.errors import (
    BACKEND,
    CODE_HEADER,
    NOT_FOUND,
    SYNTAX,
    ApiError,
    error_body,
    error_status,
    from_state_error,
)
from moreh_tools.api.params import BODY_PARAMS_KEY, param_specs
from moreh_tools.api.ratelimit import RateLimiter
from moreh_tools.api.read_cache import ReadCache
from moreh_tools.api.routes import ROUTER_MODULES
from moreh_tools.api.tokens import TokenCache
from state.errors import StateError

if TYPE_CHECKING:
    from moreh_tools.daemon.hub import JobHub
    from state.store import StateStore

MAX_BODY_BYTES = 1 << 20
_BODY_METHODS = (b"POST", b"PUT", b"DELETE", b"PATCH")


def error_response(error: ApiError) -> JSONResponse:
    """The response for ``error``: the documented body, its status, ``X-Moreh-Code`` and extra headers."""
    headers = {CODE_HEADER: str(error.code), **error.headers}
    return JSONResponse(error_body(error.code, error.message), status_code=error_status(error), headers=headers)


class BodyParamsMiddleware:
    """Parses a JSON object or form body of POST/PUT/DELETE into ``scope[BODY_PARAMS_KEY]`` for ``param``.

    The Moreh API passes every parameter in the query string (``curl -d ''``); a body is the cheap extra. The body
    is buffered (at most 1 MiB) and replayed to the endpoint unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer and parse the body when there is one to parse, then call the app.

        Every HTTP request's URL must be UTF-8 once its escapes are decoded (400 otherwise: never read with
        U+FFFD in place of the bad bytes).
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from moreh_tools.api.guards import utf8_problem

        bad = utf8_problem(scope)
        if bad is not None:
            refusal = f"SyntaxError. The request's {bad} is not UTF-8 text once its %-escapes are decoded."
            await error_response(ApiError(SYNTAX, refusal))(scope, receive, send)
            return
        if scope["method"].encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await error_response(ApiError(SYNTAX, "SyntaxError. The request body is over 1 MiB.", 413))(
                    scope, receive, send
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        try:
            scope[BODY_PARAMS_KEY] = _parse_body(raw, _content_type(scope))
        except ApiError as exc:
            await error_response(exc)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_type(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return str(value.decode("latin-1").split(";")[0].strip().lower())
    return ""


def _parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    if content_type == "application/json" or content_type.endswith("+json"):
        from moreh_tools.api.guards import MAX_JSON_DEPTH, json_too_deep

        if json_too_deep(raw):
            raise ApiError(SYNTAX, f"SyntaxError. The request body nests deeper than {MAX_JSON_DEPTH} levels.")
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested beyond reason
            raise ApiError(
                SYNTAX, "SyntaxError. The request body is not valid JSON; send a JSON object or nothing."
            ) from None
        if not isinstance(parsed, dict):
            raise ApiError(SYNTAX, "SyntaxError. The request body must be a JSON object.")
        return parsed
    if content_type == "application/x-www-form-urlencoded":
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise ApiError(SYNTAX, "SyntaxError. The form body is not UTF-8.") from None
    return {}


def _install_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_state_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StateError)
        return error_response(from_state_error(exc))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        names = sorted({str(e.get("loc", ("", "?"))[-1]) for e in exc.errors()})
        return error_response(ApiError(SYNTAX, f"SyntaxError. Check parameter(s): {', '.join(names)}."))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            error = ApiError(NOT_FOUND, f"No endpoint {request.url.path}; see /docs for the list.", 404)
        elif exc.status_code == 405:
            error = ApiError(SYNTAX, f"{request.method} is not allowed on {request.url.path}; see /docs.", 405)
        else:
            error = ApiError(SYNTAX, str(exc.detail), exc.status_code)
        return error_response(error)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not bad input: the client gets one line, the server log keeps the traceback.
        message = f"Internal error ({type(exc).__name__}); the server log has the details."
        return error_response(ApiError(BACKEND, message, 500))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StateError, on_state_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


def _uses_auth(route: APIRoute) -> bool:
    from moreh_tools.api.auth import authenticate

    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        if dependency.call is authenticate:
            return True
        stack.extend(dependency.dependencies)
    return False


def _install_openapi(app: FastAPI, api_routes: list[APIRoute]) -> None:
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <token>"},
            "apikey": {"type": "apiKey", "in": "query", "name": "apikey", "description": "?apikey=<token>"},
        }
        error_schema = {
            "type": "object",
            "properties": {"code": {"type": "integer"}, "details": {"type": "string"}},
            "required": ["code", "details"],
        }
        schema["components"].setdefault("schemas", {})["ErrorResponse"] = error_schema
        for route in api_routes:  # the routers' own routes: app.routes nests included routers
            if not route.include_in_schema:
                continue
            specs = param_specs(route.endpoint)
            for method in route.methods or ():
                operation = schema["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                declared = {p["name"] for p in operation.get("parameters", [])}
                extra = [s.openapi() for s in specs if s.name not in declared]
                if extra:
                    operation["parameters"] = operation.get("parameters", []) + extra
                responses = operation.setdefault("responses", {})
                for code, text in (("400", "600: missing or malformed parameter"), ("404", "601: not found")):
                    responses.setdefault(
                        code,
                        {
                            "description": text,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                        },
                    )
                if _uses_auth(route):
                    operation["security"] = [{"bearer": []}, {"apikey": []}]
                    responses.setdefault("401", {"description": "601: missing or unknown token"})
                    responses.setdefault("429", {"description": "rate limit exceeded; see Retry-After"})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(store: StateStore, hub: JobHub, *, host: str, machine_id: str, owner_uid: int) -> FastAPI:
    """The application for ``store``: every route module, the tools' op endpoint, error handlers, body parsing,
    rate limit, OpenAPI.

    ``hub`` wakes long polls; ``host`` and ``machine_id`` are this machine's (jobs running here are ended
    here); ``owner_uid`` is the daemon's user, whose processes (and root's) own the state over the socket.
    """
    app = FastAPI(
        title="SDAManager REST API (moreh-tools)",
        version=__version__,
        description=(
            "The Moreh SDA Manager API: parameters go in the query string (also on POST/PUT/DELETE); "
            "authenticate with 'Authorization: Bearer <token>' or '?apikey=<token>'. Errors: 600 syntax, "
            "601 invalid token or not found, 602 back-end error, 603 ipmitool, 604 signal."
        ),
        openapi_url="/openapi.json",
        docs_url=None,  # FastAPI's Swagger page loads its scripts from a CDN; ours works offline
        redoc_url=None,
    )
    app.state.store = store
    app.state.hub = hub
    app.state.host = host
    app.state.machine_id = machine_id
    app.state.owner_uid = owner_uid
    app.state.token_cache = TokenCache()
    app.state.read_cache = ReadCache()
    app.state.rate_limiter = RateLimiter.from_env()
    app.state.report_limiter = RateLimiter.for_reports()
    app.state.started = time.time()
    routers: list[APIRouter] = []
    for name in ROUTER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A route module still being written must not take the rest of the API down with it (development
            # only: tests check that every documented endpoint is served).
            if exc.name == name and os.environ.get("MOREH_API_STRICT") != "1":
                continue
            raise
        routers.append(module.router)
    from moreh_tools.api import metrics

    routers.append(metrics.router)
    for router in routers:
        app.include_router(router)
    from moreh_tools.api.ops import op_endpoint
    from moreh_tools.port.ops import OP_PATH

    app.add_route(OP_PATH + "{name}", op_endpoint, methods=["POST"], include_in_schema=False)
    from moreh_tools.api.docs_page import DOCS_PATH, docs_page

    app.add_route(DOCS_PATH, docs_page, methods=["GET"], include_in_schema=False)
    _install_handlers(app)
    _install_openapi(app, [r for router in routers for r in router.routes if isinstance(r, APIRoute)])
    app.add_middleware(BodyParamsMiddleware)
    return app
