"""Held-out pair accuracy by the implicit reward, for any recipe's candidate.

DPO's implicit reward of an answer is log π(y|x) − log π_ref(y|x). Measured with the active
release as the reference, it says whether the candidate moved towards what people chose
on pairs it never saw, whichever recipe (KTO, SFT+DPO, GRPO, PPO) trained it; TRL's own
DPO figure uses the stage's starting adapter as its reference, which for `sft+dpo` is the
SFT stage rather than what users get today.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedback.export import Row

CANDIDATE, ACTIVE = "candidate", "active"


def _encode(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], int]:  # noqa: ANN001
    """Token ids of prompt + answer, and where the answer starts."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full_ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=False)
    return list(full_ids), len(prompt_ids)


@torch.no_grad()
def _answer_logprobs(model, batch: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:  # noqa: ANN001
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    answer = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        answer[row, start : len(ids)] = True
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logprobs.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
    return (picked * answer[:, 1:].to(device)).sum(-1).cpu()


def pair_accuracy(model_path: str, candidate: str | Path, active: str | Path | None, pairs: Sequence[Row],
                  batch_size: int = 8, max_pairs: int = 256, device: str = "cpu") -> float | None:
    """Share of held-out pairs whose chosen answer gains more implicit reward than the rejected one."""
    pairs = list(pairs)[:max_pairs]
    if not pairs:
        return None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                                      str(candidate), adapter_name=CANDIDATE).to(device).eval()
    if active:
        model.load_adapter(str(active), adapter_name=ACTIVE)
    encoded = [(_encode(tokenizer, p.data["prompt"], p.data["chosen"]), _encode(tokenizer, p.data["prompt"], p.data["rejected"]))
               for p in pairs]
    margins = []
    for at in tqdm(range(0, len(encoded), batch_size), desc="Implicit reward on held-out pairs", unit="batch"):
        batch = [seq for pair in encoded[at : at + batch_size] for seq in pair]
        model.set_adapter(CANDIDATE)
        ours = _answer_logprobs(model, batch, pad_id)
        if active:
            model.set_adapter(ACTIVE)
            theirs = _answer_logprobs(model, batch, pad_id)
        else:
            with model.disable_adapter():
                theirs = _answer_logprobs(model, batch, pad_id)
        reward = ours - theirs
        margins += (reward[0::2] - reward[1::2]).tolist()
    return sum(m > 0 for m in margins) / len(margins)
