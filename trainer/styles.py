"""The contrast styles users chose, and the model taught to write that way unprompted.

Each A/B turn pairs the plain answer with a *contrast*: the same conversation with one style
instruction only the model sees (serving/pairs.py), its name kept in the answer's trace. So
every choice on such a pair is also a vote on a style: the contrast won, lost, tied, or both
were bad. A trait the base model shows in one answer of twenty leaves a night a handful of
pairs with a winner, too few for DPO or KTO to move what users see (bench/README.md); but
when users keep choosing the answers written under one instruction, that instruction is the
lesson, and the model can write as many examples of it as the night has prompts.

So the active release answers the night's training prompts twice, with the chosen
instruction appended (as serving did for the contrasts) and without it, and DPO learns to
prefer the first over the second with the user's words alone: the trait becomes the model's
own behaviour. That is RLCD (Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive
Distillation"), with the contrast taken from what users chose instead of written by hand; a
preference pair, not SFT on the styled answers (context distillation), because a greedy answer
changes only where the trait becomes the likeliest token, which a pair's difference teaches
directly. The answers are on-policy (the model users get today wrote them) and come from
training prompts only, never held-out ones.

The night's top chosen style is also adopted as it stands (`release_instruction`): the
candidate answers under its instruction, so users see the style even where the weights have
not learned it yet.

A style counts as chosen when its contrasts won most decisive choices with confidence
(`preferred`): the posterior probability that they win more often than they lose, from a
uniform prior, reaches `distill_confidence`, over at least `distill_min_wins` wins.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlmodel import Session, col, select

from feedback.export import Row
from serving.pairs import CONTRASTS, Contrast
from store.models import Comparison, Message, Response, Winner
from trainer.datasets import normalize, with_system

OUTCOMES = ("won", "lost", "tied", "both_bad")  # of the contrast answer, against the plain one


def tally(session: Session, since: datetime | None, held_out_prompts: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per contrast style, how its answers fared in users' A/B choices (new since `since`),
    leaving out prompts held out for evaluation."""
    query = select(Comparison).where(Comparison.kind == "contrast")
    if since is not None:
        query = query.where(Comparison.updated_at > since)
    comparisons = session.exec(query).all()
    ids = {i for c in comparisons for i in (c.response_a_id, c.response_b_id)}
    responses = {r.id: r for r in session.exec(select(Response).where(col(Response.id).in_(ids)))} if ids else {}
    prompt_ids = {r.prompt_message_id for r in responses.values()}
    prompts = {m.id: m.content for m in session.exec(select(Message).where(col(Message.id).in_(prompt_ids)))} \
        if prompt_ids else {}
    held = {normalize(text) for text in held_out_prompts}
    counts: dict[str, Counter] = defaultdict(Counter)
    for comparison in comparisons:
        a, b = responses[comparison.response_a_id], responses[comparison.response_b_id]
        styled = a if "contrast" in a.trace else b if "contrast" in b.trace else None
        if styled is None or normalize(prompts.get(a.prompt_message_id, "")) in held:
            continue
        counts[styled.trace["contrast"]][_outcome(comparison.winner, styled is a)] += 1
    return {name: {outcome: found[outcome] for outcome in OUTCOMES} for name, found in sorted(counts.items())}


def _outcome(winner: Winner, styled_is_a: bool) -> str:
    if winner == Winner.tie:
        return "tied"
    if winner == Winner.both_bad:
        return "both_bad"
    return "won" if (winner == Winner.a) == styled_is_a else "lost"


def win_probability(won: int, lost: int) -> float:
    """P(the style wins more decisive choices than it loses | won, lost), uniform prior: for a
    Beta(won+1, lost+1) posterior that is P(Binomial(won+lost+1, 1/2) <= won), exactly."""
    n = won + lost + 1
    return sum(math.comb(n, k) for k in range(won + 1)) / 2**n


@dataclass(frozen=True)
class ChosenStyle:
    name: str
    instruction: str
    won: int
    lost: int
    probability: float  # that its contrasts win more often than they lose

    def describe(self) -> str:
        return f"'{self.name}' (won {self.won}, lost {self.lost}: P(preferred) {self.probability:.2f})"


def preferred(tallies: dict[str, dict[str, int]], min_wins: int, confidence: float, most: int) -> list[ChosenStyle]:
    """The styles users chose, most net wins first (at most `most`); styles serving no longer
    offers are left out, since their instruction is unknown."""
    chosen = [ChosenStyle(name, CONTRASTS[name], t["won"], t["lost"], win_probability(t["won"], t["lost"]))
              for name, t in tallies.items() if name in CONTRASTS]
    chosen = [style for style in chosen if style.won >= min_wins and style.probability >= confidence]
    return sorted(chosen, key=lambda style: (style.won - style.lost, style.won), reverse=True)[:most]


def assign(prompts: list[list[dict]], styles: list[ChosenStyle], seed: int = 0) -> list[tuple[list[dict], ChosenStyle]]:
    """Each prompt with the style it is answered in, styles sharing prompts by their net wins."""
    weights = [style.won - style.lost for style in styles]
    draw = random.Random(seed)
    return [(prompt, draw.choices(styles, weights)[0]) for prompt in prompts]


def styled_messages(prompt: list[dict], style: ChosenStyle, system_prompt: str) -> list[dict]:
    """The conversation as serving wrote the style's contrast: the instruction after the user's
    last message."""
    return Contrast(style.name, style.instruction).messages(with_system(prompt, system_prompt))


def contrast_pair(prompt: list[dict], prompt_text: str, style: ChosenStyle, styled: str, plain: str) -> Row:
    """A DPO row: the user's own words; the answer written under the style's instruction chosen
    over the one written without it."""
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": styled}],
           "rejected": [{"role": "assistant", "content": plain}]}
    return Row(row, f"distilled:{style.name}", prompt_text, datetime.now(timezone.utc))


# A release answers under at most this many (the newest): a small model follows one or two
# instructions, not a list (only one at a time has been measured, bench/README.md).
MOST_INSTRUCTIONS = 3


def release_instruction(active: str | None, adopted: list[ChosenStyle]) -> str | None:
    """The instruction a candidate answers under: the active release's, with the adopted
    styles' added. A night's contrasts were the active release's answers under one more
    instruction each, so a style users chose won *together with* the active one's; a night
    that adopts none keeps the active one's, or its candidate would drop what users chose before."""
    lines = [line for line in (active or "").splitlines() if line.strip()]
    lines += [style.instruction for style in adopted if style.instruction not in lines]
    return "\n".join(lines[-MOST_INSTRUCTIONS:]) or None
