"""Recipes: which stages a night's run trains, and `auto`'s choice from the data at hand.

- `dpo`: DPO on preference pairs (A/B choices, rating gaps, corrections as pairs).
- `kto`: KTO on thumbs, which need no pairing: for nights with thumbs but few pairs.
- `sft+dpo`: SFT on reviewers' corrections first, then DPO from that adapter.
- `rm+grpo`, `rm+ppo`: online RL on logged prompts (rated or not), rewarded by the reward
  model trained this night plus the plugins' reward functions.

`auto` prefers the offline recipes, which learn from people's own labels, and turns to GRPO
only when the reward model has proved itself on held-out pairs and most logged prompts
carry no human feedback at all; the report gives the reason in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import NightlyConfig
from trainer.data import TrainingData
from trainer.datasets import normalize

NEEDS_REWARD_MODEL = ("rm+grpo", "rm+ppo")


@dataclass
class Choice:
    recipe: str | None  # None: too little data, and `reason` says what is missing
    reason: str


def unrated_prompts(data: TrainingData) -> int:
    """Logged training prompts no person has rated, compared, or corrected an answer to."""
    rated = {normalize(row.prompt_text) for kind in ("dpo", "kto", "sft") for row in data.train(kind)}
    return sum(normalize(row.prompt_text) not in rated for row in data.train("prompts"))


def _have(data: TrainingData) -> str:
    return (f"{len(data.new('dpo'))} new pairs, {len(data.new('kto'))} new thumbs, "
            f"{len(data.new('sft'))} new corrections, {len(data.train('prompts'))} logged prompts")


def check(recipe: str, config: NightlyConfig, data: TrainingData) -> str | None:
    """Why `recipe` cannot run on this data, or None when it can."""
    pairs, thumbs, corrections = len(data.new("dpo")), len(data.new("kto")), len(data.new("sft"))
    if recipe in ("dpo", "sft+dpo") and pairs < config.min_pairs:
        return f"{recipe} needs at least {config.min_pairs} new preference pairs ({_have(data)})"
    if recipe == "sft+dpo" and corrections < 1:
        return f"sft+dpo needs new corrections ({_have(data)})"
    if recipe == "kto" and thumbs < config.min_thumbs:
        return f"kto needs at least {config.min_thumbs} new thumbs ({_have(data)})"
    if recipe in NEEDS_REWARD_MODEL:
        if len(data.train("dpo")) < config.min_pairs:
            return f"{recipe} needs at least {config.min_pairs} preference pairs for its reward model ({_have(data)})"
        if len(data.new("prompts")) < config.min_prompts:
            return f"{recipe} needs at least {config.min_prompts} new logged prompts ({_have(data)})"
    return None


def wants_reward_model(recipe: str, config: NightlyConfig, data: TrainingData) -> bool:
    """Whether to train a reward model before the policy: rm+ recipes need one, and with
    enough pairs it also judges candidate against active and orders the reviewers' queue."""
    if recipe in NEEDS_REWARD_MODEL or config.reward_model == "always":
        return True
    return config.reward_model == "auto" and len(data.train("dpo")) >= config.min_pairs


def choose(config: NightlyConfig, data: TrainingData, reward_accuracy: float | None = None) -> Choice:
    """The recipe asked for, if the data allows it; for `auto`, the best the data allows."""
    if config.recipe != "auto":
        problem = check(config.recipe, config, data)
        return Choice(None, f"too little new data: {problem}") if problem else Choice(config.recipe, "asked for")
    pairs, corrections = len(data.new("dpo")), len(data.new("sft"))
    if pairs >= config.min_pairs:
        unrated = unrated_prompts(data)
        trusted = reward_accuracy is not None and reward_accuracy >= config.auto_rl_accuracy
        if trusted and unrated >= max(config.min_prompts, pairs) and not check("rm+grpo", config, data):
            return Choice("rm+grpo", f"the reward model's held-out pair accuracy is {reward_accuracy:.2f} "
                                     f"(≥ {config.auto_rl_accuracy}) and {unrated} logged prompts have no human "
                                     f"feedback against {pairs} new pairs, so GRPO can learn from all of them")
        if corrections >= config.min_corrections:
            return Choice("sft+dpo", f"{corrections} new corrections (≥ {config.min_corrections}) teach reviewers' "
                                     f"own answers first, then DPO learns from {pairs} new pairs")
        return Choice("dpo", f"{pairs} new preference pairs (≥ {config.min_pairs}): DPO learns from them directly"
                             + (f"; {corrections} corrections are too few for an SFT stage "
                                f"(< {config.min_corrections}) and train as pairs" if corrections else ""))
    if not check("kto", config, data):
        return Choice("kto", f"only {pairs} new pairs (< {config.min_pairs}) but {len(data.new('kto'))} new thumbs "
                             f"(≥ {config.min_thumbs}): KTO learns from single thumbs")
    return Choice(None, f"too little new data: {_have(data)}; need at least {config.min_pairs} new preference pairs "
                        f"or {config.min_thumbs} new thumbs")
