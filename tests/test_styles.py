"""The contrast styles users chose (trainer/styles.py), read from a real store as the service
writes A/B choices, and the rows `distill` trains on."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from serving.pairs import CONTRASTS
from store.db import make_engine
from store.migrate import upgrade
from tests.feedback_seed import seed
from trainer import styles
from trainer.datasets import with_system


@pytest.fixture
def database(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine)
    return engine


def test_each_contrast_choice_counts_for_its_style_and_held_out_prompts_do_not(database):
    seed(database, pairs=3, contrasts={"example": (5, 1), "brief": (0, 2)})
    with Session(database) as session:
        counted = styles.tally(session, None, [])
        # The plain A/B pairs (seed's "pairs") carry no style and count for none.
        assert counted == {"brief": {"won": 0, "lost": 2, "tied": 0, "both_bad": 0},
                           "example": {"won": 5, "lost": 1, "tied": 0, "both_bad": 0}}
        # seed asks "How do I <topic>?" in TOPICS order: the 4th to 9th questions were example's.
        held = ["How do I learn spanish verbs?", "how do i BAKE bread"]
        assert styles.tally(session, None, held)["example"]["won"] == 3


def test_the_win_probability_is_the_beta_posteriors_exactly():
    assert styles.win_probability(0, 0) == 0.5
    assert styles.win_probability(3, 0) == 1 - 0.5**4  # Beta(4, 1): 1 - x^4 at 1/2
    assert styles.win_probability(2, 2) == pytest.approx(0.5)
    assert styles.win_probability(9, 1) > 0.99 > styles.win_probability(1, 9) + 0.98


def test_chosen_styles_are_clear_winners_ordered_by_net_wins():
    def counted(won: int, lost: int) -> dict:
        return {"won": won, "lost": lost, "tied": 4, "both_bad": 9}

    tallies = {"example": counted(6, 1), "question": counted(12, 2), "brief": counted(2, 0), "warm": counted(7, 6),
               "retired-style": counted(20, 0)}
    chosen = styles.preferred(tallies, min_wins=3, confidence=0.9, most=3)
    assert [style.name for style in chosen] == ["question", "example"]
    assert chosen[0].instruction == CONTRASTS["question"]
    assert [s.name for s in styles.preferred(tallies, min_wins=3, confidence=0.9, most=1)] == ["question"]


def test_a_distilled_pair_prefers_the_styled_answer_under_the_users_words():
    (example,) = styles.preferred({"example": {"won": 5, "lost": 0}}, 3, 0.9, 3)
    prompt = [{"role": "user", "content": "How do I store basil?"}]
    asked = styles.styled_messages(prompt, example, "Be helpful.")
    assert asked == [{"role": "system", "content": "Be helpful."},
                     {"role": "user", "content": f"How do I store basil?\n\n{CONTRASTS['example']}"}]
    assert with_system(prompt, "Be helpful.") == [asked[0], *prompt]  # the plain answer's conversation
    row = styles.contrast_pair(prompt, "How do I store basil?", example, "In water, for example a jar.", "In water.")
    assert row.data == {"prompt": prompt, "chosen": [{"role": "assistant", "content": "In water, for example a jar."}],
                        "rejected": [{"role": "assistant", "content": "In water."}]}
    assert row.source == "distilled:example" and prompt == [{"role": "user", "content": "How do I store basil?"}]


def test_a_candidate_keeps_the_active_releases_instruction_and_adds_the_adopted_styles():
    from trainer.styles import ChosenStyle, release_instruction

    def chosen(name: str) -> ChosenStyle:
        return ChosenStyle(name, CONTRASTS[name], 9, 1, 0.99)

    assert release_instruction(None, []) is None
    assert release_instruction(None, [chosen("warm")]) == CONTRASTS["warm"]
    assert release_instruction(CONTRASTS["warm"], []) == CONTRASTS["warm"]  # a night without new votes keeps it
    both = release_instruction(CONTRASTS["warm"], [chosen("steps"), chosen("warm")])
    assert both.splitlines() == [CONTRASTS["warm"], CONTRASTS["steps"]]
    four = release_instruction(both, [chosen("tip"), chosen("example")])
    assert four.splitlines() == [CONTRASTS["steps"], CONTRASTS["tip"], CONTRASTS["example"]]  # the newest three
