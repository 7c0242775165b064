"""A chosen style is adopted only where the golden set holds under it, in content and length
(trainer/adoption.py)."""

from trainer.adoption import adopt
from trainer.curation.golden import GoldenItem
from trainer.styles import ChosenStyle

GOLDEN = [GoldenItem("What is the capital of France?", "Paris is the capital of France."),
          GoldenItem("How many days are there in a leap year?", "A leap year has 366 days.")]
SYSTEM = "You are a helpful assistant."
FACTS = {item.prompt: item.answer for item in GOLDEN}


def style(name: str, instruction: str) -> ChosenStyle:
    return ChosenStyle(name, instruction, won=8, lost=1, probability=0.99)


WARM, SIMPLE = style("warm", "Be warm."), style("simple", "Use simple words.")
QUESTION = style("question", "End by asking a question.")


class Scripted:
    """The active release as a script: the reference answer, except under "Be warm." (it babbles,
    as SmolLM2-135M did) and under "End by asking a question." (a word and a question, as
    SmolLM2-135M's answers halved). Every conversation it is asked is kept."""

    def __init__(self) -> None:
        self.asked: list[list[dict]] = []

    def __call__(self, prompts: list[list[dict]]) -> list[str]:
        self.asked += prompts
        return [self.answer(messages[-1]["content"]) for messages in prompts]

    @staticmethod
    def answer(text: str) -> str:
        question = text.split("\n\n")[0]
        if "Be warm." in text:
            return "Bonjour, welcome to a wonderful day of learning, my friend!"
        if "End by asking a question." in text:
            return FACTS[question].split()[0] + " Why?"
        return FACTS[question]


def test_a_style_that_costs_the_facts_is_not_adopted_and_the_next_chosen_one_is():
    answer = Scripted()
    adopted, trials = adopt([WARM, SIMPLE], 1, None, GOLDEN, SYSTEM, answer, max_drop=0.05, max_length_drift=0.5)

    assert adopted == [SIMPLE]
    warm, simple = trials
    assert (warm.style, warm.holds, warm.adopted) == ("warm", False, False) and warm.rouge_l_drop > 0.5
    assert (simple.style, simple.holds, simple.adopted) == ("simple", True, True) and simple.rouge_l_drop == 0
    # Asked once: the golden prompts plainly, then under each style, system prompt first.
    assert [m[-1]["content"] for m in answer.asked] == [
        *FACTS, *(f"{q}\n\nBe warm." for q in FACTS), *(f"{q}\n\nUse simple words." for q in FACTS)]
    assert all(m[0] == {"role": "system", "content": SYSTEM} for m in answer.asked)


def test_styles_are_checked_on_top_of_the_active_release_instruction():
    answer = Scripted()
    adopted, trials = adopt([SIMPLE], 1, "Be warm.", GOLDEN, SYSTEM, answer, max_drop=0.05, max_length_drift=0.5)

    # Measured against the active release as users get it, under its own instruction: that one
    # already babbles, so "simple" on top of it loses nothing more and is adopted.
    assert adopted == [SIMPLE] and trials[0].holds and trials[0].rouge_l_drop == 0
    assert answer.asked[0][-1]["content"] == f"{GOLDEN[0].prompt}\n\nBe warm."
    assert answer.asked[2][-1]["content"] == f"{GOLDEN[0].prompt}\n\nBe warm.\nUse simple words."


def test_at_most_the_asked_number_is_adopted_and_none_when_none_is_asked():
    adopted, trials = adopt([WARM, SIMPLE], 1, None, GOLDEN, SYSTEM, Scripted(), max_drop=1.0, max_length_drift=9.0)
    assert adopted == [WARM] and [(t.holds, t.adopted) for t in trials] == [(True, True), (True, False)]

    answer = Scripted()
    assert adopt([SIMPLE], 0, None, GOLDEN, SYSTEM, answer, max_drop=1.0, max_length_drift=9.0) == ([], [])
    assert adopt([], 1, None, GOLDEN, SYSTEM, answer, max_drop=1.0, max_length_drift=9.0) == ([], [])
    assert answer.asked == []  # nothing to check, nothing answered


def test_a_style_that_halves_the_answers_is_not_adopted_though_their_words_still_match():
    adopted, trials = adopt([QUESTION, SIMPLE], 1, None, GOLDEN, SYSTEM, Scripted(), max_drop=1.0,
                            max_length_drift=0.5)

    assert adopted == [SIMPLE]
    question = trials[0]
    assert (question.holds, question.adopted) == (False, False) and question.length_drift < -0.5
    assert trials[1].length_drift == 0 and trials[1].holds

    # Within a looser bound it holds: the length is what refused it, not the words.
    adopted, _ = adopt([QUESTION], 1, None, GOLDEN, SYSTEM, Scripted(), max_drop=1.0, max_length_drift=0.9)
    assert adopted == [QUESTION]
