"""Training knobs, shaped like TRL's: each part of the night has its own config.

- `PipelineConfig`: the night itself (recipe, data, curation, evaluation): tuneloop's own.
- `FitConfig`: how each policy stage's schedule follows from its data (`trainer/fit.py`).
- `TrainingConfig`: TRL's DPOConfig with a nightly job's defaults. The DPO stage runs a copy of
  it; the other stages take its shared TrainingArguments (devices, precision, logging,
  `report_to`, checkpoints) into their own TRL configs by `derive`.
- `AdapterConfig`: TRL's ModelConfig (LoRA, quantization); `get_peft_config` makes the adapter.
- `RewardStageConfig`, `KTOStageConfig`, `SFTStageConfig`, `RLStageConfig`: what the reward
  model, KTO, SFT and GRPO/PPO stages take beyond the shared arguments.

`NightlyConfig` holds one of each; `tuneloop train --help` lists them group by group (ours
first, then TRL's and transformers'). No stage changes the config it was given: each builds
its own TRL config from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from transformers import TrainingArguments
from trl import DPOConfig, ModelConfig

RECIPES = ("auto", "distill", "dpo", "kto", "sft+dpo", "sft+kto", "liked", "rm+grpo", "rm+ppo")


@dataclass
class PipelineConfig:
    _argument_group_name: ClassVar[str] = "the night: recipe, data, curation, evaluation"

    # ---- recipe and runs
    recipe: str = field(default="auto", metadata={
        "help": "distill, dpo, kto, sft+dpo, sft+kto, liked, rm+grpo, rm+ppo, or auto (picked from the data at "
                "hand; the report says why)"})
    resume: bool = field(default=False, metadata={
        "help": "continue the newest unfinished run from its last checkpoint instead of starting a new one"})
    reward_model: str = field(default="auto", metadata={
        "help": "train a reward model: auto (when there are min_pairs pairs), always (rm+ recipes), or never"})
    auto_rl_accuracy: float = field(default=0.75, metadata={
        "help": "auto picks rm+grpo when the reward model's held-out accuracy reaches this and unrated prompts abound"})
    # ---- data
    min_pairs: int = field(default=16, metadata={"help": "fewest new preference pairs worth a run; fewer stops cleanly"})
    min_thumbs: int = field(default=32, metadata={
        "help": "fewest new judged answers (thumbs, stars, both bad, each side of a pair) for KTO"})
    min_corrections: int = field(default=8, metadata={"help": "fewest corrections for auto to add an SFT stage"})
    min_prompts: int = field(default=16, metadata={"help": "fewest logged prompts for GRPO/PPO"})
    max_prompts: int = field(default=256, metadata={"help": "most logged prompts GRPO/PPO train on (newest first)"})
    holdout_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out for evaluation (newest first)"})
    near_duplicate_threshold: float = field(
        default=0.8, metadata={"help": "prompts at least this similar (character trigram Jaccard) count as one"}
    )
    # ---- styles users chose in A/B contrasts, distilled (trainer/styles.py, trainer/distill.py)
    distill_prompts: int = field(default=96, metadata={
        "help": "training prompts the active release answers with and without the chosen styles' instructions "
                "(distill)"})
    distill_min_wins: int = field(default=3, metadata={
        "help": "fewest A/B choices a contrast style must have won to count as chosen"})
    distill_confidence: float = field(default=0.9, metadata={
        "help": "posterior probability (uniform prior) that a style's contrasts win more choices than they lose, "
                "for it to count as chosen"})
    distill_max_styles: int = field(default=3, metadata={"help": "most chosen styles one night distills"})
    distill_temperature: float = field(default=0.7, metadata={
        "help": "sampling temperature of the distilled answers (serving's default)"})
    adopt_styles: int = field(default=1, metadata={
        "help": "how many of the night's chosen styles the candidate also answers under, their instructions "
                "added to the active release's (0: none, the weights alone learn them)"})
    # ---- curation (trainer/curation.py)
    max_user_share: float = field(default=0.2, metadata={"help": "no user in more than this share of a dataset"})
    agreement_floor: float = field(default=0.4, metadata={
        "help": "Krippendorff's alpha under which a run is blocked (with enough items judged by 2+ people)"})
    dispute_mode: str = field(default="drop", metadata={"help": "drop or downweight items people disagree on"})
    replay_share: float = field(default=0.2, metadata={
        "help": "share of the policy's training rows drawn from data earlier runs trained on (against forgetting)"})
    # ---- evaluation
    judge: str | None = field(default=None, metadata={
        "help": "module:function judging (prompt, a, b) -> a|b|tie; several, comma-separated, are each reported "
                "and the first is the gate's"})
    eval_prompts: int = field(default=64, metadata={
        "help": "held-out prompts answered by candidate and active (users' own first, then bundled prompts no "
                "user asked); 64 give a win rate's 95 percent interval of about +-0.12"})
    eval_max_tokens: int | None = field(default=None, metadata={
        "help": "answer length cap when comparing releases; default: as served (TUNELOOP_MAX_TOKENS)"})
    seed_eval: int = field(default=0, metadata={"help": "seed for answer order shown to the judge"})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        if self.dispute_mode not in ("drop", "downweight"):
            raise ValueError(f"--dispute_mode must be drop or downweight, not {self.dispute_mode!r}")
        if self.reward_model not in ("auto", "always", "never"):
            raise ValueError(f"--reward_model must be auto, always or never, not {self.reward_model!r}")


@dataclass
class FitConfig:
    _argument_group_name: ClassVar[str] = "fitting each policy stage to its data (trainer/fit.py)"

    fit_to_data: bool = field(default=True, metadata={
        "help": "epochs, steps and held-out checks follow from the amount of data (a handful of rows gets many "
                "passes, thousands one); off: num_train_epochs and max_steps as given"})
    min_examples_seen: int = field(default=512, metadata={
        "help": "with few rows, pass over them until about this many examples were seen (up to max_epochs)"})
    max_epochs: float = field(default=8.0, metadata={"help": "most passes over a small dataset"})
    max_policy_steps: int = field(default=72, metadata={
        "help": "most optimizer steps one policy stage takes: the night's time budget"})
    policy_minutes: float = field(default=8.0, metadata={
        "help": "wall-clock budget of each policy stage, which stops there and keeps its best checkpoint, so the "
                "night ends in time on a slow machine (0: no budget)"})
    early_stopping_patience: int = field(default=2, metadata={
        "help": "held-out checks without improvement before a stage stops and keeps its best checkpoint (0: never)"})


@dataclass
class TrainingConfig(DPOConfig):
    """TRL's DPOConfig, with the defaults of a nightly job on one machine and an SFT term."""

    _argument_group_name: ClassVar[str] = "training: TRL's DPOConfig and transformers' TrainingArguments (every stage)"

    sft_weight: float = field(default=0.2, metadata={
        "help": "weight of an SFT term on the chosen answers beside DPO's loss (RPO), which makes the model "
                "write what users chose rather than only rank it higher; 0: plain DPO"})

    # TRL's defaults, changed.
    output_dir: str | None = field(default=None, metadata={"help": "checkpoints; default DATA_DIR/runs/<run id>"})
    # A LoRA adapter learns at rates full fine-tuning would not survive; TRL's own default
    # (1e-6) barely moves one in a night's few dozen steps.
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    beta: float = 0.1
    max_length: int | None = 512
    logging_steps: float = 1
    # On by default in TRL; for a 135M model it quadruples step time for memory we don't need.
    gradient_checkpointing: bool = False
    # Checkpoints let `--resume` continue a killed run; LoRA checkpoints are small.
    save_strategy: str = "steps"
    save_steps: float = 25
    save_total_limit: int | None = 2
    report_to: list[str] | str | None = "none"
    bf16: bool | None = None  # set from the device in __post_init__: see device_defaults

    def __post_init__(self) -> None:
        device_defaults(self)
        if self.output_dir is None:
            self.output_dir = "var/runs/pending"  # the nightly job points its stages at the run folder
        super().__post_init__()


