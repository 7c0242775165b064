"""Training knobs: a dataclass extending TRL's DPOConfig, so every TRL option works too.

`tuneloop train --help` lists these (ours first, then TRL's and transformers').
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig


@dataclass
class NightlyConfig(DPOConfig):
    # ---- data
    min_pairs: int = field(default=16, metadata={"help": "fewest new preference pairs worth a run; fewer stops cleanly"})
    holdout_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out for evaluation (newest first)"})
    near_duplicate_threshold: float = field(
        default=0.8, metadata={"help": "prompts at least this similar (character trigram Jaccard) count as one"}
    )
    # ---- LoRA
    lora_r: int = field(default=16, metadata={"help": "LoRA rank for a new adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules a new adapter wraps"},
    )
    # ---- evaluation
    judge: str | None = field(default=None, metadata={"help": "module:function judging (prompt, a, b) -> a|b|tie"})
    eval_prompts: int = field(default=32, metadata={"help": "held-out prompts answered by candidate and active"})
    eval_max_tokens: int = field(default=96, metadata={"help": "answer length cap when comparing releases"})
    seed_eval: int = field(default=0, metadata={"help": "seed for answer order shown to the judge"})

    # TRL's defaults, changed: a nightly job on one machine by default.
    output_dir: str | None = field(default=None, metadata={"help": "checkpoints; default DATA_DIR/runs/<run id>"})
    learning_rate: float = 5e-5
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    beta: float = 0.1
    max_length: int | None = 512
    logging_steps: float = 1
    # On by default in TRL; for a 135M model it quadruples step time for memory we don't need.
    gradient_checkpointing: bool = False
    save_strategy: str = "no"
    report_to: list[str] | str | None = "none"
    bf16: bool | None = None  # set from the device in __post_init__: bf16 on CUDA, fp32 on CPU

    def __post_init__(self) -> None:
        import torch

        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for
        if self.output_dir is None:
            self.output_dir = "var/runs/pending"  # the nightly job points it at its run folder
        super().__post_init__()


def lora_config(config, task_type: str, **extra):  # noqa: ANN001, ANN201 - any of our configs with lora_* fields
    """The LoRA adapter a config's `lora_*` fields describe (DPO's policy, the reward model)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type=task_type, **extra)
