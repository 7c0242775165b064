"""Judges: `judge(prompt, answer_a, answer_b) -> "a" | "b" | "tie" | "both_bad"`, loaded by "module:function".

"both_bad" (neither answer is any good) counts as a tie wherever releases are compared; simulated
users send it as that A/B verdict. A judge may also carry a `rate(prompt, answer)` attribute,
which simulated users use for single answers: "up" / "down" / None, ("down", reason), stars 1-5
as an int, or a dict of the ratings API's fields.

The built-in judges encode one clear, learnable preference each, for simulated users and
for benchmarks; real deployments use people, a reward model, or their own judge.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Literal

Verdict = Literal["a", "b", "tie", "both_bad"]
Judge = Callable[[str, str, str], Verdict]


def load_judge(spec: str) -> Judge:
    """Import `module:function`, with a message that says what is wrong if it can't."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a judge is given as module:function, such as trainer.judges:concise (got {spec!r})")
    try:
        judge = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load judge {spec!r}: {error}") from error
    if not callable(judge):
        raise ValueError(f"judge {spec!r} is not callable")
    return judge


def words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def concise(prompt: str, answer_a: str, answer_b: str) -> Verdict:
    """Prefers the clearly shorter answer (by at least a fifth); otherwise a tie."""
    a, b = words(answer_a), words(answer_b)
    if a < 0.8 * b:
        return "a"
    if b < 0.8 * a:
        return "b"
    return "tie"


def _rate_concise(prompt: str, answer: str) -> str | None:
    count = words(answer)
    return "up" if 0 < count <= 25 else "down" if count > 50 else None


concise.rate = _rate_concise  # type: ignore[attr-defined]
