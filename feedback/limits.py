"""Rate limits per client on what anyone can call without an account: new sessions and chat turns.

The `limits` library's moving window, in memory by default (one process) or in Redis
(`TUNELOOP_RATE_LIMIT_STORAGE=redis://host:6379`, shared by every replica). A client over its
limit gets 429 with `Retry-After` (seconds until the window lets it in again) and a message
that says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from fastapi import HTTPException, Request
from limits import RateLimitItem, parse, storage, strategies


class RateLimits:
    def __init__(self, rules: dict[str, str], storage_uri: str = "memory://") -> None:
        """`rules`: name -> "30/minute" (limits' notation); an empty rule means no limit."""
        self.rules: dict[str, RateLimitItem] = {name: parse(rule) for name, rule in rules.items() if rule}
        self.limiter = strategies.MovingWindowRateLimiter(storage.storage_from_string(storage_uri))

    def hit(self, name: str, client: str) -> float | None:
        """None if the client may go on, else the seconds until it may."""
        rule = self.rules.get(name)
        if rule is None or self.limiter.hit(rule, name, client):
            return None
        reset = self.limiter.get_window_stats(rule, name, client).reset_time
        return max(1.0, reset - time.time())


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def limited(name: str) -> Callable[[Request], None]:
    """A dependency: 429 with Retry-After once this client is over the `name` limit."""

    def check(request: Request) -> None:
        limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
        wait = limits.hit(name, client_of(request)) if limits else None
        if wait is not None:
            rule = limits.rules[name]
            raise HTTPException(429, f"Too many {name} from this client (at most {rule}); "
                                     f"retry after {math.ceil(wait)} s",
                                headers={"Retry-After": str(math.ceil(wait))})

    return check
