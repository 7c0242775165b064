"""A panel of simulated users' preferences, each of a different kind, for `bench/learning.py`.

Each judge meets `trainer.judges.Judge`: `judge(prompt, answer_a, answer_b)` returns "a", "b",
"tie", or "both_bad" (neither answer has what this user wants), and carries a `rate(prompt,
answer)` for the thumbs a user gives a single answer. They live with the benchmarks, not in
the product: a deployment learns its own users' preferences, whatever they are, and the loop
is judged on the worst of these, not the best.

Most are a trait a user wants to see (a question back, an example, a list, ...), found with a
plain pattern so the verdict is reproducible: one answer has it and the other not is a win,
both is a tie, neither is "both bad". How often the base model's own answers have each trait
is measured on every recording by `bench/learning.py` and given in bench/README.md; a trait
the base already shows in most answers is left out, since no candidate could win much against
it (with a binary trait the win rate is about 0.5 + (candidate's rate - base rate) / 2).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from trainer.judges import concise, words

Trait = Callable[[str], bool]
PANEL: dict[str, Callable] = {}  # name -> judge, in the order the bench reports them


def _trait_judge(name: str, kind: str, has: Trait, doc: str) -> Callable:
    def judge(prompt: str, answer_a: str, answer_b: str) -> str:
        a, b = has(answer_a), has(answer_b)
        if a != b:
            return "a" if a else "b"
        return "tie" if a else "both_bad"

    def rate(prompt: str, answer: str) -> str:
        return "up" if has(answer) else "down"

    judge.__name__ = judge.__qualname__ = name
    judge.__doc__ = doc
    judge.rate, judge.has, judge.kind = rate, has, kind  # type: ignore[attr-defined]
    PANEL[name] = judge
    return judge


_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.MULTILINE)
_EXAMPLE = re.compile(r"\b(?:for example|for instance|e\.g\.)", re.IGNORECASE)
_EXPERT = re.compile(r"\b(?:consult|professional|doctor|expert|specialist|seek (?:help|advice))", re.IGNORECASE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def _ends_with_question(text: str) -> bool:
    return text.rstrip().rstrip("*_\"')").endswith("?")


asks_back = _trait_judge("asks_back", "form", _ends_with_question,
                         "Wants the answer to end by asking the user a question back.")
example = _trait_judge("example", "content", lambda text: bool(_EXAMPLE.search(text)),
                       "Wants a concrete example, introduced as one ('for example', 'for instance', 'e.g.').")
cautious = _trait_judge("cautious", "safety style", lambda text: bool(_EXPERT.search(text)),
                        "Wants to be pointed to a professional or an expert (consult a doctor, seek advice).")
enthusiastic = _trait_judge("enthusiastic", "tone", lambda text: "!" in text,
                            "Wants an enthusiastic tone: at least one exclamation.")
bold = _trait_judge("bold", "form", lambda text: bool(_BOLD.search(text)),
                    "Wants the key terms in bold (Markdown **...**).")
listed = _trait_judge("listed", "form", lambda text: len(_LIST_ITEM.findall(text)) >= 3,
                      "Wants the answer as a list of at least three items (bullets or numbers).")


def thorough(prompt: str, answer_a: str, answer_b: str) -> str:
    """Prefers the clearly longer answer (by at least a quarter): the opposite of `concise`."""
    a, b = words(answer_a), words(answer_b)
    if a > 1.25 * b:
        return "a"
    if b > 1.25 * a:
        return "b"
    return "tie"


def _rate_thorough(prompt: str, answer: str) -> str | None:
    count = words(answer)
    return "up" if count >= 120 else "down" if count < 60 else None


thorough.rate, thorough.kind = _rate_thorough, "length"  # type: ignore[attr-defined]
PANEL["thorough"] = thorough
PANEL["concise"] = concise
