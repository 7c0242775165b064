"""GRPO on logged prompts with TRL's GRPOTrainer, rewarded by the reward model and the plugins.

For each prompt GRPO samples `num_generations` answers and pushes the policy towards the
ones that score above their group's mean, with a KL term (`kl_coef`, TRL's beta) to the
adapter the stage started from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from feedback.export import Row
from trainer.config import NightlyConfig, derive
from trainer.policy import StageOutcome, finish, load_policy, tokenizer_for, train_resumably
from trainer.rl_rewards import RewardFunction


def grpo_config(config: NightlyConfig, output_dir: Path, weights: Sequence[float], prompts: int) -> GRPOConfig:
    # A generation batch must hold whole groups: per-device batch a multiple of num_generations.
    groups = max(1, config.training.per_device_train_batch_size // config.rl.num_generations)
    batch = groups * config.rl.num_generations
    steps = next((s for s in (config.rl.rl_max_steps, config.training.max_steps) if s > 0), max(1, -(-prompts // groups)))
    return derive(config.training, GRPOConfig, output_dir=str(output_dir), num_generations=config.rl.num_generations,
                  per_device_train_batch_size=batch, max_completion_length=config.rl.max_completion_length,
                  beta=config.rl.kl_coef, reward_weights=list(weights), max_steps=steps,
                  learning_rate=config.training.learning_rate)


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None, prompts: Sequence[Row],
          functions: Sequence[RewardFunction], weights: Sequence[float], stage_dir: Path) -> StageOutcome:
    if done := StageOutcome.finished(stage_dir):
        return done
    args = grpo_config(config, stage_dir / "checkpoints", weights, len(prompts))
    trainer = GRPOTrainer(
        model=load_policy(model_path, start_adapter, config),
        reward_funcs=list(functions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": row.data["prompt"]} for row in prompts]),
        processing_class=tokenizer_for(model_path),
    )
    train_resumably(trainer, Path(args.output_dir), config.pipeline.resume)
    return finish("grpo", trainer, stage_dir)
