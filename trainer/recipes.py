"""Recipes: which stages a night's run trains, and `auto`'s choice from the data at hand.

- `distill`: DPO on pairs the active release writes itself, training prompts answered under the
  A/B contrast styles users chose (trainer/styles.py) against plain answers, with the human
  pairs: a trait the base model rarely shows gives few pairs with a winner, but votes on styles.
- `dpo`: DPO (with an SFT term on the chosen answers) on preference pairs: A/B choices,
  rating gaps, corrections against what they corrected.
- `kto`: KTO on every judged answer at once: thumbs, stars, "both bad" verdicts, and each pair
  split into its good and its bad answer (`trainer.kto`). For nights where single verdicts are
  most of the feedback, as at the default A/B share.
- `sft+dpo`, `sft+kto`: SFT on reviewers' corrections first, then DPO or KTO from that adapter.
- `rm+grpo`, `rm+ppo`: online RL on logged prompts (rated or not), rewarded by the reward
  model trained this night plus the plugins' reward functions.

`auto` distills when users' A/B choices have clearly preferred some contrast styles: the
choices then name the lesson, and the model can write as many examples of it as there are
prompts. Otherwise it prefers the offline recipes, which learn from people's own labels: KTO when single
verdicts are at least as many as pairs (it learns from both), DPO when pairs are most of the
feedback, each after SFT when reviewers corrected enough answers. It turns to GRPO only when
the reward model has proved itself on held-out pairs and most logged prompts carry no human
feedback at all. The report gives the reason in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import NightlyConfig
from trainer.data import TrainingData
from trainer.datasets import normalize
from trainer.styles import preferred

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
    return (f"{len(data.new('dpo'))} new pairs, {len(data.new('kto'))} new single verdicts (thumbs, stars, "
            f"both bad), {len(data.new('sft'))} new corrections, {len(data.train('prompts'))} logged prompts")


def _styles(data: TrainingData) -> str:
    shown = [f"{name} {t['won']}-{t['lost']}" for name, t in data.styles.items()]
    return ", ".join(shown) + " (won-lost)" if shown else "none on contrast pairs"


def _names(styles: list) -> str:
    return " and ".join(style.describe() for style in styles)


def judged_answers(data: TrainingData) -> int:
    """New answers with a verdict of their own, each side of a pair counted: what KTO trains on."""
    return len(data.new("kto")) + 2 * len(data.new("dpo"))


def chosen_styles(config: NightlyConfig, data: TrainingData) -> list:
    """The contrast styles users chose (trainer.styles.ChosenStyle), most net wins first."""
    pipeline = config.pipeline
    return preferred(data.styles, pipeline.distill_min_wins, pipeline.distill_confidence, pipeline.distill_max_styles)


def check(recipe: str, config: NightlyConfig, data: TrainingData) -> str | None:
    """Why `recipe` cannot run on this data, or None when it can."""
    pairs, corrections = len(data.new("dpo")), len(data.new("sft"))
    if recipe == "distill":
        if not chosen_styles(config, data):
            return (f"distill needs a contrast style users chose (≥ {config.pipeline.distill_min_wins} wins, "
                    f"P(preferred) ≥ {config.pipeline.distill_confidence}); their choices: {_styles(data)}")
        if len(data.distinct_prompts()) < config.pipeline.min_prompts:
            return f"distill needs at least {config.pipeline.min_prompts} training prompts ({_have(data)})"
    if recipe in ("dpo", "sft+dpo") and pairs < config.pipeline.min_pairs:
        return f"{recipe} needs at least {config.pipeline.min_pairs} new preference pairs ({_have(data)})"
    if recipe in ("sft+dpo", "sft+kto") and corrections < 1:
        return f"{recipe} needs new corrections ({_have(data)})"
    if recipe == "liked" and not any(row.data.get("label") for row in data.new("kto")) and not pairs:
        return f"liked needs answers people liked ({_have(data)})"
    if recipe in ("kto", "sft+kto") and judged_answers(data) < config.pipeline.min_thumbs:
        return f"{recipe} needs at least {config.pipeline.min_thumbs} new judged answers ({_have(data)})"
    if recipe in NEEDS_REWARD_MODEL:
        if len(data.train("dpo")) < config.pipeline.min_pairs:
            return f"{recipe} needs at least {config.pipeline.min_pairs} preference pairs for its reward model ({_have(data)})"
        if len(data.new("prompts")) < config.pipeline.min_prompts:
            return f"{recipe} needs at least {config.pipeline.min_prompts} new logged prompts ({_have(data)})"
    return None


def wants_reward_model(recipe: str, config: NightlyConfig, data: TrainingData) -> bool:
    """Whether to train a reward model before the policy: rm+ recipes need one, and with
    enough pairs it also judges candidate against active and orders the reviewers' queue."""
    if recipe in NEEDS_REWARD_MODEL or config.pipeline.reward_model == "always":
        return True
    return config.pipeline.reward_model == "auto" and len(data.train("dpo")) >= config.pipeline.min_pairs


