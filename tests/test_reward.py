"""Reward model: training on a tiny model, metrics, saving, loading, scoring, judging."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from feedback.export import Row
from trainer.config import bf16_native
from trainer.reward_model import (
    METRICS_FILE,
    RewardConfig,
    RewardModel,
    choose_threshold,
    pair_accuracy,
    thumbs_metrics,
    train_reward_model,
)

TOPICS = ["tea", "rain", "maps", "bikes", "bread", "stars", "clocks", "ships", "birds", "glass",
          "paper", "rivers", "salt", "wool", "lamps", "bells", "chess", "honey", "ice", "kites"]
MARKER = "banana"  # the learnable preference: chosen answers say it, rejected ones do not


def pair(topic: str, as_row: bool) -> Row | dict:
    data = {
        "prompt": [{"role": "user", "content": f"Tell me about {topic}."}],
        "chosen": [{"role": "assistant", "content": f"{MARKER} {MARKER} {topic} {MARKER}"}],
        "rejected": [{"role": "assistant", "content": f"plain {topic} answer"}],
    }
    if not as_row:
        return data
    return Row(data, "comparison", data["prompt"][0]["content"], datetime.now(UTC))


def thumb(topic: str, up: bool) -> dict:
    text = f"{MARKER} {topic} {MARKER}" if up else f"plain {topic} answer"
    return {"prompt": [{"role": "user", "content": f"What about {topic}?"}],
            "completion": [{"role": "assistant", "content": text}], "label": up}


def tiny_config(tmp: Path) -> RewardConfig:
    return RewardConfig(output_dir=str(tmp / "run"), max_steps=4, learning_rate=1e-2, per_device_train_batch_size=4,
                        lora_r=4, lora_alpha=8, max_length=64, seed=0, disable_tqdm=True, use_cpu=True)


@pytest.fixture(scope="module")
def trained(tiny_model: Path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reward")
    # Rows from the store (Row) and plain TRL dicts are both accepted.
    train = [pair(t, as_row=i % 2 == 0) for i, t in enumerate(TOPICS[:16])] + [pair(t + "s", False) for t in TOPICS[:16]]
    held_out = [pair(t, as_row=False) for t in TOPICS[16:]]
    thumbs = [thumb(t, up=i % 2 == 0) for i, t in enumerate(TOPICS[12:])]
    config = tiny_config(tmp)
    result = train_reward_model(str(tiny_model), train, held_out, thumbs, config, tmp / "adapter")
    return result, config


@pytest.fixture
def reward_model(trained, tiny_model: Path) -> RewardModel:
    result, _ = trained
    return RewardModel.load(str(tiny_model), result.adapter_dir)  # fresh per test: tests change its knobs


def test_config_defaults_suit_a_cpu_nightly_run():
    config = RewardConfig(output_dir=None)
    assert config.bf16 is bf16_native()  # bf16 only where this CPU computes in it (AVX512-BF16)
    assert config.save_strategy == "no"
    assert config.report_to == [] or config.report_to == "none" or config.report_to == ["none"]
    assert config.gradient_checkpointing is False and config.activation_checkpointing is False
    assert config.lora_r == 16 and "q_proj" in config.lora_target_modules
    assert config.max_length == 512
    assert config.output_dir == "var/runs/pending-reward"


def test_training_changes_lora_and_score_head(trained, tiny_model: Path):
    import torch
    from safetensors.torch import load_file
    from transformers import set_seed

    from trainer.reward_model import _load_base

    result, config = trained
    weights = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b, sorted(weights)
    assert any(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero
    heads = [w for name, w in weights.items() if "score" in name]
    assert len(heads) == 1, sorted(weights)
    set_seed(config.seed)  # the head the training run started from
    initial, _ = _load_base(str(tiny_model), torch.bfloat16 if config.bf16 else torch.float32)
    initial.score.float()  # as training does
    assert heads[0].shape == initial.score.weight.shape
    assert not torch.allclose(heads[0], initial.score.weight)


def test_metrics_are_reported_and_written(trained):
    result, _ = trained
    saved = json.loads((result.adapter_dir / METRICS_FILE).read_text())
    assert saved == result.metrics
    assert 0.0 <= saved["pair_accuracy"] <= 1.0
    assert 0.0 <= saved["train_pair_accuracy"] <= 1.0
    assert math.isfinite(saved["threshold"])
    thumbs = saved["thumbs"]
    assert thumbs["count"] == 8
    assert thumbs["true_positive"] + thumbs["false_positive"] + thumbs["true_negative"] + thumbs["false_negative"] == 8
    for key in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= thumbs[key] <= 1.0
    assert saved["counts"] == {"train_pairs": 32, "eval_pairs": 4, "eval_thumbs": 8}
    assert result.history and "loss" in result.history[0]


def test_scores_are_deterministic_and_batching_does_not_change_them(reward_model: RewardModel):
    prompts = ["Tell me about tea.", [{"role": "user", "content": "A longer question about rivers and salt?"}],
               "Hi", "Tell me about kites."]
    answers = [f"{MARKER} tea", "plain rivers answer that is a good deal longer than the others", "hello", "kites"]
    first = reward_model.score(prompts, answers)
    assert first == reward_model.score(prompts, answers)
    one_by_one = [reward_model.score([p], [a])[0] for p, a in zip(prompts, answers)]
    assert first == pytest.approx(one_by_one, abs=1e-5)
    reward_model._scorer.batch_size = 3  # a batch boundary in the middle
    assert reward_model.score(prompts, answers) == pytest.approx(first, abs=1e-5)
    # A plain string prompt is one user message; a plain answer one assistant message.
    as_messages = reward_model.score([[{"role": "user", "content": "Hi"}]], [[{"role": "assistant", "content": "hello"}]])
    assert as_messages[0] == pytest.approx(first[2], abs=1e-6)


def test_judge_follows_the_scores(reward_model: RewardModel):
    prompt = "Tell me about bread."
    answers = [f"{MARKER} bread {MARKER}", "plain bread answer", "bread", f"{MARKER}", "something else entirely"]
    scores = reward_model.score([prompt] * len(answers), answers)
    high, low = answers[scores.index(max(scores))], answers[scores.index(min(scores))]
    gap = max(scores) - min(scores)
    assert gap > 0
    reward_model.tie_margin = gap / 2
    assert reward_model.judge(prompt, high, low) == "a"
    assert reward_model.judge(prompt, low, high) == "b"
    assert reward_model(prompt, high, low) == "a"  # the object is a Judge itself
    assert reward_model.judge(prompt, high, high) == "tie"
    reward_model.tie_margin = gap * 2
    assert reward_model.judge(prompt, high, low) == "tie"


def test_uncertainty_is_highest_near_the_threshold(reward_model: RewardModel):
    prompt = "Tell me about wool."
    answers = [f"{MARKER} wool {MARKER}", "plain wool answer", "wool", f"{MARKER} {MARKER}"]
    scores = reward_model.score([prompt] * len(answers), answers)
    values = reward_model.uncertainties([prompt] * len(answers), answers)
    assert values == pytest.approx([reward_model.uncertainty(prompt, a) for a in answers], abs=1e-6)
    assert all(0.0 < v <= 1.0 for v in values)
    by_distance = sorted(range(len(answers)), key=lambda i: abs(scores[i] - reward_model.threshold))
    by_uncertainty = sorted(range(len(answers)), key=lambda i: -values[i])
    assert by_distance == by_uncertainty
    alone = reward_model.score([prompt], [answers[0]])[0]
    reward_model.threshold = alone  # an answer exactly at the threshold is a coin flip
    assert reward_model.uncertainty(prompt, answers[0]) == pytest.approx(1.0)
    assert reward_model.rate(prompt, answers[0]) == "up"  # at or above the threshold
    reward_model.threshold = alone + 1.0
    assert reward_model.rate(prompt, answers[0]) == "down"


def test_thumbs_metrics_on_a_known_confusion_matrix():
    scores = [0.9, 0.8, 0.2, 0.1, 0.6, 0.4, 0.5]
    labels = [True, True, False, False, False, True, True]
    # predicted up (>= 0.5): T T F F T F T -> tp 3 (0, 1, 6), fp 1 (4), tn 2 (2, 3), fn 1 (5)
    metrics = thumbs_metrics(scores, labels, threshold=0.5)
    assert (metrics["true_positive"], metrics["false_positive"], metrics["true_negative"],
            metrics["false_negative"]) == (3, 1, 2, 1)
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(3 / 4)
    none_up = thumbs_metrics([0.1, 0.2], [True, False], threshold=0.5)
    assert none_up["precision"] == 0.0 and none_up["recall"] == 0.0 and none_up["accuracy"] == 0.5
    assert thumbs_metrics([], [], 0.0)["accuracy"] is None


def test_pair_accuracy_and_threshold_rule():
    assert pair_accuracy([1.0, 0.0, 2.0, 3.0], [0.5, 0.5, 2.0, 1.0]) == 0.5  # equal scores are not a win
    assert pair_accuracy([], []) is None
    assert choose_threshold([3.0, 1.0], [0.0, 2.0]) == 1.5  # median of the pooled scores
    assert choose_threshold([], []) == 0.0
