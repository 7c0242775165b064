"""Reward model: a LoRA sequence-classification head trained with TRL's RewardTrainer.

Trained on preference pairs (A/B choices, star gaps, corrections: `feedback.export.preference_rows`,
TRL's conversational `prompt`/`chosen`/`rejected`), evaluated on held-out pairs (pair accuracy)
and held-out thumbs (`kto_rows`: `prompt`/`completion`/`label`; accuracy, precision, recall, F1),
and saved next to the release it was trained for.

Loaded back (`RewardModel.load`), it scores answers, judges two answers with the interface of
`trainer.judges` (`judge(prompt, answer_a, answer_b) -> "a" | "b" | "tie"`), and says how unsure
it is about a live answer, so the reviewers' queue can show the least certain answers first.

Scores are Bradley-Terry rewards: only differences mean something (sigmoid(r_a - r_b) is the
model's probability that a beats b), so any absolute cut, such as the thumbs threshold, is
calibrated from data and stored with the adapter.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import RewardConfig as TrlRewardConfig

from feedback.export import Row
from trainer.config import device_defaults, lora_config
from trainer.fit import TimeBudget

METRICS_FILE = "reward.json"  # written next to the adapter files in out_dir
Messages = list[dict[str, str]]


@dataclass
class RewardConfig(TrlRewardConfig):
    """TRL's RewardConfig with tuneloop's defaults (every TRL/transformers option still works)."""

    # ---- LoRA
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of the reward adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "modules the reward adapter wraps (the score head is trained in full)"},
    )
    # ---- use
    tie_margin: float = field(
        default=0.1,
        metadata={"help": "reward gap under which the judge says tie (0.1: the model is 47.5-52.5% sure)"},
    )
    score_batch_size: int = field(default=8, metadata={"help": "answers per forward pass when scoring"})

    # TRL's defaults, changed: a nightly job on one machine by default.
    output_dir: str | None = field(default=None, metadata={"help": "checkpoints; default var/runs/pending-reward"})
    learning_rate: float = 1e-4
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int | None = 512
    logging_steps: float = 1
    # On by default in TRL; not worth its extra step time for a small model. (transformers 5
    # renamed gradient_checkpointing to activation_checkpointing; the old name mirrors this one.)
    activation_checkpointing: bool | None = False
    save_strategy: str = "no"
    report_to: list[str] | str | None = "none"
    bf16: bool | None = None  # set from the device in __post_init__: see config.device_defaults

    def __post_init__(self) -> None:
        device_defaults(self)
        if self.output_dir is None:
            self.output_dir = "var/runs/pending-reward"
        super().__post_init__()


@dataclass
class RewardResult:
    adapter_dir: Path
    metrics: dict[str, Any]  # what reward.json holds: pair accuracy, thumbs metrics, threshold, counts
    history: list[dict] = field(default_factory=list)  # the trainer's log per logging step

    @property
    def threshold(self) -> float:
        return self.metrics["threshold"]

    @property
    def pair_accuracy(self) -> float | None:
        return self.metrics["pair_accuracy"]


# ---------------------------------------------------------------- inputs


def _data(row: Row | Mapping) -> Mapping:
    return row.data if isinstance(row, Row) else row


def as_messages(prompt: str | Messages) -> Messages:
    """A prompt as chat messages: a plain string is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def as_answer(completion: str | Messages) -> Messages:
    """A completion as chat messages: a plain string is one assistant message."""
    return [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)


def _conversation(prompt: str | Messages, completion: str | Messages) -> Messages:
    # The same text TRL's RewardTrainer trains on: prompt + answer through the chat template,
    # without a generation prompt (trl.data_utils._tokenize on `prompt + chosen`).
    return as_messages(prompt) + as_answer(completion)


def _pair_dataset(rows: Sequence[Row | Mapping]):
    from datasets import Dataset

    records = []
    for row in rows:
        data = _data(row)
        records.append({"prompt": as_messages(data["prompt"]), "chosen": as_answer(data["chosen"]),
                        "rejected": as_answer(data["rejected"])})
    return Dataset.from_list(records)


# ---------------------------------------------------------------- metrics


