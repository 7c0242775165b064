"""What the store and the feedback domain refuse, without speaking HTTP.

Data access raises one of these (or returns a plain value); it never builds a response.
`detail` is the message for the caller: what went wrong and what to do. `status_code` is the
status an HTTP API answers the error with, one per kind, written here once; only the routers'
exception handler (tuneloop/http.py `install_error_handlers`) turns an error into a response,
in the body shape of the route (`{"detail": ...}`, or OpenAI's error object on /v1).
"""

from __future__ import annotations


class StoreError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthenticated(StoreError):
    """The caller's token matches nobody (unknown or revoked)."""

    status_code = 401


class NotFound(StoreError, LookupError):
    """No such thing, or not the caller's (someone else's is as good as unknown)."""

    status_code = 404


class Conflict(StoreError):
    """Does not fit the current state: a key still in use, a release in the wrong state."""

    status_code = 409


class Invalid(StoreError, ValueError):
    """Asks for something malformed or contradictory, such as a key reused for another request."""

    status_code = 422


class Unavailable(StoreError):
    """Nothing was stored this time; the same request (with the same Idempotency-Key) may succeed."""

    status_code = 503
