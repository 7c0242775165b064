"""DPO on preference pairs (A/B choices, rating gaps, corrections) with TRL's DPOTrainer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trl import DPOTrainer

from feedback.export import Row
from trainer.config import NightlyConfig
from trainer.datasets import to_dataset
from trainer.policy import StageOutcome, run_stage


def _with_pair_accuracy(metrics: dict) -> dict:
    # TRL's held-out figure: the implicit reward (against the stage's start) prefers the chosen answer.
    return {"pair_accuracy": metrics.get("eval_rewards/accuracies"), **metrics}


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    config.output_dir = str(stage_dir / "checkpoints")
    return run_stage("dpo", DPOTrainer, config, config, model_path, start_adapter, to_dataset(train_rows),
                     to_dataset(held_out) if held_out else None, stage_dir, _with_pair_accuracy)
