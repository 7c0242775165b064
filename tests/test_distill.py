"""Which self-written pairs the `distill` recipe trains on (trainer/distill.py)."""

import pytest

from serving.engine import Completion
from trainer.distill import left_out_because

PLAIN = "Tea is brewed from the leaves of one evergreen shrub, then drunk hot or cold."  # 15 words


def answer(text: str, finish_reason: str = "stop") -> Completion:
    return Completion(text, finish_reason, prompt_tokens=10, completion_tokens=len(text.split()))


@pytest.mark.parametrize(("styled", "reason"), [
    ("Tea is brewed from leaves, my friend: enjoy a warm cup of it today, hot or cold!", None),  # 17 words
    ("Tea is a drink made from leaves. Why do you ask?", None),  # 11 words: -0.27, within ±0.5
    ("Tea? Why do you ask?", "length_changed"),  # a third as long: it would teach brevity, not the style
    (" ".join(["word"] * 40), "length_changed"),  # almost three times as long
])
def test_a_pair_whose_length_says_more_than_its_style_is_left_out(styled, reason):
    assert left_out_because(answer(styled), answer(PLAIN), max_length_drift=0.5) == reason


def test_the_bound_is_the_gates_length_drift_either_way_round():
    short, plain = answer("Tea is a drink made from leaves. Why do you ask?"), answer(PLAIN)
    assert left_out_because(short, plain, max_length_drift=0.2) == "length_changed"  # -0.27
    assert left_out_because(plain, short, max_length_drift=0.5) is None  # +0.36
    assert left_out_because(plain, short, max_length_drift=0.3) == "length_changed"
    assert left_out_because(short, plain, max_length_drift=float("inf")) is None  # the open gate keeps all


@pytest.mark.parametrize("cut", [answer("Tea is brewed from the leaves of", "length"), answer("   ")])
def test_a_pair_with_an_answer_cut_off_or_empty_is_left_out_on_either_side(cut):
    assert left_out_because(cut, answer(PLAIN), max_length_drift=0.5) == "cut_at_cap"
    assert left_out_because(answer(PLAIN), cut, max_length_drift=0.5) == "cut_at_cap"
