"""Open WebUI's feedback export (Admin > Evaluations > Feedback > Export, or
`GET /api/v1/evaluations/feedbacks/all/export`): a JSON list of feedback records.

A record rates one assistant message (`meta.message_id`) with a thumb (`data.rating` 1 or -1),
a reason, a comment and a 1-10 score (`data.details.rating`), and carries a snapshot of its chat,
whose message tree gives the prompt: the rated message's ancestors. In arena mode
(`data.sibling_model_ids`) the rated answer was shown beside its siblings (other models'
answers to the same prompt): a thumb up makes it the winner of each pair, a thumb down the loser.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timezone

from feedback.importers import Imported, ImportedAnswer, ImportFormatError
from store.models import Thumb, Winner

SOURCE = "openwebui"


def read(records: object) -> Iterator[Imported]:
    if not isinstance(records, list):
        raise ImportFormatError("an Open WebUI feedback export is a JSON list of feedback records")
    for record in records:
        if isinstance(record, dict) and record.get("type", "rating") == "rating":
            yield from _read_record(record)


def _read_record(record: dict) -> Iterator[Imported]:
    data, meta = record.get("data") or {}, record.get("meta") or {}
    tree = _message_tree(record)
    rated = tree.get(meta.get("message_id") or "")
    if rated is None or rated.get("role") != "assistant" or data.get("rating") not in (1, -1):
        return  # a record without its chat or its message (older exports) has nothing to learn from
    prompt = _ancestors(tree, rated)
    if not prompt or prompt[-1]["role"] != "user":
        return
    created = datetime.fromtimestamp(record["created_at"], timezone.utc) if record.get("created_at") else None
    answer = ImportedAnswer(rated.get("content") or "", rated.get("model"),
                            Thumb.up if data["rating"] == 1 else Thumb.down, data.get("reason") or None,
                            data.get("comment") or None, _stars(data))
    user = str(record.get("user_id") or "unknown")
    yield Imported(SOURCE, str(record.get("id")), user, prompt, [answer], created_at=created)
    if data.get("sibling_model_ids"):
        siblings = [tree[i] for i in _children(tree, rated.get("parentId")) if i != rated.get("id") and i in tree]
        for sibling in siblings:
            other = ImportedAnswer(sibling.get("content") or "", sibling.get("model"))
            yield Imported(SOURCE, f"{record.get('id')}/vs/{sibling.get('id')}", user,
                           prompt, [ImportedAnswer(answer.text, answer.model), other],
                           winner=Winner.a if data["rating"] == 1 else Winner.b, created_at=created)


def _stars(data: dict) -> int | None:
    """Open WebUI's 1-10 score on tuneloop's 1-5 stars (1-2 is one star, 9-10 five)."""
    score = (data.get("details") or {}).get("rating")
    return max(1, min(5, math.ceil(score / 2))) if isinstance(score, (int, float)) and score > 0 else None


def _message_tree(record: dict) -> dict[str, dict]:
    """The snapshot's messages by id: the chat object nests as snapshot.chat.chat.history in
    exports of a stored chat, or snapshot.chat.history / snapshot.history in others."""
    snapshot = record.get("snapshot") or {}
    for holder in (((snapshot.get("chat") or {}).get("chat")), snapshot.get("chat"), snapshot):
        history = (holder or {}).get("history") if isinstance(holder, dict) else None
        if history and history.get("messages"):
            messages = history["messages"]
            listed = messages.values() if isinstance(messages, dict) else messages
            return {m["id"]: m for m in listed if isinstance(m, dict) and "id" in m}
    return {}


def _ancestors(tree: dict[str, dict], message: dict) -> list[dict[str, str]]:
    chain, parent = [], message.get("parentId")
    while parent and parent in tree and len(chain) < 1000:
        chain.append(tree[parent])
        parent = tree[parent].get("parentId")
    return [{"role": m["role"], "content": m.get("content") or ""} for m in reversed(chain)
            if m.get("role") in ("system", "user", "assistant")]


def _children(tree: dict[str, dict], parent_id: str | None) -> list[str]:
    if parent_id is None:
        return []
    return list((tree.get(parent_id) or {}).get("childrenIds") or [])
