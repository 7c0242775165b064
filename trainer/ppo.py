"""PPO on a LoRA adapter: a compact RLHF-PPO trainer (TRL dropped its own after 1.12).

The recipe is the published one (Ziegler et al. 2019; Ouyang et al. 2022; TRL's former
``PPOTrainer`` and "The N Implementation Details of RLHF with PPO"):

1. **Rollouts**: the LoRA policy samples a completion (``response_length`` tokens at most,
   at ``temperature``) for each prompt of the step.
2. **Scores**: ``reward_fn(prompts, completions)`` scores each completion once; the score
   is paid on its last real token (a reward model or the plugins' reward hooks plug in here).
3. **KL penalty**: every response token also pays ``-kl_coef * (logp_policy - logp_ref)``.
   The reference is the same model with the adapter disabled (``model.disable_adapter()``),
   so no second copy of the weights is kept. When the model also carries a frozen adapter
   named "ref" (the nightly run's PPO stage continuing from an active release), that
   adapter is the reference instead, so the KL anchor is what users get today.
4. **Values and GAE**: a value head (``nn.Linear(hidden, 1)`` on the last hidden states)
   estimates the return of each state; GAE turns rewards and values into advantages.
5. **Update**: ``num_ppo_epochs`` passes over shuffled minibatches of the rollouts, with the
   clipped policy loss and the clipped value loss, one optimizer step per minibatch.

The loss functions are small pure functions so they can be tested on hand-made numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, TrainingArguments

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
REFERENCE_ADAPTER = "ref"  # as in trainer.dpo: a frozen copy of the active release's adapter

RewardFn = Callable[[list[str], list[str]], Sequence[float]]


# --------------------------------------------------------------------------- config


@dataclass
class PPOConfig(TrainingArguments):
    """PPO knobs, in the style of TRL's configs (a ``TrainingArguments`` subclass).

    ``per_device_train_batch_size`` is the number of rollouts per PPO step (``batch_size``
    is an alias); it is split into ``num_mini_batches`` minibatches for the update.
    ``max_steps`` counts PPO steps (rollout batches); ``-1`` means ``num_train_epochs``
    passes over the prompts.
    """

    # ---- rollouts
    response_length: int = field(default=64, metadata={"help": "most tokens sampled per completion"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature for rollouts (and logprobs)"})
    use_chat_template: bool = field(
        default=True, metadata={"help": "wrap each prompt as a user turn with the tokenizer's chat template"}
    )
    # ---- reward
    kl_coef: float = field(default=0.05, metadata={"help": "beta: weight of the per-token KL penalty"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten token rewards (scale only) before GAE"})
    # ---- advantages
    gamma: float = field(default=1.0, metadata={"help": "discount factor"})
    lam: float = field(default=0.95, metadata={"help": "lambda of generalized advantage estimation"})
    # ---- update
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each batch of rollouts"})
    num_mini_batches: int = field(default=1, metadata={"help": "minibatches per pass (must divide the batch)"})
    cliprange: float = field(default=0.2, metadata={"help": "epsilon of the clipped policy ratio"})
    cliprange_value: float = field(default=0.2, metadata={"help": "how far a value may move from its rollout value"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})

    # transformers' defaults, changed for small models and one machine
    output_dir: str | None = field(default=None, metadata={"help": "where save() writes by default"})
    learning_rate: float = 3e-5
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rollouts per PPO step"})
    max_steps: int = field(default=100, metadata={"help": "PPO steps; -1: num_train_epochs passes over the prompts"})
    logging_steps: float = 1
    save_strategy: str = "no"
    report_to: list[str] | str | None = "none"
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = "var/runs/ppo"
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.per_device_train_batch_size % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches={self.num_mini_batches} must divide the batch of "
                f"{self.per_device_train_batch_size} rollouts"
            )

    @property
    def batch_size(self) -> int:
        """Rollouts per PPO step."""
        return self.per_device_train_batch_size

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size // self.num_mini_batches


# --------------------------------------------------------------------------- pure functions


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked values (Bessel-corrected by default, as TRL did)."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise the masked values to unit variance (and zero mean if ``shift_mean``).

    Padded positions come back as 0.
    """
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate between policy and reference on the sampled tokens.

    This is the "k1" estimator, ``log p(x) - log q(x)`` for ``x`` sampled from ``p``: unbiased
    for KL(p || q) in expectation but noisy and negative on some tokens. It is what the
    RLHF-PPO recipe (and TRL's PPO, ``kl_estimator="k1"``) puts in the per-token reward.
    """
    return logprobs - ref_logprobs


def token_rewards(score: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` on each real token, plus ``score`` on the last real one.

    ``score`` has shape ``[batch]``; ``kl`` and ``mask`` have shape ``[batch, tokens]`` with
    responses right-padded (mask 1 on real tokens, then 0).
    """
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over right-padded responses.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    where the episode ends at the last real token (``V`` and ``A`` past it count as 0).
    Returns ``(advantages, returns)`` with ``returns = advantages + values``; both are 0 on
    padded positions. Advantages are not whitened here.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        if t + 1 < length:
            next_mask = mask[:, t + 1]
            next_value = values[:, t + 1] * next_mask
        else:
            next_mask = torch.zeros_like(last_gae)
            next_value = next_mask
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss and the share of tokens where the clip was active.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(new - old)``;
    where the clipped term wins, the gradient through that token is zero.
    """
    ratio = torch.exp(new_logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(new_logprobs.dtype), mask)
    return loss, clipfrac.detach()


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` and its clip fraction.

    ``V_clip = V_old + clip(V - V_old, -c, c)``: a value may not move more than ``c`` from
    its rollout estimate in a way that lowers the loss.
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_loss = (new_values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    clipfrac = masked_mean((clipped_loss > unclipped_loss).to(new_values.dtype), mask)
    return loss, clipfrac.detach()


def response_mask(responses: torch.Tensor, stop_token_ids: Sequence[int]) -> torch.Tensor:
    """1 on each response token up to and including the first stop token, 0 after it."""
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for token in stop_token_ids:
        is_stop |= responses == token
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # stops strictly before t
    return (stops_before == 0).long()


# --------------------------------------------------------------------------- value head


class ValueHead(nn.Module):
    """A scalar value per token from the policy's last hidden states."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden_states).squeeze(-1)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / VALUE_HEAD_FILE
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> ValueHead:
        from safetensors.torch import load_file

        state = load_file(Path(folder) / VALUE_HEAD_FILE)
        head = cls(state["summary.weight"].shape[1])
        head.load_state_dict(state)
        return head


# --------------------------------------------------------------------------- trainer


@dataclass
class Rollouts:
    """One PPO step's batch: prompt-side tensors left-padded, response-side right-padded."""

    prompts: list[str]
    completions: list[str]
    query_ids: torch.Tensor  # [B, Q]
    query_mask: torch.Tensor  # [B, Q]
    responses: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] 1 on real response tokens (through the first stop token)
    logprobs: torch.Tensor  # [B, R] policy, at rollout time
    ref_logprobs: torch.Tensor  # [B, R] adapter disabled
    values: torch.Tensor  # [B, R]
    scores: torch.Tensor  # [B]