@dataclass
class AdapterConfig(ModelConfig):
    """TRL's ModelConfig for the LoRA adapter each release is. The base model is the
    deployment's (TUNELOOP_MODEL, or the active release's), never a flag of one night."""

    _argument_group_name: ClassVar[str] = "the LoRA adapter: TRL's ModelConfig"

    use_peft: bool = field(default=True, metadata={"help": "always on: a release is a LoRA adapter"})
    lora_dropout: float = 0.0
    use_bnb_nested_quant: bool = True  # QLoRA's double quantization, as the QLoRA paper trains
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules a new adapter wraps"},
    )

    def __post_init__(self) -> None:
        import torch

        if not self.use_peft:
            raise ValueError("--use_peft false: every release is a LoRA adapter on the base model")
        if self.model_name_or_path:
            raise ValueError("--model_name_or_path: a night trains the served base model (TUNELOOP_MODEL)")
        if (self.load_in_4bit or self.load_in_8bit) and not torch.cuda.is_available():
            raise ValueError("--load_in_4bit/--load_in_8bit (QLoRA) need a CUDA GPU and bitsandbytes; this machine "
                             "has no GPU")
        super().__post_init__()


@dataclass
class RewardStageConfig:
    _argument_group_name: ClassVar[str] = "the reward model (trainer/reward_model.py)"

    reward_learning_rate: float = field(default=1e-4, metadata={"help": "reward model learning rate"})
    reward_epochs: float = field(default=1.0, metadata={"help": "reward model epochs"})
    reward_minutes: float = field(default=3.0, metadata={
        "help": "wall-clock budget of the reward model's training (0: none), so the night ends in time"})


