"""Langfuse scores on traces: from its public API, or from a JSON file of the same shapes.

Scores (`GET /api/public/v2/scores`, or `/api/public/scores` on older servers) name a trace; the
trace (`GET /api/public/traces/{id}`) holds the input and output they judge. How a score becomes
feedback here:

- BOOLEAN, or NUMERIC -1/1: a thumb (1 up; 0 or -1 down);
- NUMERIC 1-5 in whole numbers: stars; NUMERIC between 0 and 1: stars on the same scale;
- CATEGORICAL: a thumb when its value says so ("good", "positive", "thumbs_up", ...);
- anything else is skipped (counted), as is a trace whose input has no user message.

A file is `{"scores": [...], "traces": [...]}`, or a list of traces each with its `scores`
(what `GET /api/public/traces/{id}` answers).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx

from feedback.importers import Imported, ImportedAnswer, ImportFormatError
from store.models import Thumb

SOURCE = "langfuse"
UP = {"good", "positive", "thumbs_up", "thumbsup", "up", "yes", "correct", "helpful", "true", "1"}
DOWN = {"bad", "negative", "thumbs_down", "thumbsdown", "down", "no", "incorrect", "unhelpful", "false", "0", "-1"}


def read(document: object) -> Iterator[Imported]:
    scores, traces = _split(document)
    for score in scores:
        trace = traces.get(score.get("traceId"))
        item = _item(score, trace) if trace else None
        if item is not None:
            yield item


def fetch(host: str, public_key: str, secret_key: str, *, page_size: int = 100) -> dict:
    """Every score and the traces they name, from a Langfuse server's public API."""
    with httpx.Client(base_url=host.rstrip("/"), auth=(public_key, secret_key), timeout=60) as api:
        scores = _pages(api, "/api/public/v2/scores", page_size) or _pages(api, "/api/public/scores", page_size)
        traces = []
        for trace_id in sorted({s["traceId"] for s in scores if s.get("traceId")}):
            response = api.get(f"/api/public/traces/{trace_id}")
            if response.status_code == 404:
                continue
            response.raise_for_status()
            traces.append(response.json())
    return {"scores": scores, "traces": traces}


def _pages(api: httpx.Client, path: str, page_size: int) -> list[dict]:
    rows, page = [], 1
    while True:
        response = api.get(path, params={"page": page, "limit": page_size})
        if response.status_code == 404 and page == 1:
            return []  # this server has no such route: try the other
        response.raise_for_status()
        body = response.json()
        rows += body.get("data", [])
        if page >= (body.get("meta") or {}).get("totalPages", page):
            return rows
        page += 1


def _split(document: object) -> tuple[list[dict], dict[str, dict]]:
    if isinstance(document, dict) and "scores" in document:
        traces = document.get("traces") or []
        return list(document["scores"]), {t["id"]: t for t in traces if isinstance(t, dict) and "id" in t}
    if isinstance(document, list) and all(isinstance(t, dict) and "id" in t for t in document):
        scores = [dict(s, traceId=t["id"]) for t in document for s in t.get("scores") or [] if isinstance(s, dict)]
        return scores, {t["id"]: t for t in document}
    raise ImportFormatError('a Langfuse file is {"scores": [...], "traces": [...]} or a list of traces with scores')


def _item(score: dict, trace: dict) -> Imported | None:
    thumb, stars = _feedback(score)
    prompt, answer = _messages(trace.get("input")), _text(trace.get("output"))
    if (thumb is None and stars is None) or not prompt or prompt[-1]["role"] != "user" or not answer:
        return None
    created = _when(score.get("timestamp") or trace.get("timestamp"))
    rated = ImportedAnswer(answer, (trace.get("metadata") or {}).get("model") if isinstance(trace.get("metadata"), dict)
                           else None, thumb, None, score.get("comment") or None, stars)
    user = str(trace.get("userId") or score.get("authorUserId") or "unknown")
    return Imported(SOURCE, str(score.get("id")), user, prompt, [rated], created_at=created)


def _feedback(score: dict) -> tuple[Thumb | None, int | None]:
    kind, value = (score.get("dataType") or "NUMERIC").upper(), score.get("value")
    if kind == "CATEGORICAL":
        word = str(score.get("stringValue") or value or "").strip().lower()
        return (Thumb.up if word in UP else Thumb.down if word in DOWN else None), None
    if not isinstance(value, (int, float)):
        return None, None
    if kind == "BOOLEAN" or (value in (-1, 1) and not _looks_like_stars(score)):
        return (Thumb.up if value >= 1 else Thumb.down), None
    if 1 <= value <= 5 and float(value).is_integer():
        return None, int(value)
    if 0 <= value <= 1:
        return None, 1 + round(4 * value)
    return None, None


def _looks_like_stars(score: dict) -> bool:
    return any(word in str(score.get("name", "")).lower() for word in ("star", "rating"))


def _messages(value: object) -> list[dict[str, str]]:
    """A trace's input as chat messages: a string, OpenAI-style messages, or an object holding them."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        for key in ("messages", "input", "prompt", "question", "query"):
            if key in value:
                return _messages(value[key])
        return []
    if isinstance(value, list):
        return [{"role": m["role"], "content": _text(m.get("content"))} for m in value
                if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and _text(m.get("content"))]
    return []


def _text(value: object) -> str:
    """A trace's output (or a message's content) as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if "choices" in value and value["choices"]:
            return _text(value["choices"][0].get("message"))
        for key in ("content", "output", "text", "answer", "completion"):
            if key in value:
                return _text(value[key])
    if isinstance(value, list):  # content parts
        return "".join(part.get("text", "") for part in value if isinstance(part, dict))
    return ""


def _when(stamp: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None
