"""The per-user cap: no one person more than a share of a dataset, by water-filling."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from feedback.export import Row
from trainer.curation.base import StepReport


def cap_per_user(rows: Sequence[Row], max_share: float) -> tuple[list[Row], StepReport]:
    """Drop the oldest rows of whoever is in more than `max_share` of the rows (a row with
    several users, such as a pair from two people's ratings, counts for each).

    The cap is one number of rows per person, fixed before anything is dropped: the largest
    count c such that c is at most `max_share` of what would be left if everyone kept at most
    c rows (water-filling). So dropping one person's excess never lowers the bar for the rest,
    and a small dataset loses only its heaviest users' excess, never everything. When the
    people are too few for anyone to be under `max_share` (three reviewers can't all be under
    20%; six people whose every row names two of them can't either), the cap is an even share.
    Deterministic: the user furthest over goes first (lowest id on ties), and among equally
    old rows the earliest listed.
    """
    counts: Counter[int] = Counter()
    oldest_first: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        for user in set(row.user_ids):
            counts[user] += 1
            oldest_first[user].append(i)
    cap = _water_fill(counts, max_share, sum(counts.values()) / len(rows) if rows else 1.0)
    for indices in oldest_first.values():
        indices.sort(key=lambda i: (rows[i].created_at, i), reverse=True)  # pop() = oldest
    kept, dropped_by = [True] * len(rows), Counter()
    while counts:
        user, count = min(counts.items(), key=lambda uc: (-uc[1], uc[0]))
        if count <= cap:
            break
        i = oldest_first[user].pop()
        while not kept[i]:
            i = oldest_first[user].pop()
        kept[i] = False
        dropped_by[user] += 1
        for other in set(rows[i].user_ids):
            counts[other] -= 1
    out = [row for row, keep in zip(rows, kept) if keep]
    return out, StepReport("user_cap", len(rows) - len(out), {"by_user": dict(sorted(dropped_by.items())),
                                                               "cap": cap})


def _water_fill(counts: Counter[int], max_share: float, users_per_row: float) -> int:
    """The most rows one person may keep: the largest c with c <= share * rows kept at cap c."""
    if not counts:
        return 0
    share = max(max_share, users_per_row / len(counts))  # an even share when people are too few

    def rows_kept(cap: int) -> float:
        return sum(min(n, cap) for n in counts.values()) / users_per_row

    cap = 1
    while cap < max(counts.values()) and cap + 1 <= share * rows_kept(cap + 1) + 1e-9:
        cap += 1
    return cap