def thumbs_metrics(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, Any]:
    """Scores at or above `threshold` predict thumbs up; compared with the real thumbs.

    Returns accuracy, precision, recall and F1 of the "up" class (scikit-learn; 0 where a
    ratio is undefined) and the confusion counts.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    truth = [bool(label) for label in labels]
    predicted = [score >= threshold for score in scores]
    if not truth:
        return {"count": 0, "accuracy": None, "precision": None, "recall": None, "f1": None,
                "true_positive": 0, "false_positive": 0, "true_negative": 0, "false_negative": 0}
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, average="binary", pos_label=True, zero_division=0
    )
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[False, True]).ravel()
    return {
        "count": len(truth),
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "true_positive": int(tp),
        "false_positive": int(fp),
        "true_negative": int(tn),
        "false_negative": int(fn),
    }


def pair_accuracy(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float | None:
    """Share of pairs where chosen scores strictly higher than rejected (None without pairs)."""
    if not chosen_scores:
        return None
    return sum(c > r for c, r in zip(chosen_scores, rejected_scores, strict=True)) / len(chosen_scores)


def choose_threshold(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> float:
    """The thumbs cut: the median of all training-pair scores, chosen and rejected pooled.

    Rewards are shift-invariant (the pair loss only sees differences), so the cut must come
    from data. Every training pair holds one better and one worse answer, so the pooled
    median splits "the better half" from "the worse half" of what users compared; it is
    taken on training pairs so the held-out thumbs it is measured on do not choose it.
    """
    pooled = [*chosen_scores, *rejected_scores]
    return float(statistics.median(pooled)) if pooled else 0.0


# ---------------------------------------------------------------- model


def _load_base(model_path: str | Path, dtype):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # A causal-LM folder loads with a new, randomly initialised `score` head (num_labels=1)
    # and without its lm_head; TRL's context manager hides the two expected warnings.
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(str(model_path), num_labels=1, dtype=dtype)
    # The classifier reads the score at the last token that is not padding.
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


class _Scorer:
    """Batched, no-grad scoring of (prompt, completion) with the chat template used in training."""

    def __init__(self, model, tokenizer, max_length: int | None, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = max(1, batch_size)

    def encode(self, prompt: str | Messages, completion: str | Messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(_conversation(prompt, completion), tokenize=True,
                                                 return_dict=True)["input_ids"]
        ids = list(ids)
        # Training drops pairs longer than max_length; live answers are scored anyway, on their
        # last max_length tokens, because the score is read at the end of the answer.
        if self.max_length is not None and len(ids) > self.max_length:
            ids = ids[-self.max_length:]
        return ids

    def __call__(self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages]) -> list[float]:
        import torch

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        encoded = [self.encode(p, c) for p, c in zip(prompts, completions)]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        scores: list[float] = []
        try:
            with torch.no_grad():
                for start in range(0, len(encoded), self.batch_size):
                    batch = encoded[start : start + self.batch_size]
                    width = max(len(ids) for ids in batch)
                    # Right padding, as TRL's collator does; the head pools the last non-pad token.
                    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch], device=device)
                    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch], device=device)
                    logits = self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                    scores.extend(float(x) for x in logits.squeeze(-1).float().cpu())
        finally:
            self.model.train(was_training)
        return scores


def train_reward_model(model_path: str | Path, train_pairs: Sequence[Row | Mapping],
                       eval_pairs: Sequence[Row | Mapping], eval_thumbs: Sequence[Row | Mapping],
                       config: RewardConfig, out_dir: str | Path, minutes: float = 0.0) -> RewardResult:
    """Train a LoRA reward model on `train_pairs`, measure it on the held-out rows, save to `out_dir`.

    `out_dir` receives the adapter (with the score head, as PEFT's modules_to_save) and
    `reward.json`: held-out pair accuracy, thumbs accuracy/precision/recall/F1 and the threshold.
    With `minutes` > 0 training stops before a step would run past them.
    """
    import torch
    from peft import get_peft_model
    from transformers import set_seed
    from trl import RewardTrainer

    if not train_pairs:
        raise ValueError("a reward model needs at least one training pair")
    out_dir = Path(out_dir)
    set_seed(config.seed)  # before the model: the new score head is drawn at random
    model, tokenizer = _load_base(model_path, torch.bfloat16 if config.bf16 else torch.float32)
    # The head is new: train it in full and save it with the adapter, with fp32 master weights
    # (in bf16 small updates round away; autocast still computes it in bf16).
    model.score.float()
    model = get_peft_model(model, lora_config(config, "SEQ_CLS", modules_to_save=["score"]))
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=_pair_dataset(train_pairs),
        processing_class=tokenizer,
        callbacks=[TimeBudget(minutes)] if minutes > 0 else None,  # a night's share of the clock
    )
    trainer.train()  # transformers' progress bar unless config.disable_tqdm

    scorer = _Scorer(trainer.model, tokenizer, config.max_length, config.score_batch_size)

    def pair_scores(rows: Sequence[Row | Mapping]) -> tuple[list[float], list[float]]:
        data = [_data(r) for r in rows]
        prompts = [d["prompt"] for d in data]
        chosen = scorer(prompts, [d["chosen"] for d in data]) if data else []
        rejected = scorer(prompts, [d["rejected"] for d in data]) if data else []
        return chosen, rejected

    train_chosen, train_rejected = pair_scores(train_pairs)
    threshold = choose_threshold(train_chosen, train_rejected)
    held_chosen, held_rejected = pair_scores(eval_pairs)
    thumbs = [_data(r) for r in eval_thumbs]
    thumb_scores = scorer([t["prompt"] for t in thumbs], [t["completion"] for t in thumbs]) if thumbs else []

    metrics = {
        "pair_accuracy": pair_accuracy(held_chosen, held_rejected),
        "train_pair_accuracy": pair_accuracy(train_chosen, train_rejected),
        "threshold": threshold,
        "threshold_rule": "median of training-pair scores (chosen and rejected pooled)",
        "thumbs": thumbs_metrics(thumb_scores, [t["label"] for t in thumbs], threshold),
        "tie_margin": config.tie_margin,
        "counts": {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "eval_thumbs": len(thumbs)},
        "pad_token": tokenizer.pad_token,
        "max_length": config.max_length,
        "base_model": str(model_path),
    }
    if trainer.is_world_process_zero():  # one writer under a distributed launch
        out_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(out_dir)
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    trainer.accelerator.wait_for_everyone()
    history = [entry for entry in trainer.state.log_history if "loss" in entry or "eval_loss" in entry]
    return RewardResult(out_dir, metrics, history)


class RewardModel:
    """A trained reward adapter on its base model: scores, a judge, and review uncertainty."""

    def __init__(self, model, tokenizer, *, threshold: float = 0.0, tie_margin: float = 0.1,
                 max_length: int | None = 512, batch_size: int = 8, metrics: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.tie_margin = tie_margin
        self.metrics = metrics or {}
        self._scorer = _Scorer(model, tokenizer, max_length, batch_size)

    @classmethod
    def load(cls, model_path: str | Path, adapter_dir: str | Path, *, device: str = "cpu",
             batch_size: int = 8, tie_margin: float | None = None) -> RewardModel:
        import torch
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        metrics_path = adapter_dir / METRICS_FILE
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
        base, tokenizer = _load_base(model_path, torch.float32)
        if metrics.get("pad_token"):
            tokenizer.pad_token = metrics["pad_token"]
            base.config.get_text_config().pad_token_id = tokenizer.pad_token_id
            base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device)
        model.eval()
        return cls(model, tokenizer, threshold=float(metrics.get("threshold", 0.0)),
                   tie_margin=float(tie_margin if tie_margin is not None else metrics.get("tie_margin", 0.1)),
                   max_length=metrics.get("max_length", 512), batch_size=batch_size, metrics=metrics)

    def score(self, prompts_or_messages: Sequence[str | Messages], completions: Sequence[str | Messages]) -> list[float]:
        """One reward per (prompt, completion); a prompt is a string or chat messages."""
        return self._scorer(prompts_or_messages, completions)

    def judge(self, prompt: str | Messages, answer_a: str, answer_b: str) -> str:
        """"a" or "b" for the higher reward; "tie" when the gap is within `tie_margin`.

        With Bradley-Terry rewards sigmoid(r_a - r_b) is the model's probability that a beats
        b, so the default margin of 0.1 calls a tie when it is between 47.5% and 52.5% sure.
        """
        a, b = self.score([prompt, prompt], [answer_a, answer_b])
        if abs(a - b) <= self.tie_margin:
            return "tie"
        return "a" if a > b else "b"

    __call__ = judge  # the object itself meets trainer.judges.Judge

    def rate(self, prompt: str | Messages, answer: str) -> str:
        """A thumb for one answer (the `rate` attribute judges may carry): up at or above the threshold."""
        return "up" if self.score([prompt], [answer])[0] >= self.threshold else "down"

    def uncertainties(self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages]) -> list[float]:
        """Batched `uncertainty`: higher means less sure; sort descending to fill the review queue."""
        return [_closeness(s, self.threshold) for s in self.score(prompts, completions)]

    def uncertainty(self, prompt: str | Messages, completion: str | Messages) -> float:
        """How unsure the model is whether users would like this answer, in (0, 1].

        sigmoid(score - threshold) is the model's probability that the answer beats a typical
        answer at the threshold (the median of what users compared); 1 at the threshold,
        where it is a coin flip, falling towards 0 as the score moves away on either side.
        """
        return self.uncertainties([prompt], [completion])[0]


def _closeness(score: float, threshold: float) -> float:
    probability = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, score - threshold))))
    return 1.0 - abs(2.0 * probability - 1.0)
