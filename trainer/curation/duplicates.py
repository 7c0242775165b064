"""Exact and near duplicates: the newest of each kept."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from feedback.export import Row
from trainer.curation.base import StepReport
from trainer.datasets import jaccard, linked_groups, normalize, prompt_groups, trigrams


def _answers(row: Row) -> list[str]:
    """The row's answer texts by role in the format: chosen/rejected, completion, or the SFT target."""
    data = row.data
    if "chosen" in data:
        return [_text(data["chosen"]), _text(data.get("rejected", []))]
    if "completion" in data:
        return [_text(data["completion"])]
    if "messages" in data:
        return [_text(data["messages"][-1:])]
    return []


def _text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m.get("content", "")) for m in messages)


def _prompt_key(row: Row) -> str:
    data = row.data
    messages = data.get("prompt") or data.get("messages", [])[:-1]
    return normalize(_text(messages) if messages else row.prompt_text)


def _shape(row: Row) -> tuple:
    """Rows of one shape can be duplicates: the same fields, and the same thumb if any."""
    return tuple(sorted(k for k in row.data if k != "weight")), row.data.get("label")


def exact_key(row: Row) -> tuple:
    return _shape(row), _prompt_key(row), *map(normalize, _answers(row))


def _newest(rows: Sequence[Row], indices: Sequence[int]) -> int:
    return max(indices, key=lambda i: (rows[i].created_at, i))


def drop_duplicates(rows: Sequence[Row], near_threshold: float = 0.9) -> tuple[list[Row], StepReport]:
    """Exact duplicates (same normalised prompt and answers, same label or preference order),
    then near duplicates: prompts at least `near_threshold` similar (trigram Jaccard, grouped as
    the held-out split groups them) whose every answer is too. The newest of each cluster stays."""
    clusters: dict[tuple, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        clusters[exact_key(row)].append(i)
    survivors = sorted(_newest(rows, members) for members in clusters.values())
    exact = len(rows) - len(survivors)

    groups = prompt_groups([_prompt_key(rows[i]) for i in survivors], near_threshold)
    by_group: dict[tuple, list[int]] = defaultdict(list)
    for group, i in zip(groups, survivors):
        by_group[(group, _shape(rows[i]))].append(i)
    keep: list[int] = []
    for members in by_group.values():
        keep.extend(_newest_per_near_cluster(rows, members, near_threshold))
    keep.sort()
    near = len(survivors) - len(keep)
    return [rows[i] for i in keep], StepReport("duplicates", exact + near, {"exact": exact, "near": near})


def _newest_per_near_cluster(rows: Sequence[Row], members: list[int], threshold: float) -> list[int]:
    shingles = [[trigrams(a) for a in _answers(rows[i])] for i in members]

    def near(x: int, y: int) -> bool:
        return all(jaccard(a, b) >= threshold for a, b in zip(shingles[x], shingles[y]))

    clusters: dict[int, list[int]] = defaultdict(list)
    for i, group in zip(members, linked_groups(len(members), near)):
        clusters[group].append(i)
    return [_newest(rows, c) for c in clusters.values()]
