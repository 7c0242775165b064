"""Datasets in TRL's own formats, one JSON object per line (what `tuneloop export` writes):

- preference: {"prompt", "chosen", "rejected"}, as text or as conversations, or with the
  prompt implicit in two whole conversations {"chosen": [...], "rejected": [...]};
- unpaired preference: {"prompt", "completion", "label"} (KTO's): a thumb up or down;
- language modelling / SFT: {"messages": [..., assistant]} or {"prompt", "completion"}: an ideal
  answer, stored as a correction (it trains SFT, and pairs nothing).

Rows carry no ids, so a row's id is a hash of its content: the same row twice is stored once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from feedback.importers import Imported, ImportedAnswer, ImportFormatError, row_id
from store.models import Thumb, Winner

SOURCE = "trl"


def read(lines: Iterable[str], name: str = "dataset") -> Iterator[Imported]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ImportFormatError(f"{name} line {number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ImportFormatError(f"{name} line {number}: a JSON object per line")
        yield _row(row, f"{name} line {number}")


def _row(row: dict, where: str) -> Imported:
    key, user = row_id(row), str(row.get("user") or row.get("user_id") or "dataset")
    if "chosen" in row and "rejected" in row:
        prompt, chosen, rejected = _pair(row, where)
        return Imported(SOURCE, key, user, prompt, [ImportedAnswer(chosen), ImportedAnswer(rejected)], winner=Winner.a)
    if "label" in row and "completion" in row:
        thumb = Thumb.up if _truthy(row["label"], where) else Thumb.down
        return Imported(SOURCE, key, user, _prompt(row.get("prompt"), where),
                        [ImportedAnswer(_answer(row["completion"], where), thumb=thumb)])
    if "messages" in row or "completion" in row:
        if "messages" in row:
            messages = _conversation(row["messages"], where)
            prompt, ideal = messages[:-1], _answer(messages[-1:], where)
        else:
            prompt, ideal = _prompt(row.get("prompt"), where), _answer(row["completion"], where)
        return Imported(SOURCE, key, user, prompt, [ImportedAnswer(ideal)], correction=ideal)
    raise ImportFormatError(f"{where}: not a TRL row (preference, unpaired preference or messages); "
                            f"its keys are {sorted(row)}")


def _pair(row: dict, where: str) -> tuple[list[dict[str, str]], str, str]:
    if "prompt" in row:
        return _prompt(row["prompt"], where), _answer(row["chosen"], where), _answer(row["rejected"], where)
    chosen, rejected = _conversation(row["chosen"], where), _conversation(row["rejected"], where)
    if chosen[:-1] != rejected[:-1]:
        raise ImportFormatError(f"{where}: an implicit prompt needs chosen and rejected to differ in the last message only")
    return chosen[:-1], _answer(chosen[-1:], where), _answer(rejected[-1:], where)


def _prompt(value: object, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return _conversation(value, where)


def _answer(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    messages = _conversation(value, where)
    if messages[-1]["role"] != "assistant":
        raise ImportFormatError(f"{where}: an answer must be the assistant's")
    return messages[-1]["content"]


def _conversation(value: object, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in value):
        raise ImportFormatError(f"{where}: expected a list of messages with role (system, user, assistant) and content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _truthy(label: object, where: str) -> bool:
    if isinstance(label, bool):
        return label
    raise ImportFormatError(f"{where}: 'label' must be true or false")
