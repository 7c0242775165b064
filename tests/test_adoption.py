"""A chosen style is adopted only where the golden set's facts and the length of users' answers
hold under it (trainer/adoption.py)."""

from datetime import datetime, timezone

from feedback.export import Row
from trainer.adoption import adopt, length_prompts
from trainer.curation.golden import GoldenItem
from trainer.data import TrainingData
from trainer.datasets import Split
from trainer.gate import GateThresholds
from trainer.styles import ChosenStyle

GOLDEN = [GoldenItem("What is the capital of France?", "Paris is the capital of France."),
          GoldenItem("How many days are there in a leap year?", "A leap year has 366 days.")]
SYSTEM = "You are a helpful assistant."
FACTS = {item.prompt: item.answer for item in GOLDEN}
TEA = "Tea is brewed from the leaves of one evergreen shrub and drunk hot or cold all over the world."
USERS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me about tea."}]]
GATE = GateThresholds(max_golden_drop=0.05, max_length_drift=0.5)
WHEN = datetime(2026, 11, 20, tzinfo=timezone.utc)


def style(name: str, instruction: str) -> ChosenStyle:
    return ChosenStyle(name, instruction, won=8, lost=1, probability=0.99)


WARM, SIMPLE = style("warm", "Be warm."), style("simple", "Use simple words.")
QUESTION = style("question", "End by asking a question.")


class Scripted:
    """The active release as a script, after what SmolLM2-135M did: under "Be warm." it babbles;
    under "End by asking a question." it keeps its facts but answers users in a few words. Every
    conversation it is asked is kept."""

    def __init__(self) -> None:
        self.asked: list[list[dict]] = []

    def __call__(self, prompts: list[list[dict]]) -> list[str]:
        self.asked += prompts
        return [self.answer(messages[-1]["content"]) for messages in prompts]

    @staticmethod
    def answer(text: str) -> str:
        prompt = text.split("\n\n")[0]
        if "Be warm." in text:
            return "Bonjour, welcome to a wonderful day of learning, my friend!"
        if "End by asking a question." in text:
            return FACTS.get(prompt, "Tea? Why do you ask?")
        return FACTS.get(prompt, TEA)


def test_a_style_that_costs_the_facts_is_not_adopted_and_the_next_chosen_one_is():
    answer = Scripted()
    adopted, trials = adopt([WARM, SIMPLE], 1, None, GOLDEN, USERS, SYSTEM, answer, GATE)

    assert adopted == [SIMPLE]
    warm, simple = trials
    assert (warm.style, warm.holds, warm.adopted) == ("warm", False, False) and warm.rouge_l_drop > 0.5
    assert (simple.style, simple.holds, simple.adopted) == ("simple", True, True)
    assert simple.rouge_l_drop == 0 and simple.length_drift == 0
    # Asked once: the golden prompts and the users' plainly, then under each style, system prompt first.
    plain = [*FACTS, "Tell me about tea."]
    assert [m[-1]["content"] for m in answer.asked] == [
        *plain, *(f"{q}\n\nBe warm." for q in plain), *(f"{q}\n\nUse simple words." for q in plain)]
    assert all(m[0] == {"role": "system", "content": SYSTEM} for m in answer.asked)


def test_a_style_that_shrinks_users_answers_is_not_adopted_though_the_facts_hold():
    adopted, trials = adopt([QUESTION, SIMPLE], 1, None, GOLDEN, USERS, SYSTEM, Scripted(), GATE)

    assert adopted == [SIMPLE]
    question = trials[0]
    assert question.rouge_l_drop == 0 and question.length_drift < -0.5
    assert (question.holds, question.adopted) == (False, False)

    # Within a looser bound it holds: the length refused it, nothing else.
    loose = GateThresholds(max_golden_drop=0.05, max_length_drift=0.9)
    assert adopt([QUESTION], 1, None, GOLDEN, USERS, SYSTEM, Scripted(), loose)[0] == [QUESTION]
    # Without users' prompts the length is the golden set's, which "question" barely changes.
    adopted, trials = adopt([QUESTION], 1, None, GOLDEN, [], SYSTEM, Scripted(), GATE)
    assert adopted == [QUESTION] and trials[0].length_drift == 0


def test_styles_are_checked_on_top_of_the_active_release_instruction():
    answer = Scripted()
    adopted, trials = adopt([SIMPLE], 1, "Be warm.", GOLDEN, [], SYSTEM, answer, GATE)

    # Measured against the active release as users get it, under its own instruction: that one
    # already babbles, so "simple" on top of it loses nothing more and is adopted.
    assert adopted == [SIMPLE] and trials[0].holds and trials[0].rouge_l_drop == 0
    assert answer.asked[0][-1]["content"] == f"{GOLDEN[0].prompt}\n\nBe warm."
    assert answer.asked[2][-1]["content"] == f"{GOLDEN[0].prompt}\n\nBe warm.\nUse simple words."


def test_at_most_the_asked_number_is_adopted_and_none_when_none_is_asked():
    anything = GateThresholds.open()
    adopted, trials = adopt([WARM, SIMPLE], 1, None, GOLDEN, USERS, SYSTEM, Scripted(), anything)
    assert adopted == [WARM] and [(t.holds, t.adopted) for t in trials] == [(True, True), (True, False)]

    answer = Scripted()
    assert adopt([SIMPLE], 0, None, GOLDEN, USERS, SYSTEM, answer, anything) == ([], [])
    assert adopt([], 1, None, GOLDEN, USERS, SYSTEM, answer, anything) == ([], [])
    assert answer.asked == []  # nothing to check, nothing answered


def test_length_is_measured_on_a_seeded_draw_of_training_prompts_never_held_out_ones():
    def rows(texts: list[str]) -> list[Row]:
        return [Row({"prompt": [{"role": "user", "content": text}]}, "prompt", text, WHEN) for text in texts]

    training = [f"training question {i}" for i in range(40)]
    empty = Split([], [])
    data = TrainingData({"dpo": empty, "kto": empty, "sft": empty,
                         "prompts": Split(rows(training), rows(["held-out question"]))}, since=None)

    drawn = length_prompts(data, SYSTEM, seed=3, most=32)
    assert len(drawn) == 32 and all(m[0] == {"role": "system", "content": SYSTEM} for m in drawn)
    texts = [m[-1]["content"] for m in drawn]
    assert set(texts) < set(training) and len(set(texts)) == 32
    assert texts == [m[-1]["content"] for m in length_prompts(data, SYSTEM, seed=3, most=32)]
    assert texts != [m[-1]["content"] for m in length_prompts(data, SYSTEM, seed=4, most=32)]
