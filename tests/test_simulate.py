"""Simulated users: what a judge says becomes the API's own feedback; prompts rarely repeat."""

from __future__ import annotations

import random

import pytest

from trainer.simulate import deal_prompts, rating_body


def test_every_shape_a_judge_may_rate_in_becomes_a_ratings_body():
    assert rating_body("up") == {"thumb": "up"}
    assert rating_body(("down", "too_long")) == {"thumb": "down", "reason": "too_long"}
    assert rating_body(4) == {"stars": 4}
    assert rating_body({"stars": 2, "comment": "meh"}) == {"stars": 2, "comment": "meh"}
    assert rating_body(None) is None and rating_body("") is None
    with pytest.raises(ValueError, match="stars 1-5"):
        rating_body(2.5)


def test_prompts_are_dealt_in_shuffled_rounds_without_repeats_inside_a_round():
    deck = [f"q{i}" for i in range(10)]
    dealt = deal_prompts(deck, 25, random.Random(0))
    assert len(dealt) == 25 and sorted(dealt[:10]) == sorted(deck) and sorted(dealt[10:20]) == sorted(deck)
    assert dealt[:10] != deck  # shuffled
    assert deal_prompts(deck, 25, random.Random(0)) == dealt
