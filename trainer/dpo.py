"""DPO on preference pairs (A/B choices, rating gaps, corrections) with TRL's DPOTrainer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trl import DPOTrainer

from feedback.export import Row
from trainer.config import NightlyConfig
from trainer.datasets import to_dataset
from trainer.policy import StageOutcome, finish, load_policy, tokenizer_for, train_resumably


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    """Train the adapter on `train_rows`; the held-out pair accuracy is TRL's implicit-reward one."""
    if done := StageOutcome.finished(stage_dir):
        return done
    config.output_dir = str(stage_dir / "checkpoints")
    trainer = DPOTrainer(
        model=load_policy(model_path, start_adapter, config),
        args=config,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(held_out) if held_out else None,
        processing_class=tokenizer_for(model_path),
    )
    train_resumably(trainer, Path(config.output_dir), config.resume)
    metrics = trainer.evaluate() if held_out else {}
    return finish("dpo", trainer, stage_dir, {"pair_accuracy": metrics.get("eval_rewards/accuracies"), **metrics})
