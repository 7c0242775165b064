"""The running batch: rows that join between steps, or leave, decode exactly as they would alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serving.decode import RunningBatch

PROMPTS = ["Tell me about tea.", "Hi", "Write a long and careful letter to a friend about moving to a new city."]
NEW_TOKENS = 13  # the most any row makes below


@pytest.fixture(scope="module")
def model_and_ids(tiny_model: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) == 3  # three lengths: joins pad both the batch and the newcomer
    return model, tokenizer, ids


def alone(model, prompt_ids: list[int]) -> list[int]:
    """transformers' own greedy decoding of one prompt, with no padding anywhere."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


@torch.no_grad()
def test_rows_that_join_and_leave_mid_answer_decode_as_they_would_alone(model_and_ids):
    model, tokenizer, ids = model_and_ids
    expected = [alone(model, prompt) for prompt in ids]
    batch = RunningBatch("cpu")
    made: dict[int, list[int]] = {}
    seen: dict[int, list[torch.Tensor]] = {}  # each row's next-token logits, step by step
    order: list[int] = []  # which prompt each batch row is

    def join(*which: int) -> None:
        logits = batch.join(model, [ids[i] for i in which], tokenizer.pad_token_id or 0)
        for i, row in zip(which, logits):
            made[i], seen[i], order[len(order):] = [int(row.argmax())], [row], [i]

    def step() -> None:
        logits = batch.step(model, torch.tensor([made[i][-1] for i in order]))
        for i, row in zip(order, logits):
            made[i].append(int(row.argmax()))
            seen[i].append(row)

    join(1)  # the shortest prompt runs alone for a while
    for _ in range(3):
        step()
    join(2, 0)  # a longer and a middling newcomer: the running row is padded on the left
    for _ in range(6):
        step()
    # The longest row leaves (its client went away): the columns only it needed go.
    columns = batch.mask.shape[1]
    batch.keep([order.index(1), order.index(0)])
    order = [1, 0]
    assert batch.size == 2 and batch.mask.shape[1] < columns
    assert all(layer.keys.shape[:3:2] == (2, batch.mask.shape[1]) for layer in batch.cache.layers)
    for _ in range(3):
        step()
    assert [len(made[i]) for i in (0, 1, 2)] == [10, 13, 7]
    for i in (0, 1, 2):
        assert made[i] == expected[i][: len(made[i])], i
        # Not only the same choices: the same logits as one unpadded forward over the row.
        unpadded = model(torch.tensor([ids[i] + made[i][:-1]])).logits[0, len(ids[i]) - 1:]
        torch.testing.assert_close(torch.stack(seen[i]), unpadded, atol=1e-4, rtol=1e-4)

@torch.no_grad()
def test_the_last_row_leaving_empties_the_batch(model_and_ids):
    model, tokenizer, ids = model_and_ids
    batch = RunningBatch("cpu")
    batch.join(model, [ids[0]], 0)
    batch.keep([])
    assert batch.size == 0 and batch.cache is None and batch.mask is None
    logits = batch.join(model, [ids[1]], 0)  # a fresh start after it emptied
    assert logits.shape[0] == 1 and batch.size == 1
