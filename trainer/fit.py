"""Training that fits the data it has: epochs and steps from the row count, a held-out stop.

A night may bring thirty pairs or three thousand. One pass over thirty moves a LoRA adapter
by a few steps, which users never notice; thirty passes over three thousand would take days
and overfit. So a policy stage (DPO, KTO, SFT) passes over its rows until about
`min_examples_seen` examples were seen (at least once, at most `max_epochs` times), within
`max_policy_steps` optimizer steps (the night's time budget). When there are held-out rows it
checks them every few steps, keeps the checkpoint with the lowest held-out loss, and stops
after `early_stopping_patience` checks without improvement: many passes over a small dataset
are safe because the stage stops where held-out preferences stop agreeing with it.

A config whose `max_steps` is set, or with `fit_to_data` off, trains exactly as asked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from transformers import TrainerCallback

CHECKS = 4  # held-out checks over a stage's planned steps
# A held-out check costs forward passes per row (KTO's: policy, reference and its KL rows; on 2
# CPU cores 48 rows took almost 4 minutes): a few rows, drawn the same each time, are enough
# to see the loss turn.
MAX_EVAL_ROWS = 16


@dataclass(frozen=True)
class Schedule:
    epochs: float
    steps: int  # optimizer steps planned (-1: epochs decide, as TRL does)
    check_every: int | None  # steps between held-out checks; None: no checks
    reason: str

    def as_dict(self) -> dict:
        return {"epochs": round(self.epochs, 2), "steps": self.steps, "check_every": self.check_every,
                "reason": self.reason}


def plan(config, rows: int, held_out: int, batch: int) -> Schedule:  # noqa: ANN001 - trainer.config.NightlyConfig
    """The stage's schedule for `rows` training rows in batches of `batch` (per optimizer step)."""
    if not config.fit.fit_to_data or config.training.max_steps > 0:
        why = "max_steps as given" if config.training.max_steps > 0 else "fit_to_data is off: num_train_epochs as given"
        return Schedule(config.training.num_train_epochs, config.training.max_steps, None, why)
    per_epoch = max(1, math.ceil(rows / batch))
    epochs = min(config.fit.max_epochs, max(1.0, config.fit.min_examples_seen / max(rows, 1)))
    steps = min(config.fit.max_policy_steps, max(1, math.ceil(per_epoch * epochs)))
    epochs = steps / per_epoch
    check = max(1, steps // CHECKS) if held_out and config.fit.early_stopping_patience else None
    reason = (f"{rows} rows in batches of {batch}: {epochs:.1f} passes, {steps} steps "
              f"(about {config.fit.min_examples_seen} examples seen, at most {config.fit.max_epochs:g} passes and "
              f"{config.fit.max_policy_steps} steps)")
    if check:
        reason += f"; held-out loss checked every {check} steps, best kept, stop after " \
                  f"{config.fit.early_stopping_patience} checks without improvement"
    return Schedule(epochs, steps, check, reason)


def overrides(schedule: Schedule) -> dict:
    """TrainingArguments fields that carry out `schedule` (for `trainer.config.derive`)."""
    if schedule.steps <= 0 and schedule.check_every is None:
        return {}
    fields = {"max_steps": schedule.steps, "num_train_epochs": max(1.0, math.ceil(schedule.epochs)),
              "lr_scheduler_type": "cosine", "warmup_steps": max(1, schedule.steps // 10)}
    if schedule.check_every:
        # The best checkpoint is kept by held-out loss; checkpoints come at each check, so a
        # resumed run finds one too.
        fields |= {"eval_strategy": "steps", "eval_steps": schedule.check_every, "save_strategy": "steps",
                   "save_steps": schedule.check_every, "load_best_model_at_end": True,
                   "metric_for_best_model": "eval_loss", "greater_is_better": False, "save_total_limit": 2}
    return fields


def callbacks(schedule: Schedule, patience: int, minutes: float = 0.0) -> list:
    """Early stopping on held-out loss, and the stage's wall-clock budget (0: none)."""
    from transformers import EarlyStoppingCallback

    found = [EarlyStoppingCallback(early_stopping_patience=patience)] if schedule.check_every and patience else []
    return found + ([TimeBudget(minutes)] if minutes > 0 else [])


class TimeBudget(TrainerCallback):
    """Stops a stage before a step would run past its minutes, as a nightly run must end by
    morning: the steps planned from the data are an upper bound a slow machine may not reach.
    With held-out checks the stage checks (and saves) once more as it stops, so the best
    checkpoint is chosen from everything it trained."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.started, self.first_step, self.last_step_end = 0.0, 0, 0.0
        self.checking = 0.0  # seconds the last held-out check took: the one made on stopping costs as much
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.started, self.first_step = time.monotonic(), state.global_step  # a resumed stage starts later

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        now = time.monotonic()
        self.last_step_end = now
        elapsed = now - self.started
        per_step = (elapsed - self.checking) / max(1, state.global_step - self.first_step)
        checks = args.eval_strategy != "no"
        if elapsed + per_step + (self.checking if checks else 0) > self.minutes * 60 \
                and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_training_stop = True
            if checks:
                control.should_evaluate = control.should_save = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.checking = time.monotonic() - self.last_step_end


def eval_rows(rows: list, seed: int = 0) -> list:
    """At most MAX_EVAL_ROWS held-out rows for the checks, the same ones every time."""
    import random

    if len(rows) <= MAX_EVAL_ROWS:
        return list(rows)
    return random.Random(seed).sample(list(rows), MAX_EVAL_ROWS)