@dataclass
class KTOStageConfig:
    _argument_group_name: ClassVar[str] = "KTO (trainer/kto.py)"

    desirable_weight: float | None = field(default=None, metadata={
        "help": "KTO weight of good answers; default: balanced against the bad ones as the KTO paper advises"})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO weight of thumbs down"})
    max_label_ratio: float = field(default=2.0, metadata={
        "help": "at most this many answers of the commoner verdict per answer of the rarer one (the rest, "
                "chosen at random, sit the night out): a few liked answers among hundreds of 'both bad' ones "
                "are otherwise seen once each in a night's steps"})


@dataclass
class SFTStageConfig:
    _argument_group_name: ClassVar[str] = "SFT on corrections (trainer/sft.py)"

    sft_learning_rate: float = field(default=1e-4, metadata={"help": "SFT learning rate (sft+dpo, sft+kto)"})
    sft_epochs: float = field(default=1.0, metadata={"help": "SFT epochs over the corrections"})


@dataclass
class RLStageConfig:
    _argument_group_name: ClassVar[str] = "online RL: GRPO and PPO (trainer/grpo.py, trainer/ppo.py)"

    num_generations: int = field(default=4, metadata={"help": "GRPO answers sampled per prompt"})
    max_completion_length: int = field(default=64, metadata={"help": "GRPO/PPO most tokens per sampled answer"})
    rl_max_steps: int = field(default=-1, metadata={"help": "GRPO/PPO steps; -1: one pass over the prompts"})
    kl_coef: float = field(default=0.05, metadata={"help": "GRPO beta / PPO per-token KL weight"})
    plugin_reward_weight: float = field(default=1.0, metadata={
        "help": "weight of the plugins' reward functions (a guardrail violation costs reward) beside the reward model"})


