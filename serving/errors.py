"""Errors in OpenAI's shape, so OpenAI clients raise their usual exceptions."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def openai_validation_error(error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    cause = (first.get("ctx") or {}).get("error")
    if getattr(cause, "param", None):  # a parameter this server does not honour (serving.protocol.NotHonoured)
        return openai_error(400, str(cause), param=cause.param, code="unsupported_parameter")
    if first.get("type") == "extra_forbidden":
        return openai_error(400, f"Unrecognized request argument supplied: {param}", param=param,
                            code="unknown_parameter")
    message = str(first.get("msg")).removeprefix("Value error, ")
    return openai_error(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")
