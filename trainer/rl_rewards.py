"""The rewards online RL optimizes: the reward model's score plus the plugins' reward functions.

Both GRPO and PPO see the same rewards. Plugins' functions have TRL's reward-function shape
(`f(prompts, completions, **kwargs) -> list[float]`, see `plugins.protocols.RewardFunction`);
the guardrails plugin's pays -1 for an answer its output checks would fix or refuse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trainer.reward_model import RewardModel

RewardFunction = Callable[..., list[float]]


def reward_model_function(model: RewardModel) -> RewardFunction:
    def reward_model(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        return model.score(prompts, completions)

    return reward_model


def weighted_sum(functions: Sequence[RewardFunction], weights: Sequence[float]) -> Callable[[list, list], list[float]]:
    """One `reward_fn(prompts, completions)` for PPO, which pays a single score per answer."""
    def reward(prompts: list[Any], completions: list[Any]) -> list[float]:
        total = [0.0] * len(completions)
        for function, weight in zip(functions, weights):
            for i, value in enumerate(function(prompts, completions)):
                total[i] += weight * (value if value is not None else 0.0)
        return total

    return reward


def reward_functions(model: RewardModel, plugin_functions: Sequence[RewardFunction],
                     plugin_weight: float) -> tuple[list[RewardFunction], list[float]]:
    """The functions and their weights, the reward model first."""
    functions = [reward_model_function(model), *plugin_functions]
    return functions, [1.0] + [plugin_weight] * len(plugin_functions)