@dataclass(frozen=True)
class NightlyConfig:
    """Everything one night takes: `tuneloop train`'s flags, one config per part."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    reward: RewardStageConfig = field(default_factory=RewardStageConfig)
    kto: KTOStageConfig = field(default_factory=KTOStageConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    rl: RLStageConfig = field(default_factory=RLStageConfig)

    @classmethod
    def parts(cls) -> tuple[type, ...]:
        return tuple(f.default_factory for f in fields(cls))  # type: ignore[misc]

    @classmethod
    def parser(cls, **kwargs: Any):  # noqa: ANN206 - an HfArgumentParser
        from transformers import HfArgumentParser

        return HfArgumentParser(cls.parts(), **kwargs)

    @classmethod
    def from_args(cls, args: list[str], **parser_kwargs: Any) -> NightlyConfig:
        """The config a command line gives (`tuneloop train --recipe dpo --lora_r 8 ...`)."""
        return cls(*cls.parser(**parser_kwargs).parse_args_into_dataclasses(args=args))

    @classmethod
    def from_flags(cls, **flags: Any) -> NightlyConfig:
        """The defaults with some knobs set by their flag names: `from_flags(recipe="dpo", lora_r=8)`."""
        return cls().replace(**flags)

    def replace(self, **flags: Any) -> NightlyConfig:
        """A copy with knobs set by their flag names, each in the part it belongs to; this one is
        left as it is. An unknown name is an error, as on the command line."""
        owners = {name: f.name for f in fields(self) for name in _init_fields(getattr(self, f.name))}
        unknown = sorted(set(flags) - set(owners))
        if unknown:
            raise TypeError(f"unknown training flags: {', '.join(unknown)}")
        changed = {}
        for part in {owners[name] for name in flags}:
            mine = {name: value for name, value in flags.items() if owners[name] == part}
            changed[part] = dataclasses.replace(getattr(self, part), **mine)
        return dataclasses.replace(self, **changed)

    def get(self, name: str) -> Any:
        """A knob by its flag name, whichever part holds it."""
        for part in fields(self):
            value = getattr(self, part.name)
            if name in _init_fields(value):
                return getattr(value, name)
        raise AttributeError(name)


def _init_fields(config: Any) -> set[str]:
    return {f.name for f in fields(config) if f.init}


def device_defaults(config) -> None:  # noqa: ANN001 - NightlyConfig, RewardConfig
    """bf16 where the hardware computes in it (a GPU that has it, or a CPU with AVX512-BF16/AMX),
    else fp32; on CPU nothing to pin, and a CPU process group (gloo) under torchrun /
    accelerate launch, without which each process thinks itself alone."""
    import torch

    if config.bf16 is None:
        config.bf16 = bf16_native()
    if not torch.cuda.is_available():
        config.dataloader_pin_memory = False
        config.use_cpu = True


def bf16_native() -> bool:
    """Whether bf16 is computed natively here, so training in it is faster, not emulated.

    On a CPU with AVX512-BF16 (and AMX) a DPO step of SmolLM2-135M took 2.3x less time under
    bf16 than in fp32 (measured on the 2-core reference machine); without those instructions
    bf16 is emulated and slower than fp32. torch exposes the check only privately.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def peft_config(adapter: AdapterConfig, task_type: str = "CAUSAL_LM", **extra: Any):  # noqa: ANN201 - LoraConfig
    """The LoRA adapter `adapter` describes (TRL's get_peft_config): the policy's, or with
    task_type "SEQ_CLS" the reward model's."""
    from trl import get_peft_config

    lora = get_peft_config(dataclasses.replace(adapter, lora_task_type=task_type))
    for name, value in extra.items():
        setattr(lora, name, value)
    return lora


def lora_config(config, task_type: str, **extra):  # noqa: ANN001, ANN201 - a RewardConfig, with lora_* fields
    """The LoRA adapter a config's own `lora_*` fields describe (the reward model's RewardConfig)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type=task_type, **extra)


def training_arguments(config: TrainingArguments) -> dict:
    """The plain TrainingArguments fields of any config: what every stage shares."""
    return {f.name: getattr(config, f.name) for f in fields(TrainingArguments) if f.init}


def derive(config: TrainingArguments, target: type, **overrides):  # noqa: ANN201 - an instance of target
    """A stage's config (KTOConfig, SFTConfig, GRPOConfig, RewardConfig, PPOConfig) sharing
    `config`'s devices, precision, logging and reporting, with the stage's own knobs."""
    own = {f.name for f in fields(target) if f.init}
    shared = {k: v for k, v in training_arguments(config).items() if k in own}
    return target(**{**shared, **overrides})
