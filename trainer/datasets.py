"""Training and held-out datasets from the store, split so nothing leaks between them.

The split is by prompt: a prompt and its near copies form one group, and a group lies
wholly on one side. It is also by time: the groups with the newest feedback are held
out, so evaluation looks like tomorrow's traffic rather than yesterday's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from datasets import Dataset

from feedback.export import Row


def normalize(prompt: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", prompt.lower())).strip()


def with_system(messages: list[dict], system_prompt: str) -> list[dict]:
    """A conversation as serving answers it: with a system turn (the given one, unless it has one)."""
    return messages if messages[0]["role"] == "system" else [{"role": "system", "content": system_prompt}, *messages]


def trigrams(text: str) -> set[str]:
    text = f"  {normalize(text)} "
    return {text[i : i + 3] for i in range(len(text) - 2)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else float(a == b)


def linked_groups(count: int, linked: Callable[[int, int], bool]) -> list[int]:
    """A group id per item 0..count-1: items linked directly or through others share one.

    Union-find over every pair, which is quadratic: fine for a night's few thousand items
    (MinHash would take over beyond that). The one place both prompt grouping and curation's
    near-duplicate clusters get their groups from.
    """
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(count):
        for j in range(i + 1, count):
            if root(i) != root(j) and linked(i, j):
                parent[root(j)] = root(i)
    return [root(i) for i in range(count)]


def prompt_groups(prompts: Sequence[str], threshold: float) -> list[int]:
    """A group id per prompt; prompts at least `threshold` similar (trigram Jaccard) share one."""
    distinct = sorted({normalize(p) for p in prompts})
    shingles = [trigrams(p) for p in distinct]
    groups = linked_groups(len(distinct), lambda i, j: jaccard(shingles[i], shingles[j]) >= threshold)
    group_of = dict(zip(distinct, groups))
    return [group_of[normalize(p)] for p in prompts]


def unasked(candidates: Sequence[str], asked: Sequence[str], threshold: float = 0.8, seed: int = 0) -> list[str]:
    """The candidates whose prompt group holds none of `asked` (nor a near copy), in a seeded
    shuffle: prompts nobody trained on, spread over whatever order the candidates came in."""
    import random

    groups = prompt_groups([*candidates, *asked], threshold)
    taken = set(groups[len(candidates):])
    fresh = [text for text, group in zip(candidates, groups) if group not in taken]
    random.Random(seed).shuffle(fresh)
    return fresh


@dataclass
class Split:
    train: list[Row]
    held_out: list[Row]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "held_out": len(self.held_out)}


def split_rows(rows: Sequence[Row], holdout_fraction: float, threshold: float) -> Split:
    """Hold out whole prompt groups, newest first, until `holdout_fraction` of rows is held out."""
    if not rows:
        return Split([], [])
    groups = prompt_groups([r.prompt_text for r in rows], threshold)
    members: dict[int, list[Row]] = {}
    for group, row in zip(groups, rows):
        members.setdefault(group, []).append(row)
    newest_first = sorted(members.values(), key=lambda rs: max(r.created_at for r in rs), reverse=True)
    target = holdout_fraction * len(rows)
    held_out: list[Row] = []
    train: list[Row] = []
    for group_rows in newest_first:
        # Always keep at least one group for training, and hold out at least one if asked to.
        wanted = len(held_out) < target and (len(newest_first) > 1 or holdout_fraction >= 1)
        (held_out if wanted else train).extend(group_rows)
    return Split(train, held_out)


def split_kinds(rows_by_kind: dict[str, Sequence[Row]], holdout_fraction: float, threshold: float,
                unlabelled: Sequence[str] = ("prompts",)) -> dict[str, Split]:
    """One split for every kind of data at once, so a prompt held out for one kind (pairs) is
    not trained on through another (thumbs, corrections, logged prompts). The held-out groups
    are chosen on the labelled kinds; `unlabelled` kinds follow whatever side their group is on."""
    labelled = [row for kind, rows in rows_by_kind.items() if kind not in unlabelled for row in rows]
    everything = [row for rows in rows_by_kind.values() for row in rows]
    groups = dict(zip(map(id, everything), prompt_groups([r.prompt_text for r in everything], threshold)))
    chosen = split_rows(labelled, holdout_fraction, threshold)
    held_groups = {groups[id(row)] for row in chosen.held_out}
    splits = {}
    for kind, rows in rows_by_kind.items():
        held = [row for row in rows if groups[id(row)] in held_groups]
        splits[kind] = Split([row for row in rows if groups[id(row)] not in held_groups], held)
    return splits


def to_dataset(rows: Sequence[Row]) -> Dataset:
    # Curation's dispute weights ride in data["weight"]; TRL's trainers take no weights.
    return Dataset.from_list([{k: v for k, v in row.data.items() if k != "weight"} for row in rows])

