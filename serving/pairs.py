"""How the two answers of an A/B pair are made different enough to be worth a user's click.

Two samples of one model at one temperature are usually alike: a user who prefers some trait
that the model shows in one answer of twenty then calls most pairs a tie, and a tie teaches
nothing. So, on an A/B turn, the first answer is made exactly as a single turn's (what users
get when they see one answer) and the second is a *contrast*: the same conversation with one
style instruction, drawn at random from `CONTRASTS`, appended to the user's last message where
only the model sees it, sampled a little hotter. The instruction is kept in the second
answer's trace (`contrast`); the stored conversation and every training row built from it
hold the user's own words only, so what the users prefer of the contrasts is learned as the
model's own unprompted behaviour.

The instructions span the axes along which people's preferences about answers differ (length,
layout, tone, what is included, how it opens and closes). On the embedded SmolLM2-135M, an
instruction in the user's message moved its trait more than one in the system prompt did
(for "keep the answer short": 46 words against 78, plain answers 139), so it goes there.
`bench/learning.py` measures the pair yield (choices with a winner / choices) each strategy
gives across a panel of simulated users.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["contrast", "samples"]
STRATEGIES: tuple[str, ...] = ("contrast", "samples")

# name -> the instruction the model reads after the user's message
CONTRASTS: dict[str, str] = {
    "brief": "Keep the answer short: two or three sentences.",
    "detailed": "Give a detailed, thorough answer.",
    "bullets": "Format the answer as a bulleted list.",
    "steps": "Give the answer as numbered steps.",
    "paragraph": "Write the answer as one flowing paragraph, without any lists.",
    "summary_first": "Begin with a one-sentence summary, then explain.",
    "warm": "Use a warm, friendly, encouraging tone.",
    "formal": "Use a formal, neutral tone.",
    "simple": "Use simple words that a child could understand.",
    "example": "Include a concrete example.",
    "caveat": "Mention a caveat or a safety note.",
    "why": "Explain the reasoning behind the answer.",
    "question": "End by asking the user a follow-up question.",
    "tip": "End with one practical tip.",
}
CONTRAST_TEMPERATURE_STEP = 0.3  # more varied than the plain answer, still coherent at 1.0 (0.7 + 0.3)


@dataclass(frozen=True)
class Contrast:
    name: str
    instruction: str

    def messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The conversation with the instruction after the user's last message."""
        return instructed(messages, self.instruction)

    @property
    def heat(self) -> float:
        """How much hotter than the turn's temperature the contrast is sampled (capped at 1.2)."""
        return CONTRAST_TEMPERATURE_STEP

    def trace(self) -> dict[str, str]:
        return {"contrast": self.name, "contrast_instruction": self.instruction}


def instructed(messages: list[dict[str, str]], instruction: str | None) -> list[dict[str, str]]:
    """The conversation with `instruction` after the user's last message, where only the model
    reads it (a contrast's, or the one a release answers under: serving/routing.py)."""
    if not instruction or not messages or messages[-1]["role"] != "user":
        return messages
    *earlier, last = messages
    return [*earlier, {**last, "content": f"{last['content']}\n\n{instruction}"}]


def draw_contrast(strategy: str, rng: random.Random | None = None) -> Contrast | None:
    """The second answer's contrast for `strategy` ("samples": none, two plain samples)."""
    if strategy == "samples":
        return None
    if strategy != "contrast":
        raise ValueError(f"unknown A/B strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    name = (rng or random).choice(sorted(CONTRASTS))
    return Contrast(name, CONTRASTS[name])
