"""KTO with TRL's KTOTrainer on every answer people judged: one objective for all signals.

KTO needs no second answer: each row is one answer with a verdict, good or bad. So thumbs,
stars, "both bad" A/B verdicts, the two sides of each preference pair (chosen good, rejected
bad) and reviewers' corrections (good) all train together (`trainer.data.labelled`). The good
answers are usually the few: `desirable_weight`, unless given, balances them against the bad
ones as the KTO paper advises (weight x good / bad between 1 and 4/3), after `balance` has set
aside all but `max_label_ratio` times as many of the commoner verdict. The stage is fitted to
its data like every policy stage (trainer/fit.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from trl import KTOConfig, KTOTrainer

from feedback.export import Row
from trainer import fit
from trainer.config import NightlyConfig, derive
from trainer.datasets import to_dataset
from trainer.policy import StageOutcome, run_stage

MAX_DESIRABLE_WEIGHT = 8.0  # beyond this a handful of good answers would outweigh everything else


def balanced_weight(rows: Sequence[Row]) -> float:
    """KTO's weight for good answers so that weight x good / bad is at least 1 (the paper's range)."""
    good = sum(bool(row.data["label"]) for row in rows)
    bad = len(rows) - good
    return 1.0 if not good or good >= bad else min(MAX_DESIRABLE_WEIGHT, bad / good)


def balance(rows: Sequence[Row], max_ratio: float, seed: int = 0) -> list[Row]:
    """All answers of the rarer verdict and at most `max_ratio` times as many of the commoner one,
    drawn at random (seeded): where the few say most, the many need not all be seen."""
    good = [row for row in rows if row.data["label"]]
    bad = [row for row in rows if not row.data["label"]]
    few, many = (good, bad) if len(good) <= len(bad) else (bad, good)
    keep = max(1, round(max_ratio * len(few))) if few else len(many)
    if max_ratio <= 0 or len(many) <= keep:
        return list(rows)
    return few + random.Random(seed).sample(many, keep)


def kto_config(config: NightlyConfig, output_dir: Path, schedule: fit.Schedule, rows: Sequence[Row]) -> KTOConfig:
    # KTO estimates its KL term from mismatched pairs within a batch: one row a batch has none.
    batch = max(2, config.training.per_device_train_batch_size)
    weight = config.kto.desirable_weight if config.kto.desirable_weight is not None else balanced_weight(rows)
    return derive(config.training, KTOConfig, output_dir=str(output_dir), beta=config.training.beta, max_length=config.training.max_length,
                  desirable_weight=weight, undesirable_weight=config.kto.undesirable_weight,
                  per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
                  # KTO pairs each row with its batch neighbour for the KL term: the order must hold.
                  train_sampling_strategy="sequential", **fit.overrides(schedule))


def train(config: NightlyConfig, model_path: str, start_adapter: str | Path | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], stage_dir: Path) -> StageOutcome:
    # Sequential batches: shuffle once (seeded), so a batch mixes verdicts and prompts.
    rows = balance(train_rows, config.kto.max_label_ratio, config.training.seed)
    random.Random(config.training.seed).shuffle(rows)
    held = fit.eval_rows(list(held_out), config.training.seed)
    held = held if len(held) >= 2 else []  # KTO's KL term needs two rows a batch
    batch = max(2, config.training.per_device_train_batch_size) * config.training.gradient_accumulation_steps
    schedule = fit.plan(config, len(rows), len(held), batch)
    args = kto_config(config, stage_dir / "checkpoints", schedule, rows)
    return run_stage("kto", KTOTrainer, args, config, model_path, start_adapter, to_dataset(rows),
                     to_dataset(held) if held else None, stage_dir, schedule=schedule)
