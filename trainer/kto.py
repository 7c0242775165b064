"""KTO on thumbs with TRL's KTOTrainer: a thumb needs no second answer to pair it with."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from feedback.export import Row
from trainer.config import NightlyConfig, derive
from trainer.datasets import to_dataset
from trainer.policy import StageOutcome, run_stage


def kto_config(config: NightlyConfig, output_dir: Path) -> KTOConfig:
    # KTO estimates its KL term from mismatched pairs within a batch: one row a batch has none.
    batch = max(2, config.per_device_train_batch_size)
    return derive(config, KTOConfig, output_dir=str(output_dir), beta=config.beta, max_length=config.max_length,
                  desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight,
                  per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                  # KTO pairs each row with its batch neighbour for the KL term: the order must hold.
                  train_sampling_strategy="sequential")


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    held = to_dataset(held_out) if len(held_out) >= 2 else None  # KTO's KL term needs two rows a batch
    return run_stage("kto", KTOTrainer, kto_config(config, stage_dir / "checkpoints"), config, model_path,
                     start_adapter, to_dataset(train_rows), held, stage_dir)
