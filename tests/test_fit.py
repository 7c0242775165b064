"""Training fitted to the data: passes, steps, held-out checks, the time budget, KTO's balance."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from transformers import TrainerControl, TrainerState, TrainingArguments

from feedback.export import Row
from trainer import fit
from trainer.config import NightlyConfig
from trainer.data import split_pairs
from trainer.kto import balance, balanced_weight


def config(**overrides) -> NightlyConfig:
    return NightlyConfig.from_flags(output_dir="/tmp/unused", **overrides)


def test_a_handful_of_rows_gets_many_passes_and_thousands_get_one():
    few = fit.plan(config(), rows=30, held_out=8, batch=4)
    assert few.epochs == 8 and few.steps == 64  # 8 passes over 8 batches, under 72 steps
    many = fit.plan(config(), rows=3000, held_out=8, batch=4)
    assert many.steps == 72 and many.epochs < 1  # the step budget caps a big night
    middle = fit.plan(config(), rows=128, held_out=8, batch=4)
    assert middle.steps == 72 and 2 < middle.epochs < 3  # about 512 examples seen, within the cap
    assert few.check_every == 16 and "held-out loss checked every 16 steps" in few.reason


def test_without_held_out_rows_there_are_no_checks_and_max_steps_is_obeyed():
    assert fit.plan(config(), rows=30, held_out=0, batch=4).check_every is None
    asked = fit.plan(config(max_steps=5), rows=30, held_out=8, batch=4)
    assert (asked.steps, asked.check_every, asked.reason) == (5, None, "max_steps as given")
    assert fit.overrides(fit.plan(config(fit_to_data=False), rows=30, held_out=8, batch=4)) == {}


def test_checks_keep_the_best_checkpoint_by_held_out_loss():
    fields = fit.overrides(fit.plan(config(), rows=30, held_out=8, batch=4))
    assert fields["eval_steps"] == fields["save_steps"] == 16 and fields["load_best_model_at_end"]
    assert (fields["metric_for_best_model"], fields["greater_is_better"]) == ("eval_loss", False)
    assert fields["max_steps"] == 64


def test_the_time_budget_stops_a_stage_before_a_step_would_run_past_it():
    budget = fit.TimeBudget(minutes=0.5 / 60)  # half a second
    args = TrainingArguments(output_dir="/tmp/unused", eval_strategy="steps", eval_steps=10)
    state, control = TrainerState(max_steps=100), TrainerControl()
    budget.on_train_begin(args, state, control)
    state.global_step = 1
    assert not budget.on_step_end(args, state, control).should_training_stop  # the first step was quick
    time.sleep(0.4)
    state.global_step = 2  # 0.4 s spent, 0.2 s a step: the next would end past 0.5 s
    stopped = budget.on_step_end(args, state, control)
    assert stopped.should_training_stop and stopped.should_evaluate and stopped.should_save
    assert budget.stopped_at == 2
    assert fit.callbacks(fit.plan(config(), 30, 0, 4), patience=2, minutes=0) == []


def test_the_time_budget_keeps_room_for_the_held_out_check_made_on_stopping():
    budget = fit.TimeBudget(minutes=1.0 / 60)  # one second
    args = TrainingArguments(output_dir="/tmp/unused", eval_strategy="steps", eval_steps=1)
    state, control = TrainerState(max_steps=100), TrainerControl()
    budget.on_train_begin(args, state, control)
    state.global_step = 1
    assert not budget.on_step_end(args, state, control).should_training_stop
    time.sleep(0.55)
    budget.on_evaluate(args, state, control)  # a check that took 0.55 s
    state.global_step = 2  # 0.55 s spent, so a step fits, but not the 0.55 s check made on stopping
    assert budget.on_step_end(args, state, control).should_training_stop


def labelled(good: int, bad: int) -> list[Row]:
    when = datetime(2026, 11, 30, tzinfo=UTC)
    return [Row({"prompt": [], "completion": [], "label": i < good}, "thumb", f"q{i}", when)
            for i in range(good + bad)]


def test_kto_keeps_every_rare_verdict_and_at_most_twice_as_many_common_ones():
    rows = labelled(good=10, bad=100)
    kept = balance(rows, max_ratio=2.0, seed=1)
    assert sum(r.data["label"] for r in kept) == 10 and len(kept) == 30
    assert balance(rows, max_ratio=2.0, seed=1) == kept  # seeded
    assert len(balance(labelled(10, 15), 2.0)) == 25  # within the ratio already: all kept
    assert balanced_weight(kept) == 2.0 and balanced_weight(labelled(5, 5)) == 1.0


def test_a_pair_is_one_good_and_one_bad_answer():
    when = datetime(2026, 11, 30, tzinfo=UTC)
    pair = Row({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "yes"}],
                "rejected": [{"role": "assistant", "content": "no"}]}, "comparison", "q", when, [3])
    good, bad = split_pairs([pair])
    assert (good.data["completion"][0]["content"], good.data["label"], good.source) == ("yes", True, "comparison:chosen")
    assert (bad.data["completion"][0]["content"], bad.data["label"], bad.user_ids) == ("no", False, [3])
