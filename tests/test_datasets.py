"""The held-out split: by prompt (near copies included) and by time, with no leakage."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from feedback.export import Row
from trainer.datasets import jaccard, normalize, prompt_groups, split_rows, trigrams

BASE = datetime(2026, 11, 1, tzinfo=timezone.utc)
TOPICS = ["boil an egg", "reverse a list in python", "plant tomatoes", "write a resignation letter",
          "convert miles to km", "train a puppy to sit", "explain photosynthesis", "budget for a holiday",
          "fix a leaking tap", "learn spanish verbs", "summarise the french revolution", "speed up a sql query"]


def rows() -> list[Row]:
    rng = random.Random(7)
    out = []
    for day, topic in enumerate(TOPICS):
        # Each topic is asked several ways: exact repeats, case and punctuation changes, a typo.
        for variant in (f"How do I {topic}?", f"how do i {topic}", f"How do I {topic}??", f"How do I {topic}s?"):
            when = BASE + timedelta(days=day, minutes=rng.randint(0, 600))
            if variant.endswith("s?"):
                when -= timedelta(days=6)  # the near copy was asked a week earlier
            out.append(Row({"prompt": [{"role": "user", "content": variant}]}, "comparison", variant, when))
    rng.shuffle(out)
    return out


def test_no_prompt_nor_a_near_copy_is_on_both_sides():
    split = split_rows(rows(), holdout_fraction=0.25, threshold=0.8)
    assert split.train and split.held_out
    for held in split.held_out:
        for trained in split.train:
            similarity = jaccard(trigrams(held.prompt_text), trigrams(trained.prompt_text))
            assert similarity < 0.8, (held.prompt_text, trained.prompt_text)
            assert normalize(held.prompt_text) != normalize(trained.prompt_text)


def test_the_newest_feedback_is_held_out():
    all_rows = rows()
    split = split_rows(all_rows, holdout_fraction=0.25, threshold=0.8)
    groups = dict(zip((id(r) for r in all_rows), prompt_groups([r.prompt_text for r in all_rows], 0.8)))
    newest = {}
    for row in all_rows:
        newest[groups[id(row)]] = max(newest.get(groups[id(row)], row.created_at), row.created_at)
    # Whole prompt groups are held out, newest first: every held-out group is newer than every trained one.
    assert min(newest[groups[id(r)]] for r in split.held_out) > max(newest[groups[id(r)]] for r in split.train)
    assert max(all_rows, key=lambda r: r.created_at) in split.held_out
    assert abs(len(split.held_out) - 0.25 * len(all_rows)) <= 4


def test_without_near_copy_grouping_the_same_rows_would_leak():
    # The check above is not vacuous: grouping by exact text only puts variants on both sides.
    split = split_rows(rows(), holdout_fraction=0.25, threshold=1.01)
    held = {normalize(r.prompt_text) for r in split.held_out}
    trained = {normalize(r.prompt_text) for r in split.train}
    leaks = [(h, t) for h in held for t in trained if jaccard(trigrams(h), trigrams(t)) >= 0.8]
    assert leaks
