"""HTTP plumbing for the whole app: error bodies per route family, and the body size cap.

The one place where the store's domain errors (store/errors.py) become responses.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedback.redaction import RedactionUnavailable
from serving.engine import EngineError, EngineRefused
from serving.errors import openai_error, openai_validation_error
from serving.routing import NoActiveRelease
from store.errors import StoreError

log = logging.getLogger(__name__)
UNREADABLE_BODY = "There was an error parsing the body"


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def _readable(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body",))
    return f"{where}: {error.get('msg')}" if where else str(error.get("msg"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        if _is_openai(request):
            return openai_validation_error(error)
        errors = json.loads(json.dumps(error.errors(), default=str))
        message = "; ".join(_readable(e) for e in errors)
        return JSONResponse({"detail": message, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == UNREADABLE_BODY:  # FastAPI's words for bytes, not JSON
            error = StarletteHTTPException(400, "The request body is not JSON (UTF-8): send a JSON object")
        if _is_openai(request):  # the headers too: a 405's Allow, a 429's Retry-After
            return openai_error(error.status_code, str(error.detail), headers=error.headers)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(StoreError)
    async def _refused(request: Request, error: StoreError) -> JSONResponse:
        """NotFound, Conflict, ... from the store and the feedback domain: the status each stands for."""
        if _is_openai(request):
            return openai_error(error.status_code, error.detail)
        return JSONResponse({"detail": error.detail}, status_code=error.status_code)

    @app.exception_handler(RedactionUnavailable)
    async def _not_stored(request: Request, error: RedactionUnavailable) -> JSONResponse:
        message = "The personal-data check could not run, so nothing was stored; retry (with the same Idempotency-Key)"
        if _is_openai(request):
            return openai_error(503, message)
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NoActiveRelease)
    async def _unavailable(request: Request, error: NoActiveRelease) -> JSONResponse:
        if _is_openai(request):
            return openai_error(503, str(error))
        return JSONResponse({"detail": str(error)}, status_code=503)

    @app.exception_handler(EngineError)
    async def _engine_down(request: Request, error: EngineError) -> JSONResponse:
        """The engine could not answer (every vLLM replica down, or it refused): a 503 that says so."""
        if isinstance(error, EngineRefused):
            message = f"The model refused the request: {error}"
            return openai_error(400, message) if _is_openai(request) else JSONResponse({"detail": message}, 400)
        log.warning("the engine could not answer %s: %s", request.url.path, error)
        message = f"The model could not answer: {error}. Retry shortly."
        if _is_openai(request):
            return openai_error(503, message, headers={"Retry-After": "5"})
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        if _is_openai(request):
            return openai_error(500, "internal server error")
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def document_errors(app: FastAPI) -> None:
    """The OpenAPI schema as the handlers above answer: validation errors as `ErrorOut`
    (FastAPI documents its own list shape), none on /v1 (a 400 in OpenAI's shape there), and the
    body cap's 413 on every route that takes a body."""
    from fastapi.openapi.utils import get_openapi

    from feedback.protocol import ErrorOut, WHY

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema["components"]["schemas"]["HTTPValidationError"] = ErrorOut.model_json_schema(
            ref_template="#/components/schemas/{model}")
        schema["components"]["schemas"].pop("ValidationError", None)
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                if path.startswith("/v1/"):
                    responses.pop("422", None)
                elif "requestBody" in operation:  # a body that is not JSON, and one over the cap
                    for status in ("400", "413"):
                        responses.setdefault(status, {"description": WHY[int(status)], "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, declared or streamed (chunked).

    FastAPI's own `max_body_size` answers a declared oversize body with a plain-text
    "Content Too Large": no limit named, and not in OpenAI's shape on /v1. Hence this.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                return await self._refuse(scope, receive, send)
            return await self.app(scope, receive, send)  # the server holds the body to its declared length
        body, more = b"", True
        while more:  # chunked: buffer (it is small, or refused) so we can refuse before the app runs
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"Request body is larger than {self.max_bytes} bytes; send less"
        if scope["path"].startswith("/v1/"):
            response = openai_error(413, message, code="request_too_large")
        else:
            response = JSONResponse({"detail": message}, status_code=413)
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect, as a server would

    return replay
