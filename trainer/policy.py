"""What every policy stage shares: loading the LoRA policy, checkpoints for resume, the outcome.

A stage (SFT, DPO, KTO, GRPO, PPO) trains the adapter it is given (the active release's, or
the previous stage's) in its own folder under the run. TRL's trainers make a frozen copy of
that starting adapter, named "ref", as the KL anchor, so the reference is what users get
today rather than the bare base model. A finished stage writes `stage.json` beside its
adapter; a resumed run skips finished stages and continues a stage from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import get_quantization_config

from trainer import distributed, fit
from trainer.config import NightlyConfig, peft_config
from trainer.fit import Schedule

log = logging.getLogger("tuneloop.trainer")
DONE = "stage.json"
REFERENCE = "ref"  # the adapter name TRL's trainers give their frozen copy of the starting adapter


@dataclass
class StageOutcome:
    name: str
    adapter_dir: Path
    history: list[dict] = field(default_factory=list)  # the trainer's log: loss, rewards, ... per step
    metrics: dict = field(default_factory=dict)  # held-out metrics the stage measured itself

    @property
    def pair_accuracy(self) -> float | None:
        """Held-out share of pairs where the stage's implicit reward prefers the chosen answer."""
        return self.metrics.get("pair_accuracy")

    def save(self) -> None:
        body = {**asdict(self), "adapter_dir": str(self.adapter_dir)}
        (self.adapter_dir.parent / DONE).write_text(json.dumps(body, default=str), encoding="utf-8")

    @classmethod
    def finished(cls, stage_dir: Path) -> StageOutcome | None:
        """The outcome of a stage that already finished in `stage_dir` (resume), else None."""
        path = stage_dir / DONE
        if not path.is_file():
            return None
        body = json.loads(path.read_text(encoding="utf-8"))
        return cls(body["name"], Path(body["adapter_dir"]), body["history"], body["metrics"])


def tokenizer_for(model_path: str):  # noqa: ANN201
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_path: str, config: NightlyConfig):  # noqa: ANN201
    """The base causal LM: bf16 where the hardware computes in it, else fp32; quantized (TRL's
    get_quantization_config: 4 or 8 bits) for QLoRA."""
    dtype = torch.bfloat16 if config.training.bf16 else torch.float32
    quantization = get_quantization_config(config.adapter)
    if quantization is None:
        return AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    from peft import prepare_model_for_kbit_training

    quantization.bnb_4bit_compute_dtype = dtype
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, quantization_config=quantization)
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=bool(config.training.gradient_checkpointing))


def load_policy(model_path: str, start_adapter: str | Path | None, config: NightlyConfig) -> PeftModel:
    """The trainable policy: `start_adapter` continued, or a new LoRA adapter on the base."""
    base = load_base(model_path, config)
    if start_adapter:
        return PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)
    return get_peft_model(base, peft_config(config.adapter))


def run_stage(name: str, trainer_class: type, args, config: NightlyConfig, model_path: str,  # noqa: ANN001
              start_adapter: str | Path | None, train_dataset, eval_dataset, stage_dir: Path,  # noqa: ANN001
              summarize: Callable[[dict], dict] = dict, schedule: Schedule | None = None) -> StageOutcome:
    """A TRL trainer's stage: train the adapter from `start_adapter` (from the last checkpoint
    when resuming) on `schedule` (trainer/fit.py: held-out checks, the best checkpoint kept),
    evaluate on `eval_dataset` if any, save. A finished stage is not run again."""
    if done := StageOutcome.finished(stage_dir):
        return done
    checks = fit.callbacks(schedule, config.fit.early_stopping_patience, config.fit.policy_minutes) if schedule else []
    trainer = trainer_class(model=load_policy(model_path, start_adapter, config), args=args,
                            train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer_for(model_path), callbacks=checks)
    train_resumably(trainer, Path(args.output_dir), config.pipeline.resume)
    metrics = (_best_check(trainer) or trainer.evaluate()) if eval_dataset is not None else {}
    if schedule:
        budget = next((c for c in checks if isinstance(c, fit.TimeBudget)), None)
        metrics = {**metrics, "schedule": schedule.as_dict(), "best_step": _best_step(trainer),
                   "stopped_by_budget_at": budget.stopped_at if budget else None}
    return finish(name, trainer, stage_dir, summarize(metrics))


def _best_check(trainer) -> dict | None:  # noqa: ANN001
    """The held-out figures of the checkpoint the stage kept, from its own checks: evaluating
    the same rows again would cost a check's time (minutes on a CPU) to say the same."""
    step = _best_step(trainer)
    found = [entry for entry in trainer.state.log_history if entry.get("step") == step and "eval_loss" in entry]
    return dict(found[-1]) if found else None


def _best_step(trainer) -> int | None:  # noqa: ANN001
    best = trainer.state.best_model_checkpoint
    return int(best.rsplit("-", 1)[-1]) if best else None


def train_resumably(trainer, output_dir: Path, resume: bool) -> None:  # noqa: ANN001
    """`trainer.train()`, from the stage's last checkpoint when resuming and one exists."""
    checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
    if checkpoint:
        log.info("resuming stage %s from %s", output_dir.parent.name, Path(checkpoint).name)
    trainer.train(resume_from_checkpoint=checkpoint)


def finish(name: str, trainer, stage_dir: Path, metrics: dict | None = None) -> StageOutcome:  # noqa: ANN001
    """Save the trained adapter as `stage_dir/adapter` and mark the stage done (the main
    process writes; under a distributed launch the others wait until it has)."""
    adapter_dir = stage_dir / "adapter"
    outcome = StageOutcome(name, adapter_dir, [dict(entry) for entry in trainer.state.log_history], metrics or {})
    if REFERENCE in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter(REFERENCE)  # TRL's frozen copy of the start: not part of the release
    # save_model, not save_pretrained: it gathers sharded weights (ZeRO-3, FSDP) and writes once.
    trainer.save_model(str(adapter_dir))
    if distributed.is_main(trainer):
        outcome.save()
    distributed.wait(trainer)
    return outcome
