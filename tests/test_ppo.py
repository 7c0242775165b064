"""PPO: the loss pieces on hand-computed numbers, then a short run on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.ppo import (
    VALUE_HEAD_FILE,
    PPOConfig,
    PPOTrainer,
    ValueHead,
    compute_gae,
    masked_mean,
    masked_whiten,
    per_token_kl,
    policy_loss,
    response_mask,
    token_rewards,
    value_loss,
)

# ---------------------------------------------------------------- pure functions


def test_gae_hand_computed_three_tokens():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    # gamma = 0.5, lam = 0.5, so gamma * lam = 0.25; V after the last token is 0.
    # t=2: delta = 3 + 0.5*0   - 1.5 = 1.5    A2 = 1.5
    # t=1: delta = 2 + 0.5*1.5 - 1.0 = 1.75   A1 = 1.75 + 0.25*1.5   = 2.125
    # t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0    A0 = 1.0  + 0.25*2.125 = 1.53125
    # returns = A + V = [2.03125, 3.125, 3.0]
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert torch.allclose(advantages, torch.tensor([[1.53125, 2.125, 1.5]]))
    assert torch.allclose(returns, torch.tensor([[2.03125, 3.125, 3.0]]))


def test_gae_ignores_padding():
    # Row 2 is the same first two tokens followed by a padded one with junk reward/value.
    rewards = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 0.0], [0.5, 1.0, 77.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # gamma = lam = 0.5; the episode ends after token 1:
    # t=1: delta = 2 + 0 - 1.0 = 1.0              A1 = 1.0
    # t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0        A0 = 1.0 + 0.25*1.0 = 1.25
    # returns = [1.75, 2.0, 0]
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    expected = torch.tensor([[1.25, 1.0, 0.0]] * 2)
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, torch.tensor([[1.75, 2.0, 0.0]] * 2))


def test_token_rewards_kl_penalty_and_score_on_last_real_token():
    score = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.2, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    rewards = token_rewards(score, kl, kl_coef=0.5, mask=mask)
    # -0.5*kl on real tokens, + score on the last real one, 0 on padding
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 2.0, 0.0], [-0.1 - 1.0, 0.0, 0.0, 0.0]]))


def test_per_token_kl_is_k1():
    assert torch.allclose(per_token_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])), torch.tensor([0.5, -1.0]))


def test_masked_mean_and_whiten():
    values = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert masked_mean(values, mask).item() == 2.0
    white = masked_whiten(values, mask)
    # mean 2, unbiased variance ((1-2)^2 + (3-2)^2) / 1 = 2
    assert torch.allclose(white, torch.tensor([[-1 / 2**0.5, 1 / 2**0.5, 0.0]]), atol=1e-6)
    assert torch.allclose(masked_whiten(values, mask, shift_mean=False), torch.tensor([[2 - 1 / 2**0.5, 2 + 1 / 2**0.5, 0.0]]), atol=1e-6)


def test_response_mask_stops_after_first_stop_token():
    responses = torch.tensor([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 2, 2, 2, 2]])
    assert response_mask(responses, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_policy_loss_clips_positive_advantage_above_one_plus_eps():
    old = torch.zeros(1, 3)
    # token 0: ratio e^0.5 ~ 1.65 > 1.2 with A > 0 -> clipped, no gradient
    # token 1: ratio 1 -> unclipped, gradient -A*ratio/3
    # token 2: ratio 1.65 with A < 0 -> the unclipped term is the larger (pessimistic) one: not clipped
    new = torch.tensor([[0.5, 0.0, 0.5]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipfrac = policy_loss(new, old, advantages, torch.ones(1, 3), cliprange=0.2)
    loss.backward()
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[0, 1].item() == pytest.approx(-1.0 / 3)
    assert new.grad[0, 2].item() == pytest.approx(torch.exp(torch.tensor(0.5)).item() / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    # loss = mean(-1.2, -1, +1.6487)
    assert loss.item() == pytest.approx((-1.2 - 1.0 + torch.exp(torch.tensor(0.5)).item()) / 3)


def test_policy_loss_ignores_padding():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.0, 3.0]], requires_grad=True)
    loss, clipfrac = policy_loss(new, old, torch.tensor([[1.0, 1.0]]), torch.tensor([[1, 0]]), cliprange=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0) and clipfrac.item() == 0.0 and new.grad[0, 1].item() == 0.0


def test_value_loss_clips():
    old = torch.zeros(1, 2)
    returns = torch.ones(1, 2)
    # token 0: moved 0.5 > 0.2 towards the return -> V_clip = 0.2, (0.2-1)^2 = 0.64 > (0.5-1)^2 = 0.25: clipped, no gradient
    # token 1: moved 0.1 (inside the range) -> both terms (0.1-1)^2 = 0.81: not clipped, gradient 0.5*2*(0.1-1)/2 = -0.45
    new = torch.tensor([[0.5, 0.1]], requires_grad=True)
    loss, clipfrac = value_loss(new, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)
    assert new.grad[0, 0].item() == 0.0
    assert new.grad[0, 1].item() == pytest.approx(-0.45)
    assert clipfrac.item() == pytest.approx(0.5)


# ---------------------------------------------------------------- on the tiny model


def _policy(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(base, lora), tokenizer


def _config(tmp_path, **overrides) -> PPOConfig:
    options = {
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 2, "response_length": 8,
        "max_steps": 2, "num_ppo_epochs": 2, "num_mini_batches": 2, "learning_rate": 1e-3,
        "temperature": 1.0, "use_cpu": True, "seed": 0,
    }
    options.update(overrides)
    return PPOConfig(**options)


def short_answers(prompts: list[str], completions: list[str]) -> list[float]:
    return [-len(c) / 10 for c in completions]


def test_kl_is_zero_before_the_first_update(tiny_model, tmp_path):
    model, tokenizer = _policy(tiny_model)
    trainer = PPOTrainer(model, tokenizer, short_answers, _config(tmp_path))
    rollouts = trainer.rollout(["Hello there", "What is two plus two, exactly?"])
    assert rollouts.mask.sum() > 0
    # fresh LoRA: B = 0, so the adapted model and the adapter-disabled reference agree exactly
    assert torch.equal(rollouts.logprobs, rollouts.ref_logprobs)
    assert torch.count_nonzero(per_token_kl(rollouts.logprobs, rollouts.ref_logprobs)) == 0
    assert rollouts.values.shape == rollouts.logprobs.shape == rollouts.responses.shape
    assert rollouts.scores.tolist() == pytest.approx(short_answers(rollouts.prompts, rollouts.completions))


def test_config_rejects_minibatches_that_do_not_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="num_mini_batches"):
        _config(tmp_path, per_device_train_batch_size=3, num_mini_batches=2)
    config = _config(tmp_path, per_device_train_batch_size=4, num_mini_batches=2)
    assert config.batch_size == 4 and config.mini_batch_size == 2


def test_train_end_to_end_updates_lora_and_saves(tiny_model, tmp_path):
    model, tokenizer = _policy(tiny_model)
    config = _config(tmp_path)
    trainer = PPOTrainer(model, tokenizer, short_answers, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert before
    history = trainer.train(["Hi", "Tell me a story", "What is 2+2?"])

    assert len(history) == 2
    for entry in history:
        assert {"step", "score", "kl", "policy_loss", "value_loss", "clipfrac", "value_clipfrac"} <= entry.keys()
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in entry.values())
    assert history[0]["kl"] == 0.0  # step 1 rolls out before any update
    assert history[1]["kl"] != 0.0  # step 2 after it: policy and reference now differ
    changed = [n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, before[n])]
    assert changed, "no LoRA parameter moved"
    assert any("lora_B" in n for n in changed)

    folder = trainer.save(tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file()
    assert (folder / "adapter_model.safetensors").is_file()
    assert (folder / VALUE_HEAD_FILE).is_file()
    head = ValueHead.load(folder)
    assert torch.equal(head.summary.weight, trainer.value_head.summary.weight.cpu())


def test_ref_adapter_is_the_reference_when_loaded(tiny_model, tmp_path):
    """Continuing from an active release (trainer.dpo.load_policy): the "ref" copy anchors the KL."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = _policy(tiny_model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # a trained-looking adapter, far from the base model
    model.save_pretrained(tmp_path / "active")
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, tmp_path / "active", is_trainable=True)
    model.load_adapter(tmp_path / "active", adapter_name="ref", is_trainable=False)
    model.set_adapter("default")

    trainer = PPOTrainer(model, tokenizer, short_answers, _config(tmp_path))
    rollouts = trainer.rollout(["Hello there", "What is two plus two?"])
    assert torch.equal(rollouts.logprobs, rollouts.ref_logprobs)
    with model.disable_adapter():  # the bare base model would have given a non-zero KL
        base_logprobs, _ = trainer._forward(rollouts.query_ids, rollouts.query_mask, rollouts.responses, rollouts.mask)
    assert not torch.equal(rollouts.logprobs, base_logprobs)
    # switching back left the trainable adapter trainable and the reference frozen
    assert model.active_adapter == "default"
    grads = {n: p.requires_grad for n, p in model.named_parameters() if "lora_" in n}
    assert all(v for n, v in grads.items() if ".default." in n)
    assert not any(v for n, v in grads.items() if ".ref." in n)
