"""SFT on reviewers' corrections with TRL's SFTTrainer: the better answer, word for word."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from feedback.export import Row
from trainer import fit
from trainer.config import NightlyConfig, derive
from trainer.policy import StageOutcome, run_stage


def as_prompt_completion(rows: Sequence[Row]) -> Dataset:
    """Conversational prompt/completion rows, so the loss falls on the corrected answer only
    (SmolLM2's chat template has no generation markers for `assistant_only_loss`)."""
    return Dataset.from_list([{"prompt": row.data["messages"][:-1], "completion": row.data["messages"][-1:]}
                              for row in rows])


def sft_config(config: NightlyConfig, output_dir: Path, schedule: fit.Schedule | None = None) -> SFTConfig:
    planned = {"num_train_epochs": config.sft.sft_epochs, **(fit.overrides(schedule) if schedule else {})}
    return derive(config.training, SFTConfig, output_dir=str(output_dir), learning_rate=config.sft.sft_learning_rate,
                  max_length=config.training.max_length, completion_only_loss=True, **planned)


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    held = fit.eval_rows(list(held_out), config.training.seed)
    schedule = fit.plan(config, len(train_rows), len(held),
                        config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps)
    return run_stage("sft", SFTTrainer, sft_config(config, stage_dir / "checkpoints", schedule), config, model_path,
                     start_adapter, as_prompt_completion(train_rows),
                     as_prompt_completion(held) if held else None, stage_dir, schedule=schedule)