def choose(config: NightlyConfig, data: TrainingData, reward_accuracy: float | None = None) -> Choice:
    """The recipe asked for, if the data allows it; for `auto`, the best the data allows."""
    if config.pipeline.recipe != "auto":
        problem = check(config.pipeline.recipe, config, data)
        if problem:
            return Choice(None, f"too little new data: {problem}")
        return _distill(config, data) if config.pipeline.recipe == "distill" else Choice(config.pipeline.recipe, "asked for")
    pairs, singles, corrections = len(data.new("dpo")), len(data.new("kto")), len(data.new("sft"))
    sft_first = corrections >= config.pipeline.min_corrections
    first = (f"{corrections} new corrections (≥ {config.pipeline.min_corrections}) teach reviewers' own answers first; "
             if sft_first else "")
    if not check("distill", config, data):
        return _distill(config, data)
    if pairs >= config.pipeline.min_pairs:
        unrated = unrated_prompts(data)
        trusted = reward_accuracy is not None and reward_accuracy >= config.pipeline.auto_rl_accuracy
        if trusted and unrated >= max(config.pipeline.min_prompts, pairs) and not check("rm+grpo", config, data):
            return Choice("rm+grpo", f"the reward model's held-out pair accuracy is {reward_accuracy:.2f} "
                                     f"(≥ {config.pipeline.auto_rl_accuracy}) and {unrated} logged prompts have no human "
                                     f"feedback against {pairs} new pairs, so GRPO can learn from all of them")
    if singles >= max(pairs, 1) and judged_answers(data) >= config.pipeline.min_thumbs:
        return Choice("sft+kto" if sft_first else "kto",
                      first + f"{singles} new single verdicts (thumbs, stars, both bad) and {pairs} new pairs: "
                              f"KTO learns from all {judged_answers(data)} judged answers in one objective, each "
                              f"pair as one good and one bad answer")
    if pairs >= config.pipeline.min_pairs:
        return Choice("sft+dpo" if sft_first else "dpo",
                      first + f"{pairs} new preference pairs (≥ {config.pipeline.min_pairs}) against {singles} single "
                              f"verdicts: DPO learns from the pairs, with an SFT term on the chosen answers"
                      + (f"; {corrections} corrections are too few for an SFT stage (< {config.pipeline.min_corrections}) "
                         f"and train as pairs" if corrections and not sft_first else ""))
    if judged_answers(data) >= config.pipeline.min_thumbs:
        return Choice("sft+kto" if sft_first else "kto",
                      first + f"only {pairs} new pairs (< {config.pipeline.min_pairs}) but {judged_answers(data)} judged "
                              f"answers (≥ {config.pipeline.min_thumbs}): KTO learns from them one by one")
    return Choice(None, f"too little new data: {_have(data)}; need at least {config.pipeline.min_pairs} new preference pairs "
                        f"or {config.pipeline.min_thumbs} new judged answers")


def _distill(config: NightlyConfig, data: TrainingData) -> Choice:
    return Choice("distill", f"users' A/B choices preferred the contrast style {_names(chosen_styles(config, data))}: "
                             f"DPO on up to {config.pipeline.distill_prompts} training prompts answered that way by the "
                             f"active release (the instruction removed) over its plain answers, with the human "
                             f"pairs ({_have(data)})")
