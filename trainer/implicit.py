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
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from feedback.export import Row
from trainer.logprobs import ACTIVE, CANDIDATE, device_of, encode, next_token_logprobs, pad, using, with_adapters

def _text(answer: list[dict]) -> str:
    return answer[-1]["content"]  # TRL's conversational answer: one assistant message


def _answer_logprob_sums(model, batch: list[tuple[list[int], int]], pad_id: int) -> torch.Tensor:  # noqa: ANN001
    """log π(answer | prompt) per row: the sum of its answer tokens' log-probabilities."""
    ids, mask, targets = pad(batch, pad_id, device_of(model))
    logprobs = next_token_logprobs(model, ids, mask, targets)  # (answer tokens, vocabulary)
    following = torch.roll(ids, -1, dims=1)[targets]  # position p predicts token p + 1
    picked = logprobs.gather(1, following.unsqueeze(1)).squeeze(1)
    rows = targets.nonzero()[:, 0]
    return torch.zeros(len(batch), device=picked.device).index_add_(0, rows, picked).cpu()


def pair_accuracy(model_path: str, candidate: str | Path, active: str | Path | None, pairs: Sequence[Row],
                  batch_size: int = 8, max_pairs: int = 256, device: str = "cpu") -> float | None:
    """Share of held-out pairs whose chosen answer gains more implicit reward than the rejected one."""
    pairs = list(pairs)[:max_pairs]
    if not pairs:
        return None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = with_adapters(model_path, str(candidate), str(active) if active else None, device)
    encoded = [(encode(tokenizer, p.data["prompt"], _text(p.data["chosen"])),
                encode(tokenizer, p.data["prompt"], _text(p.data["rejected"]))) for p in pairs]
    margins = []
    with torch.inference_mode():
        for at in tqdm(range(0, len(encoded), batch_size), desc="Implicit reward on held-out pairs", unit="batch"):
            batch = [seq for pair in encoded[at : at + batch_size] for seq in pair]
            with using(model, CANDIDATE):
                ours = _answer_logprob_sums(model, batch, pad_id)
            with using(model, ACTIVE if active else None):
                theirs = _answer_logprob_sums(model, batch, pad_id)
            reward = ours - theirs
            margins += (reward[0::2] - reward[1::2]).tolist()
    return sum(m > 0 for m in margins) / len(margins)
