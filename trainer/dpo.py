"""DPO on a LoRA adapter with TRL's DPOTrainer, on top of the active release.

A new adapter starts from the base model. When the active release already has an
adapter, training continues from it, and a frozen copy named "ref" (which TRL's
DPOTrainer picks up by name) serves as the reference, so the KL anchor is what users
get today rather than the bare base model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOTrainer

from feedback.export import Row
from trainer.config import NightlyConfig, lora_config
from trainer.datasets import to_dataset

REFERENCE_ADAPTER = "ref"  # the name TRL's DPOTrainer looks for


@dataclass
class DpoOutcome:
    adapter_dir: Path
    history: list[dict]  # the trainer's log: loss, rewards, ... per logging step
    pair_accuracy: float | None  # held-out share of pairs where the implicit reward prefers chosen
    eval_metrics: dict


def load_policy(model_path: str, active_adapter: str | None, config: NightlyConfig) -> PeftModel:
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if active_adapter:
        model = PeftModel.from_pretrained(base, active_adapter, is_trainable=True)
        model.load_adapter(active_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
        return model
    return get_peft_model(base, lora_config(config, "CAUSAL_LM"))


def train(config: NightlyConfig, model_path: str, active_adapter: str | None,
          train_rows: Sequence[Row], held_out: Sequence[Row], adapter_dir: Path) -> DpoOutcome:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_policy(model_path, active_adapter, config)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(held_out) if held_out else None,
        processing_class=tokenizer,
    )
    trainer.train()
    eval_metrics = trainer.evaluate() if held_out else {}
    adapter_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(adapter_dir, selected_adapters=["default"])
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    return DpoOutcome(adapter_dir, history, eval_metrics.get("eval_rewards/accuracies"), eval_metrics)