class PPOTrainer:
    """PPO for a PEFT (LoRA) causal LM; the reference is the same model with its adapter off.

    ``reward_fn(prompts, completions) -> scores`` scores whole completions (a reward model
    wrapped in a function, or plugins' reward hooks). ``train(prompts)`` returns the history:
    one dict per PPO step with ``score``, ``kl``, ``policy_loss``, ``value_loss``,
    ``clipfrac`` and more.
    """

    def __init__(self, model, tokenizer, reward_fn: RewardFn, config: PPOConfig, value_head: ValueHead | None = None):
        if not hasattr(model, "disable_adapter"):
            raise TypeError("PPOTrainer needs a PEFT model: the reference is the model with its adapter disabled")
        self.model = model
        self.tokenizer = tokenizer
        self.reward_fn = reward_fn
        self.config = config
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = next(model.parameters()).device
        self.value_head = (value_head or ValueHead(model.config.hidden_size)).to(self.device, torch.float32)
        trainable = [p for p in model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(
            trainable,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        self._trainable = trainable
        stops = model.generation_config.eos_token_id if model.generation_config is not None else None
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
            stops.append(tokenizer.eos_token_id)
        self.stop_token_ids = stops
        self.history: list[dict] = []

    # ---- model passes

    def _forward(self, query_ids, query_mask, responses, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Logprobs of the response tokens (at the sampling temperature) and hidden states before each."""
        input_ids = torch.cat([query_ids, responses], dim=1)
        attention_mask = torch.cat([query_mask, mask.to(query_mask.dtype)], dim=1)
        # left padding: positions count real tokens only, as generate() did
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        start = query_ids.shape[1] - 1
        logits = out.logits[:, start:-1].float() / (self.config.temperature + 1e-7)
        logprobs = torch.gather(logits.log_softmax(-1), 2, responses.unsqueeze(-1)).squeeze(-1)
        hidden = out.hidden_states[-1][:, start:-1]
        return logprobs, hidden

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Inside this block the model is the reference: the "ref" adapter if loaded, else no adapter."""
        if REFERENCE_ADAPTER in getattr(self.model, "peft_config", {}):
            active = self.model.active_adapter
            self.model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
            try:
                yield
            finally:
                self.model.set_adapter(active)
                self.model.set_requires_grad(REFERENCE_ADAPTER, requires_grad=False)
        else:
            with self.model.disable_adapter():
                yield

    def _values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.float())

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
                )
                for p in prompts
            ]
            add_special = False
        else:
            texts, add_special = list(prompts), True
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
        finally:
            self.tokenizer.padding_side = side
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> Rollouts:
        """Sample completions with the policy and score them; logprobs, reference logprobs, values."""
        self.model.eval()  # no dropout: the first PPO ratio is exactly 1
        query_ids, query_mask = self._encode(prompts)
        generation = GenerationConfig(
            max_new_tokens=self.config.response_length,
            do_sample=True,
            temperature=self.config.temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids or None,
        )
        output = self.model.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=generation)
        responses = output[:, query_ids.shape[1]:]
        mask = response_mask(responses, self.stop_token_ids)
        logprobs, hidden = self._forward(query_ids, query_mask, responses, mask)
        values = self._values(hidden)
        with self.reference():
            ref_logprobs, _ = self._forward(query_ids, query_mask, responses, mask)
        completions = self.tokenizer.batch_decode(responses * mask + self.tokenizer.pad_token_id * (1 - mask),
                                                  skip_special_tokens=True)
        scores = torch.tensor([float(s) for s in self.reward_fn(list(prompts), completions)],
                              dtype=torch.float32, device=self.device)
        return Rollouts(list(prompts), completions, query_ids, query_mask, responses, mask,
                        logprobs, ref_logprobs, values, scores)

    # ---- one PPO step

    def step(self, prompts: list[str]) -> dict:
        """Roll out on ``prompts``, then ``num_ppo_epochs`` passes of minibatch updates."""
        cfg = self.config
        batch = self.rollout(prompts)
        mask = batch.mask.float()
        kl = per_token_kl(batch.logprobs, batch.ref_logprobs) * mask
        rewards = token_rewards(batch.scores, kl, cfg.kl_coef, mask)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        values = batch.values * mask
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)

        self.model.eval()  # gradients still flow; eval only turns dropout off
        stats = {"policy_loss": [], "value_loss": [], "clipfrac": [], "value_clipfrac": [], "approx_kl": []}
        size = len(prompts)
        mini = max(1, size // cfg.num_mini_batches)
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(size, device=self.device)
            for begin in range(0, size, mini):
                idx = order[begin:begin + mini]
                new_logprobs, hidden = self._forward(
                    batch.query_ids[idx], batch.query_mask[idx], batch.responses[idx], batch.mask[idx]
                )
                new_values = self._values(hidden)
                m = mask[idx]
                pg_loss, clipfrac = policy_loss(new_logprobs, batch.logprobs[idx], advantages[idx], m, cfg.cliprange)
                vf_loss, vf_clipfrac = value_loss(new_values, values[idx], returns[idx], m, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self._trainable, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    log_ratio = new_logprobs - batch.logprobs[idx]
                    stats["approx_kl"].append(masked_mean(0.5 * log_ratio**2, m).item())
                stats["policy_loss"].append(pg_loss.item())
                stats["value_loss"].append(vf_loss.item())
                stats["clipfrac"].append(clipfrac.item())
                stats["value_clipfrac"].append(vf_clipfrac.item())
        self.optimizer.zero_grad(set_to_none=True)

        entry = {
            "score": batch.scores.mean().item(),
            "kl": kl.sum(1).mean().item(),  # per sequence, summed over its tokens
            "response_length": mask.sum(1).mean().item(),
            "reward": rewards.sum(1).mean().item(),
        }
        entry.update({name: sum(v) / len(v) for name, v in stats.items()})
        return entry

    def train(self, prompts: Sequence[str]) -> list[dict]:
        """Run PPO over ``prompts`` (shuffled, cycled in batches of ``config.batch_size``)."""
        from transformers import set_seed

        cfg = self.config
        prompts = list(prompts)
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        set_seed(cfg.seed)
        per_epoch = math.ceil(len(prompts) / cfg.batch_size)
        total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(per_epoch * cfg.num_train_epochs))
        generator = torch.Generator().manual_seed(cfg.seed)
        queue: list[str] = []
        progress = tqdm(range(total), desc="ppo", disable=cfg.disable_tqdm)
        for step in progress:
            while len(queue) < cfg.batch_size:
                queue.extend(prompts[i] for i in torch.randperm(len(prompts), generator=generator).tolist())
            batch, queue = queue[: cfg.batch_size], queue[cfg.batch_size:]
            entry = {"step": step + 1, **self.step(batch)}
            self.history.append(entry)
            progress.set_postfix(score=f"{entry['score']:.3f}", kl=f"{entry['kl']:.3f}",
                                 pg=f"{entry['policy_loss']:.3f}", vf=f"{entry['value_loss']:.3f}")
            if cfg.logging_steps and (step + 1) % max(1, int(cfg.logging_steps)) == 0:
                logger.info("ppo step %d: %s", step + 1, {k: round(v, 4) for k, v in entry.items() if k != "step"})
        return self.history

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the adapter (PEFT ``save_pretrained``) and ``value_head.safetensors`` to ``folder``."""
        folder = Path(folder or self.config.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        active = self.model.active_adapter
        self.model.save_pretrained(folder, selected_adapters=[active] if isinstance(active, str) else None)
        self.value_head.save(folder)
        return folder


# --------------------------------------------------------------------------- the nightly stage


def train(config, model_path: str, start_adapter: str | Path | None, prompts: Sequence,  # noqa: ANN001
          reward_fn: RewardFn, stage_dir: Path):  # noqa: ANN201 - a trainer.policy.StageOutcome
    """PPO as a stage of the nightly run (`--recipe rm+ppo`), from a `trainer.config.NightlyConfig`.

    The policy continues from `start_adapter`, and a frozen copy of it named "ref" is the KL
    reference. Prompts are the logged prompts' last user messages. A resumed run starts this
    stage over: unlike TRL's trainers, this one keeps no optimizer checkpoints.
    """
    from trainer.config import derive
    from trainer.distributed import processes
    from trainer.policy import StageOutcome, load_policy, tokenizer_for

    if done := StageOutcome.finished(stage_dir):
        return done
    if processes().num_processes > 1:
        raise ValueError("rm+ppo trains in one process (this PPO trainer is not distributed); "
                         "launch it without accelerate, or use rm+grpo, which TRL distributes")
    model = load_policy(model_path, start_adapter, config)
    if start_adapter:
        model.load_adapter(str(start_adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        model.set_adapter("default")
    steps = next((s for s in (config.rl.rl_max_steps, config.training.max_steps) if s > 0), -1)
    args = derive(config.training, PPOConfig, output_dir=str(stage_dir / "checkpoints"), max_steps=steps,
                  response_length=config.rl.max_completion_length, kl_coef=config.rl.kl_coef, save_strategy="no")
    trainer = PPOTrainer(model, tokenizer_for(model_path), reward_fn, args)
    history = trainer.train([row.prompt_text for row in prompts])
    outcome = StageOutcome("ppo", trainer.save(stage_dir / "adapter"), history, {})
    outcome.save()
    return outcome
