"""Log-probabilities of answers under a model's adapters: shared by the KL to the active release
(`trainer.evaluate`) and the implicit-reward pair accuracy (`trainer.implicit`).

Text is templated as the serving engine does it (chat template with the generation prompt,
then the answer's own tokens), so the figures are about what users would get.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


CANDIDATE, ACTIVE = "candidate", "active"  # the adapters' names in `with_adapters`' model


def with_adapters(model_path: str, candidate: str, active: str | None, device: Any) -> Any:
    """The base model in float32 with the candidate's adapter and, unless `active` is None (the
    active release is the bare base model), the active release's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(candidate), adapter_name=CANDIDATE).to(device).eval()
    if active:
        model.load_adapter(str(active), adapter_name=ACTIVE)
    return model


def encode(tokenizer: Any, messages: list[dict], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer, and where the answer starts (the serving engine's templating)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, len(prompt_ids)


def token_batches(rows: list, max_tokens: int) -> Iterator[list]:
    """Rows (sorted by length) in batches whose padded size stays under `max_tokens`."""
    batch: list = []
    for row in rows:
        if batch and (len(batch) + 1) * len(row[0]) > max_tokens:
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


def pad(batch: list, pad_id: int, device: Any) -> tuple:
    """input ids, attention mask, and a mask of the positions whose next token is an answer token."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, (row, start) in enumerate(batch):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        targets[i, start - 1:len(row) - 1] = True  # position p predicts token p + 1
    return ids.to(device), attention.to(device), targets.to(device)


def next_token_logprobs(model: Any, ids: Any, mask: Any, targets: Any) -> Any:
    """Next-token log-probabilities (float32) at the target positions only: (tokens, vocabulary)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[targets].float().log_softmax(-1)


@contextmanager
def using(model: Any, adapter: str | None) -> Iterator[None]:
    if adapter is None:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(adapter)
        yield


def device_of(model: Any) -> Any:
    return next(model.parameters()).device
