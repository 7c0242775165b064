"""Calls to Slack's Web API that never take the service down.

Rate limits and dropped connections are retried by the client's retry handlers
(`app.py`); what still fails (a deleted channel, a message too long) is logged with the
method and Slack's error code, and counted, and the caller goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)
failures: Counter[str] = Counter()  # by "method: error", for the logs' readers and the tests


async def call(client: AsyncWebClient, method: str, **arguments: Any) -> dict | None:
    """`client.<method>(**arguments)`'s data, or None after logging why it failed."""
    try:
        response = await client.api_call(method, json=arguments)
        return response.data if isinstance(response.data, dict) else {}
    except SlackApiError as error:
        code = error.response.get("error", "unknown") if error.response is not None else "unknown"
        failures[f"{method}: {code}"] += 1
        log.error("Slack %s failed: %s (channel %s)", method, code, arguments.get("channel", "-"))
    except Exception as error:  # network trouble the retry handlers gave up on
        failures[f"{method}: {type(error).__name__}"] += 1
        log.error("Slack %s failed: %s", method, error)
    return None
