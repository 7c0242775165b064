"""DPO on preference pairs (A/B choices, rating gaps, corrections) with TRL's DPOTrainer.

The stage's DPOConfig is a copy of the night's config with its own output folder, schedule
(trainer/fit.py) and loss: DPO's sigmoid loss plus, with `sft_weight` > 0, an SFT term on the
chosen answers (TRL's `loss_type=["sigmoid", "sft"]`, the RPO recipe). With a few dozen
pairs, DPO alone learns to *rank* the chosen answer higher while the model's own answers
barely change; the SFT term makes it *write* what users chose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from feedback.export import Row
from trainer import fit
from trainer.config import NightlyConfig
from trainer.datasets import to_dataset
from trainer.policy import StageOutcome, run_stage


def _with_pair_accuracy(metrics: dict) -> dict:
    # TRL's held-out figure: the implicit reward (against the stage's start) prefers the chosen answer.
    return {"pair_accuracy": metrics.get("eval_rewards/accuracies"), **metrics}


def loss(config: NightlyConfig) -> dict:
    """The loss fields: as given, or sigmoid plus the SFT term when only the default was given."""
    if config.training.sft_weight > 0 and list(config.training.loss_type) == ["sigmoid"] and not config.training.loss_weights:
        return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.training.sft_weight]}
    return {"loss_type": list(config.training.loss_type), "loss_weights": config.training.loss_weights}


def dpo_config(config: NightlyConfig, output_dir: Path, schedule: fit.Schedule) -> DPOConfig:
    """The stage's own DPOConfig: every DPO and TrainingArguments field of `config`, with the
    stage's output folder, loss and schedule (the night's config itself is left as it was)."""
    own = {f.name: getattr(config.training, f.name) for f in fields(DPOConfig) if f.init}
    return DPOConfig(**{**own, "output_dir": str(output_dir), **loss(config), **fit.overrides(schedule)})


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    held = fit.eval_rows(list(held_out), config.training.seed)
    batch = config.training.per_device_train_batch_size * config.training.gradient_accumulation_steps
    schedule = fit.plan(config, len(train_rows), len(held), batch)
    args = dpo_config(config, stage_dir / "checkpoints", schedule)
    return run_stage("dpo", DPOTrainer, args, config, model_path, start_adapter, to_dataset(train_rows),
                     to_dataset(held) if held else None, stage_dir, _with_pair_accuracy, schedule)
